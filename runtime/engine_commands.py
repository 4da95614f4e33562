"""`edge-digr build` (TensorRT engine from the fused ONNX) and `edge-digr selftest` (engine vs ONNX Runtime).

Both run on the Jetson: torch-free; tensorrt and pycuda load inside the commands.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click

from edge_digr.errors import UserError
from edge_digr.fileio import check_writable


@click.command("build")
@click.argument("onnx_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="int8: pass the QDQ model from `edge-digr calibrate`, or an fp32 ONNX with --calib-cache.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Engine to write (.plan); its manifest goes to OUT.json.")
@click.option("--batch", default="1", show_default=True,
              help="Optimisation profile of the batch dimension: MIN,OPT,MAX (or one number).")
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Builder workspace limit in MiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Tactic timing cache: read if present, written after the build (speeds up rebuilds).")
@click.option("--calib-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Implicit INT8 (TensorRT 8.5): calibration cache, re-read if present, else written.")
@click.option("--calib-data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Implicit INT8: frames .npz to calibrate on when the cache does not exist yet.")
@click.option("--calib-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Implicit INT8 calibration batch.")
def build(onnx_path: Path, precision: str, out: Path, batch: str, workspace_mb: int,
          timing_cache: Optional[Path], calib_cache: Optional[Path], calib_data: Optional[Path],
          calib_batch: int) -> None:
    """Build a TensorRT engine from a fused ONNX on this device (plans are not portable)."""
    from edge_digr.runtime.engine_build import BuildOptions, build_engine, parse_batch

    if not onnx_path.is_file():
        raise UserError(f"{onnx_path} does not exist; export it with `edge-digr export`")
    check_writable(out, inputs=[onnx_path, calib_data])
    opts = BuildOptions(onnx=onnx_path, out=out, precision=precision, batch=parse_batch(batch),
                        workspace_mb=workspace_mb, timing_cache=timing_cache, calib_cache=calib_cache,
                        calib_data=calib_data, calib_batch=calib_batch)
    side = build_engine(opts, log=click.echo)
    click.echo(f"wrote {out} ({side.precision}, TensorRT {side.extra['tensorrt']}, {side.extra['device']}) "
               f"and {out}.json")


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
    from edge_digr.calibration.frames import Frames, load_frames
    from edge_digr.fileio import write_json
    from edge_digr.runtime.profiler import random_feed
    from edge_digr.runtime.runners import OnnxRuntimeRunner, open_runner
    from edge_digr.runtime.selftest import engine_batch, selftest

    if json_path is not None:
        check_writable(json_path, inputs=[engine_path, onnx_path, data], option="--json")
    engine = open_runner(engine_path)
    if onnx_path is None:
        if not engine.manifest.source.endswith(".onnx"):
            raise UserError(f"{engine_path}'s manifest does not name the ONNX it was built from; "
                            "pass --onnx MODEL.onnx")
        onnx_path = engine_path.parent / engine.manifest.source
    reference = OnnxRuntimeRunner(onnx_path, providers=["CPUExecutionProvider"])
    if data is not None:
        frames = load_frames(data, reference.manifest.inputs).take(slice(0, n_frames))
    else:
        frames = Frames(random_feed(reference.manifest, n_frames, seed))
    with engine, reference:
        result = selftest(engine, reference, frames, batch_size=engine_batch(engine.manifest))
    click.echo(f"{engine_path} ({result.precision}) vs {onnx_path} on ONNX Runtime CPU, {len(frames)} frames")
    click.echo(fidelity_table({engine_path.name: result.fidelity}))
    for line in result.lines():
        click.echo(line)
    if json_path is not None:
        write_json(json_path, {"engine": str(engine_path), "onnx": str(onnx_path), **result.to_dict()})
    click.echo("selftest passed" if result.passed else "selftest FAILED")
    if not result.passed:
        sys.exit(1)
