"""The docs' strip figure: held-out frames | teacher perturbation map | plain and DIGR gradient maps.

    python benchmarks/strips.py --models models/car-racing --labels runs/cr2/labels.npz --out docs/strips_car-racing.png

Takes the teacher and students of a model folder (teacher.pt, student_plain.pt, student_digr.pt) and the
labels.npz they were distilled from, draws `edge_digr.demo.write_strips` on its held-out mapped frames
(the demo's test set: the last 20 % of episodes, frames with a map) and stacks the strips into one PNG.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image

from edge_digr.checkpoint import load_checkpoint
from edge_digr.core.fileio import atomic_path
from edge_digr.core.tasks import get_task
from edge_digr.demo import write_strips
from edge_digr.labels import load_labels, mapped_only, split
from edge_digr.metrics import open_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True,
                        help="folder with teacher.pt, student_plain.pt and student_digr.pt")
    parser.add_argument("--labels", type=Path, required=True, help="labels.npz the students were distilled from")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()

    _, config = load_checkpoint(args.models / "teacher.pt")
    task = get_task(config["task"])
    test = mapped_only(split(load_labels(args.labels, task))[1])
    handles = {name: open_policy(str(args.models / f"{stem}.pt"), task)
               for name, stem in (("teacher", "teacher"), ("plain", "student_plain"), ("digr", "student_digr"))}
    with tempfile.TemporaryDirectory() as tmp:
        names = write_strips(handles, task, test, Path(tmp))
        strips = [Image.open(Path(tmp) / name) for name in names]
        figure = Image.new("RGB", (max(s.width for s in strips), sum(s.height for s in strips)), "white")
        y = 0
        for strip in strips:
            figure.paste(strip, (0, y))
            y += strip.height
        with atomic_path(args.out) as tmp_out:
            figure.save(tmp_out, format="PNG")
    print(f"wrote {args.out} ({len(strips)} frames)")


if __name__ == "__main__":
    main()
