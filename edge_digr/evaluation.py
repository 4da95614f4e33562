"""Rollouts on fixed seeds for `edge-digr evaluate` (the saliency-map statistics are the core's:
`edge_digr.core.metrics`).

Torch-free at import: a policy is anything that maps a dict of batched input arrays to its head output
(logits, or the action mean). `torch_head` wraps a torch policy; the runtime's runners fit as they are.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from edge_digr.core.tasks import Task

HeadFn = Callable[[Dict[str, np.ndarray]], np.ndarray]
ObsHook = Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]

EVAL_SEED = 10_000  # evaluation episodes use seeds EVAL_SEED + i, never seen in training


def batched(arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {k: v[None] for k, v in arrays.items()}


@dataclass
class Episodes:
    returns: List[float]
    lengths: List[int]
    successes: List[bool]

    def summary(self) -> Dict[str, float]:
        return {"return": float(np.mean(self.returns)), "return_std": float(np.std(self.returns)),
                "success": float(np.mean(self.successes)), "episodes": len(self.returns),
                "length": float(np.mean(self.lengths))}


def rollout(head: HeadFn, task: Task, episodes: int, seed: int = EVAL_SEED,
            obs_hook: Optional[ObsHook] = None, max_steps: Optional[int] = None,
            progress: bool = False) -> Episodes:
    """Run `episodes` episodes with seeds seed, seed+1, ...; `obs_hook` may alter each step's inputs
    (observation attacks) before the policy sees them."""
    from tqdm import tqdm

    env = task.make_env()
    limit = max_steps or task.train.max_episode_steps
    out = Episodes([], [], [])
    try:
        for ep in tqdm(range(episodes), desc=f"evaluate {task.name}", unit="ep", disable=not progress):
            raw, _ = env.reset(seed=seed + ep)
            total, steps, done = 0.0, 0, False
            while not done:
                inputs = batched(task.preprocess(raw))
                if obs_hook is not None:
                    inputs = obs_hook(inputs)
                action = task.action.choose(np.asarray(head(inputs)))[0]
                raw, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                steps += 1
                done = terminated or truncated or (limit is not None and steps >= limit)
            out.returns.append(total)
            out.lengths.append(steps)
            out.successes.append(bool(task.success(total)))
    finally:
        env.close()
    return out


def torch_head(policy: Any) -> HeadFn:
    """Wrap a torch PixelPolicy as a HeadFn (no_grad, on the policy's device, numpy out)."""
    import torch

    def head(inputs: Dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return policy(*policy.inputs_from(inputs)).cpu().numpy()

    return head


def time_per_map_ms(fn: Callable[[], Any], frames: int, repeats: int = 3) -> float:
    """Best-of-`repeats` wall time of `fn` (which computes `frames` maps), per map, in ms."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 1000.0 * best / frames
