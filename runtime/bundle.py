"""`edge-digr bundle`: one archive with everything the device needs to build and run a policy.

Layout of the archive (a gzip'd tar)::

    bundle.json                      index: format, task, and every member's role, size and sha256
    manifest.json                    the model's edge-digr manifest (also inside the ONNX metadata)
    model/<name>.onnx                the fused logits+saliency graph
    model/<name>.forward.onnx        its forward-only subgraph, for `edge-digr profile` baselines
    calibration/<files>              calibration frames (.npz) and/or TensorRT INT8 calibration caches

Unpacking is for files received over the network, so it trusts nothing: before writing anything it
refuses the whole archive if any member is not a regular file or directory (symlinks, hard links, devices,
FIFOs), has an absolute name or a ``..`` component, would resolve outside the target folder, is missing
from the index, is listed twice, or holds another size than its index announces; files are extracted into
a staging folder, checked against their size and sha256, and moved into place only if every one passed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from edge_digr.core.errors import UserError
from edge_digr.core.fileio import PathLike, atomic_path, sha256_file
from edge_digr.core.manifest import read_onnx_manifest

FORMAT = "edge-digr/bundle@1"
INDEX = "bundle.json"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Member:
    name: str  # POSIX path inside the archive
    role: str  # "model" | "forward" | "calibration" | "manifest"
    size: int
    sha256: str


def _calibration_files(paths: Sequence[PathLike]) -> List[Tuple[Path, str]]:
    """(file, name inside calibration/) for files and for the regular files under folders (no symlinks)."""
    found: List[Tuple[Path, str]] = []
    for given in map(Path, paths):
        if given.is_symlink():
            raise UserError(f"{given} is a symbolic link; pass the file it points to")
        if given.is_file():
            found.append((given, given.name))
        elif given.is_dir():
            for root, dirs, files in os.walk(given):  # os.walk does not follow directory links by default
                for f in sorted(files):
                    p = Path(root, f)
                    if p.is_symlink():
                        raise UserError(f"{p} is a symbolic link; bundles hold regular files only")
                    found.append((p, p.relative_to(given.parent).as_posix()))
                dirs.sort()
        else:
            raise UserError(f"calibration path {given} does not exist")
    names = [n for _, n in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"two calibration files would share the name {dupes[0]!r} in the bundle; rename one")
    return found


def pack(model: PathLike, out: PathLike, calibration: Sequence[PathLike] = (),
         forward: Optional[PathLike] = None, derive_forward: bool = True) -> List[Member]:
    """Write the bundle for a fused ONNX model; returns the members listed in its index."""
    model = Path(model)
    if model.suffix.lower() != ".onnx" or not model.is_file():
        raise UserError(f"{model} is not an ONNX file; bundle the fused graph from `edge-digr export`")
    manifest = read_onnx_manifest(model)
    if manifest is None:
        raise UserError(f"{model} has no edge-digr manifest in its metadata; export it with `edge-digr export`")
    with tempfile.TemporaryDirectory() as tmp:
        if forward is None and derive_forward:
            from edge_digr.runtime.profiler import derive_forward_graph

            forward = derive_forward_graph(model, Path(tmp) / f"{model.stem}.forward.onnx")
        manifest_file = Path(tmp) / MANIFEST
        manifest_file.write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n")
        files: List[Tuple[Path, str, str]] = [(manifest_file, MANIFEST, "manifest"),
                                              (model, f"model/{model.name}", "model")]
        if forward is not None:
            files.append((Path(forward), f"model/{model.stem}.forward.onnx", "forward"))
        files += [(p, f"calibration/{name}", "calibration") for p, name in _calibration_files(calibration)]
        members = [Member(name, role, p.stat().st_size, sha256_file(p)) for p, name, role in files]
        index = {"format": FORMAT, "task": manifest.task, "model": f"model/{model.name}",
                 "members": [asdict(m) for m in members]}
        index_file = Path(tmp) / INDEX
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        with atomic_path(out) as tmp_out, tarfile.open(tmp_out, "w:gz") as tar:
            for path, name in [(index_file, INDEX)] + [(p, n) for p, n, _ in files]:
                info = tar.gettarinfo(str(path), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    return members


def _safe_target(target: Path, name: str) -> Path:
    """Where member `name` lands under `target`; UserError if that is anywhere else."""
    pure = PurePosixPath(name)
    if not name or name.startswith(("/", "\\")) or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise UserError(f"refusing bundle member {name!r}: absolute or non-POSIX path")
    if any(part == ".." for part in pure.parts):
        raise UserError(f"refusing bundle member {name!r}: '..' would leave the target folder")
    dest = (target / pure).resolve()
    if dest != target and target not in dest.parents:
        raise UserError(f"refusing bundle member {name!r}: it resolves outside {target}")
    return dest


def check_members(tar: tarfile.TarFile, target: Path) -> Dict[str, Path]:
    """Every regular member's destination, after refusing any unsafe member (see the module docstring)."""
    dests: Dict[str, Path] = {}
    for info in tar.getmembers():
        if info.issym() or info.islnk():
            raise UserError(f"refusing bundle member {info.name!r}: links are not allowed in a bundle")
        if not (info.isfile() or info.isdir()):
            raise UserError(f"refusing bundle member {info.name!r}: only regular files are allowed")
        dest = _safe_target(target, info.name)
        if info.isfile():
            if info.name in dests:
                raise UserError(f"refusing bundle: member {info.name!r} appears twice")
            dests[info.name] = dest
    return dests


MAX_INDEX_BYTES = 1 << 20  # bundle.json lists a few members: anything larger is not one


def read_index(tar: tarfile.TarFile) -> Dict[str, Member]:
    try:
        info = tar.getmember(INDEX)
        raw = tar.extractfile(info) if info.size <= MAX_INDEX_BYTES else None
        index = json.loads(raw.read()) if raw else None
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError):
        index = None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise UserError(f"not an edge-digr bundle ({INDEX} with format {FORMAT!r} missing); "
                        "make one with `edge-digr bundle pack`")
    entries = index.get("members")
    fields = {"name": str, "role": str, "size": int, "sha256": str}
    if not isinstance(entries, list) or not all(
            isinstance(m, dict) and set(m) == set(fields) and all(isinstance(m[k], t) for k, t in fields.items())
            and m["size"] >= 0 for m in entries):
        raise UserError(f"refusing bundle: its {INDEX} does not list members with name, role, size and sha256")
    members = [Member(**m) for m in entries]
    return {m.name: m for m in members}


def unpack(archive: PathLike, target: PathLike) -> List[Path]:
    """Extract a bundle into `target` (created if needed); returns the written files, index first.

    All or nothing: every member's size is held to its index before anything is written; the members are
    then extracted into a staging folder inside `target`, checked against their sha256, and moved into place
    only once every one has passed, so that a refused bundle leaves `target` as it was."""
    target_dir = Path(target)
    target_dir.mkdir(parents=True, exist_ok=True)
    target_dir = target_dir.resolve()
    try:
        tar = tarfile.open(archive, "r:*")
    except (OSError, tarfile.TarError) as exc:
        raise UserError(f"{archive} is not a readable bundle archive ({exc})") from None
    with tar:
        dests = check_members(tar, target_dir)
        index = read_index(tar)
        unlisted = sorted(set(dests) - set(index) - {INDEX})
        if unlisted:
            raise UserError(f"refusing bundle: member {unlisted[0]!r} is not in its index")
        absent = sorted(set(index) - set(dests))
        if absent:
            raise UserError(f"bundle is incomplete: {absent[0]!r} is listed in its index but missing")
        for name, member in index.items():
            if tar.getmember(name).size != member.size:
                raise UserError(f"refusing bundle: member {name!r} holds {tar.getmember(name).size} bytes, its "
                                f"index announces {member.size}; copy the bundle again")
        staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=target_dir))
        try:
            for name in [INDEX] + list(index):
                _extract_checked(tar, name, index.get(name), staging / name)
            for name in [INDEX] + list(index):
                dests[name].parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / name, dests[name])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return [dests[name] for name in [INDEX] + list(index)]


def _extract_checked(tar: tarfile.TarFile, name: str, member: Optional[Member], out_path: Path) -> None:
    """Copy member `name` (its size already held to the index) to `out_path`; refuse it if its sha256 differs."""
    src = tar.extractfile(name)
    assert src is not None  # regular file, checked above
    digest = hashlib.sha256()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "wb") as out:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
    if member is not None and digest.hexdigest() != member.sha256:
        raise UserError(f"bundle member {name!r} is corrupt (sha256 mismatch); copy the bundle again")


def describe(members: Iterable[Member]) -> str:
    return "\n".join(f"  {m.role:<11} {m.name}  ({m.size / 1e6:.2f} MB)" for m in members)
