"""Robustness sweeps behind `edge-digr attack`: episode returns under white-box observation attacks.

One policy at one ε gives one line; a sweep (`compare` and/or several ε or attacks) adds the clean return
(ε = 0) and writes a markdown table, a JSON record and a return-vs-ε plot. A `compare` entry may be a glob
(one file per training seed): its row is the mean ± std over the matched files of each file's mean episode
return. `merge` combines sweeps run separately with equal settings (e.g. one per seed, side by side) into
the same table. Torch-free at import (the attacks load inside `run_attacks`).
"""
from __future__ import annotations

import glob
import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edge_digr.core.errors import UserError
from edge_digr.evaluation import EVAL_SEED
from edge_digr.core.fileio import atomic_path, write_json, write_text

ATTACK_NAMES = ("fgsm", "pgd", "noise", "mad")  # edge_digr.attacks.ATTACKS, without importing torch
CLEAN = "none"


@dataclass(frozen=True)
class Entry:
    """One row of the comparison: a label and the checkpoint(s) (seeds) it aggregates."""

    label: str
    files: List[str]


@dataclass(frozen=True)
class Record:
    label: str
    file: str
    attack: str  # CLEAN for the unattacked rollout
    eps: float
    summary: Dict[str, float]


def parse_floats(text: str, option: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} takes numbers separated by commas (pixel units, 0-255), got {text!r}") from None
    if not values or not all(0 <= v < math.inf for v in values):  # NaN fails both comparisons
        raise UserError(f"{option} needs one or more values >= 0 (pixel units, 0-255), got {text!r}")
    return values


def parse_attacks(text: str) -> List[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in ATTACK_NAMES]
    if not names or bad:
        raise UserError(f"unknown attack {', '.join(bad) or repr(text)}; choose from: {', '.join(ATTACK_NAMES)}")
    return names


def default_label(path: str) -> str:
    stem = Path(path).stem
    return stem[len("student_"):] if stem.startswith("student_") else stem


def parse_compare(text: str) -> List[Entry]:
    """`[label=]path-or-glob,...` → entries; a glob's matches are that row's seeds."""
    entries: List[Entry] = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        label, _, pattern = item.rpartition("=")
        files = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not files:
            raise UserError(f"--compare entry {item!r} matches no file")
        entries.append(Entry(label or default_label(files[0]), files))
    if not entries:
        raise UserError("--compare needs at least one checkpoint")
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise UserError(f"--compare rows need distinct labels (got {labels}); name them as label=path")
    return entries


def attackable_task(path: str, task_name: Optional[str]) -> str:
    """The task of a torch policy file (.pt, or an SB3 .zip with `task_name`), checked against `task_name`."""
    from edge_digr.checkpoint import policy_task

    if not path.endswith((".pt", ".zip")):
        raise UserError(f"{path}: white-box attacks need the torch policy (.pt or SB3 .zip), "
                        "not an exported graph or engine")
    return policy_task(path, task_name)


def load_attackable(path: str, task_name: str):
    """A torch policy from an edge-digr .pt (checked against the task) or an SB3 .zip."""
    from edge_digr.checkpoint import load_policy

    return load_policy(path, attackable_task(path, task_name))


@lru_cache(maxsize=None)
def _cached_policy(path: str, task_name: str, device: str = "cpu"):
    from edge_digr.devices import resolve_device

    return load_attackable(path, task_name).to(resolve_device(device))


def run_point(point: Tuple[str, str, Any], task: str, episodes: int, seed: int,
              max_steps: Optional[int], device: str = "cpu") -> Dict[str, float]:
    """Episode summary of one (label, file, attack config or None for clean) point; runs in workers too."""
    import torch

    from edge_digr.attacks import attacked_rollout
    from edge_digr.core.tasks import get_task

    # Batch-1 steps through small nets: thread hand-offs cost more than they save (on a busy 2-core
    # machine, spinning intra-op threads made each PGD step ~40x slower in our measurement).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, path, config = point
        return attacked_rollout(_cached_policy(path, task, device), get_task(task), config, episodes, seed,
                                max_steps).summary()
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ aggregation
def aggregate(records: Sequence[Record]) -> Dict[str, float]:
    """Mean and std over files (seeds) of each file's mean return and success rate."""
    returns = np.array([r.summary["return"] for r in records])
    success = np.array([r.summary["success"] for r in records])
    return {"return_mean": float(returns.mean()), "return_std": float(returns.std()),
            "success_mean": float(success.mean()), "success_std": float(success.std()), "files": len(records)}


def grid(records: Sequence[Record], entries: Sequence[Entry], attacks: Sequence[str],
         eps_list: Sequence[float]) -> Dict[str, Dict[str, Dict[float, Dict[str, float]]]]:
    """label -> attack -> ε -> aggregate; ε = 0 of every attack is the shared clean rollout."""
    out: Dict[str, Dict[str, Dict[float, Dict[str, float]]]] = {}
    for entry in entries:
        mine = [r for r in records if r.label == entry.label]
        clean = [r for r in mine if r.attack == CLEAN]
        out[entry.label] = {}
        for attack in attacks:
            row = {0.0: aggregate(clean)} if clean else {}
            for eps in eps_list:
                row[eps] = aggregate([r for r in mine if r.attack == attack and r.eps == eps])
            out[entry.label][attack] = row
    return out


def _eps_label(eps: float) -> str:
    return f"{eps:g}"


def markdown_table(table: Dict[str, Dict[str, Dict[float, Dict[str, float]]]], task: str, episodes: int) -> str:
    """One table per attack: rows = policies, columns = ε (0 = clean), cells = return mean ± std over seeds."""
    lines: List[str] = []
    for attack in next(iter(table.values())):
        eps_cols = sorted(next(iter(table.values()))[attack])
        lines += [f"**{task}, {attack}** — mean episode return ({episodes} episodes per seed), "
                  "mean ± std over seeds; success rate in brackets", "",
                  "| policy | seeds | " + " | ".join("clean" if e == 0 else f"ε={_eps_label(e)}" for e in eps_cols) + " |",
                  "| --- | ---: | " + " | ".join("---:" for _ in eps_cols) + " |"]
        for label, by_attack in table.items():
            row = by_attack[attack]
            cells = [f"{row[e]['return_mean']:.3f} ± {row[e]['return_std']:.3f} ({row[e]['success_mean']:.2f})"
                     for e in eps_cols]
            lines.append(f"| {label} | {row[eps_cols[0]]['files']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(table: Dict[str, Dict[str, Dict[float, Dict[str, float]]]], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI or the Jetson
    import matplotlib.pyplot as plt

    attacks = list(next(iter(table.values())))
    cols = min(2, len(attacks))
    rows = -(-len(attacks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(attacks):]:
        ax.set_visible(False)
    for ax, attack in zip(axes.flat, attacks):
        for label, by_attack in table.items():
            eps = sorted(by_attack[attack])
            ax.errorbar(eps, [by_attack[attack][e]["return_mean"] for e in eps],
                        yerr=[by_attack[attack][e]["return_std"] for e in eps], marker="o", capsize=3, label=label)
        ax.set_title(f"{task}: {attack}")
        ax.set_xlabel("ε (pixels, 0-255)")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean episode return")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- command
def merge_results(paths: Sequence[str], task: Optional[str]) -> Tuple[Dict[str, Any], List[Record], List[Entry]]:
    """Concatenate sweeps run separately (e.g. one per training seed, in parallel) with equal settings;
    `task` (None: the files' own) must be the task they were run on."""
    runs = []
    for path in paths:
        try:
            runs.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise UserError(f"--merge {path}: not a readable attack JSON ({exc})") from None
    keys = ("task", "attacks", "eps", "episodes", "options", "max_steps")
    for path, run in zip(paths, runs):
        if any(k not in run for k in keys + ("records", "rows")):
            raise UserError(f"--merge {path} is not a JSON written by `edge-digr attack`")
        differs = [k for k in keys if run[k] != runs[0][k]]
        if differs:
            raise UserError(f"--merge {path} differs from {paths[0]} in {', '.join(differs)}: "
                            "only sweeps with the same settings can be combined")
    if task is not None and runs[0]["task"] != task:
        raise UserError(f"--merge files are for task {runs[0]['task']!r}, not {task!r}")
    rows: Dict[str, List[str]] = {}
    for run in runs:
        for label, files in run["rows"].items():
            rows.setdefault(label, []).extend(f for f in files if f not in rows.get(label, []))
    records = [Record(**r) for run in runs for r in run["records"]]
    result = {k: runs[0][k] for k in keys}
    return result, records, [Entry(label, files) for label, files in rows.items()]


def write_sweep(result: Dict[str, Any], records: List[Record], entries: List[Entry],
                out_dir: Optional[str]) -> List[str]:
    """Table, JSON and plot of a sweep under `out_dir`; returns the lines to print (the table, the files)."""
    task = result["task"]
    table = grid(records, entries, result["attacks"], result["eps"])
    result["rows"] = {e.label: e.files for e in entries}
    result["records"] = [asdict(r) for r in records]
    result["table"] = {label: {a: {_eps_label(e): v for e, v in row.items()} for a, row in by.items()}
                       for label, by in table.items()}
    text = markdown_table(table, task, result["episodes"])
    out = Path(out_dir or f"attack-{task}")
    write_text(out / "robustness.md", text)
    write_json(out / "robustness.json", result)
    plot(table, task, out / "robustness.png")
    return [text, f"wrote {out / 'robustness.md'}, {out / 'robustness.json'}, {out / 'robustness.png'}"]


@dataclass(frozen=True)
class AttackRun:
    """What `edge-digr attack` asks for: exactly one of `policy`, `compare` or `merge`."""

    policy: Optional[str] = None
    compare: Optional[str] = None  # [label=]path-or-glob,...
    merge: Optional[str] = None  # robustness.json,...
    task: Optional[str] = None
    attacks: str = "pgd"  # comma list
    eps: Optional[str] = None  # comma list, pixels
    episodes: int = 20
    seed: int = EVAL_SEED
    pgd_steps: int = 10
    step_size: Optional[float] = None
    random_start: bool = True
    max_steps: Optional[int] = None
    workers: int = 1
    out_dir: Optional[str] = None
    device: str = "cpu"  # auto | cpu | cuda, for the attacked policies


def run_attacks(run: AttackRun) -> Tuple[Dict[str, Any], List[str]]:
    """Run (or merge) the attacks; returns the JSON-able result and the lines to print."""
    from tqdm import tqdm

    from edge_digr.attacks import AttackConfig

    if sum(x is not None for x in (run.policy, run.compare, run.merge)) != 1:
        raise UserError("pass exactly one of --policy FILE, --compare FILE,FILE,... or --merge JSON,JSON,...")
    if run.merge:
        result, records, entries = merge_results([p for p in run.merge.split(",") if p], run.task)
        return result, write_sweep(result, records, entries, run.out_dir)
    if run.eps is None:
        raise UserError("--eps is required (pixel units, 0-255; a comma list for a sweep)")
    entries = [Entry(default_label(run.policy), [run.policy])] if run.policy else parse_compare(run.compare)
    task = attackable_task(entries[0].files[0], run.task)  # the others are checked against it below
    attacks, eps_list = parse_attacks(run.attacks), parse_floats(run.eps, "--eps")
    sweep = run.compare is not None or len(attacks) * len(eps_list) > 1
    # "steps" is the record's key for the PGD/MAD iterations (AttackConfig.steps): JSONs stay mergeable.
    options = {"steps": run.pgd_steps, "step_size": run.step_size, "random_start": run.random_start,
               "seed": run.seed}
    try:
        configs = [AttackConfig(name=a, eps=e, **options) for a in attacks for e in eps_list]
    except ValueError as exc:
        raise UserError(str(exc)) from None
    for f in {f for entry in entries for f in entry.files}:
        _cached_policy(f, task, run.device)  # refuse bad files (and a missing CUDA) before any rollout starts
    # None = the clean rollout: in a sweep it is every curve's ε = 0 point.
    plan: List[Optional[AttackConfig]] = ([None] if sweep else []) + configs
    points = [(entry.label, f, cfg) for entry in entries for f in entry.files for cfg in plan]
    job = partial(run_point, task=task, episodes=run.episodes, seed=run.seed, max_steps=run.max_steps,
                  device=run.device)
    bar = dict(total=len(points), desc=f"attack {task}", unit="point")
    if run.workers == 1:
        summaries = [job(p) for p in tqdm(points, **bar)]
    else:
        # Points are independent rollouts: spread them over processes (spawned: no forked torch state).
        with ProcessPoolExecutor(run.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            summaries = list(tqdm(pool.map(job, points), **bar))
    records = [Record(label, f, cfg.name if cfg else CLEAN, cfg.eps if cfg else 0.0, summary)
               for (label, f, cfg), summary in zip(points, summaries)]

    result: Dict[str, Any] = {"task": task, "attacks": attacks, "eps": eps_list, "episodes": run.episodes,
                              "options": options, "max_steps": run.max_steps}
    if sweep:
        return result, write_sweep(result, records, entries, run.out_dir)
    result.update(rows={e.label: e.files for e in entries}, records=[asdict(r) for r in records])
    s = records[0].summary
    return result, [f"{task} {attacks[0]} ε={_eps_label(eps_list[0])}: return {s['return']:.3f} ± "
                    f"{s['return_std']:.3f}, success {s['success']:.2f} over {run.episodes} episodes ({run.policy})"]
