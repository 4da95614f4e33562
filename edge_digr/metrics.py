"""`edge-digr evaluate`: one handle over a policy file (.pt, SB3 .zip, fused .onnx, .plan) and its metrics.

A handle gives the head output and the gradient saliency map of a batch of inputs: from torch autograd
for checkpoints, from the fused graph's `saliency` output for .onnx/.plan. Perturbation saliency uses
the head output only, so it runs on any backend.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import numpy as np

from edge_digr.core.errors import UserError
from edge_digr.core.metrics import deletion, saliency_agreement
from edge_digr.core.perturbation import PerturbationConfig, perturbation_saliency
from edge_digr.core.tasks import Task
from edge_digr.evaluation import EVAL_SEED, Episodes, HeadFn, rollout, time_per_map_ms

TIMING_FRAMES = 8  # held-out frames timed for both saliency methods


@dataclass
class PolicyHandle:
    head: HeadFn
    saliency: Callable[[Dict[str, np.ndarray]], np.ndarray]
    kind: str  # "torch" | "onnx" | "tensorrt"


def open_policy(path: str, task: Task, device: str = "cpu") -> PolicyHandle:
    """A head and a saliency function for any policy file; a torch one runs on `device` (--device)."""
    if path.endswith((".onnx", ".plan", ".engine")):
        from edge_digr.runtime.runners import open_runner

        runner = open_runner(path)
        if runner.manifest.task != task.name:
            raise UserError(f"{path} was exported for task {runner.manifest.task!r}, not {task.name!r}")
        head_name = runner.output_names[0]
        return PolicyHandle(head=lambda feed: runner.infer(feed)[head_name],
                            saliency=lambda feed: runner.infer(feed)["saliency"],
                            kind="onnx" if path.endswith(".onnx") else "tensorrt")

    from edge_digr.checkpoint import load_policy
    from edge_digr.evaluation import torch_head
    from edge_digr.devices import resolve_device
    from edge_digr.saliency import Saliency

    policy = load_policy(path, task=task.name).to(resolve_device(device))
    if tuple(policy.cfg.obs_shape) != tuple(task.obs_shape):
        raise UserError(f"{path} takes observations of shape {policy.cfg.obs_shape}, task {task.name!r} "
                        f"gives {task.obs_shape}; pass the task it was trained on")
    explainer = Saliency(policy)
    return PolicyHandle(head=torch_head(policy),
                        saliency=lambda feed: explainer.attribute(policy.inputs_from(feed)),
                        kind="torch")


def held_out_frames(labels_path: str, task: Task) -> Dict[str, np.ndarray]:
    """The held-out episodes' frames that have a teacher perturbation map."""
    from edge_digr.labels import load_labels, mapped_only, split

    return mapped_only(split(load_labels(labels_path, task))[1])


def saliency_metrics(handle: PolicyHandle, task: Task, test: Dict[str, np.ndarray],
                     batch: int = 64) -> Dict[str, float]:
    """Agreement with the teacher's perturbation maps, pointing (Fetch) and deletion faithfulness."""
    names = [spec.name for spec in task.inputs]
    chunks = [{n: test[n][i:i + batch] for n in names} for i in range(0, len(test["obs"]), batch)]
    maps = [handle.saliency(chunk) for chunk in chunks]
    out = saliency_agreement(np.concatenate(maps), test["saliency"], test.get("target_mask"))
    faith = [deletion(handle.head, m, chunk, task.action.continuous) for m, chunk in zip(maps, chunks)]
    weights = [len(chunk["obs"]) for chunk in chunks]  # chunk means → the mean over all frames
    out.update({k: float(np.average([f[k] for f in faith], weights=weights)) for k in faith[0]})
    return out


def saliency_timing(handle: PolicyHandle, task: Task, test: Dict[str, np.ndarray],
                    frames: int = TIMING_FRAMES) -> Dict[str, float]:
    """Per-map time of the gradient map and of the perturbation map, same policy, same frames, same run."""
    feed = {spec.name: test[spec.name][:frames] for spec in task.inputs}
    n = len(feed["obs"])
    gradient = time_per_map_ms(lambda: handle.saliency(feed), n)
    perturbation = time_per_map_ms(lambda: perturbation_saliency(handle.head, feed, "obs", PerturbationConfig()),
                                   n, repeats=1)
    return {"gradient": gradient, "perturbation": perturbation, "speedup": perturbation / gradient, "frames": n}


def play(handle: PolicyHandle, task: Task, episodes: int, seed: int = 0, first: int = 0,
         progress: bool = False) -> Episodes:
    """Episodes first … first + episodes − 1 of evaluation seed `seed` (greedy actions). Each episode's
    environment seed depends on its index only, so shares of one evaluation, run apart, merge to the whole."""
    return rollout(handle.head, task, episodes, seed=EVAL_SEED + 1000 * seed + first, progress=progress)


def evaluate_policy(handle: PolicyHandle, task: Task, episodes: int, labels_path: Optional[str] = None,
                    seed: int = 0, progress: bool = True, timing: bool = True) -> Dict[str, Any]:
    metrics: Dict[str, Any] = play(handle, task, episodes, seed, progress=progress).summary()
    if labels_path:
        test = held_out_frames(labels_path, task)
        metrics.update(saliency_metrics(handle, task, test))
        if timing:
            metrics["time_ms"] = saliency_timing(handle, task, test)
    return metrics
