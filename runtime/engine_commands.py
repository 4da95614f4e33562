"""`edge-digr build`: a TensorRT engine from the fused ONNX, on the Jetson (torch-free; tensorrt and pycuda
load inside the command, through `edge_digr.runtime.trt_backend`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from edge_digr.core.errors import UserError
from edge_digr.core.fileio import check_writable
from edge_digr.core.options import option


@click.command("build")
@click.argument("onnx_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="int8: pass the QDQ model from `edge-digr calibrate`, or an fp32 ONNX with --calib-cache.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Engine to write (.plan); its manifest goes to OUT.json.")
@option("--batch-range", "batch", old=["--batch"], default="1", show_default=True,
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
    from edge_digr.runtime.engine_build import BuildOptions, parse_batch
    from edge_digr.runtime.trt_backend import build_engine

    if not onnx_path.is_file():
        raise UserError(f"{onnx_path} does not exist; export it with `edge-digr export`")
    check_writable(out, inputs=[onnx_path, calib_data])
    opts = BuildOptions(onnx=onnx_path, out=out, precision=precision, batch=parse_batch(batch),
                        workspace_mb=workspace_mb, timing_cache=timing_cache, calib_cache=calib_cache,
                        calib_data=calib_data, calib_batch=calib_batch)
    side = build_engine(opts, log=click.echo)
    click.echo(f"wrote {out} ({side.precision}, TensorRT {side.extra['tensorrt']}, {side.extra['device']}) "
               f"and {out}.json")
