"""TensorRT 8.5 implicit INT8 calibration: the cache (header, versions, round trip), the fixed-size batches,
and the IInt8EntropyCalibrator2 itself where tensorrt and pycuda import."""
import importlib.util

import numpy as np
import pytest

from edge_digr.core.frames import Frames
from edge_digr.runtime.trt_backend import (CalibrationBatches, entropy_calibrator, major_minor,
                                         parse_cache_header, read_cache, write_cache)
from edge_digr.core.errors import UserError

HAS_TRT = all(importlib.util.find_spec(m) is not None for m in ("tensorrt", "pycuda"))

CACHE = b"TRT-8502-EntropyCalibration2\nobs: 3c010a14\n/trunk/net.0/Conv_output_0: 3d8f5c29\n"


def test_cache_roundtrip_and_header(tmp_path):
    path = tmp_path / "calib.cache"
    assert read_cache(path) is None  # no cache yet: TensorRT calibrates
    write_cache(path, CACHE)
    assert read_cache(path, "8.5.2.2") == CACHE
    header = parse_cache_header(CACHE)
    assert header.major_minor == (8, 5) and header.algorithm == "EntropyCalibration2"
    assert parse_cache_header(b"TRT-100300-EntropyCalibration2\n").major_minor == (10, 3)  # TensorRT 10 encoding
    assert major_minor("10.3.0.26") == (10, 3)


def test_cache_refusals(tmp_path):
    path = tmp_path / "calib.cache"
    with pytest.raises(UserError, match="not a TensorRT calibration cache"):
        write_cache(path, b"garbage")
    assert not path.exists()
    path.write_bytes(CACHE)
    with pytest.raises(UserError, match="TensorRT 8502 and this is TensorRT 10.3.0"):
        read_cache(path, "10.3.0")
    path.write_bytes(b"TRT-8502-MinMaxCalibration\nobs: 3c010a14\n")
    with pytest.raises(UserError, match="MinMaxCalibration"):
        read_cache(path, "8.5.2")


def test_calibration_batches_are_full_and_in_input_order():
    frames = Frames({"mission": np.arange(10 * 8, dtype=np.float64).reshape(10, 8),
                     "obs": np.arange(10 * 3, dtype=np.float32).reshape(10, 3, 1, 1)})
    batches = CalibrationBatches(frames, ["obs", "mission"], batch_size=4)
    got = list(batches)
    assert len(batches) == len(got) == 2  # the incomplete last batch (2 frames) is dropped
    assert list(got[0]) == ["obs", "mission"] and all(b["obs"].shape == (4, 3, 1, 1) for b in got)
    assert got[1]["mission"].dtype == np.float32 and got[1]["mission"].flags.c_contiguous
    np.testing.assert_array_equal(got[1]["obs"][:, 0, 0, 0], frames.arrays["obs"][4:8, 0, 0, 0])
    assert batches.nbytes("obs") == 4 * 3 * 4
    with pytest.raises(UserError, match="cannot fill one batch"):
        CalibrationBatches(frames, ["obs"], batch_size=11)
    with pytest.raises(UserError, match="lack the input"):
        CalibrationBatches(frames, ["obs", "extra"], batch_size=2)



@pytest.mark.skipif(HAS_TRT, reason="checks the install hint shown where tensorrt is missing")
def test_calibrator_without_tensorrt_gives_the_install_hint(tmp_path):
    with pytest.raises(UserError, match=r"pip install 'edge-digr\[trt\]'"):
        entropy_calibrator(tmp_path / "c.cache", 4, None)


@pytest.mark.skipif(not HAS_TRT, reason="tensorrt/pycuda are not installed (they run on the Jetson/GPU only)")
def test_entropy_calibrator_feeds_batches_and_round_trips_the_cache(tmp_path):
    import tensorrt as trt

    from edge_digr.runtime.trt_backend import primary_context

    with primary_context() as device:
        cuda = device.cuda
        frames = Frames({"obs": np.random.default_rng(0).random((9, 3, 8, 8)).astype(np.float32)})
        calib = entropy_calibrator(tmp_path / "c.cache", 4, CalibrationBatches(frames, ["obs"], 4))
        assert isinstance(calib, trt.IInt8EntropyCalibrator2) and calib.get_batch_size() == 4
        assert calib.read_calibration_cache() is None
        pointers = [calib.get_batch(["obs"]) for _ in range(3)]
        assert all(isinstance(p[0], int) for p in pointers[:2]) and pointers[2] is None  # 2 full batches
        back = np.empty((4, 3, 8, 8), np.float32)
        cuda.memcpy_dtoh(back, pointers[1][0])
        np.testing.assert_array_equal(back, frames.arrays["obs"][4:8])
        cache = b"TRT-%d-EntropyCalibration2\nobs: 3c010a14\n" % (major_minor(trt.__version__)[0] * 1000
                                                                   + major_minor(trt.__version__)[1] * 100)
        calib.write_calibration_cache(cache)
        assert calib.read_calibration_cache() == cache
