"""`edge-digr attack`: parses the options, runs `edge_digr.robustness.run_attacks` and prints its lines.

Torch-free at import (the attacks load inside the run).
"""
from __future__ import annotations

from typing import Optional

import click

from edge_digr.core.fileio import check_writable, write_json
from edge_digr.core.options import option
from edge_digr.core.params import device_option, positive_float
from edge_digr.core.tasks import TASKS
from edge_digr.evaluation import EVAL_SEED
from edge_digr.robustness import ATTACK_NAMES, AttackRun, run_attacks


@click.command("attack")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False),
              help="Policy to attack (.pt or SB3 .zip).")
@click.option("--compare", help="Sweep over several policies: [label=]path-or-glob,... (a glob = seeds).")
@click.option("--merge", "merge_text", help="Combine sweep JSONs (robustness.json) run separately: a,b,...")
@click.option("--task", type=click.Choice(sorted(TASKS)), default=None,
              help="Task the policies were trained on (default: the one the policy or --merge file records; "
                   "needed for an SB3 .zip; a different --task is an error).")
@click.option("--attack", "attack_text", default="pgd", show_default=True,
              help=f"{'|'.join(ATTACK_NAMES)}, or a comma list for a sweep.")
@click.option("--eps", "eps_text", help="ε in raw pixel units (0-255); a comma list for a sweep.")
@click.option("--episodes", type=click.IntRange(min=1), default=20, show_default=True,
              help="Episodes per policy and ε.")
@click.option("--seed", type=int, default=EVAL_SEED, show_default=True,
              help="First episode seed (episodes use seed, seed+1, ...); also seeds the attack's randomness.")
@option("--pgd-steps", old=["--steps"], type=click.IntRange(min=1), default=10, show_default=True,
        help="PGD/MAD iterations per environment step.")
@click.option("--step-size", type=positive_float(), default=None,
              help="PGD/MAD step in pixels [default: 2.5·ε/pgd-steps].")
@click.option("--random-start/--no-random-start", default=True, show_default=True,
              help="PGD starts from a uniform point in the ε ball (MAD always does).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Cap on environment steps per episode.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes to spread the sweep's (policy, attack, ε) points over.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the results as JSON.")
@option("--out-dir", old=["--out"], type=click.Path(file_okay=False),
        help="Sweep output folder (table, JSON, plot) [default: attack-<task>].")
@device_option
def attack(policy_path: Optional[str], compare: Optional[str], merge_text: Optional[str], task: Optional[str],
           attack_text: str, eps_text: Optional[str], episodes: int, seed: int, pgd_steps: int,
           step_size: Optional[float], random_start: bool, max_steps: Optional[int], workers: int,
           json_path: Optional[str], out_dir: Optional[str], device: str) -> None:
    """Return of a policy under white-box observation attacks at every step (ε in pixels, 0-255)."""
    if json_path:
        check_writable(json_path, inputs=[policy_path], option="--json")
    if out_dir:
        check_writable(out_dir, option="--out-dir", folder=True)
    result, lines = run_attacks(AttackRun(
        policy=policy_path, compare=compare, merge=merge_text, task=task, attacks=attack_text, eps=eps_text,
        episodes=episodes, seed=seed, pgd_steps=pgd_steps, step_size=step_size, random_start=random_start,
        max_steps=max_steps, workers=workers, out_dir=out_dir, device=device))
    for line in lines:
        click.echo(line)
    if json_path:
        write_json(json_path, result)
        click.echo(f"wrote {json_path}")
