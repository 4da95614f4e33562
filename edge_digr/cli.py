"""The `edge-digr` console script: one click group, commands loaded lazily from the module that owns them.

Lazy loading keeps `edge-digr run` torch-free on the Jetson and `--help` fast. Every command module
must itself import without torch (heavy imports go inside the command functions).
"""
from __future__ import annotations

import importlib
import sys
from typing import Dict, List, Optional

import click

from edge_digr import __version__
from edge_digr.core.errors import UserError

# command name -> "module:attribute"
COMMANDS: Dict[str, str] = {
    "demo": "edge_digr.commands:demo",
    "train-teacher": "edge_digr.commands:train_teacher",
    "label": "edge_digr.commands:label",
    "distill": "edge_digr.commands:distill",
    "evaluate": "edge_digr.commands:evaluate",
    "export": "edge_digr.export.commands:export",
    "check": "edge_digr.export.commands:check",
    # commands of the other subsystems are registered here by their owners
    "profile": "edge_digr.runtime.deploy_commands:profile",
    "bundle": "edge_digr.runtime.deploy_commands:bundle",
    "attack": "edge_digr.attack_commands:attack",
    "run": "edge_digr.runtime.commands:run",
    "calibrate": "edge_digr.calibration.commands:calibrate",
    "build": "edge_digr.runtime.engine_commands:build",
    "selftest": "edge_digr.calibration.commands:selftest_command",
}

# Packages of the desktop install only: a command that reaches for one on the Jetson's torch-free install
# gets the install hint instead of an ImportError traceback.
DESKTOP_MODULES = ("torch", "stable_baselines3", "onnx", "gymnasium", "minigrid", "ale_py")
DESKTOP_HINT = "this command needs the desktop install: pip install 'edge-digr[train]'"


def _fail(message: str) -> None:
    # User and usage errors are one line, exit code 2, no traceback (the message says what to do).
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            _fail(str(exc))
        except click.UsageError as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            _fail(exc.format_message().replace("\n", " ") + hint)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in DESKTOP_MODULES:
                raise
            _fail(f"{DESKTOP_HINT} (missing {exc.name!r})")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-digr")
def main() -> None:
    """edge-digr: DIGR policies with fused logits + saliency, from training to the Jetson."""


if __name__ == "__main__":  # `python -m edge_digr.cli ...`, as torchrun and the study scripts start it
    main()
