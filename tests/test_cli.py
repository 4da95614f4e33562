"""`--help` on every command; user errors are one line, exit code 2, no traceback."""
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edge_digr.cli import COMMANDS, main

CONTRACT = ["demo", "train-teacher", "label", "distill", "evaluate", "export", "check", "calibrate", "build",
            "run", "profile", "attack"]


def test_every_contract_command_is_registered():
    assert set(CONTRACT) <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and name in result.output


def test_group_help_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("args, message", [
    (["label", "--task", "minigrid-fetch", "--teacher", "missing.pt", "--out", "x.npz", "--frames", "2"],
     "missing.pt does not exist"),
    (["evaluate", "--policy", "missing.pt", "--task", "minigrid-fetch"], "missing.pt does not exist"),
    (["distill", "--teacher", "missing.pt", "--labels", "l.npz", "--out", "s.pt"], "missing.pt does not exist"),
])
def test_user_errors_are_one_line(args, message, tmp_path):
    result = subprocess.run([sys.executable, "-c", "from edge_digr.cli import main; main()", *args],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
