"""One CLI vocabulary: every click command's options against the tables in docs/cli.md, help text on every
option, the renamed options' hidden aliases, and `--help` on every command in the torch-free install."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import click
import pytest
from click.testing import CliRunner

from edge_digr.cli import COMMANDS, main
from edge_digr.core import options

DOC = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
TRANSFORMING = {"export", "check", "calibrate", "build", "bundle pack", "bundle unpack"}


def commands() -> Iterator[Tuple[str, click.Command]]:
    """(name, command) of every leaf command, subcommands of groups as 'group sub'."""
    def walk(name: str, cmd: click.Command) -> Iterator[Tuple[str, click.Command]]:
        if isinstance(cmd, click.Group):
            for sub, child in sorted(cmd.commands.items()):
                yield from walk(f"{name} {sub}", child)
        else:
            yield name, cmd

    for name in sorted(COMMANDS):
        yield from walk(name, main.get_command(click.Context(main), name))


def table(marker: str) -> List[List[str]]:
    block = DOC.split(f"<!-- {marker}: begin -->")[1].split(f"<!-- {marker}: end -->")[0]
    rows = [[c.strip().strip("`") for c in line.strip().strip("|").split("|")] for line in block.strip().splitlines()]
    return rows[2:]  # header and rule


def kind(option: click.Option) -> str:
    t = option.type
    if option.is_flag:
        return "flag"
    if isinstance(t, click.Path):
        return "folder" if not t.file_okay else "file" if not t.dir_okay else "path"
    if isinstance(t, click.Choice):
        return "choice"
    if isinstance(t, (click.types.IntParamType, click.IntRange)):
        return "integer"
    if t is click.STRING:
        return "text"
    return t.name


def visible(cmd: click.Command) -> Dict[str, click.Option]:
    return {flag: p for p in cmd.params if isinstance(p, click.Option) and not p.hidden for flag in p.opts}


VOCABULARY = {row[0]: (row[2], {c.strip() for c in row[3].split(",")}) for row in table("vocabulary")}
RENAMED = {(row[0], row[1]): row[2] for row in table("renamed")}


def test_the_tables_are_read():
    assert {"--engine", "--policy", "--out", "--out-dir", "--json", "--batch", "--task"} <= set(VOCABULARY)
    assert ("calibrate", "--report") in RENAMED


@pytest.mark.parametrize("flag", sorted(VOCABULARY))
def test_each_vocabulary_option_has_one_meaning_and_kind_everywhere(flag):
    want_kind, want_commands = VOCABULARY[flag]
    having = {name: visible(cmd)[flag] for name, cmd in commands() if flag in visible(cmd)}
    assert set(having) == want_commands, f"{flag}: docs/cli.md lists {sorted(want_commands)}"
    for name, option in having.items():
        assert kind(option) == want_kind, f"{name} {flag} takes {kind(option)}, not {want_kind}"


def test_every_option_has_help_text():
    missing = [f"{name} {'/'.join(p.opts)}" for name, cmd in commands() for p in cmd.params
               if isinstance(p, click.Option) and not p.hidden and not p.help]
    assert missing == []


def test_hidden_options_are_exactly_the_documented_renames():
    found = set()
    for name, cmd in commands():
        for p in cmd.params:
            if isinstance(p, click.Option) and p.hidden:
                found.add((name, p.opts[0]))
                new = RENAMED.get((name, p.opts[0]))
                assert new in visible(cmd), f"{name} {p.opts[0]}: no documented new name on the command"
                assert p.opts[0] in visible(cmd)[new].old.values()  # registered through the shared helper
    assert found == set(RENAMED)


def test_the_runtime_reads_engines_and_transformed_files_are_positional():
    for name, cmd in commands():
        if name in ("run", "profile", "selftest"):
            assert visible(cmd)["--engine"].required
        arguments = [p for p in cmd.params if isinstance(p, click.Argument)]
        assert bool(arguments) == (name in TRANSFORMING), name


def test_an_old_name_still_works_and_warns_once(monkeypatch, tmp_path):
    monkeypatch.setattr(options, "_WARNED", set())
    seen: List[str] = []

    @click.command()
    @options.option("--json", "json_path", old=["--report"], type=click.Path(dir_okay=False), help="Report.")
    @options.option("--out-dir", old=["--to"], required=True, type=click.Path(file_okay=False), help="Folder.")
    def cmd(json_path: str, out_dir: str) -> None:
        seen.append(f"{json_path} {out_dir}")

    runner = CliRunner()
    first = runner.invoke(cmd, ["--report", "r.json", "--to", "d"])
    again = runner.invoke(cmd, ["--report", "r.json", "--out-dir", "d"])
    assert first.exit_code == 0 and again.exit_code == 0 and seen == ["r.json d", "r.json d"]
    assert "--report is now --json" in first.output and "--to is now --out-dir" in first.output
    assert "warning" not in again.output  # once per process
    both = runner.invoke(cmd, ["--report", "a", "--json", "b", "--to", "d"])
    assert both.exit_code == 2 and "pass --json only" in both.output
    assert runner.invoke(cmd, ["--report", "a"]).exit_code == 2  # the new name is still required


def test_build_refuses_a_bad_batch_range_under_its_old_name_too(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"x")
    result = CliRunner().invoke(main, ["build", str(onnx_path), "--out", str(tmp_path / "m.plan"),
                                       "--batch", "4,2,1"])
    assert result.exit_code != 0 and "--batch-range" in result.output + str(result.exception)


def test_every_command_has_help_in_the_torch_free_install():
    names = [name for name, _ in commands()]
    code = ("import sys\n"
            "for m in ('torch', 'stable_baselines3', 'gymnasium', 'minigrid', 'ale_py'):\n"
            "    sys.modules[m] = None  # any import of them raises ImportError\n"
            "from click.testing import CliRunner\n"
            "from edge_digr.cli import main\n"
            f"for name in {names!r}:\n"
            "    result = CliRunner().invoke(main, [*name.split(), '--help'])\n"
            "    assert result.exit_code == 0 and 'Usage:' in result.output, (name, result.output)\n"
            "assert sys.modules['torch'] is None\n"
            "print('ok', len(" + repr(names) + "))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok", str(len(names))]


def test_no_option_name_is_used_for_two_kinds():
    seen: Dict[str, Set[str]] = {}
    for _, cmd in commands():
        for flag, option in visible(cmd).items():
            seen.setdefault(flag, set()).add(kind(option))
    mixed = {flag: kinds for flag, kinds in seen.items() if len(kinds) > 1}
    assert mixed == {}
    assert not any(re.fullmatch(r"--(report|to|batch-size|checkpoint)", flag) for flag in seen)
