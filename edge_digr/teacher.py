"""PPO teachers with Stable-Baselines3, on the task's own preprocessing, with checkpoints and resume.

The SB3 features extractor is a `PixelTrunk` and net_arch is empty, so the trained actor maps onto a
`PixelPolicy` key for key (edge_digr.checkpoint.sb3_to_policy_state). Resume reads only SB3's weight
files (`set_parameters`, weights_only=True) plus our own JSON progress record: nothing is unpickled.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from edge_digr.checkpoint import save_checkpoint, sb3_to_policy_state
from edge_digr.core.errors import UserError
from edge_digr.core.fileio import write_json
from edge_digr.policies import PixelPolicy, PixelTrunk, PolicyConfig
from edge_digr.core.tasks import Task


class TaskObservation(gym.ObservationWrapper):
    """Raw env observations → the task's graph inputs (a Dict space), through `task.preprocess`."""

    def __init__(self, env: gym.Env, task: Task):
        super().__init__(env)
        self.task = task
        self.observation_space = gym.spaces.Dict({
            spec.name: gym.spaces.Box(0.0, 255.0 if spec.name == "obs" else 1.0, spec.shape, np.float32)
            for spec in task.inputs})

    def observation(self, observation: Any) -> Dict[str, np.ndarray]:
        return self.task.preprocess(observation)


class TrunkExtractor(BaseFeaturesExtractor):
    def __init__(self, observation_space: gym.spaces.Dict, config: Dict[str, Any]):
        cfg = PolicyConfig.from_dict(config)
        trunk = PixelTrunk(cfg)
        super().__init__(observation_space, trunk.out_dim)
        self.trunk = trunk

    def forward(self, observations: Dict[str, torch.Tensor]) -> torch.Tensor:
        extra = observations[self.trunk.cfg.extra_name] if self.trunk.cfg.extra_dim else None
        return self.trunk(observations["obs"], extra)


@dataclass
class TeacherRun:
    out: Path  # teacher.pt; SB3 weights and progress live next to it
    steps: int
    seed: int = 0
    n_envs: Optional[int] = None
    checkpoint_every: int = 50_000
    subprocess: bool = False
    progress: bool = True
    # One thread: the nets are small and env stepping is serial, so more threads mostly spin (measured).
    threads: int = 1
    device: str = "cpu"  # torch device of PPO's updates (--device)

    @property
    def sb3_path(self) -> Path:
        return self.out.with_suffix(".sb3.zip")

    @property
    def progress_path(self) -> Path:
        return self.out.with_suffix(".progress.json")


def make_vec_env(task: Task, n_envs: int, seed: int, subprocess: bool) -> VecEnv:
    def factory(rank: int):
        def make() -> gym.Env:
            env = TaskObservation(task.make_env(), task)
            if task.train.max_episode_steps:
                env = gym.wrappers.TimeLimit(env, task.train.max_episode_steps)
            env = Monitor(env)  # episode returns for SB3's logger and the progress bar
            env.reset(seed=seed * 1000 + rank)
            return env
        return make

    fns = [factory(i) for i in range(n_envs)]
    return SubprocVecEnv(fns) if subprocess and n_envs > 1 else DummyVecEnv(fns)


def build_ppo(task: Task, env: VecEnv, seed: int, device: str = "cpu") -> PPO:
    t = task.train
    cfg = PolicyConfig.for_task(task, "teacher")
    return PPO("MultiInputPolicy", env, seed=seed, n_steps=t.n_steps, batch_size=t.batch_size,
               n_epochs=t.n_epochs, learning_rate=t.learning_rate, ent_coef=t.ent_coef, gamma=t.gamma,
               gae_lambda=t.gae_lambda, clip_range=t.clip_range, verbose=0, device=device,
               policy_kwargs=dict(features_extractor_class=TrunkExtractor,
                                  features_extractor_kwargs=dict(config=cfg.to_dict()),
                                  net_arch=dict(pi=[], vf=[]), normalize_images=False))


def actor_of(model: PPO, task: Task) -> PixelPolicy:
    """The PPO actor as a PixelPolicy (continuous: the Gaussian's mean)."""
    policy = PixelPolicy(PolicyConfig.for_task(task, "teacher"))
    policy.load_state_dict(sb3_to_policy_state(model.policy.state_dict(), policy))
    return policy.eval()


class Checkpointer(BaseCallback):
    """Progress bar (steps/s, ETA) and periodic, atomic checkpoints that `--resume` continues from."""

    def __init__(self, run: TeacherRun, task: Task, start: int):
        super().__init__()
        self.run, self.task, self.start = run, task, start
        self.last_saved = start

    def _on_training_start(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=self.run.steps, initial=self.start, desc=f"PPO teacher {self.task.name}",
                        unit="step", unit_scale=True, dynamic_ncols=True,
                        disable=not self.run.progress)

    def _on_step(self) -> bool:
        self.bar.update(self.model.num_timesteps - self.bar.n)
        if self.model.num_timesteps - self.last_saved >= self.run.checkpoint_every:
            self.save()
        return True

    def _on_training_end(self) -> None:
        self.bar.close()

    def save(self) -> None:
        save_teacher(self.model, self.task, self.run)
        self.last_saved = self.model.num_timesteps


def save_teacher(model: PPO, task: Task, run: TeacherRun) -> None:
    from edge_digr.core.fileio import atomic_path

    with atomic_path(run.sb3_path) as tmp:
        model.save(tmp)
    save_checkpoint(run.out, actor_of(model, task), task.name, "teacher",
                    steps=int(model.num_timesteps), seed=run.seed, algorithm="sb3-ppo")
    write_json(run.progress_path, {"task": task.name, "steps": int(model.num_timesteps), "seed": run.seed})


def read_progress(path: Path) -> Dict[str, Any]:
    """`<out>.progress.json` of an interrupted run ({"task", "steps", "seed"}), or a one-line error."""
    try:
        progress = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        progress = exc
    if not isinstance(progress, dict) or not isinstance(progress.get("task"), str) \
            or not isinstance(progress.get("steps"), int) or progress["steps"] < 0:
        raise UserError(f"{path} is unreadable or not a progress record of `edge-digr train-teacher`; "
                        "delete it to start over, or run without --resume")
    return progress


def train_teacher(task: Task, run: TeacherRun, resume: bool = False) -> PixelPolicy:
    torch.set_num_threads(run.threads)
    env = make_vec_env(task, run.n_envs or task.train.n_envs, run.seed, run.subprocess)
    model = build_ppo(task, env, run.seed, run.device)
    start = 0
    if resume:
        if not (run.sb3_path.exists() and run.progress_path.exists()):
            raise UserError(f"nothing to resume at {run.out}: {run.sb3_path.name} or "
                            f"{run.progress_path.name} is missing; start without --resume")
        progress = read_progress(run.progress_path)
        if progress["task"] != task.name:
            raise UserError(f"{run.progress_path} is a {progress['task']!r} run, not {task.name!r}")
        try:
            model.set_parameters(str(run.sb3_path), exact_match=True, device=run.device)
        except Exception as exc:  # SB3 raises zipfile, torch and key errors for a damaged or foreign archive
            raise UserError(f"{run.sb3_path} is unreadable or not this run's ({type(exc).__name__}); "
                            f"delete it and {run.progress_path.name} to start over, or run without --resume") from None
        start = model.num_timesteps = progress["steps"]
    callback = Checkpointer(run, task, start)
    try:
        if run.steps > start:
            model.learn(total_timesteps=run.steps - start, callback=callback, reset_num_timesteps=False)
    finally:
        env.close()
    save_teacher(model, task, run)  # not callback.save(): the callback is unbound when nothing was left to learn
    return actor_of(model, task)
