"""Greydanus et al. (2018) perturbation saliency, torch-free: any backend that maps inputs to outputs.

For each point (i, j) of a stride-`stride` grid: a Gaussian mask M (σ = `mask_sigma`, max 1) centred at
(i, j); the perturbed frame x' = x·(1−M) + blur(x, σ = `blur_sigma`)·M; the score
S(i, j) = ½‖f(x) − f(x')‖² on the policy's head output (logits, or the action mean for continuous
tasks); S is then interpolated back to the frame size. About (H/stride)·(W/stride) forward passes per
frame, batched here so that each backend call evaluates `batch_size` perturbed frames at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import numpy as np

Forward = Callable[[Dict[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class PerturbationConfig:
    stride: int = 5
    mask_sigma: float = 5.0
    blur_sigma: float = 3.0
    # Perturbed frames per backend call. 64: on one thread (each student's DAgger maps) the fastest of 32-256,
    # 1.24x faster than 256 per car-racing map; on two (the labels) 1.24x too, within 10 % of 128's 1.38x
    # (benchmarks/perturbation_batch.py; docs/RESULTS.md, "A faster demo").
    batch_size: int = 64


def grid_points(h: int, w: int, stride: int) -> Tuple[np.ndarray, np.ndarray]:
    return np.arange(0, h, stride), np.arange(0, w, stride)


def gaussian_masks(h: int, w: int, stride: int = 5, sigma: float = 5.0) -> np.ndarray:
    """(len(rows)·len(cols), H, W) float32 masks, row-major over the grid, each with maximum 1."""
    rows, cols = grid_points(h, w, stride)
    gy = np.exp(-((np.arange(h)[None, :] - rows[:, None]) ** 2) / (2 * sigma ** 2))  # (R, H)
    gx = np.exp(-((np.arange(w)[None, :] - cols[:, None]) ** 2) / (2 * sigma ** 2))  # (C, W)
    return np.einsum("rh,cw->rchw", gy, gx).reshape(len(rows) * len(cols), h, w).astype(np.float32)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = int(4.0 * sigma + 0.5)  # scipy.ndimage.gaussian_filter's default truncation
    taps = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma ** 2))
    return taps / taps.sum()


def gaussian_blur(frames: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    """Separable Gaussian blur over the last two axes, 'reflect' borders (as scipy.ndimage)."""
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    out = frames.astype(np.float32)
    for axis in (-2, -1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")  # scipy's 'reflect' repeats the edge sample
        n = out.shape[axis]
        out = sum(k * np.take(padded, np.arange(i, i + n), axis=axis) for i, k in enumerate(kernel))
    return out.astype(np.float32)


def upsample_grid(scores: np.ndarray, h: int, w: int, stride: int) -> np.ndarray:
    """Bilinear interpolation of (..., R, C) grid scores, sampled at pixels (stride·r, stride·c), to (..., H, W)."""
    rows, cols = grid_points(h, w, stride)
    ry = np.interp(np.arange(h), rows, np.arange(len(rows)))  # fractional grid row of every pixel row
    rx = np.interp(np.arange(w), cols, np.arange(len(cols)))
    y0 = np.floor(ry).astype(int)
    x0 = np.floor(rx).astype(int)
    y1 = np.minimum(y0 + 1, len(rows) - 1)
    x1 = np.minimum(x0 + 1, len(cols) - 1)
    fy = (ry - y0)[:, None]
    fx = (rx - x0)[None, :]
    s = scores
    top = s[..., y0, :][..., :, x0] * (1 - fx) + s[..., y0, :][..., :, x1] * fx
    bottom = s[..., y1, :][..., :, x0] * (1 - fx) + s[..., y1, :][..., :, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def perturbation_saliency(forward: Forward, inputs: Dict[str, np.ndarray], image: str = "obs",
                          config: PerturbationConfig = PerturbationConfig()) -> np.ndarray:
    """(N, H, W) perturbation saliency of a batch. `forward` maps a dict of batched arrays to (B, A) outputs.

    Inputs other than `image` (e.g. the mission) are held fixed at each frame's value.
    """
    frames = np.asarray(inputs[image], dtype=np.float32)
    n, _, h, w = frames.shape
    masks = gaussian_masks(h, w, config.stride, config.mask_sigma)[:, None]  # (G, 1, H, W)
    rows, cols = grid_points(h, w, config.stride)
    base = np.asarray(forward({k: np.asarray(v, dtype=np.float32) for k, v in inputs.items()}))
    blurred = gaussian_blur(frames, config.blur_sigma)
    scores = np.empty((n, len(masks)), dtype=np.float32)
    for f in range(n):
        others = {k: np.asarray(v[f:f + 1], dtype=np.float32) for k, v in inputs.items() if k != image}
        for start in range(0, len(masks), config.batch_size):
            m = masks[start:start + config.batch_size]
            perturbed = frames[f] * (1.0 - m) + blurred[f] * m
            feed = {image: perturbed,  # float32 already: frames, blurred and masks all are
                    **{k: np.repeat(v, len(m), axis=0) for k, v in others.items()}}
            out = np.asarray(forward(feed))
            scores[f, start:start + len(m)] = 0.5 * ((out - base[f]) ** 2).sum(axis=1)
    return upsample_grid(scores.reshape(n, len(rows), len(cols)), h, w, config.stride)
