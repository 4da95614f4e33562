"""`edge-digr run`: the policy with on-device saliency on a live or recorded feed. Torch-free."""
from __future__ import annotations

from typing import Optional

import click

from edge_digr.core.params import positive_float


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
@click.option("--serve", "serve", metavar="[HOST:]PORT", default=None,
              help="Serve a live view to browsers: frame, saliency overlay(s), action, latency at http://HOST:PORT/ "
                   "(also /stream.mjpg and /stats). HOST defaults to 127.0.0.1; 0.0.0.0 listens on every "
                   "network (with a warning); PORT 0 lets the system choose.")
@click.option("--serve-token", "serve_token", metavar="TOKEN", default=None, envvar="EDGE_DIGR_SERVE_TOKEN",
              help="Require ?token=TOKEN on every --serve route (characters A-Z a-z 0-9 . _ ~ -); also read from "
                   "$EDGE_DIGR_SERVE_TOKEN, which keeps it off the process list.")
@click.option("--serve-fps", "serve_fps", type=click.FloatRange(min=0, min_open=True), default=15.0,
              show_default=True,
              help="Most frames per second sent to browsers (a faster feed is shown at this rate; the loop never "
                   "waits); also the pace of a served replay.")
@click.option("--rate", "rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Pace the loop to at most this many frames per second (a simulator or replay otherwise runs "
                   "as fast as it can).")
def run(engine: str, feed: str, episodes: Optional[int], max_steps: Optional[int], deadline_ms: Optional[float],
        record: Optional[str], fps: float, show: bool, save_feed: Optional[str], seed: int, providers: tuple,
        cuda_graph: bool, print_steps: bool, json_out: Optional[str], serve: Optional[str],
        serve_token: Optional[str], serve_fps: float, rate: Optional[float]) -> None:
    """Run a policy with its fused saliency on a feed; prints a summary (steps, return, latency).

    With --serve, watch it from a browser: a replay (--feed replay:FILE) can be paused and stepped there.
    """
    from edge_digr.core.errors import UserError
    from edge_digr.core.fileio import check_writable
    from edge_digr.runtime.loop import RunOptions, run_session
    from edge_digr.runtime.serve import ServeOptions, check_token, exposure_warning, parse_address

    serve_opts = None
    if serve is not None:
        host, port = parse_address(serve)
        serve_opts = ServeOptions(host, port, check_token(serve_token) if serve_token is not None else None,
                                  serve_fps)
        warning = exposure_warning(serve_opts)
        if warning:
            click.echo(warning, err=True)
    elif serve_token is not None and click.get_current_context().get_parameter_source("serve_token") \
            != click.core.ParameterSource.ENVIRONMENT:  # a token left in the environment is no mistake
        raise UserError("--serve-token needs --serve [HOST:]PORT")

    if json_out:
        check_writable(json_out, inputs=[engine], option="--json")
    summary = run_session(RunOptions(
        engine=engine, feed=feed, episodes=episodes, max_steps=max_steps, deadline_ms=deadline_ms,
        record=record, fps=fps, show=show, save_feed=save_feed, seed=seed, providers=list(providers),
        cuda_graph=cuda_graph, print_steps=print_steps, serve=serve_opts, rate=rate))
    click.echo(summary.text())
    if json_out:
        from edge_digr.core.fileio import write_json

        write_json(json_out, summary.to_dict())
        click.echo(f"summary written to {json_out}")
