"""The calibration package and the engine build/selftest modules import, and calibrate runs, without torch
(the Jetson has none)."""
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("onnx")


def _run(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_modules_import_with_torch_absent():
    res = _run("""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import edge_digr.calibration, edge_digr.calibration.quantize, edge_digr.calibration.commands
        import edge_digr.runtime.trt_backend, edge_digr.runtime.engine_build
        import edge_digr.calibration.selftest, edge_digr.runtime.engine_commands
        from edge_digr.cli import main
        for name in ("calibrate", "build", "selftest"):
            assert main.get_command(None, name) is not None
        print("ok")
    """)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_calibrate_runs_with_torch_absent(tmp_path):
    res = _run(f"""
        import sys
        sys.modules["torch"] = None
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
        from test_calibration_quantize import toy_fused, toy_frames
        from edge_digr.calibration.commands import CalibrateOptions, calibrate_onnx
        from edge_digr.core.frames import save_frames
        from pathlib import Path
        d = Path({str(tmp_path)!r})
        toy_fused(d / "toy.onnx"); save_frames(d / "f.npz", toy_frames(60))
        report = calibrate_onnx(CalibrateOptions(onnx=d / "toy.onnx", data=d / "f.npz", out=d / "q.onnx",
                                                 report=d / "r.json", keep_backward="always", latency_runs=2),
                                log=lambda *a: None)
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        print(report["final"]["label"])
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "int8 (backward fp32)"
