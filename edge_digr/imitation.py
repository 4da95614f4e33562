"""Teachers by imitation of a privileged expert with DAgger (the "Learning by Cheating" recipe).

An expert controller reads simulator state the pixel policy never sees (edge_digr.experts). Round 0 lets
the expert drive; in round k the learner drives with probability 1 − β_k (β_k = β0·decay^k, decided per
step), and the expert labels every visited frame, so the learner also learns to recover from the states
its own mistakes lead to (Ross et al. 2011). After each round the learner is trained on all frames so far.

Each round's frames are written once, as `<out>.dagger/round_KKK.npz` (uint8 pixels), and the learner,
its optimiser and the round count to `<out>.dagger/state.pt` (weights_only), so `--resume` continues
after the last finished round with the same data.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from edge_digr.checkpoint import save_checkpoint, to_cpu
from edge_digr.core.errors import UserError
from edge_digr.evaluation import batched, torch_head
from edge_digr.core.fileio import atomic_path, write_json
from edge_digr.mirror import flip_rows, mirrored_actions
from edge_digr.policies import PixelPolicy, PolicyConfig
from edge_digr.core.tasks import Task


@dataclass(frozen=True)
class ImitationConfig:
    rounds: int = 6  # DAgger rounds; round 0 is the expert's own demonstrations
    steps_per_round: int = 8000  # environment steps collected per round
    updates_per_round: int = 1000  # gradient steps after each round, on all frames so far
    batch_size: int = 128
    lr: float = 3e-4
    beta0: float = 1.0  # probability that the expert acts in round 0
    beta_decay: float = 0.5  # β_k = β0·decay^k
    seed: int = 0

    @classmethod
    def for_task(cls, task: Task, steps: Optional[int] = None, seed: int = 0, **overrides: Any) -> "ImitationConfig":
        """The task's budget: `steps` environment steps in all (default: the task's), split over the rounds."""
        t = task.train
        given = {k: v for k, v in overrides.items() if v is not None}
        rounds = given.pop("rounds", t.imitation_rounds)
        total = steps or t.teacher_steps
        return cls(**{"rounds": rounds, "steps_per_round": max(1, total // rounds),
                      "updates_per_round": t.imitation_updates, "lr": t.imitation_lr, "seed": seed, **given})

    def validate(self) -> None:
        if self.rounds < 1 or self.steps_per_round < 1 or self.updates_per_round < 1 or self.batch_size < 1:
            raise UserError("DAgger rounds, steps per round, updates per round and batch size must be ≥ 1")
        if not (0.0 <= self.beta0 <= 1.0 and 0.0 <= self.beta_decay <= 1.0):
            raise UserError("β0 and the β decay must lie in [0, 1]")

    def beta(self, k: int) -> float:
        return self.beta0 * self.beta_decay ** k


def work_dir_of(out: Path) -> Path:
    return Path(str(out) + ".dagger")


@dataclass
class ImitationRun:
    out: Path  # teacher.pt; round data and resume state go to <out>.dagger/
    config: ImitationConfig
    threads: int = 1
    progress: bool = True
    device: Any = "cpu"  # torch device of the learner's updates (--device)

    @property
    def work_dir(self) -> Path:
        return work_dir_of(self.out)

    @property
    def state_path(self) -> Path:
        return self.work_dir / "state.pt"

    def round_path(self, k: int) -> Path:
        return self.work_dir / f"round_{k:03d}.npz"


def collect_round(task: Task, expert: Any, learner: PixelPolicy, steps: int, beta: float, seed: int,
                  progress: bool = True, desc: str = "DAgger") -> Dict[str, np.ndarray]:
    """`steps` frames where the expert acts with probability β and the learner otherwise; every frame is
    labelled with the expert's action. Pixels are stored as uint8 (raw 0–255) to keep rounds small."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    env = task.make_env()
    head = torch_head(learner)
    rows: Dict[str, List[np.ndarray]] = {spec.name: [] for spec in task.inputs}
    rows.update(expert_action=[], episode=[])
    returns: List[float] = []
    episode, ep_steps, ep_return = 0, 0, 0.0
    raw, _ = env.reset(seed=seed)
    expert.reset()
    limit = task.train.max_episode_steps
    try:
        for _ in tqdm(range(steps), desc=desc, unit="step", disable=not progress, dynamic_ncols=True):
            inputs = task.preprocess(raw)
            label = expert.act(env)
            acting = label if rng.random() < beta else task.action.choose(head(batched(inputs)))[0]
            for name, value in inputs.items():
                rows[name].append(value.astype(np.uint8) if name == "obs" else value)
            rows["expert_action"].append(np.asarray(label, dtype=np.float32 if task.action.continuous else np.int64))
            rows["episode"].append(episode)
            raw, reward, terminated, truncated, _ = env.step(acting)
            ep_return += float(reward)
            ep_steps += 1
            if terminated or truncated or (limit is not None and ep_steps >= limit):
                returns.append(ep_return)
                episode, ep_steps, ep_return = episode + 1, 0, 0.0
                raw, _ = env.reset(seed=seed + episode)
                expert.reset()
    finally:
        env.close()
    data = {k: np.stack(v) for k, v in rows.items()}
    data["returns"] = np.asarray(returns, dtype=np.float64)  # finished episodes of the mixed policy
    return data


# Round k's episodes use seeds ROUND_SEED + 1_000_000·seed + 1000·k + episode: far from the evaluation
# seeds (edge_digr.evaluation.EVAL_SEED + ...), however many rounds are asked for.
ROUND_SEED = 200_000


def round_seed(seed: int, k: int) -> int:
    return ROUND_SEED + 1_000_000 * seed + 1000 * k


def imitation_loss(out: torch.Tensor, target: torch.Tensor, continuous: bool) -> torch.Tensor:
    """Cross-entropy on the expert's action (discrete), or MSE of the action mean to it (continuous)."""
    return F.mse_loss(out, target) if continuous else F.cross_entropy(out, target)


def mirrored_half(inputs: Tuple[torch.Tensor, ...], labels: torch.Tensor, mirror: torch.Tensor,
                  rng: np.random.Generator) -> Tuple[Tuple[torch.Tensor, ...], torch.Tensor]:
    """A random half of the batch mirrored left-right, image and action (`mirror[a]`: the action `a` becomes;
    edge_digr.mirror)."""
    flip = torch.from_numpy(rng.random(len(labels)) < 0.5).to(labels.device)
    return (flip_rows(inputs[0], flip), *inputs[1:]), torch.where(flip, mirror[labels], labels)


def train_on(learner: PixelPolicy, optimizer: torch.optim.Optimizer, task: Task, data: Dict[str, np.ndarray],
             updates: int, batch_size: int, rng: np.random.Generator, progress: bool = False,
             desc: str = "updates") -> float:
    """`updates` minibatch steps on frames drawn uniformly from `data`; returns the last 100 steps' mean loss."""
    from tqdm import tqdm

    names = [spec.name for spec in task.inputs]
    n = len(data["expert_action"])
    target = torch.from_numpy(data["expert_action"]).to(learner.device)
    mirror = mirrored_actions(task.train.mirror_actions, learner.device) if task.train.mirror_actions else None
    losses: List[float] = []
    learner.train()
    for _ in tqdm(range(updates), desc=desc, unit="update", disable=not progress, dynamic_ncols=True, leave=False):
        idx = rng.integers(0, n, size=min(batch_size, n))
        inputs = learner.inputs_from({name: data[name][idx] for name in names})
        labels = target[idx]
        if mirror is not None:
            inputs, labels = mirrored_half(inputs, labels, mirror, rng)
        loss = imitation_loss(learner(*inputs), labels, task.action.continuous)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    learner.eval()
    return float(np.mean(losses[-100:]))


def _load_round(path: Path) -> Dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is unreadable ({exc}); delete {path.parent} to start over") from None


def load_state(path: Path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(torch state, its JSON config) of an interrupted DAgger run, or a one-line error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state, json.loads(state["config"])
    except Exception as exc:  # truncated or foreign file
        raise UserError(f"{path} is unreadable ({type(exc).__name__}); delete {path.parent} to start over") from None


def saved_task(out: Path) -> Optional[str]:
    """The task of the DAgger run interrupted at `out`, if there is one."""
    path = work_dir_of(out) / "state.pt"
    return load_state(path)[1]["task"] if path.exists() else None


def train_imitation(task: Task, expert: Any, run: ImitationRun, resume: bool = False) -> PixelPolicy:
    from tqdm import tqdm

    cfg = run.config
    cfg.validate()
    torch.set_num_threads(run.threads)
    torch.manual_seed(cfg.seed)
    learner = PixelPolicy(PolicyConfig.for_task(task, "teacher")).to(run.device).eval()
    optimizer = torch.optim.Adam(learner.parameters(), lr=cfg.lr)
    start = 0
    history: List[Dict[str, float]] = []
    if resume:
        if not run.state_path.exists():
            raise UserError(f"nothing to resume: {run.state_path} does not exist; start without --resume")
        state, saved = load_state(run.state_path)
        # More rounds may be asked for on resume (train longer); every other option must match, since the
        # rounds already on disk were collected and trained with them.
        same = {**saved["imitation"], "rounds": cfg.rounds} == asdict(cfg)
        if saved["task"] != task.name or not same or cfg.rounds < int(state["rounds_done"]):
            raise UserError(f"{run.state_path} was written for other options ({saved['task']}, "
                            f"{saved['imitation']}); resume with the same --task and options (more --rounds "
                            f"is allowed), or delete {run.work_dir} to start over")
        learner.load_state_dict(state["learner"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = int(state["rounds_done"]), saved["history"]
    elif run.state_path.exists():
        raise UserError(f"{run.work_dir} holds an earlier run: pass --resume to continue it, or delete it")
    rounds = [_load_round(run.round_path(k)) for k in range(start)]

    bar = tqdm(total=cfg.rounds, initial=start, desc=f"expert DAgger {task.name}", unit="round",
               disable=not run.progress, dynamic_ncols=True)
    for k in range(start, cfg.rounds):
        beta = cfg.beta(k)
        new = collect_round(task, expert, learner, cfg.steps_per_round, beta, seed=round_seed(cfg.seed, k),
                            progress=run.progress, desc=f"round {k} (β={beta:.2f})")
        run.work_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(run.round_path(k)) as tmp, open(tmp, "wb") as f:
            np.savez(f, **new)  # through a file object: np.savez would append .npz to a bare temporary name
        rounds.append(new)
        data = {key: np.concatenate([r[key] for r in rounds]) for key in rounds[0] if key != "returns"}
        loss = train_on(learner, optimizer, task, data, cfg.updates_per_round, cfg.batch_size,
                        np.random.default_rng((cfg.seed, k)), progress=run.progress, desc=f"round {k} updates")
        mixed = new["returns"]
        history.append({"round": k, "beta": beta, "frames": int(len(data["expert_action"])), "loss": loss,
                        "mixed_return": float(mixed.mean()) if len(mixed) else float("nan")})
        with atomic_path(run.state_path) as tmp:
            torch.save({"learner": to_cpu(learner.state_dict()), "optimizer": to_cpu(optimizer.state_dict()),
                        "rounds_done": k + 1,
                        "config": json.dumps({"task": task.name, "imitation": asdict(cfg), "history": history})},
                       tmp)
        bar.set_postfix(loss=f"{loss:.4f}", frames=history[-1]["frames"], refresh=False)
        bar.update(1)
    bar.close()

    info: Dict[str, Any] = {"algorithm": "expert-dagger", "imitation": asdict(cfg), "history": history,
                            "frames": history[-1]["frames"] if history else 0, "seed": cfg.seed}
    save_checkpoint(run.out, learner, task.name, "teacher", **info)
    write_json(run.work_dir / "history.json", info)
    return learner
