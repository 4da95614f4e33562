"""User-facing errors: the CLI prints their message on one line and exits non-zero, without a traceback."""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: say what is wrong and what to do."""


def missing_dependency(module: str, extra: str, what: str) -> UserError:
    """Error for an optional dependency that is not installed, with the install hint."""
    return UserError(f"{what} needs the '{module}' package, which is not installed; "
                     f"install it with: pip install 'edge-digr[{extra}]'")
