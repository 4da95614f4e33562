"""Shipped models: every file matches the sha256 on its card, and every fused ONNX runs a few steps."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge_digr.core.fileio import sha256_file

MODELS = Path(__file__).resolve().parents[1] / "models"
CARDS = sorted(MODELS.glob("*/MODEL_CARD.md"))
ROW = re.compile(r"^\| `([^`]+)` \| (\d+) \| `([0-9a-f]{64})` \|")


def card_rows(card: Path):
    return [ROW.match(line).groups() for line in card.read_text().splitlines() if ROW.match(line)]


def test_models_ship_for_the_pixel_tasks_within_the_size_budget():
    assert {c.parent.name for c in CARDS} >= {"car-racing", "minigrid-fetch"}
    total = sum(p.stat().st_size for p in MODELS.rglob("*") if p.is_file())
    assert total <= 40 * 2 ** 20, f"models/ holds {total / 2 ** 20:.1f} MiB, over the 40 MiB budget"


@pytest.mark.parametrize("card", CARDS, ids=[c.parent.name for c in CARDS])
def test_every_file_matches_its_card(card):
    rows = card_rows(card)
    assert rows, f"{card} lists no files"
    listed = {name for name, _, _ in rows}
    shipped = {p.name for p in card.parent.iterdir() if p.name != "MODEL_CARD.md"}
    assert listed == shipped, f"unlisted {shipped - listed}, missing {listed - shipped}"
    for name, size, digest in rows:
        path = card.parent / name
        assert path.stat().st_size == int(size), name
        assert sha256_file(path) == digest, f"{name} does not match the sha256 on its card"


ONNX = sorted(MODELS.glob("*/*.onnx"))


@pytest.mark.parametrize("onnx", ONNX, ids=[f"{p.parent.name}/{p.name}" for p in ONNX])
def test_every_shipped_onnx_runs(onnx, tmp_path):
    pytest.importorskip("gymnasium", reason="the env feed needs the envs extra")
    summary = tmp_path / "summary.json"
    result = subprocess.run([sys.executable, "-c", "from edge_digr.cli import main; main()", "run", "--engine",
                             str(onnx), "--max-steps", "5", "--json", str(summary)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert '"steps": 5' in summary.read_text()
