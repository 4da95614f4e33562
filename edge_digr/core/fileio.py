"""Output files: checked before the work, written atomically (a crash, Ctrl-C or a full disk never leaves a
half-written artifact under the final name, nor replaces the previous one)."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

from edge_digr.core.errors import UserError

PathLike = Union[str, "os.PathLike[str]"]

# Errors only a write raises (a full disk, a quota, a read-only file system): one line naming the file.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def _unwritable_reason(folder: Path) -> Optional[str]:
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    read_only = os.statvfs(folder).f_flag & os.ST_RDONLY
    return "it is on a read-only file system" if read_only else "permission denied"


def check_writable(path: PathLike, *, inputs: Iterable[Optional[PathLike]] = (), option: str = "--out",
                   folder: bool = False) -> Path:
    """Refuse, before any work, an output that could not be written or that is one of the command's inputs.

    `path` is a file (or, with `folder`, a folder the command writes into): not an input (same resolved
    file), not a folder (not a file), not read-only, and its nearest existing parent is a writable folder
    (missing parents are made at write time). Returns `path` as a Path.
    """
    target = Path(path)
    where = f"{option} {path}"
    for given in inputs:
        if given is not None and _same_file(target, Path(given)):
            raise UserError(f"{where} is also an input of this command; write the output to another file")
    if folder:
        if target.exists() and not target.is_dir():
            raise UserError(f"{where} is a file, not a folder")
    elif target.is_dir():
        raise UserError(f"{where} is a folder; give a file name")
    if target.is_dir():  # a folder output (`folder`): the files go into it
        reason = _unwritable_reason(target)
    elif target.exists() and not os.access(target, os.W_OK):
        reason = _unwritable_reason(target.parent) or "the file is read-only"
    else:
        reason = None
    if reason:
        raise UserError(f"{where} cannot be written: {reason}")
    parent = target.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{where} cannot be written: {parent} is a file, not a folder")
    reason = _unwritable_reason(parent)
    if reason:
        raise UserError(f"{where} cannot be written in {parent}: {reason}")
    return target


def _default_mode() -> int:
    # mkstemp creates 0600 files; artifacts should get the mode a plain open() would give them.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; move it over `path` only if the block succeeds."""
    final = Path(path)
    kept = "the previous file is unchanged" if final.exists() else "nothing was written"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp" + final.suffix, dir=final.parent)
        os.close(fd)
    except OSError as exc:
        raise UserError(f"cannot write {final}: {exc.strerror}") from None
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, final)
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise UserError(f"could not write {final}: {exc.strerror}; {kept}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
