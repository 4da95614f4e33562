"""Desktop commands: train-teacher, label, distill, evaluate, demo. Heavy imports stay inside the commands."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import click

from edge_digr.core.errors import UserError
from edge_digr.core.fileio import check_writable
from edge_digr.core.options import option
from edge_digr.core.params import FiniteFloat, device_option, positive_float, ray_option
from edge_digr.core.tasks import TASKS

if TYPE_CHECKING:  # annotations only: the commands import torch inside, so that --help stays torch-free
    import torch

DEFAULT_TASK = "minigrid-fetch"
task_option = click.option("--task", "task_name", type=click.Choice(sorted(TASKS)), default=None,
                           help="Task from the registry (default: the one the policy file records; "
                                f"{DEFAULT_TASK} where there is none).")
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")


def _teacher(path: str, task_name: str, device: Optional[torch.device] = None):
    from edge_digr.checkpoint import load_policy

    return load_policy(path, task=task_name).to(device or "cpu")


def resumed_task(out: Path) -> Optional[str]:
    """The task of the run being resumed at `out`: from PPO's progress record or the DAgger state."""
    from edge_digr.imitation import saved_task
    from edge_digr.teacher import read_progress

    progress = out.with_suffix(".progress.json")
    return read_progress(progress)["task"] if progress.exists() else saved_task(out)


@click.command("train-teacher")
@task_option
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="teacher.pt to write.")
@click.option("--method", type=click.Choice(["ppo", "expert"]), default=None,
              help="ppo: Stable-Baselines3 PPO; expert: DAgger imitation of the task's privileged controller "
                   "(default: the task's, see the README's task table).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Environment steps: PPO's, or all DAgger rounds' together (default: the task's budget).")
@click.option("--rounds", type=click.IntRange(min=1), default=None,
              help="DAgger rounds, --method expert only (default: the task's).")
@click.option("--updates-per-round", type=click.IntRange(min=1), default=None,
              help="Gradient steps after each DAgger round, --method expert only (default: the task's).")
@click.option("--n-envs", type=click.IntRange(min=1), default=None,
              help="Vectorised environments, --method ppo only (default: the task's).")
@click.option("--subprocess", is_flag=True, help="Run PPO's environments in subprocesses (SubprocVecEnv).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=50_000, show_default=True,
              help="PPO steps between checkpoints (DAgger checkpoints after every round).")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint next to --out.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch threads for the network updates (more help the Atari-size nets, not minigrid's).")
@device_option
@seed_option
@quiet_option
def train_teacher(task_name: str, out: str, method: Optional[str], steps: Optional[int], rounds: Optional[int],
                  updates_per_round: Optional[int], n_envs: Optional[int], subprocess: bool, checkpoint_every: int, resume: bool, threads: int,
                  device: str, seed: int, quiet: bool) -> None:
    """Train a teacher, by PPO or by DAgger imitation of a privileged expert, and write it as a checkpoint."""
    from edge_digr.core.tasks import get_task
    from edge_digr.devices import resolve_device

    check_writable(out)
    torch_device = resolve_device(device)
    if task_name is None:  # a resumed run is of the task its progress record names
        task_name = (resumed_task(Path(out)) if resume else None) or DEFAULT_TASK
    task = get_task(task_name)
    method = method or task.train.teacher_method
    if method == "expert":
        from edge_digr.experts import make_expert
        from edge_digr.imitation import ImitationConfig, ImitationRun, train_imitation

        expert = make_expert(task.name)
        config = ImitationConfig.for_task(task, steps, seed, rounds=rounds, updates_per_round=updates_per_round)
        train_imitation(task, expert, ImitationRun(Path(out), config, threads, progress=not quiet, device=torch_device),
                        resume=resume)
        click.echo(f"wrote {out} ({config.rounds} DAgger rounds, {config.rounds * config.steps_per_round} steps)")
        return
    if rounds is not None or updates_per_round is not None:
        raise click.UsageError("--rounds and --updates-per-round apply to --method expert only")
    from edge_digr.teacher import TeacherRun, train_teacher as train

    run = TeacherRun(Path(out), steps or task.train.teacher_steps, seed, n_envs, checkpoint_every, subprocess,
                     progress=not quiet, threads=threads, device=str(torch_device))
    train(task, run, resume=resume)
    click.echo(f"wrote {out} ({run.steps} steps)")


@click.command()
@task_option
@click.option("--teacher", required=True, type=click.Path(dir_okay=False), help="teacher.pt or an SB3 .zip.")
@click.option("--frames", type=click.IntRange(min=1), default=None, help="Frames to label (default: the task's budget).")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="labels.npz to write.")
@click.option("--maps", type=click.IntRange(min=0), default=None,
              help="Frames, evenly spread, that also get a perturbation map; the rest carry the teacher's "
                   "output only (default: the task's; all frames where the task sets none).")
@click.option("--stride", type=click.IntRange(min=1), default=5, show_default=True, help="Perturbation grid stride.")
@click.option("--mask-sigma", type=positive_float(), default=5.0, show_default=True, help="σ of the Gaussian mask.")
@click.option("--blur-sigma", type=positive_float(), default=3.0, show_default=True, help="σ of the blur.")
@ray_option
@click.option("--ray-chunk", type=click.IntRange(min=1), default=8, show_default=True,
              help="Frames per Ray task, with --ray.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes that roll the teacher out side by side on CPU, each with its share of the frames and "
                   "interleaved episodes (the demo always uses two, whatever the core count).")
@device_option
@seed_option
@quiet_option
def label(task_name: str, teacher: str, frames: Optional[int], out: str, maps: Optional[int], stride: int,
          mask_sigma: float, blur_sigma: float, ray_address: Optional[str], ray_chunk: int, workers: int,
          device: str, seed: int, quiet: bool) -> None:
    """Roll the teacher out and label each frame with its perturbation saliency.

    The rollouts run here (on --device, or in --workers CPU processes); with --ray the maps run as Ray tasks
    on the cluster's CPUs."""
    from edge_digr.checkpoint import policy_task
    from edge_digr.labels import label as run_label
    from edge_digr.core.perturbation import PerturbationConfig
    from edge_digr.core.tasks import get_task
    from edge_digr.devices import resolve_device

    check_writable(out, inputs=[teacher])
    task_name = policy_task(teacher, task_name)
    task = get_task(task_name)
    n = frames or task.train.label_frames
    maps = task.train.label_maps if maps is None else maps
    if maps is not None and maps > n:
        raise UserError(f"--maps {maps} exceeds the {n} frames labelled; pass at most --maps {n}")
    if ray_address is not None:
        from edge_digr.ray_jobs import import_ray

        import_ray()  # the install hint now, not after the rollouts
    run_label(_teacher(teacher, task_name, resolve_device(device)), task, n, seed, out,
              PerturbationConfig(stride, mask_sigma, blur_sigma), progress=not quiet, ray_address=ray_address,
              ray_chunk=ray_chunk, maps=maps, workers=workers)
    click.echo(f"wrote {out} ({n} frames, {n if maps is None else maps} with a perturbation map)")


def distill_options(f):
    for decorator in reversed([
        click.option("--mode", type=click.Choice(["digr", "plain", "igr"]), default="digr", show_default=True,
                     help="digr: penalise the input gradient on the non-salient region; plain: no penalty (λ = 0); "
                          "igr: penalise it everywhere."),
        click.option("--lam", type=FiniteFloat(min=0), default=None,
                     help="Gradient-penalty weight λ (default: the task's)."),
        click.option("--mask-rule", type=click.Choice(["fraction", "topk"]), default="fraction",
                     show_default=True, help="Non-salient region: below a fraction of the frame max, or outside "
                                             "the top-k share."),
        click.option("--mask-threshold", type=FiniteFloat(min=0), default=0.1, show_default=True,
                     help="The --mask-rule's parameter: the fraction of the frame max, or the top-k share."),
        click.option("--temperature", type=positive_float(), default=1.0, show_default=True,
                     help="Distillation temperature of the teacher's and student's softmax (discrete tasks)."),
        click.option("--arch", type=click.Choice(["teacher", "edge"]), default=None,
                     help="Student architecture (default: the task's: edge where that student holds the return "
                          "bar, else the teacher's)."),
        click.option("--init", type=click.Choice(["random", "teacher"]), default=None,
                     help="How the student starts: random weights, or the teacher's, its hidden layers pruned to the "
                          "student's widths (needs the teacher's convs). Default: the task's."),
        click.option("--lr", type=positive_float(), default=None,
                     help="Adam's learning rate (default: the task's)."),
        click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs (default: the task's)."),
        click.option("--dagger-rounds", type=click.IntRange(min=0), default=None,
                     help="Rounds of student rollouts labelled by the teacher (default: the task's)."),
        click.option("--dagger-frames", type=click.IntRange(min=1), default=None,
                     help="Frames per DAgger round (default: the task's)."),
        click.option("--dagger-maps", type=click.IntRange(min=0), default=None,
                     help="Of each DAgger round's frames, how many also get a perturbation map "
                          "(default: the task's; all where it sets none)."),
    ]):
        f = decorator(f)
    return f


@click.command()
@task_option
@click.option("--teacher", required=True, type=click.Path(dir_okay=False), help="teacher.pt (recorded in the student).")
@click.option("--labels", "labels_path", required=True, type=click.Path(dir_okay=False), help="labels.npz.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="student.pt to write.")
@distill_options
@click.option("--resume", is_flag=True, help="Continue from <out>.resume.pt.")
@device_option
@seed_option
@quiet_option
def distill(task_name: str, teacher: str, labels_path: str, out: str, mode: str, lam: Optional[float],
            mask_rule: str, mask_threshold: float, temperature: float,
            arch: Optional[str], init: Optional[str], lr: Optional[float], epochs: Optional[int],
            dagger_rounds: Optional[int], dagger_frames: Optional[int], dagger_maps: Optional[int], resume: bool,
            device: str, seed: int, quiet: bool) -> None:
    """Distil a student from the teacher's labels: DIGR, plain, or global IGR.

    Under `torchrun --nproc-per-node N` each process trains on its share of every batch and the gradients
    are averaged (gloo on CPU, nccl on CUDA): the same global batch as one process; rank 0 writes."""
    from edge_digr.checkpoint import policy_task
    from edge_digr.distill import DistillConfig, distill as run
    from edge_digr.distributed import Distributed
    from edge_digr.core.tasks import get_task
    from edge_digr.devices import resolve_device
    from edge_digr.labels import load_labels, split

    check_writable(out, inputs=[teacher, labels_path])
    task_name = policy_task(teacher, task_name)
    task = get_task(task_name)
    train, _ = split(load_labels(labels_path, task))
    cfg = DistillConfig.for_task(task, mode, seed, lam=lam, mask_rule=mask_rule,
                                 mask_threshold=mask_threshold, temperature=temperature,
                                 arch=arch, init=init, lr=lr, epochs=epochs, dagger_rounds=dagger_rounds,
                                 dagger_frames=dagger_frames, dagger_maps=dagger_maps)
    dist = Distributed.from_env()  # torchrun's process, or a single one
    torch_device = resolve_device(device, dist.local_rank)
    run(task, train, cfg, out, resume=resume, progress=not quiet, teacher=_teacher(teacher, task_name, torch_device),
        device=torch_device, dist=dist)
    if dist.is_main:
        click.echo(f"wrote {out}")


@click.command()
@click.option("--policy", "policy_path", required=True, type=click.Path(dir_okay=False),
              help="Policy: .pt checkpoint, SB3 .zip, fused .onnx, or TensorRT .plan.")
@task_option
@click.option("--episodes", type=click.IntRange(min=1), default=None,
              help="Evaluation episodes (default: the task's).")
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False), default=None,
              help="labels.npz: held-out frames for saliency agreement, deletion faithfulness and timing.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write metrics as JSON.")
@device_option
@seed_option
@quiet_option
def evaluate(policy_path: str, task_name: str, episodes: Optional[int], labels_path: Optional[str],
             json_path: Optional[str], device: str, seed: int, quiet: bool) -> None:
    """Return and success on fixed seeds; saliency agreement, pointing, deletion faithfulness and timing on
    held-out frames."""
    from edge_digr.checkpoint import policy_task
    from edge_digr.core.fileio import write_json
    from edge_digr.metrics import evaluate_policy, open_policy
    from edge_digr.core.tasks import get_task

    if json_path:
        check_writable(json_path, inputs=[policy_path, labels_path], option="--json")
    task = get_task(policy_task(policy_path, task_name))
    policy = open_policy(policy_path, task, device)
    metrics = evaluate_policy(policy, task, episodes or task.train.eval_episodes, labels_path, seed, not quiet)
    click.echo(json.dumps(metrics, indent=2))
    if json_path:
        write_json(json_path, metrics)


@click.command()
@task_option
@option("--out-dir", "out", old=["--out"], type=click.Path(file_okay=False), default="demo-out", show_default=True,
        help="Output folder.")
@click.option("--budget", type=click.Choice(["full", "tiny"]), default="full", show_default=True,
              help="tiny: seconds-long smoke run (tests); full: the task's budgets.")
@click.option("--modes", default="digr,plain", show_default=True, help="Students to distil (digr,plain,igr).")
@click.option("--teacher", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Use this teacher.pt instead of training one or using the shipped one.")
@click.option("--train-teacher", "train", is_flag=True,
              help="Train the teacher (the task's method) even where a trained one ships in models/.")
@seed_option
@quiet_option
def demo(task_name: str, out: str, budget: str, modes: str, teacher: Optional[str], train: bool, seed: int,
         quiet: bool) -> None:
    """Teacher → labels → DIGR and plain students → evaluation → report.md and metrics.json.

    Uses the teacher shipped in models/ unless --teacher or --train-teacher says otherwise (a task that
    ships none trains its PPO teacher here, or asks for one)."""
    from edge_digr.demo import run_demo
    from edge_digr.core.tasks import get_task

    check_writable(out, folder=True)
    if teacher is not None:  # the teacher file names its task; a --task that disagrees is refused
        from edge_digr.checkpoint import policy_task

        task_name = policy_task(teacher, task_name)
    report = run_demo(get_task(task_name or DEFAULT_TASK), Path(out), budget, [m.strip() for m in modes.split(",") if m.strip()],
                      seed, progress=not quiet, teacher=Path(teacher) if teacher else None, train_teacher=train)
    click.echo(f"report: {report}")
