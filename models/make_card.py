"""Write models/<task>/MODEL_CARD.md: how each shipped file was made, what it scores, and its sha256.

    python models/make_card.py models/car-racing --provenance runs/car-racing/provenance.json

provenance.json (written by whoever ran the commands, never by hand-copied numbers):
    {"task": "...", "machine": "...", "date": "...", "commit": "...",
     "files": {"teacher.pt": "edge-digr train-teacher ...", ...},          # the command that made each file
     "data": "...",                                                        # what the policies were trained on
     "evaluations": {"teacher": "runs/.../teacher.json", ...},             # `edge-digr evaluate --json` outputs,
                                                  # or "runs/.../metrics.json#digr": one policy of a demo's metrics
     "notes": ["...", ...]}
tests/test_models.py checks every file against the sha256 written here.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge_digr.core.fileio import sha256_file, write_text

METRICS = [("return", "return"), ("return_std", "± std"), ("episodes", "episodes"),
           ("saliency_pearson", "Pearson vs teacher perturbation"), ("saliency_iou_top10", "top-10 % IoU"),
           ("pointing", "pointing"), ("deletion_gain", "deletion gain (own map vs random pixels)")]


def read_evaluation(ref: str) -> dict:
    """An evaluate --json file, or `FILE#KEY`: the KEY entry of a JSON file (a demo's metrics.json)."""
    path, _, key = ref.partition("#")
    data = json.loads(Path(path).read_text())
    return data[key] if key else data


def render(folder: Path, prov: dict) -> str:
    evals = {name: read_evaluation(ref) for name, ref in prov.get("evaluations", {}).items()}
    lines = [f"# {prov['task']} models", "",
             f"Made {prov['date']} at commit `{prov['commit']}` on {prov['machine']}.", "",
             "## Files", "", "| file | bytes | sha256 | made by |", "| --- | --- | --- | --- |"]
    for name, command in prov["files"].items():
        path = folder / name
        lines.append(f"| `{name}` | {path.stat().st_size} | `{sha256_file(path)}` | `{command}` |")
    lines += ["", "## Data", "", prov["data"], ""]
    if evals:
        teacher = evals.get("teacher", {}).get("return")
        cols = [(k, title) for k, title in METRICS if any(k in e for e in evals.values())]
        lines += ["## Scores", "", "Returns on the evaluation seeds of `edge-digr evaluate` (10000 + episode); "
                  "saliency on the held-out frames of the labels.", "",
                  "| policy | " + " | ".join(t for _, t in cols) + (" | % of teacher |" if teacher else " |"),
                  "|" + " --- |" * (len(cols) + 1 + bool(teacher))]
        for name, e in evals.items():
            cells = [f"{e[k]:.3f}" if isinstance(e.get(k), float) else str(e.get(k, "")) for k, _ in cols]
            share = [f"{100 * e['return'] / teacher:.1f} %"] if teacher else []
            lines.append(f"| {name} | " + " | ".join(cells + share) + " |")
        lines.append("")
    if prov.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in prov["notes"]] + [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="models/<task> holding the files to ship")
    parser.add_argument("--provenance", type=Path, required=True, help="provenance.json (see the module doc)")
    args = parser.parse_args()
    prov = json.loads(args.provenance.read_text())
    write_text(args.folder / "MODEL_CARD.md", render(args.folder, prov))
    print(f"wrote {args.folder / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
