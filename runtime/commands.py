"""`edge-digr run`: the policy with on-device saliency on a live or recorded feed. Torch-free."""
from __future__ import annotations

from typing import Optional

import click

from edge_digr.params import positive_float


@click.command("run")
@click.option("--engine", "engine", required=True, type=click.Path(dir_okay=False),
              help="Model: a fused .onnx (ONNX Runtime) or a TensorRT .plan with its .plan.json manifest.")
@click.option("--feed", default="env", show_default=True,
              help="env | replay:PATH (.npz or PNG folder) | carla://HOST:PORT[?timeout=SECONDS&retries=N]")
@click.option("--episodes", type=click.IntRange(min=1), default=None,
              help="Stop after N finished episodes (default: 1 for env/carla feeds, all frames for replay).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after N frames.")
@click.option("--deadline-ms", type=positive_float(), default=None,
              help="Count inference calls slower than this.")
@click.option("--record", "record", type=click.Path(dir_okay=False), default=None,
              help="Write frame | saliency overlay(s) side by side to out.mp4 or out.gif.")
@click.option("--fps", type=positive_float(), default=10.0, show_default=True,
              help="Frame rate of --record.")
@click.option("--show", is_flag=True, help="Show the overlay in a window (needs a display).")
@click.option("--save-feed", "save_feed", type=click.Path(dir_okay=False), default=None,
              help="Save the frames the policy saw to a .npz (one array per graph input); replay with "
                   "--feed replay:FILE.")
@click.option("--seed", type=int, default=0, show_default=True, help="Env seed of the first episode.")
@click.option("--provider", "providers", multiple=True,
              help="ONNX Runtime execution provider(s), in order (default: TensorRT, CUDA, CPU as available).")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: replay the enqueue as a captured CUDA graph.")
@click.option("--print-steps", is_flag=True, help="Print one line per step: action and saliency peak.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the summary as JSON.")
def run(engine: str, feed: str, episodes: Optional[int], max_steps: Optional[int], deadline_ms: Optional[float],
        record: Optional[str], fps: float, show: bool, save_feed: Optional[str], seed: int, providers: tuple,
        cuda_graph: bool, print_steps: bool, json_out: Optional[str]) -> None:
    """Run a policy with its fused saliency on a feed; prints a summary (steps, return, latency)."""
    from edge_digr.fileio import check_writable
    from edge_digr.runtime.loop import RunOptions, run_session

    if json_out:
        check_writable(json_out, inputs=[engine], option="--json")
    summary = run_session(RunOptions(
        engine=engine, feed=feed, episodes=episodes, max_steps=max_steps, deadline_ms=deadline_ms,
        record=record, fps=fps, show=show, save_feed=save_feed, seed=seed, providers=list(providers),
        cuda_graph=cuda_graph, print_steps=print_steps))
    click.echo(summary.text())
    if json_out:
        from edge_digr.fileio import write_json

        write_json(json_out, summary.to_dict())
        click.echo(f"summary written to {json_out}")
