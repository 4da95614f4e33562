"""`edge-digr profile` plus the PyTorch eager baseline, on the desktop: the very network the graph was exported
from, run as PyTorch eager forward + `torch.autograd.grad` (`edge_digr.saliency.gradient_saliency`).

The runtime never imports torch (it runs on the Jetson), so this baseline is passed in from here to
`edge_digr.runtime.profiler.profile(..., baselines=...)`; the report then carries a ``torch_eager`` variant
and the ``torch_eager_over_fused`` ratio.

    python benchmarks/profile_torch.py --engine student.onnx --json profile.json
    python benchmarks/profile_torch.py --engine student.onnx --checkpoint student.pt --threads 2
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Union

import click
import numpy as np

from edge_digr.core.errors import UserError
from edge_digr.core.fileio import PathLike, sha256_file
from edge_digr.core.manifest import Manifest
from edge_digr.runtime.profiler import Variant


def source_checkpoint(manifest: Manifest, engine: Path, checkpoint: Optional[PathLike]) -> Union[Path, str]:
    """The checkpoint the graph was exported from, or why there is none (a string).

    Default: the manifest's source, looked up next to the engine. A checkpoint whose sha256 differs from
    the manifest's `source_sha256` is another network, so it is refused rather than silently compared.
    """
    if checkpoint is None:
        if not manifest.source or not (engine.parent / manifest.source).is_file():
            return (f"no checkpoint: the manifest's source {manifest.source!r} is not next to {engine}; "
                    "pass --checkpoint")
        checkpoint = engine.parent / manifest.source
    if manifest.source_sha256 and sha256_file(checkpoint) != manifest.source_sha256:
        raise UserError(f"{checkpoint} is not the checkpoint {engine} was exported from (sha256 differs from "
                        "the manifest's source_sha256); pass the right --checkpoint")
    return Path(checkpoint)


def torch_variant(policy: Any, feed: Mapping[str, np.ndarray], iterations: int, warmup: int) -> Variant:
    """PyTorch eager forward + torch.autograd.grad, reduced to the deployed saliency, on `policy`."""
    import torch

    from edge_digr.saliency import gradient_saliency

    inputs = policy.inputs_from(dict(feed))
    return Variant("torch_eager", "PyTorch eager forward + torch.autograd.grad (edge_digr.saliency.gradient_saliency)",
                   lambda: gradient_saliency(policy, inputs), len(next(iter(feed.values()))), iterations, warmup,
                   {"torch_threads": torch.get_num_threads(), "torch_version": torch.__version__})


def torch_baseline(engine: PathLike, checkpoint: Optional[PathLike] = None, threads: Optional[int] = None,
                   iterations: int = 200, warmup: int = 20):
    """The `baselines` entry for `profile`: builds the ``torch_eager`` Variant on the profile's own feed."""

    def make(manifest: Manifest, feed: Mapping[str, np.ndarray]) -> Union[Variant, str]:
        path = source_checkpoint(manifest, Path(engine), checkpoint)
        if isinstance(path, str):
            return path
        import torch

        from edge_digr.checkpoint import load_policy

        if threads:
            torch.set_num_threads(threads)
        return torch_variant(load_policy(path), feed, iterations, warmup)

    return make


@click.command()
@click.option("--engine", required=True, type=click.Path(dir_okay=False), help="Fused model (.onnx or plan).")
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="Torch checkpoint of the network (default: the manifest's source, next to the engine).")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1), help="Frames per call.")
@click.option("--iterations", default=200, show_default=True, type=click.IntRange(min=1),
              help="Timed calls per variant.")
@click.option("--warmup", default=20, show_default=True, type=click.IntRange(min=0), help="Untimed calls first.")
@click.option("--rounds", default=10, show_default=True, type=click.IntRange(min=1), help="Interleaving rounds.")
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime intra-op and torch threads.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the full report here.")
def main(engine: str, checkpoint: Optional[str], batch: int, iterations: int, warmup: int, rounds: int,
         threads: Optional[int], json_out: Optional[str]) -> None:
    """Profile ENGINE with the PyTorch eager baseline next to the runtime's variants."""
    from edge_digr.core.fileio import write_json
    from edge_digr.runtime.deploy_commands import summary
    from edge_digr.runtime.profiler import ProfileConfig, profile

    cfg = ProfileConfig(batch=batch, iterations=iterations, warmup=warmup, rounds=rounds, threads=threads)
    report: Any = profile(engine, cfg, baselines={"torch_eager": torch_baseline(engine, checkpoint, threads,
                                                                                iterations, warmup)})
    click.echo(summary(report))
    if json_out:
        write_json(json_out, report)
        click.echo(f"report: {json_out}")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        raise SystemExit(f"error: {exc}")
