"""CLI commands `edge-digr export` and `edge-digr check` (torch is imported inside the commands)."""
from __future__ import annotations

import sys
from typing import Optional

import click

from edge_digr.fileio import check_writable

MIN_OPSET = 9  # the exporter's graphs need opset 9 (at 7, torch.onnx has no arange)


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="fused ONNX graph to write")
@click.option("--opset", type=click.IntRange(min=MIN_OPSET), default=17, show_default=True,
              help=f"ONNX opset, at least {MIN_OPSET} (17: TensorRT 8.5 and 10 parse it)")
@click.option("--static-batch", is_flag=True, help="fix the batch size to 1 instead of a dynamic batch axis")
@click.option("--raw-grad", is_flag=True, help="also output the signed input gradient `input_grad`")
@click.option("--separate-backward-weights", is_flag=True,
              help="give the gradient path its own weight initializers (for per-channel INT8 quantization)")
@click.option("--forward-only", is_flag=True, help="no saliency: the forward graph (a profiling baseline)")
@click.option("--task", default=None, help="task of an SB3 .zip checkpoint (an edge-digr .pt records it)")
def export(checkpoint: str, out: str, opset: int, static_batch: bool, raw_grad: bool,
           separate_backward_weights: bool, forward_only: bool, task: Optional[str]) -> None:
    """Export CHECKPOINT (.pt, or SB3 .zip with --task) to one ONNX graph returning the head and the saliency."""
    from edge_digr.export.fused import export_checkpoint

    check_writable(out, inputs=[checkpoint])
    manifest = export_checkpoint(checkpoint, out, opset=opset, dynamic_batch=not static_batch, raw_grad=raw_grad,
                                 separate_backward_weights=separate_backward_weights, forward_only=forward_only,
                                 task=task)
    outputs = ", ".join(manifest.output_names)
    click.echo(f"wrote {out} (task {manifest.task}; inputs {', '.join(manifest.input_names)}; outputs {outputs})")


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", type=click.Choice(["trt8.5", "trt10"]), default="trt8.5", show_default=True,
              help="TensorRT version whose ONNX parser support list is checked")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="source checkpoint for the parity run (default: the manifest's source next to MODEL)")
def check(model: str, target: str, checkpoint: Optional[str]) -> None:
    """Verify MODEL: onnx.checker, TensorRT operator support, and gradient parity against torch autograd."""
    from edge_digr.export.check import check_onnx

    report = check_onnx(model, target=target, checkpoint=checkpoint)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        sys.exit(1)
