"""CLI commands `edge-digr export` and `edge-digr check` (torch is imported inside the commands)."""
from __future__ import annotations

import sys
from typing import Optional

import click

from edge_digr.core.fileio import check_writable
from edge_digr.core.options import option
from edge_digr.core.tasks import TASKS

MIN_OPSET = 9  # the exporter's graphs need opset 9 (at 7, torch.onnx has no arange)


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="fused ONNX graph to write")
@click.option("--opset", type=click.IntRange(min=MIN_OPSET), default=17, show_default=True,
              help=f"ONNX opset, at least {MIN_OPSET} (17: TensorRT 8.5 and 10 parse it)")
@click.option("--static-batch", is_flag=True, help="fix the batch size to 1 instead of a dynamic batch axis")
@click.option("--separate-backward-weights", is_flag=True,
              help="give the gradient path its own weight initializers (for per-channel INT8 quantization)")
@click.option("--task", type=click.Choice(sorted(TASKS)), default=None,
              help="task of an SB3 .zip checkpoint (an edge-digr .pt records it; a different --task is an error)")
def export(checkpoint: str, out: str, opset: int, static_batch: bool, separate_backward_weights: bool,
           task: Optional[str]) -> None:
    """Export CHECKPOINT (.pt, or SB3 .zip with --task) to one ONNX graph returning the head and the saliency."""
    from edge_digr.export.fused import export_checkpoint

    check_writable(out, inputs=[checkpoint])
    # Diagnostic graphs (the signed raw gradient, the forward pass alone) are the Python API's:
    # edge_digr.export.export_checkpoint(..., raw_grad=True) or (..., forward_only=True).
    manifest = export_checkpoint(checkpoint, out, opset=opset, dynamic_batch=not static_batch,
                                 separate_backward_weights=separate_backward_weights, task=task)
    outputs = ", ".join(manifest.output_names)
    click.echo(f"wrote {out} (task {manifest.task}; inputs {', '.join(manifest.input_names)}; outputs {outputs})")


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", type=click.Choice(["trt8.5", "trt10"]), default="trt8.5", show_default=True,
              help="TensorRT version whose ONNX parser support list is checked")
@option("--policy", "checkpoint", old=["--checkpoint"], type=click.Path(dir_okay=False), default=None,
        help="torch policy (.pt) for the gradient-parity run (default: the manifest's source next to MODEL)")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Frames .npz for the parity run (from `edge-digr run --save-feed`, or labels.npz); default: "
                   "random pixels, on which a confident policy's saliency is float rounding.")
def check(model: str, target: str, checkpoint: Optional[str], data: Optional[str]) -> None:
    """Verify MODEL: onnx.checker, TensorRT operator support, and gradient parity against torch autograd."""
    from edge_digr.export.check import check_onnx

    report = check_onnx(model, target=target, checkpoint=checkpoint, data=data)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        sys.exit(1)
