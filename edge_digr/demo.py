"""`edge-digr demo`: the whole desktop pipeline on one task, ending with report.md and metrics.json.

teacher → labels → students (DIGR, plain, optionally IGR) → evaluation → report. Each stage's output is
kept in the folder and reused on a re-run, so an interrupted demo resumes where it stopped.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edge_digr.core.errors import UserError
from edge_digr.core.fileio import write_json, write_text
from edge_digr.core.tasks import Task, get_task
from edge_digr.evaluation import Episodes
from edge_digr.machine import machine_info, machine_line

STRIP_FRAMES = 4
LEGEND_HEIGHT = 12  # px under a strip for its colour legend
COLUMNS = {"plain gradient": "plain", "DIGR gradient": "digr"}  # strip title -> handle name


MODELS = Path(__file__).resolve().parents[1] / "models"  # the trained models that ship with the repository


# The demo's cores: PPO's update and the batched perturbation passes use them as torch threads; the students
# and the evaluations, small sequential networks that spin rather than gain with more threads, use them as
# processes of one thread each, side by side. Two is this project's machine; more would only spin here.
CORES = max(1, min(2, os.cpu_count() or 1))
# Label rollout processes: fixed, not CORES, because the episodes each plays (interleaved: edge_digr.labels)
# decide the labels, and so the students: a 1-core machine runs the same two processes, sharing its core.
LABEL_WORKERS = 2


def tiny(task: Task) -> Task:
    """Seconds-long budgets for smoke tests: every stage runs, nothing is learnt."""
    return task.with_train(teacher_steps=2 * 64, n_envs=2, n_steps=64, batch_size=64, n_epochs=1,
                           label_frames=10, distill_epochs=2, dagger_rounds=1, dagger_frames=6, eval_episodes=2,
                           max_episode_steps=50, imitation_rounds=2, imitation_updates=2)


def budget_task(name: str, budget: str) -> Task:
    task = get_task(name)
    return tiny(task) if budget == "tiny" else task


def choose_teacher(task: Task, out: Path, budget: str, teacher: Optional[Path] = None,
                   train_teacher: bool = False, models: Path = MODELS) -> Tuple[Path, bool]:
    """(the demo's teacher.pt, whether the demo trains it): `teacher` if given; else the one shipped in
    `models` (the demo is about the students: a teacher is their input); else, with `train_teacher` or a
    tiny budget, or for a PPO task that ships none, one trained into `out`."""
    if teacher is not None and train_teacher:
        raise UserError("pass either --teacher PATH or --train-teacher, not both")
    if teacher is not None:
        return teacher, False
    shipped = models / task.name / "teacher.pt"
    if train_teacher or budget == "tiny" or (task.train.teacher_method == "ppo" and not shipped.exists()):
        return out / "teacher.pt", True
    if not shipped.exists():
        raise UserError(f"no shipped teacher for {task.name} at {shipped}; pass --teacher PATH or --train-teacher")
    return shipped, False


def make_teacher(task: Task, out: Path, seed: int, progress: bool) -> None:
    """Train `out` the task's way: PPO, or DAgger on its privileged expert; resumes an interrupted run."""
    if task.train.teacher_method == "expert":
        from edge_digr.experts import make_expert
        from edge_digr.imitation import ImitationConfig, ImitationRun, train_imitation

        run = ImitationRun(out, ImitationConfig.for_task(task, seed=seed), threads=CORES, progress=progress)
        train_imitation(task, make_expert(task.name), run, resume=run.state_path.exists())
    else:
        from edge_digr.teacher import TeacherRun, train_teacher

        train_teacher(task, TeacherRun(out, task.train.teacher_steps, seed, progress=progress, threads=CORES),
                      resume=out.with_suffix(".progress.json").exists())


@dataclass(frozen=True)
class Job:
    """One student to distil or one policy to evaluate, in a process of its own (plain values: it is pickled)."""
    task: str
    budget: str
    seed: int
    labels: str
    teacher: str
    policy: str  # the student to write, or the policy to evaluate
    mode: str = ""  # the student's mode; empty for an evaluation
    progress: bool = False
    bar_line: Optional[int] = None
    episodes: Tuple[int, int] = (0, 0)  # an evaluation's share: (first episode, count)


def make_student(job: Job) -> str:
    import torch

    from edge_digr.checkpoint import load_checkpoint
    from edge_digr.distill import DistillConfig, distill
    from edge_digr.labels import load_labels, split

    torch.set_num_threads(1)
    task = budget_task(job.task, job.budget)
    train, _ = split(load_labels(job.labels, task))
    teacher, _ = load_checkpoint(job.teacher)
    distill(task, train, DistillConfig.for_task(task, job.mode, job.seed), job.policy,
            resume=Path(job.policy + ".resume.pt").exists(), progress=job.progress, teacher=teacher,
            bar_line=job.bar_line)
    return job.policy


def evaluate(job: Job) -> Tuple[Episodes, Dict[str, Any]]:
    """A share of a policy's evaluation episodes; the share starting at episode 0 also scores its saliency."""
    import torch

    from edge_digr.metrics import held_out_frames, open_policy, play, saliency_metrics

    torch.set_num_threads(1)
    task = budget_task(job.task, job.budget)
    handle = open_policy(job.policy, task)
    first, count = job.episodes
    played = play(handle, task, count, job.seed, first)
    return played, (saliency_metrics(handle, task, held_out_frames(job.labels, task)) if first == 0 else {})


def shares(episodes: int, parts: int = CORES) -> List[Tuple[int, int]]:
    """(first, count) of up to `parts` near-equal, non-empty shares of the evaluation episodes: one policy's
    episodes run on every core, so the last evaluation does not leave a core idle. Only the first share
    starts at episode 0 (evaluate scores the saliency there)."""
    bounds = [episodes * k // parts for k in range(parts + 1)]
    return [(bounds[k], bounds[k + 1] - bounds[k]) for k in range(parts) if bounds[k + 1] > bounds[k]]


def merged(parts: List[Tuple[Episodes, Dict[str, Any]]]) -> Dict[str, Any]:
    """One policy's metrics from its shares, as one evaluation of every episode would give them."""
    played = Episodes(*([x for p, _ in parts for x in getattr(p, name)]
                        for name in ("returns", "lengths", "successes")))
    return {**played.summary(), **{k: v for _, scores in parts for k, v in scores.items()}}


def run_demo(task: Task, out: Path, budget: str, modes: List[str], seed: int, progress: bool = True,
             teacher: Optional[Path] = None, train_teacher: bool = False) -> Path:
    """The pipeline into `out`, with the teacher `choose_teacher` picks. `task` must be a registry task: the
    student and evaluation processes rebuild it by name (with `budget`), so changes made to it with
    `with_train` would not reach them."""
    import torch

    from edge_digr.checkpoint import load_checkpoint
    from edge_digr.labels import label, load_labels, mapped_only, split
    from edge_digr.metrics import open_policy, saliency_timing

    for needed in ("digr", "plain"):
        if needed not in modes:
            raise UserError(f"--modes must include digr and plain (the report compares them), got {modes}")
    teacher_pt, trains = choose_teacher(task, out, budget, teacher, train_teacher)
    if budget == "tiny":
        task = tiny(task)
    out.mkdir(parents=True, exist_ok=True)
    t = task.train
    stages: Dict[str, float] = {}
    machine = machine_info()  # probed before the work starts, so the demo's own load does not slow it

    start = time.perf_counter()
    if trains and not teacher_pt.exists():
        make_teacher(task, teacher_pt, seed, progress)
    teacher_policy, teacher_config = load_checkpoint(teacher_pt)
    if teacher_config.get("task") != task.name:
        raise UserError(f"{teacher_pt} is a {teacher_config.get('task')!r} teacher, not {task.name!r}")
    stages["teacher_s"] = time.perf_counter() - start

    start = time.perf_counter()
    labels_path = out / "labels.npz"
    if not labels_path.exists():
        torch.set_num_threads(CORES)  # the batched perturbation passes gain from threads
        label(teacher_policy, task, t.label_frames, seed, labels_path, progress=progress, maps=t.label_maps,
              workers=LABEL_WORKERS)
    train, test = split(load_labels(labels_path, task))
    test = mapped_only(test)
    stages["label_s"] = time.perf_counter() - start

    # Students side by side, one process each. The evaluations queue behind them in the same processes, each
    # student's as soon as it exists: a core whose student is done evaluates while the other still trains.
    start = time.perf_counter()
    common = dict(task=task.name, budget=budget, seed=seed, labels=str(labels_path), teacher=str(teacher_pt))
    students = {mode: out / f"student_{mode}.pt" for mode in modes}
    with ProcessPoolExecutor(CORES, mp_context=multiprocessing.get_context("spawn")) as pool:
        def queue(path: Path) -> List[Future]:
            return [pool.submit(evaluate, Job(**common, policy=str(path), episodes=share))
                    for share in shares(t.eval_episodes)]

        made: Dict[Future, str] = {pool.submit(make_student, Job(**common, policy=str(path), mode=mode,
                                                                 progress=progress, bar_line=i)): mode
                                   for i, (mode, path) in enumerate(students.items()) if not path.exists()}
        evaluations = {"teacher": queue(teacher_pt)}
        evaluations.update({mode: queue(path) for mode, path in students.items() if mode not in made.values()})
        for future in as_completed(made):
            if future.exception() is not None:  # stop the rest now, then raise the student's own error
                pool.shutdown(wait=False, cancel_futures=True)
                future.result()
            evaluations[made[future]] = queue(students[made[future]])
        stages["distill_s"] = time.perf_counter() - start
        metrics: Dict[str, Any] = {"task": task.name, "seed": seed, "budget": budget,
                                   **{name: merged([f.result() for f in evaluations[name]])
                                      for name in ["teacher", *modes]}}
    handles = {name: open_policy(str(path), task) for name, path in {"teacher": teacher_pt, **students}.items()}
    metrics["time_ms"] = saliency_timing(handles["digr"], task, test)
    # What the evaluations add after the last student; those that ran beside a student are inside distill_s.
    stages["evaluate_s"] = time.perf_counter() - start - stages["distill_s"]
    metrics["stages"] = stages
    metrics["config"] = {"train": {k: v for k, v in asdict(t).items() if not callable(v)},
                         "machine": machine,
                         "frames": {"train": int(len(train["obs"])), "held_out": int(len(test["obs"]))}}
    write_json(out / "metrics.json", metrics)

    strips = write_strips(handles, task, test, out)
    report = out / "report.md"
    write_text(report, render_report(metrics, strips, modes))
    return report


def evenness(saliency: np.ndarray) -> np.ndarray:
    """Each pixel's share of the map's total, times the pixel count: 1 everywhere for an even map."""
    sal = np.abs(np.nan_to_num(np.asarray(saliency, dtype=np.float64)))
    total = sal.sum()
    return sal * (sal.size / total) if total > 0 else sal


def write_strips(handles: Dict[str, Any], task: Task, test: Dict[str, np.ndarray], out: Path,
                 columns: Dict[str, str] = COLUMNS, prefix: str = "strip") -> List[str]:
    """One PNG per sample frame: frame | teacher perturbation | each column's gradient map."""
    from PIL import Image, ImageDraw

    from edge_digr.core.metrics import collapse_components
    from edge_digr.runtime.overlay import SCALE_PERCENTILE, colormap, display_frame, heat_overlay

    count = min(STRIP_FRAMES, len(test["obs"]))
    picks = np.linspace(0, len(test["obs"]) - 1, count).astype(int)
    feed = {spec.name: test[spec.name][picks] for spec in task.inputs}
    maps = {title: collapse_components(handles[name].saliency(feed)) for title, name in columns.items()}
    titles = ["frame", "teacher perturbation", *columns]
    names = []
    for i in range(count):
        frame = display_frame(feed["obs"][i])
        # One colour scale per row: each map as each pixel's share of the map's total (× the pixel count, so 1
        # is an even spread), the scale set by the row's largest 99th percentile. The maps differ in units (a
        # perturbation score against gradient magnitudes); shares do not, and a focused map shows brighter
        # where it focuses than a diffuse one. The top 1 % of a spiky map saturates.
        row = [evenness(test["saliency"][picks[i]])] + [evenness(maps[title][i]) for title in columns]
        peak = max(float(np.percentile(m, SCALE_PERCENTILE)) for m in row)
        panels = [frame] + [heat_overlay(frame, m, peak=peak) for m in row]
        scale = max(1, -(-160 // frame.shape[0]))  # panels at least 160 px tall, to be read
        tiles = [Image.fromarray(p).resize((p.shape[1] * scale, p.shape[0] * scale), Image.NEAREST) for p in panels]
        w, h = tiles[0].size
        strip = Image.new("RGB", (w * len(tiles), h + 14 + LEGEND_HEIGHT), "white")
        draw = ImageDraw.Draw(strip)
        for j, (tile, title) in enumerate(zip(tiles, titles)):
            strip.paste(tile, (j * w, 14))
            draw.text((j * w + 2, 1), title, fill="black")
        ramp = colormap(np.linspace(0.0, 1.0, w)[None, :].repeat(6, axis=0))
        strip.paste(Image.fromarray(ramp), (w, h + 16))
        draw.text((2 * w + 4, h + 14), f"0 to {peak:.1f}x an even share (one scale per row)", fill="black")
        name = f"{prefix}_{i}.png"
        strip.save(out / name)
        names.append(name)
    return names


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def render_report(metrics: Dict[str, Any], strips: List[str], modes: List[str]) -> str:
    rows = ["teacher"] + modes
    cols = ["return", "success", "saliency_pearson", "saliency_iou_top10", "deletion_gain"] + \
           (["pointing"] if "pointing" in metrics["teacher"] else [])
    lines = [f"# edge-digr demo: {metrics['task']} (seed {metrics['seed']}, budget {metrics['budget']})", "",
             "Saliency columns compare each policy's *gradient* map with the teacher's *perturbation* map on "
             "held-out frames (the teacher row is the teacher's own gradient map). deletion_gain is "
             "teacher-independent: how much more the policy's own saliency target falls when the 1-20 % of "
             "pixels its own map ranks highest are blurred away than when random pixels are (> 0: the map "
             "finds what the decision depends on)." +
             (f" Pointing's ceiling, the teacher perturbation map's own pointing: "
              f"{metrics['teacher']['pointing_teacher_perturbation']:.3f}."
              if "pointing_teacher_perturbation" in metrics["teacher"] else ""), "",
             "| policy | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    for r in rows:
        lines.append(f"| {r} | " + " | ".join(_fmt(metrics[r].get(c, "")) for c in cols) + " |")
    tm = metrics["time_ms"]
    lines += ["", f"Time per saliency map on {tm['frames']} held-out frames (DIGR student, same run): "
                  f"gradient {tm['gradient']:.3f} ms, perturbation {tm['perturbation']:.1f} ms "
                  f"({tm['speedup']:.0f}× faster).", "",
              "Stage wall times (s): " + json.dumps({k: round(v, 1) for k, v in metrics["stages"].items()}) +
              f", on {machine_line(metrics['config']['machine'])} (compare machines with "
              "`python -m edge_digr.machine`).", "",
              "## Sample frames", "", "frame | teacher perturbation | plain gradient | DIGR gradient", ""]
    lines += [f"![{s}]({s})" for s in strips]
    return "\n".join(lines) + "\n"
