"""Saliency-map statistics (numpy only): agreement with a reference map, pointing.

One implementation of the map statistics, shared by `evaluate` (against the teacher's perturbation maps)
and the precision fidelity report of `calibrate` and `selftest` (against the fp32 graph's maps).
"""
from __future__ import annotations

from typing import Dict, Optional

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
    return out
