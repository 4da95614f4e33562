"""TensorRT implicit INT8 calibration (TensorRT 8.5 / JetPack 5): an IInt8EntropyCalibrator2 over the
calibration frames, with its cache written after calibration and re-read on later builds.

TensorRT 10 deprecates calibrators in favour of explicit quantization (the QDQ ONNX from
`edge-digr calibrate`), but still runs them. tensorrt and pycuda are imported only when a calibrator is
made; the batching and cache logic here is plain Python so it is tested without them.

The cache is TensorRT's text format: a header line `TRT-<version>-<algorithm>` (e.g.
`TRT-8502-EntropyCalibration2`), then one `tensor: hex scale` line per tensor.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from edge_digr.calibration.frames import Frames
from edge_digr.errors import UserError, missing_dependency
from edge_digr.fileio import PathLike, write_bytes

ALGORITHM = "EntropyCalibration2"
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")


@dataclass(frozen=True)
class CacheHeader:
    version: int  # TensorRT's NV_TENSORRT_VERSION: 8502 for 8.5.2 (8.x), 100300 for 10.3.0 (10.x)
    algorithm: str

    @property
    def major_minor(self) -> Tuple[int, int]:
        # TensorRT 10 widened the encoding from major*1000 + minor*100 + patch to major*10000 + ...
        if self.version >= 100000:
            return self.version // 10000, self.version // 100 % 100
        return self.version // 1000, self.version // 100 % 10


def parse_cache_header(data: bytes) -> CacheHeader:
    """The header of a TensorRT calibration cache; UserError if the bytes are not one."""
    first = data.split(b"\n", 1)[0].decode("ascii", errors="replace").strip()
    match = _HEADER.match(first)
    if not match:
        raise UserError(f"not a TensorRT calibration cache (first line {first[:60]!r}, expected "
                        f"'TRT-<version>-{ALGORITHM}'); delete it and calibrate again")
    return CacheHeader(int(match.group(1)), match.group(2))


def major_minor(trt_version: str) -> Tuple[int, int]:
    """(major, minor) of a TensorRT version string such as '8.5.2.2'."""
    parts = [int(p) for p in re.findall(r"\d+", trt_version)[:2]]
    if len(parts) < 2:
        raise UserError(f"cannot read the TensorRT version {trt_version!r}")
    return parts[0], parts[1]


def read_cache(path: PathLike, trt_version: Optional[str] = None) -> Optional[bytes]:
    """A calibration cache's bytes, or None if there is none yet (TensorRT then calibrates).

    A cache from another algorithm or another TensorRT major.minor is refused: TensorRT would ignore it
    silently and recalibrate, or worse, apply scales computed for a different build."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return None
    data = p.read_bytes()
    header = parse_cache_header(data)
    if header.algorithm != ALGORITHM:
        raise UserError(f"{path} was made by {header.algorithm}, not {ALGORITHM}; delete it and calibrate again")
    if trt_version is not None and header.major_minor != major_minor(trt_version):
        raise UserError(f"{path} was written by TensorRT {header.version} and this is TensorRT {trt_version}; "
                        "delete it and calibrate again on this device")
    return data


def write_cache(path: PathLike, data: bytes) -> None:
    parse_cache_header(data)  # never store something the next build cannot read back
    write_bytes(path, data)


class CalibrationBatches:
    """Full batches of `batch_size` frames in graph-input order, as contiguous float32 arrays.

    TensorRT calibrates on the calibration profile's fixed shape, so an incomplete last batch is dropped."""

    def __init__(self, frames: Frames, input_names: Sequence[str], batch_size: int):
        if batch_size < 1:
            raise UserError(f"the calibration batch size must be at least 1, got {batch_size}")
        missing = [n for n in input_names if n not in frames.arrays]
        if missing:
            raise UserError(f"the calibration frames lack the input(s) {', '.join(missing)}")
        if len(frames) < batch_size:
            raise UserError(f"{len(frames)} calibration frame(s) cannot fill one batch of {batch_size}; "
                            "record more frames or lower the calibration batch size")
        self.frames = frames
        self.input_names = list(input_names)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.frames) // self.batch_size

    def nbytes(self, name: str) -> int:
        return int(self.frames.arrays[name][:self.batch_size].astype(np.float32).nbytes)

    def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield {n: np.ascontiguousarray(self.frames.arrays[n][sl], dtype=np.float32) for n in self.input_names}


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise missing_dependency("tensorrt", "trt", "building a TensorRT engine") from exc
    return tensorrt


def import_pycuda_driver():
    """pycuda's driver module; the caller owns the CUDA context (the builder pushes the primary one)."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise missing_dependency("pycuda", "trt", "TensorRT INT8 calibration") from exc
    return cuda


def entropy_calibrator(cache_path: PathLike, batch_size: int, batches: Optional[CalibrationBatches]) -> Any:
    """A `tensorrt.IInt8EntropyCalibrator2` that feeds `batches` from device memory and caches its scales
    in `cache_path`; with `batches=None` it only replays an existing cache.

    Needs a current CUDA context (the builder pushes the device's primary context)."""
    trt = import_tensorrt()
    cuda = import_pycuda_driver() if batches is not None else None

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        """TensorRT calls these from C++ and only logs what they raise, so each one keeps the first
        exception in `error` for the builder to raise after `build_serialized_network`."""

        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 trampolines need the explicit call
            self.error: Optional[BaseException] = None
            self._iter = iter(batches) if batches is not None else iter(())
            self._device = {n: cuda.mem_alloc(batches.nbytes(n)) for n in batches.input_names} if batches else {}

        def _guard(self, call, *args):
            try:
                return call(*args)
            except Exception as exc:  # noqa: BLE001 -- re-raised by the builder
                self.error = self.error or exc
                return None

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: List[str]) -> Optional[List[int]]:
            return self._guard(self._next_batch, names)

        def _next_batch(self, names: List[str]) -> Optional[List[int]]:
            batch = next(self._iter, None)
            if batch is None:
                return None  # tells TensorRT the calibration set is exhausted
            for name in names:
                cuda.memcpy_htod(self._device[name], batch[name])
            return [int(self._device[name]) for name in names]

        def read_calibration_cache(self) -> Optional[bytes]:
            return self._guard(read_cache, cache_path, trt.__version__)

        def write_calibration_cache(self, cache: Any) -> None:
            self._guard(lambda: write_cache(cache_path, bytes(cache)))

        def free(self) -> None:
            for buf in self._device.values():
                buf.free()
            self._device = {}

    return EntropyCalibrator()
