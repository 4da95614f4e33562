"""Options renamed under the one CLI vocabulary (docs/cli.md): the one way a command renames an option.

The old name keeps working, hidden from `--help`, and warns once per process; giving both names is a usage
error. Torch-free (click only).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Sequence, Set

import click

# Old spellings already warned about in this process: a script that loops over a command sees one warning.
_WARNED: Set[str] = set()


def _warn_once(old: str, new: str) -> None:
    if old not in _WARNED:
        _WARNED.add(old)
        click.echo(f"warning: {old} is now {new}; the old name still works for now", err=True)


class _RenamedOption(click.Option):
    """An option that also takes the values given under its old, hidden names (`old`: dest -> flag)."""

    def __init__(self, *args: Any, old: Dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.old = old

    def handle_parse_result(self, ctx: click.Context, opts: Mapping[str, Any], args: List[str]) -> Any:
        # The parser has read the whole command line into `opts` before any option is processed, so the old
        # spelling is seen here whatever its position, and a required option is satisfied by it.
        given = [(flag, opts[dest]) for dest, flag in self.old.items() if opts.get(dest) is not None]
        if given:
            new_flag = max(self.opts, key=len)
            flag, value = given[0]
            if opts.get(self.name) is not None or len(given) > 1:
                raise click.UsageError(f"{flag} is the old name of {new_flag}; pass {new_flag} only", ctx)
            _warn_once(flag, new_flag)
            opts = {**opts, self.name: value}
        return super().handle_parse_result(ctx, opts, args)


def option(*decls: str, old: Sequence[str] = (), **kwargs: Any) -> Callable:
    """`click.option`, plus hidden old names (`old`) that still work and warn once: the one way a command
    renames an option (docs/cli.md lists the vocabulary)."""
    if not old:
        return click.option(*decls, **kwargs)
    dests = {f"renamed_{flag.lstrip('-').replace('-', '_')}": flag for flag in old}

    def decorate(f: Callable) -> Callable:
        f = click.option(*decls, cls=_RenamedOption, old=dests, **kwargs)(f)
        for dest, flag in dests.items():
            f = click.option(flag, dest, hidden=True, expose_value=False, type=kwargs.get("type"),
                             is_flag=kwargs.get("is_flag", False))(f)
        return f

    return decorate
