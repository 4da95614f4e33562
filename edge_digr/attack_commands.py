"""`edge-digr attack`: episode returns under white-box observation attacks.

One policy at one ε prints a line (and `--json`); a sweep (`--compare` and/or several ε or attacks) adds
the clean return (ε = 0) and writes a markdown table, a JSON record and a return-vs-ε plot. A `--compare`
entry may be a glob (one file per training seed): its row is the mean ± std over the matched files of each
file's mean episode return. `--merge` combines sweeps run separately with equal settings (e.g. one per
seed, side by side) into the same table. Torch-free at import (the attacks load inside the command).
"""
from __future__ import annotations

import glob
import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click
import numpy as np

from edge_digr.errors import UserError
from edge_digr.evaluation import EVAL_SEED
from edge_digr.fileio import atomic_path, check_writable, write_json, write_text
from edge_digr.params import device_option, positive_float, resolve_device
from edge_digr.tasks import TASKS

ATTACK_NAMES = ("fgsm", "pgd", "noise", "mad")  # edge_digr.attacks.ATTACKS, without importing torch
CLEAN = "none"


@dataclass(frozen=True)
class Entry:
    """One row of the comparison: a label and the checkpoint(s) (seeds) it aggregates."""

    label: str
    files: List[str]


@dataclass(frozen=True)
class Record:
    label: str
    file: str
    attack: str  # CLEAN for the unattacked rollout
    eps: float
    summary: Dict[str, float]


def parse_floats(text: str, option: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} takes numbers separated by commas (pixel units, 0-255), got {text!r}") from None
    if not values or not all(0 <= v < math.inf for v in values):  # NaN fails both comparisons
        raise UserError(f"{option} needs one or more values >= 0 (pixel units, 0-255), got {text!r}")
    return values


def parse_attacks(text: str) -> List[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in ATTACK_NAMES]
    if not names or bad:
        raise UserError(f"unknown attack {', '.join(bad) or repr(text)}; choose from: {', '.join(ATTACK_NAMES)}")
    return names


def default_label(path: str) -> str:
    stem = Path(path).stem
    return stem[len("student_"):] if stem.startswith("student_") else stem


def parse_compare(text: str) -> List[Entry]:
    """`[label=]path-or-glob,...` → entries; a glob's matches are that row's seeds."""
    entries: List[Entry] = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        label, _, pattern = item.rpartition("=")
        files = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not files:
            raise UserError(f"--compare entry {item!r} matches no file")
        entries.append(Entry(label or default_label(files[0]), files))
    if not entries:
        raise UserError("--compare needs at least one checkpoint")
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise UserError(f"--compare rows need distinct labels (got {labels}); name them as label=path")
    return entries


def attackable_task(path: str, task_name: Optional[str]) -> str:
    """The task of a torch policy file (.pt, or an SB3 .zip with `task_name`), checked against `task_name`."""
    from edge_digr.checkpoint import policy_task

    if not path.endswith((".pt", ".zip")):
        raise UserError(f"{path}: white-box attacks need the torch policy (.pt or SB3 .zip), "
                        "not an exported graph or engine")
    return policy_task(path, task_name)


def load_attackable(path: str, task_name: str):
    """A torch policy from an edge-digr .pt (checked against the task) or an SB3 .zip."""
    from edge_digr.checkpoint import load_policy

    return load_policy(path, attackable_task(path, task_name))


@lru_cache(maxsize=None)
def _cached_policy(path: str, task_name: str, device: str = "cpu"):
    return load_attackable(path, task_name).to(resolve_device(device))


def run_point(point: Tuple[str, str, Any], task: str, episodes: int, seed: int,
              max_steps: Optional[int], device: str = "cpu") -> Dict[str, float]:
    """Episode summary of one (label, file, attack config or None for clean) point; runs in workers too."""
    import torch

    from edge_digr.attacks import attacked_rollout
    from edge_digr.tasks import get_task

    # Batch-1 steps through small nets: thread hand-offs cost more than they save (on a busy 2-core
    # machine, spinning intra-op threads made each PGD step ~40x slower in our measurement).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, path, config = point
        return attacked_rollout(_cached_policy(path, task, device), get_task(task), config, episodes, seed,
                                max_steps).summary()
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ aggregation
def aggregate(records: Sequence[Record]) -> Dict[str, float]:
    """Mean and std over files (seeds) of each file's mean return and success rate."""
    returns = np.array([r.summary["return"] for r in records])
    success = np.array([r.summary["success"] for r in records])
    return {"return_mean": float(returns.mean()), "return_std": float(returns.std()),
            "success_mean": float(success.mean()), "success_std": float(success.std()), "files": len(records)}


def grid(records: Sequence[Record], entries: Sequence[Entry], attacks: Sequence[str],
         eps_list: Sequence[float]) -> Dict[str, Dict[str, Dict[float, Dict[str, float]]]]:
    """label -> attack -> ε -> aggregate; ε = 0 of every attack is the shared clean rollout."""
    out: Dict[str, Dict[str, Dict[float, Dict[str, float]]]] = {}
    for entry in entries:
        mine = [r for r in records if r.label == entry.label]
        clean = [r for r in mine if r.attack == CLEAN]
        out[entry.label] = {}
        for attack in attacks:
            row = {0.0: aggregate(clean)} if clean else {}
            for eps in eps_list:
                row[eps] = aggregate([r for r in mine if r.attack == attack and r.eps == eps])
            out[entry.label][attack] = row
    return out


def _eps_label(eps: float) -> str:
    return f"{eps:g}"


def markdown_table(table: Dict[str, Dict[str, Dict[float, Dict[str, float]]]], task: str, episodes: int) -> str:
    """One table per attack: rows = policies, columns = ε (0 = clean), cells = return mean ± std over seeds."""
    lines: List[str] = []
    for attack in next(iter(table.values())):
        eps_cols = sorted(next(iter(table.values()))[attack])
        lines += [f"**{task}, {attack}** — mean episode return ({episodes} episodes per seed), "
                  "mean ± std over seeds; success rate in brackets", "",
                  "| policy | seeds | " + " | ".join("clean" if e == 0 else f"ε={_eps_label(e)}" for e in eps_cols) + " |",
                  "| --- | ---: | " + " | ".join("---:" for _ in eps_cols) + " |"]
        for label, by_attack in table.items():
            row = by_attack[attack]
            cells = [f"{row[e]['return_mean']:.3f} ± {row[e]['return_std']:.3f} ({row[e]['success_mean']:.2f})"
                     for e in eps_cols]
            lines.append(f"| {label} | {row[eps_cols[0]]['files']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(table: Dict[str, Dict[str, Dict[float, Dict[str, float]]]], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI or the Jetson
    import matplotlib.pyplot as plt

    attacks = list(next(iter(table.values())))
    cols = min(2, len(attacks))
    rows = -(-len(attacks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(attacks):]:
        ax.set_visible(False)
    for ax, attack in zip(axes.flat, attacks):
        for label, by_attack in table.items():
            eps = sorted(by_attack[attack])
            ax.errorbar(eps, [by_attack[attack][e]["return_mean"] for e in eps],
                        yerr=[by_attack[attack][e]["return_std"] for e in eps], marker="o", capsize=3, label=label)
        ax.set_title(f"{task}: {attack}")
        ax.set_xlabel("ε (pixels, 0-255)")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean episode return")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- command
def merge_results(paths: Sequence[str], task: Optional[str]) -> Tuple[Dict[str, Any], List[Record], List[Entry]]:
    """Concatenate sweeps run separately (e.g. one per training seed, in parallel) with equal settings;
    `task` (None: the files' own) must be the task they were run on."""
    runs = []
    for path in paths:
        try:
            runs.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise UserError(f"--merge {path}: not a readable attack JSON ({exc})") from None
    keys = ("task", "attacks", "eps", "episodes", "options", "max_steps")
    for path, run in zip(paths, runs):
        if any(k not in run for k in keys + ("records", "rows")):
            raise UserError(f"--merge {path} is not a JSON written by `edge-digr attack`")
        differs = [k for k in keys if run[k] != runs[0][k]]
        if differs:
            raise UserError(f"--merge {path} differs from {paths[0]} in {', '.join(differs)}: "
                            "only sweeps with the same settings can be combined")
    if task is not None and runs[0]["task"] != task:
        raise UserError(f"--merge files are for task {runs[0]['task']!r}, not {task!r}")
    rows: Dict[str, List[str]] = {}
    for run in runs:
        for label, files in run["rows"].items():
            rows.setdefault(label, []).extend(f for f in files if f not in rows.get(label, []))
    records = [Record(**r) for run in runs for r in run["records"]]
    result = {k: runs[0][k] for k in keys}
    return result, records, [Entry(label, files) for label, files in rows.items()]


def write_sweep(result: Dict[str, Any], records: List[Record], entries: List[Entry], out_dir: Optional[str]) -> None:
    """Table, JSON and plot of a sweep under `out_dir`; the table is echoed too."""
    task = result["task"]
    table = grid(records, entries, result["attacks"], result["eps"])
    result["rows"] = {e.label: e.files for e in entries}
    result["records"] = [asdict(r) for r in records]
    result["table"] = {label: {a: {_eps_label(e): v for e, v in row.items()} for a, row in by.items()}
                       for label, by in table.items()}
    text = markdown_table(table, task, result["episodes"])
    out = Path(out_dir or f"attack-{task}")
    write_text(out / "robustness.md", text)
    write_json(out / "robustness.json", result)
    plot(table, task, out / "robustness.png")
    click.echo(text)
    click.echo(f"wrote {out / 'robustness.md'}, {out / 'robustness.json'}, {out / 'robustness.png'}")


@click.command("attack")
@click.option("--policy", "policy_path", help="Policy to attack (.pt or SB3 .zip).")
@click.option("--compare", help="Sweep over several policies: [label=]path-or-glob,... (a glob = seeds).")
@click.option("--merge", "merge_text", help="Combine sweep JSONs (robustness.json) run separately: a,b,...")
@click.option("--task", type=click.Choice(sorted(TASKS)), default=None,
              help="Task the policies were trained on (default: the one the policy or --merge file records; "
                   "needed for an SB3 .zip).")
@click.option("--attack", "attack_text", default="pgd", show_default=True,
              help="fgsm|pgd|noise|mad, or a comma list for a sweep.")
@click.option("--eps", "eps_text", help="ε in raw pixel units (0-255); a comma list for a sweep.")
@click.option("--episodes", type=click.IntRange(min=1), default=20, show_default=True,
              help="Episodes per policy and ε.")
@click.option("--seed", type=int, default=EVAL_SEED, show_default=True,
              help="First episode seed (episodes use seed, seed+1, ...); also seeds the attack's randomness.")
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True, help="PGD/MAD iterations.")
@click.option("--step-size", type=positive_float(), default=None,
              help="PGD/MAD step in pixels [default: 2.5·ε/steps].")
@click.option("--random-start/--no-random-start", default=True, show_default=True,
              help="PGD starts from a uniform point in the ε ball (MAD always does).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Cap on steps per episode.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes to spread the sweep's (policy, attack, ε) points over.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the results as JSON.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Sweep output folder (table, JSON, plot) [default: attack-<task>].")
@device_option
def attack(policy_path: Optional[str], compare: Optional[str], merge_text: Optional[str], task: Optional[str],
           attack_text: str, eps_text: Optional[str], episodes: int, seed: int, steps: int,
           step_size: Optional[float], random_start: bool, max_steps: Optional[int], workers: int,
           json_path: Optional[str], out_dir: Optional[str], device: str) -> None:
    """Return of a policy under white-box observation attacks at every step (ε in pixels, 0-255)."""
    from tqdm import tqdm

    from edge_digr.attacks import AttackConfig

    if json_path:
        check_writable(json_path, inputs=[policy_path], option="--json")
    if out_dir:
        check_writable(out_dir, option="--out", folder=True)
    if sum(x is not None for x in (policy_path, compare, merge_text)) != 1:
        raise UserError("pass exactly one of --policy FILE, --compare FILE,FILE,... or --merge JSON,JSON,...")
    if merge_text:
        result, records, entries = merge_results([p for p in merge_text.split(",") if p], task)
        write_sweep(result, records, entries, out_dir)
        if json_path:
            write_json(json_path, result)
        return
    if eps_text is None:
        raise UserError("--eps is required (pixel units, 0-255; a comma list for a sweep)")
    entries = [Entry(default_label(policy_path), [policy_path])] if policy_path else parse_compare(compare)
    task = attackable_task(entries[0].files[0], task)  # the others are checked against it below
    attacks, eps_list = parse_attacks(attack_text), parse_floats(eps_text, "--eps")
    sweep = compare is not None or len(attacks) * len(eps_list) > 1
    options = {"steps": steps, "step_size": step_size, "random_start": random_start, "seed": seed}
    try:
        configs = [AttackConfig(name=a, eps=e, **options) for a in attacks for e in eps_list]
    except ValueError as exc:
        raise UserError(str(exc)) from None
    for f in {f for entry in entries for f in entry.files}:
        _cached_policy(f, task, device)  # refuse bad files (and a missing CUDA) before any rollout starts
    # None = the clean rollout: in a sweep it is every curve's ε = 0 point.
    plan: List[Optional[AttackConfig]] = ([None] if sweep else []) + configs
    points = [(entry.label, f, cfg) for entry in entries for f in entry.files for cfg in plan]
    job = partial(run_point, task=task, episodes=episodes, seed=seed, max_steps=max_steps, device=device)
    bar = dict(total=len(points), desc=f"attack {task}", unit="point")
    if workers == 1:
        summaries = [job(p) for p in tqdm(points, **bar)]
    else:
        # Points are independent rollouts: spread them over processes (spawned: no forked torch state).
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            summaries = list(tqdm(pool.map(job, points), **bar))
    records = [Record(label, f, cfg.name if cfg else CLEAN, cfg.eps if cfg else 0.0, summary)
               for (label, f, cfg), summary in zip(points, summaries)]

    result: Dict[str, Any] = {"task": task, "attacks": attacks, "eps": eps_list, "episodes": episodes,
                              "options": options, "max_steps": max_steps}
    if sweep:
        write_sweep(result, records, entries, out_dir)
    else:
        result.update(rows={e.label: e.files for e in entries}, records=[asdict(r) for r in records])
        s = records[0].summary
        click.echo(f"{task} {attacks[0]} ε={_eps_label(eps_list[0])}: return {s['return']:.3f} ± "
                   f"{s['return_std']:.3f}, success {s['success']:.2f} over {episodes} episodes ({policy_path})")
    if json_path:
        write_json(json_path, result)
        click.echo(f"wrote {json_path}")
