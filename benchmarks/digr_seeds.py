"""DIGR vs plain distillation over several seeds: runs `edge-digr demo` per seed, then aggregates.

    python benchmarks/digr_seeds.py --task minigrid-fetch --seeds 0,1,2 --root runs/minigrid-fetch

Each seed's folder is reused if its metrics.json exists (so an interrupted sweep resumes). Prints a
markdown table (mean ± std over seeds) and the per-seed DIGR − plain margins, and writes them as JSON.

`--ray [ADDRESS]` runs each seed's demo as a Ray task needing `--cpus-per-job` CPUs (alone: a local Ray
instance; `auto` or `ray://HOST:10001`: an existing cluster, whose workers must see --root at the same
path). A seed that fails is reported with its configuration; the table is made from the seeds that finished.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

from edge_digr.ray_jobs import add_ray_arguments, run_jobs

ROWS = ("teacher", "digr", "plain", "igr")
COLS = ("return", "success", "saliency_pearson", "saliency_iou_top10", "pointing")
MARGINS = ("saliency_pearson", "saliency_iou_top10", "pointing", "return")


def run_seed(task: str, seed: int, root: Path, modes: str) -> Dict:
    out = root / f"seed{seed}"
    if not (out / "metrics.json").exists():
        subprocess.run([sys.executable, "-m", "edge_digr.cli", "demo", "--task", task, "--seed", str(seed),
                        "--out-dir", str(out), "--modes", modes, "--quiet"], check=True)
    return json.loads((out / "metrics.json").read_text())


def aggregate(runs: List[Dict]) -> Dict:
    table: Dict[str, Dict[str, List[float]]] = {}
    for row in ROWS:
        if all(row in r for r in runs):
            table[row] = {c: [r[row][c] for r in runs] for c in COLS if c in runs[0][row]}
    margins = {m: [r["digr"][m] - r["plain"][m] for r in runs] for m in MARGINS if m in runs[0]["digr"]}
    retained = [r["digr"]["return"] / r["teacher"]["return"] if r["teacher"]["return"] else float("nan")
                for r in runs]
    timing = {k: [r["time_ms"][k] for r in runs] for k in ("gradient", "perturbation", "speedup")}
    return {"table": table, "digr_minus_plain": margins, "digr_return_over_teacher": retained,
            "time_ms": timing, "seeds": [r["seed"] for r in runs]}


def _ms(values: List[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def render(agg: Dict) -> str:
    cols = list(next(iter(agg["table"].values())))
    lines = ["| policy | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    for row, vals in agg["table"].items():
        lines.append(f"| {row} | " + " | ".join(_ms(vals[c]) for c in cols) + " |")
    lines += ["", "| DIGR − plain (per seed) | mean ± std | seeds |", "| --- | --- | --- |"]
    for m, vals in agg["digr_minus_plain"].items():
        lines.append(f"| {m} | {_ms(vals)} | " + ", ".join(f"{v:+.3f}" for v in vals) + " |")
    lines += ["", "DIGR return / teacher return per seed: "
                  + ", ".join(f"{v:.3f}" for v in agg["digr_return_over_teacher"]),
              f"Time per map (ms): gradient {_ms(agg['time_ms']['gradient'])}, perturbation "
              f"{_ms(agg['time_ms']['perturbation'])}, ratio {_ms(agg['time_ms']['speedup'])}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="minigrid-fetch")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--root", type=Path, default=Path("runs/minigrid-fetch"))
    parser.add_argument("--modes", default="digr,plain,igr")
    parser.add_argument("--json", type=Path, default=None, help="Write the aggregate here.")
    add_ray_arguments(parser, "seeds' demos", cpus=2)
    args = parser.parse_args()
    configs = [dict(task=args.task, seed=int(s), root=args.root, modes=args.modes) for s in args.seeds.split(",")]
    results, failures = run_jobs(run_seed, configs, args.ray, args.cpus_per_job)
    for config, reason in failures:
        print(f"failed: task {config['task']} seed {config['seed']} modes {config['modes']}: {reason}",
              file=sys.stderr)
    runs = [r for r in results if r is not None]
    if runs:
        agg = aggregate(runs)
        print(render(agg))
        if args.json:
            from edge_digr.core.fileio import write_json
            write_json(args.json, agg)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
