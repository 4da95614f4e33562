"""`edge-digr profile` and `edge-digr bundle pack|unpack`: deployment-side commands, torch-free at import."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import click

from edge_digr.core.options import option


@click.command()
@click.option("--engine", "engine", required=True, type=click.Path(dir_okay=False),
              help="Fused model: .onnx (ONNX Runtime) or a TensorRT plan (.plan/.engine/.trt).")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1), help="Frames per inference call.")
@click.option("--iterations", default=200, show_default=True, type=click.IntRange(min=1),
              help="Timed calls per variant.")
@click.option("--warmup", default=20, show_default=True, type=click.IntRange(min=0),
              help="Untimed calls before timing.")
@click.option("--rounds", default=10, show_default=True, type=click.IntRange(min=1),
              help="Interleave the variants over this many rounds (1: one block each, cleanest power windows).")
@click.option("--perturbation-frames", default=5, show_default=True, type=click.IntRange(min=0),
              help="Frames timed for the perturbation-saliency baseline (each is hundreds of forward passes).")
@click.option("--perturbation-batch", default=256, show_default=True, type=click.IntRange(min=1),
              help="Perturbed frames per forward call of the engine being profiled (keep within a TensorRT "
                   "engine's batch profile; a GPU gains from large calls, while the desktop's torch maps use 64).")
@click.option("--forward", type=click.Path(dir_okay=False),
              help="Forward-only model; default for .onnx: derived from the fused graph. Needed for a plan.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads of ONNX Runtime's intra-op pool.")
@click.option("--layer-iterations", default=20, show_default=True, type=click.IntRange(min=0),
              help="Calls in the per-layer profiling pass (0 skips it).")
@click.option("--power-rail", help="tegrastats rail for power and energy (default: VDD_IN or POM_5V_IN).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the full report here.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), help="Write the latency CDF here (.png).")
def profile(engine: str, batch: int, iterations: int, warmup: int, rounds: int, perturbation_frames: int,
            perturbation_batch: int, forward: Optional[str], threads: Optional[int],
            layer_iterations: int, power_rail: Optional[str], json_out: Optional[str],
            plot_out: Optional[str]) -> None:
    """Latency of the fused pass next to the forward-only graph and perturbation saliency.

    The PyTorch eager baseline runs on the desktop: python benchmarks/profile_torch.py --engine FILE."""
    from edge_digr.core.perturbation import PerturbationConfig
    from edge_digr.core.fileio import check_writable, write_json
    from edge_digr.runtime.profiler import ProfileConfig, check_plot_path, plot_cdf, profile as run_profile, pyplot

    inputs = [engine, forward]
    if json_out:
        check_writable(json_out, inputs=inputs, option="--json")
    if plot_out:
        check_writable(plot_out, inputs=inputs, option="--plot")
        pyplot()  # fail before the run, not after it, when matplotlib is missing
        check_plot_path(plot_out)
    cfg = ProfileConfig(batch=batch, iterations=iterations, warmup=warmup, rounds=rounds,
                        perturbation_iterations=perturbation_frames,
                        perturbation=PerturbationConfig(batch_size=perturbation_batch), threads=threads,
                        layer_iterations=layer_iterations, power_rail=power_rail)
    report = run_profile(engine, cfg, forward=forward)
    click.echo(summary(report))
    if json_out:
        write_json(json_out, report)
        click.echo(f"report: {json_out}")
    if plot_out:
        plot_cdf(report, plot_out)
        click.echo(f"latency CDF: {plot_out}")


def summary(report: dict) -> str:
    lines = [f"{report['task']} · {report['backend']} {report.get('providers') or ''} · batch {report['batch']}",
             f"{'variant':<13}{'frames':>7}{'p50 ms':>11}{'p90 ms':>11}{'p99 ms':>11}{'max ms':>11}"
             f"{'ms/frame':>11}{'frames/s':>11}"]
    for name, v in report["variants"].items():
        lines.append(f"{name:<13}{v['frames']:>7}{v['p50_ms']:>11.3f}{v['p90_ms']:>11.3f}{v['p99_ms']:>11.3f}"
                     f"{v['max_ms']:>11.3f}{v['per_frame_ms']:>11.4f}{v['throughput_fps']:>11.1f}")
    lines += [f"{k}: {r:.2f}x" for k, r in report["ratios"].items()]
    lines += [f"{k} (best case, min): {r:.2f}x" for k, r in report["ratios_min"].items()]
    for name, ops in report.get("layer_ops", {}).items():
        lines.append(f"{name} time by op: " + ", ".join(f"{o['op']} {o['share']:.0%}" for o in ops[:6]))
    lines += [f"skipped {k}: {why}" for k, why in report["skipped"].items()]
    for name, p in report["power"].items():
        if isinstance(p, dict) and p.get("mean_w") is not None:
            lines.append(f"power {name}: {p['mean_w']:.2f} W on {p['rail']}, "
                         f"{1e3 * p['energy_per_inference_j']:.3f} mJ/frame")
    dev = report["device"]
    if dev.get("jetson"):
        lines.append(f"device: {dev.get('model')} · power mode {dev.get('power_mode')} · "
                     f"clocks locked: {dev.get('clocks_locked')}")
    return "\n".join(lines)


@click.group()
def bundle() -> None:
    """Pack a model for the device, or unpack one on it."""


@bundle.command("pack")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Archive to write (.tar.gz).")
@click.option("--calibration", "calibration", multiple=True, type=click.Path(),
              help="Calibration frames (.npz), INT8 cache or a folder of them; repeatable.")
@click.option("--forward", type=click.Path(dir_okay=False),
              help="Forward-only ONNX to ship (default: derived from MODEL).")
@click.option("--no-forward", is_flag=True, help="Ship no forward-only graph.")
def bundle_pack(model: str, out: str, calibration: Tuple[str, ...], forward: Optional[str],
                no_forward: bool) -> None:
    """Pack MODEL (fused ONNX), its manifest, forward-only graph and calibration data into one archive."""
    from edge_digr.core.fileio import check_writable
    from edge_digr.runtime.bundle import describe, pack

    check_writable(out, inputs=[model, forward, *calibration])
    members = pack(model, out, calibration, forward=forward, derive_forward=not no_forward)
    click.echo(f"{out}:\n{describe(members)}")


@bundle.command("unpack")
@click.argument("archive", type=click.Path(dir_okay=False))
@option("--out-dir", "target", old=["--to"], required=True, type=click.Path(file_okay=False),
        help="Folder to unpack into.")
def bundle_unpack(archive: str, target: str) -> None:
    """Unpack ARCHIVE into a folder, refusing members that would land outside it."""
    from edge_digr.core.fileio import check_writable
    from edge_digr.runtime.bundle import unpack

    check_writable(target, inputs=[archive], option="--out-dir", folder=True)
    for path in unpack(archive, target):
        click.echo(str(Path(path)))
