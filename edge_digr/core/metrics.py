"""Saliency-map statistics (numpy only): agreement with a reference map, pointing, deletion faithfulness.

One implementation of the map statistics, shared by `evaluate` (against the teacher's perturbation maps)
and the precision fidelity report of `calibrate` and `selftest` (against the fp32 graph's maps).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np


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
        # The ceiling: a student whose map matched the teacher's perturbation map exactly would point this much.
        out["pointing_teacher_perturbation"] = float(pointing(reference, target_masks).mean())
    return out


# Deletion (Petsiuk et al. 2018, RISE): remove the k % of pixels a map ranks highest and watch the policy's
# own saliency target g fall. Removed pixels take the σ = 3 blur the perturbation map uses, so "removed"
# means the same thing for both kinds of map.
DELETION_FRACTIONS = (0.01, 0.02, 0.05, 0.10, 0.20)
DELETION_SEED = 0  # the random pixel order every map is compared with


def target_values(head_out: np.ndarray, continuous: bool, greedy: Optional[np.ndarray] = None) -> np.ndarray:
    """g for each frame: log π(a*|x) at the given greedy actions a* (discrete), else the K action means."""
    if continuous:
        return head_out
    z = head_out - head_out.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return logp[np.arange(len(logp)), greedy]


def deletion(head: Callable[[Dict[str, np.ndarray]], np.ndarray], maps: np.ndarray, inputs: Dict[str, np.ndarray],
             continuous: bool, fractions: Tuple[float, ...] = DELETION_FRACTIONS) -> Dict[str, float]:
    """Faithfulness of each frame's own map, teacher-independent; `head` maps batched inputs to logits or
    action means (any backend).

    For each k in `fractions`: replace the top-k share of pixels (all channels) by the blurred frame and take
    the fall of g, g(x) − g(x') for log π(a*) (a* fixed at x), mean |Δ| over components for continuous
    heads. `deletion_auc` is that fall averaged over k (the area under the curve, k on its own grid);
    `deletion_auc_random` the same for a random pixel order; `deletion_gain` their difference, > 0 when
    the map finds the pixels the decision depends on better than chance."""
    from edge_digr.core.perturbation import gaussian_blur

    frames = np.asarray(inputs["obs"], dtype=np.float32)
    n, _, h, w = frames.shape
    blurred = gaussian_blur(frames)
    base_out = np.asarray(head(inputs))
    greedy = None if continuous else base_out.argmax(axis=1)
    base = target_values(base_out, continuous, greedy)
    ranked = np.argsort(-collapse_components(maps).reshape(n, -1), axis=1, kind="stable")
    shuffled = np.random.default_rng(DELETION_SEED).permuted(np.tile(np.arange(h * w), (n, 1)), axis=1)
    out: Dict[str, float] = {}
    for name, order in (("deletion_auc", ranked), ("deletion_auc_random", shuffled)):
        falls = []
        for k in fractions:
            removed = np.zeros((n, h * w), dtype=bool)
            np.put_along_axis(removed, order[:, :max(1, int(round(k * h * w)))], True, axis=1)
            mask = removed.reshape(n, 1, h, w)
            feed = {**inputs, "obs": np.where(mask, blurred, frames)}
            after = target_values(np.asarray(head(feed)), continuous, greedy)
            fall = np.abs(base - after).mean(axis=1) if continuous else base - after
            falls.append(float(fall.mean()))
        out[name] = float(np.mean(falls))
    out["deletion_gain"] = out["deletion_auc"] - out["deletion_auc_random"]
    return out
