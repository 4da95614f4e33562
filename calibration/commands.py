"""`edge-digr calibrate` (INT8 QDQ model + fidelity report against fp32 on held-out frames) and
`edge-digr selftest` (an engine against ONNX Runtime on the same frames, with the same fidelity metrics).

Torch-free at import and at run time (onnx, onnxruntime and numpy; tensorrt for selftest of a plan).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click

from edge_digr.calibration.calibrate import KEEP_BACKWARD, CalibrateOptions, calibrate_onnx
from edge_digr.core.fileio import check_writable
from edge_digr.core.options import option
from edge_digr.core.params import FiniteFloat


@click.command("calibrate")
@click.argument("onnx_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Frames .npz (from `edge-digr run --save-feed`, or labels.npz from `edge-digr label`).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="INT8 QDQ ONNX to write (runs on ONNX Runtime; TensorRT builds it with --precision int8).")
@option("--json", "report", old=["--report"], type=click.Path(dir_okay=False, path_type=Path), default=None,
        help="Fidelity report JSON [default: OUT with .fidelity.json].")
@click.option("--holdout", type=FiniteFloat(min=0, max=1, min_open=True, max_open=True), default=0.2,
              show_default=True,
              help="Fraction of frames (the last ones) held out of calibration for the fidelity report.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="Activation range calibration.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True,
              help="Weight scales per output channel (falls back to per tensor where the quantizer fails).")
@click.option("--keep-backward", type=click.Choice(KEEP_BACKWARD), default="auto", show_default=True,
              help="Keep the gradient (saliency) path in fp32: always, never, or when saliency r < threshold.")
@click.option("--saliency-threshold", type=FiniteFloat(), default=0.95, show_default=True,
              help="Saliency Pearson r below which --keep-backward auto re-quantizes.")
@click.option("--fp32-layers", default="auto", show_default=True,
              help="Forward layers left in fp32: auto (when saliency r stays below threshold with the backward in "
                   "fp32, the most sensitive ones, found by trying each), none, or ONNX node names (comma-separated).")
@click.option("--max-fp32-layers", type=click.IntRange(min=1), default=2, show_default=True,
              help="At most this many forward layers kept in fp32 by --fp32-layers auto.")
@click.option("--max-frames", type=click.IntRange(min=2), default=None, help="Use only the first N frames of --data.")
@option("--batch", "batch_size", old=["--batch-size"], type=click.IntRange(min=1), default=16, show_default=True,
        help="Frames per calibration batch.")
@click.option("--latency-runs", type=click.IntRange(min=0), default=200, show_default=True,
              help="Batch-1 CPU latency runs per model (0 to skip).")
def calibrate(onnx_path: Path, data: Path, out: Path, report: Optional[Path], holdout: float, method: str,
              per_channel: bool, keep_backward: str, saliency_threshold: float, fp32_layers: str,
              max_fp32_layers: int, max_frames: Optional[int], batch_size: int, latency_runs: int) -> None:
    """INT8 QDQ quantization of a fused graph, with a fidelity report against fp32."""
    report = report or out.with_suffix(".fidelity.json")
    calibrate_onnx(CalibrateOptions(onnx=onnx_path, data=data, out=out, report=report, holdout=holdout,
                                    method=method, per_channel=per_channel, keep_backward=keep_backward,
                                    saliency_threshold=saliency_threshold, max_frames=max_frames,
                                    batch_size=batch_size, latency_runs=latency_runs, fp32_layers=fp32_layers,
                                    max_fp32_layers=max_fp32_layers))


@click.command("selftest")
@click.option("--engine", "engine_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Engine (.plan, with its .json) — or any model file the runtime opens.")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reference ONNX [default: the ONNX the engine was built from, next to it].")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Frames .npz to compare on [default: random frames of the model's shapes]; "
                   "use recorded frames for INT8 engines, whose scales fit real frames only.")
@click.option("--frames", "n_frames", type=click.IntRange(min=1), default=64, show_default=True,
              help="Number of frames.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random frames.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the result as JSON.")
def selftest_command(engine_path: Path, onnx_path: Optional[Path], data: Optional[Path], n_frames: int,
                     seed: int, json_path: Optional[Path]) -> None:
    """Run the engine and ONNX Runtime (CPU) on the same frames; check logits and saliency parity."""
    from edge_digr.calibration.fidelity import fidelity_table
    from edge_digr.calibration.selftest import selftest_files
    from edge_digr.core.fileio import write_json

    if json_path is not None:
        check_writable(json_path, inputs=[engine_path, onnx_path, data], option="--json")
    run = selftest_files(engine_path, onnx_path, data, n_frames, seed)
    result, onnx_path, frames = run.result, run.onnx, run.frames
    click.echo(f"{engine_path} ({result.precision}) vs {onnx_path} on ONNX Runtime CPU, {frames} frames")
    click.echo(fidelity_table({engine_path.name: result.fidelity}))
    for line in result.lines():
        click.echo(line)
    if json_path is not None:
        write_json(json_path, {"engine": str(engine_path), "onnx": str(onnx_path), **result.to_dict()})
    click.echo("selftest passed" if result.passed else "selftest FAILED")
    if not result.passed:
        sys.exit(1)
