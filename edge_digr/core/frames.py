"""Calibration frames: an .npz holding one batched array per graph input, named like the inputs.

It is the format `edge-digr run --save-feed` writes, and `labels.npz` from `edge-digr label` fits too
(it holds `obs` and, for tasks that have one, `mission`; its other keys are ignored). Arrays are float32,
batch first, raw pixel scale, exactly what the graph takes. Loaded with `allow_pickle=False`: a frames
file is data, never code.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np

from edge_digr.core.errors import UserError
from edge_digr.core.fileio import PathLike, write_bytes

# [{"name": str, "shape": [batch, ...] with -1 (or None) for a dynamic dimension}], as in Manifest.inputs
InputSpecs = Sequence[Mapping[str, Any]]


@dataclass
class Frames:
    """Batched graph inputs, frame i of every array belonging together."""

    arrays: Dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    @property
    def names(self) -> List[str]:
        return list(self.arrays)

    def take(self, index: Any) -> "Frames":
        return Frames({k: np.ascontiguousarray(v[index]) for k, v in self.arrays.items()})

    def split(self, holdout: float) -> Tuple["Frames", "Frames"]:
        """(calibration, held-out): the held-out frames are the contiguous tail.

        Frames come from rollouts, so neighbours are near-duplicates: a random split would put near-copies
        of the calibration frames in the held-out set and flatter the fidelity numbers.
        """
        if not 0.0 < holdout < 1.0:
            raise UserError(f"--holdout must be a fraction between 0 and 1 (exclusive), got {holdout}")
        n = len(self)
        n_held = int(round(n * holdout))
        if n_held < 1 or n_held >= n:
            raise UserError(f"{n} frame(s) cannot be split {1 - holdout:.0%}/{holdout:.0%} into calibration and "
                            "held-out frames with at least one frame each; record more frames")
        return self.take(slice(0, n - n_held)), self.take(slice(n - n_held, n))

    def batches(self, batch_size: int) -> Iterator[Dict[str, np.ndarray]]:
        """Consecutive batches of at most `batch_size` frames (the last one may be smaller)."""
        if batch_size < 1:
            raise UserError(f"the batch size must be at least 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield {k: v[start:start + batch_size] for k, v in self.arrays.items()}


def model_inputs(onnx_path: PathLike) -> List[Dict[str, Any]]:
    """The input specs of an ONNX graph: its edge-digr manifest's, else the graph's own (ONNX Runtime)."""
    from edge_digr.core.manifest import read_onnx_manifest

    manifest = read_onnx_manifest(onnx_path)
    if manifest is not None:
        return [dict(spec) for spec in manifest.inputs]
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return [{"name": i.name, "shape": [d if isinstance(d, int) and d > 0 else -1 for d in i.shape]}
            for i in session.get_inputs()]


def load_frames(path: PathLike, inputs: InputSpecs) -> Frames:
    """Read a frames .npz and check it against the graph inputs (names, per-frame shapes, finite values)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path} does not exist; record frames with `edge-digr run --save-feed` "
                        "or use the labels.npz written by `edge-digr label`")
    try:
        with np.load(p, allow_pickle=False) as data:
            names = [spec["name"] for spec in inputs]
            missing = [n for n in names if n not in data.files]
            if missing:
                raise UserError(f"{path} lacks the array(s) {', '.join(missing)} the model takes as input(s); "
                                f"it holds {', '.join(data.files) or 'nothing'}")
            raw = {n: data[n] for n in names}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path} is not a readable .npz of frames ({str(exc).splitlines()[0][:160]})") from None
    arrays: Dict[str, np.ndarray] = {}
    for spec in inputs:
        name, want = spec["name"], list(spec["shape"])[1:]
        arr = raw[name]
        if arr.dtype.kind not in "fiub":
            raise UserError(f"{path}: array {name!r} has dtype {arr.dtype}; numbers expected")
        per_frame = list(arr.shape[1:])
        if arr.ndim != len(want) + 1 or any(w not in (-1, None) and s != w for s, w in zip(per_frame, want)):
            raise UserError(f"{path}: array {name!r} has shape {tuple(arr.shape)}; the model takes "
                            f"(N, {', '.join('?' if w in (-1, None) else str(w) for w in want)}) (frames first)")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise UserError(f"{path}: array {name!r} holds NaN or infinite values")
        arrays[name] = arr
    counts = {n: len(a) for n, a in arrays.items()}
    if len(set(counts.values())) != 1:
        raise UserError(f"{path}: the input arrays hold different numbers of frames ({counts})")
    if next(iter(counts.values())) == 0:
        raise UserError(f"{path} holds no frames")
    return Frames(arrays)


def save_frames(path: PathLike, frames: Frames) -> None:
    """Write frames atomically in the format `load_frames` reads."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **frames.arrays)
    write_bytes(path, buffer.getvalue())
