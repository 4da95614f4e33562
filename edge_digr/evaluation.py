"""Rollouts on fixed seeds and the metrics of `edge-digr evaluate`.

Torch-free at import: a policy is anything that maps a dict of batched input arrays to its head output
(logits, or the action mean). `torch_head` wraps a torch policy; the runtime's runners fit as they are.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from edge_digr.tasks import Task

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


# ------------------------------------------------------------------------------------- saliency metrics
# One implementation of the map statistics, shared by `evaluate` (against the teacher's maps) and the
# precision fidelity report (against the fp32 graph's maps).
def _flat(maps: np.ndarray) -> np.ndarray:
    return maps.reshape(maps.shape[0], -1).astype(np.float64)


def pearson(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Pearson r of each pair of maps (N, ...). A constant map has no correlation: r = 1 if both maps are
    constant and equal (e.g. both all-zero), else 0."""
    ref, cand = _flat(ref), _flat(cand)
    a = ref - ref.mean(axis=1, keepdims=True)
    b = cand - cand.mean(axis=1, keepdims=True)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    flat_a = na <= 1e-12 * np.maximum(np.abs(ref).max(axis=1), 1.0)
    flat_b = nb <= 1e-12 * np.maximum(np.abs(cand).max(axis=1), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / (na * nb)
    r = np.where(flat_a | flat_b, 0.0, np.clip(r, -1.0, 1.0))
    both_flat_equal = flat_a & flat_b & np.all(np.isclose(ref, cand), axis=1)
    return np.where(both_flat_equal, 1.0, r)


def top_iou(ref: np.ndarray, cand: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """IoU of the pixel sets at or above each map's k-th largest value, k = ceil(fraction · pixels).

    Ties at the threshold are all kept, so quantized maps with many equal values are not penalised by an
    arbitrary choice among them."""
    ref, cand = _flat(ref), _flat(cand)
    k = max(1, int(np.ceil(fraction * ref.shape[1])))
    ta = -np.partition(-ref, k - 1, axis=1)[:, k - 1:k]
    tb = -np.partition(-cand, k - 1, axis=1)[:, k - 1:k]
    ma, mb = ref >= ta, cand >= tb
    return (ma & mb).sum(axis=1) / np.maximum((ma | mb).sum(axis=1), 1)


def pointing(maps: np.ndarray, target_masks: np.ndarray) -> np.ndarray:
    """Per-frame share of saliency mass on the target object's tile."""
    mass = _flat(maps)
    on = (mass * _flat(target_masks)).sum(1)
    return on / np.maximum(mass.sum(1), 1e-12)


def collapse_components(maps: np.ndarray) -> np.ndarray:
    """(N, K, H, W) continuous-task gradient maps → (N, H, W) by max, to compare with the one
    perturbation map (which scores the whole action mean)."""
    return maps.max(axis=1) if maps.ndim == 4 else maps


def saliency_agreement(maps: np.ndarray, reference: np.ndarray, target_masks: Optional[np.ndarray] = None,
                       fraction: float = 0.1) -> Dict[str, float]:
    maps = collapse_components(maps)
    out = {"saliency_pearson": float(pearson(maps, reference).mean()),
           "saliency_iou_top10": float(top_iou(maps, reference, fraction).mean())}
    if target_masks is not None:
        out["pointing"] = float(pointing(maps, target_masks).mean())
    return out


def time_per_map_ms(fn: Callable[[], Any], frames: int, repeats: int = 3) -> float:
    """Best-of-`repeats` wall time of `fn` (which computes `frames` maps), per map, in ms."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 1000.0 * best / frames
