"""`edge-digr label`: roll the teacher out, then label every frame with its perturbation saliency.

labels.npz holds one array per graph input, named like the inputs (so it doubles as calibration data),
plus `teacher_out` (teacher logits or action means), `saliency` (N, H, W) teacher perturbation maps,
`episode` (N,), `mapped` (N,) bool: which frames have a map (`--maps`; the others hold zeros and serve
distillation's action term only) and, for minigrid-fetch, `target_mask` (N, H, W): the target object's tile.
"""
from __future__ import annotations

import copy
import dataclasses
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from edge_digr.core.errors import UserError
from edge_digr.evaluation import batched
from edge_digr.core.fileio import PathLike, atomic_path
from edge_digr.core.perturbation import PerturbationConfig
from edge_digr.policies import PixelPolicy
from edge_digr.saliency import Perturbation
from edge_digr.core.tasks import Task, fetch_target_mask, get_task

LABEL_KEYS = ("teacher_out", "saliency", "episode")


def whole_pixels(x: np.ndarray) -> np.ndarray:
    """`x` as uint8 where every value is a whole number in 0–255, as every task's pixels are (a quarter of
    float32's memory: 10⁵ Breakout frames take 2.8 GB, not 11), else as float32."""
    x = np.asarray(x)
    if x.dtype == np.uint8 or (x.size and x.min() >= 0 and x.max() <= 255 and np.array_equal(x, np.floor(x))):
        return x.astype(np.uint8, copy=False)
    return x.astype(np.float32, copy=False)


def explore(logits: np.ndarray, epsilon: Optional[float], rng: np.random.Generator) -> int:
    """A rollout's discrete action: sampled from softmax(logits) (epsilon None), or greedy with a uniformly
    random action on a share `epsilon` of the steps (TrainSpec.rollout_epsilon)."""
    if epsilon is None:
        p = np.exp(logits - logits.max())
        return int(rng.choice(len(p), p=p / p.sum()))
    return int(rng.integers(len(logits))) if rng.random() < epsilon else int(np.argmax(logits))


def collect(teacher: PixelPolicy, task: Task, frames: int, seed: int, progress: bool = True,
            actor: Optional[PixelPolicy] = None, worker: int = 0, workers: int = 1) -> Dict[str, np.ndarray]:
    """Frames visited by `actor` (default: the teacher), labelled with the teacher's outputs.

    The actor samples its own distribution or acts ε-greedily (discrete: explore()), or adds Gaussian
    exploration noise to its mean (continuous), so that the frames cover more than one greedy path. A
    student as actor gives the DAgger frames: the states the student reaches, with the teacher's answer
    there. Episode k has id and environment seed offset worker + k·workers: `workers` collections side by
    side (collect_side_by_side) interleave their episodes, and a single one (the default) numbers them
    0, 1, 2, …"""
    actor = actor or teacher
    from tqdm import tqdm

    rng = np.random.default_rng(seed if worker == 0 else (seed, worker))
    env = task.make_env()
    rows: Dict[str, list] = {spec.name: [] for spec in task.inputs}
    rows.update(teacher_out=[], episode=[], target_mask=[])
    episode, steps = worker, 0
    raw, _ = env.reset(seed=seed + episode)
    who = "teacher" if actor is teacher else "student"
    with tqdm(total=frames, desc=f"{who} rollouts {task.name}", unit="frame", disable=not progress) as bar:
        while len(rows["episode"]) < frames:
            inputs = task.preprocess(raw)
            feed = batched(inputs)
            with torch.no_grad():
                out = teacher(*teacher.inputs_from(feed))[0].cpu().numpy()
                acting = out if actor is teacher else actor(*actor.inputs_from(feed))[0].cpu().numpy()
            for name, value in inputs.items():  # pixels kept as uint8 (np.stack widens if a frame is not)
                rows[name].append(whole_pixels(value) if name == "obs" else value)
            rows["teacher_out"].append(out)
            rows["episode"].append(episode)
            if task.name == "minigrid-fetch":
                rows["target_mask"].append(fetch_target_mask(env))
            if task.action.continuous:
                action = task.action.choose(acting + rng.normal(0.0, 0.2, size=acting.shape))
            else:
                action = explore(acting, task.train.rollout_epsilon, rng)
            raw, _, terminated, truncated, _ = env.step(action)
            steps += 1
            limit = task.train.max_episode_steps
            if terminated or truncated or (limit is not None and steps >= limit):
                episode, steps = episode + workers, 0
                raw, _ = env.reset(seed=seed + episode)
            bar.update(1)
    env.close()
    data = {k: np.stack(v) for k, v in rows.items() if v}
    data["episode"] = data["episode"].astype(np.int32)
    return data


def _collect_share(teacher: PixelPolicy, name: str, train: Any, frames: int, seed: int, worker: int, workers: int,
                   progress: bool) -> Dict[str, np.ndarray]:
    """One process's collect(): the task rebuilt from its name and budget (a Task holds functions that do
    not pickle)."""
    torch.set_num_threads(1)
    task = dataclasses.replace(get_task(name), train=train)
    return collect(teacher, task, frames, seed, progress, worker=worker, workers=workers)


def collect_side_by_side(teacher: PixelPolicy, task: Task, frames: int, seed: int, workers: int = 1,
                         progress: bool = True) -> Dict[str, np.ndarray]:
    """The teacher's frames from `workers` processes side by side (on CPU, one thread each), each collecting
    its share with interleaved episodes; one worker is collect() itself. Rollouts are bound by the
    environment's single-threaded step, so a process per core is what divides their time."""
    workers = min(workers, frames)  # every worker collects at least one frame
    if workers <= 1:
        return collect(teacher, task, frames, seed, progress)
    cpu = copy.deepcopy(teacher).cpu()
    counts = [frames * (w + 1) // workers - frames * w // workers for w in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_collect_share, *zip(*[(cpu, task.name, task.train, counts[w], seed, w, workers,
                                                      progress and w == 0) for w in range(workers)])))
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def mapped_frames(frames: int, maps: Optional[int]) -> np.ndarray:
    """(frames,) bool: `maps` frames evenly spread over the rollout (all with None), so that the maps cover
    every episode and stretch of track rather than the first few."""
    mapped = np.zeros(frames, bool)
    count = frames if maps is None else min(maps, frames)
    mapped[(np.arange(count) * frames) // max(count, 1)] = True
    return mapped


def add_perturbation_maps(teacher: PixelPolicy, task: Task, data: Dict[str, np.ndarray],
                          config: PerturbationConfig = PerturbationConfig(), progress: bool = True,
                          ray_address: Optional[str] = None, ray_chunk: int = 8, maps: Optional[int] = None) -> None:
    """data["saliency"] = the teacher's perturbation map of `maps` frames of `data` (all with None; zeros
    elsewhere, with data["mapped"] saying which): here, or with `ray_address` as Ray tasks of `ray_chunk`
    frames each (edge_digr.ray_jobs), with the same result."""
    from tqdm import tqdm

    names = [spec.name for spec in task.inputs]
    frames = len(data["obs"])
    mapped = mapped_frames(frames, maps)
    subset = data if mapped.all() else {n: data[n][mapped] for n in names}  # no copy of every frame
    if not mapped.any():
        found = np.zeros((0,) + tuple(task.obs_shape[1:]), np.float32)
    elif ray_address is not None:
        from edge_digr.ray_jobs import ray_perturbation_maps

        found = ray_perturbation_maps(teacher, names, subset, config, ray_address, ray_chunk, progress)
    else:
        explainer = Perturbation(teacher, config)
        chunk = 16
        found = np.concatenate([explainer.attribute(tuple(torch.from_numpy(subset[n][i:i + chunk]) for n in names))
                                for i in tqdm(range(0, int(mapped.sum()), chunk), desc="perturbation saliency",
                                              unit="batch", disable=not progress)])
    saliency = np.zeros((frames,) + found.shape[1:], np.float32)
    saliency[mapped] = found
    data["saliency"], data["mapped"] = saliency, mapped


def label(teacher: PixelPolicy, task: Task, frames: int, seed: int, out: PathLike,
          config: PerturbationConfig = PerturbationConfig(), progress: bool = True,
          ray_address: Optional[str] = None, ray_chunk: int = 8, maps: Optional[int] = None,
          workers: int = 1) -> Dict[str, np.ndarray]:
    """Rollouts here (in `workers` processes side by side), maps (of `maps` frames; all with None) here or on
    Ray; the file is written (atomically) only once every map is in, so a Ctrl-C, which cancels the
    outstanding Ray tasks, leaves no output behind."""
    data = collect_side_by_side(teacher, task, frames, seed, workers, progress)
    add_perturbation_maps(teacher, task, data, config, progress, ray_address, ray_chunk, maps)
    save_labels(out, data)
    return data


def save_labels(path: PathLike, data: Dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez_compressed(f, **data)


def load_labels(path: PathLike, task: Task) -> Dict[str, np.ndarray]:
    if not Path(path).exists():
        raise UserError(f"{path} does not exist; make it with `edge-digr label`")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (ValueError, OSError) as exc:
        raise UserError(f"{path} is not a readable labels .npz ({exc}); re-run `edge-digr label`") from None
    needed = [spec.name for spec in task.inputs] + list(LABEL_KEYS)
    missing = [k for k in needed if k not in data]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)} for task {task.name!r}; "
                        f"re-run `edge-digr label --task {task.name}`")
    if data["obs"].shape[1:] != tuple(task.obs_shape):
        raise UserError(f"{path} holds frames of shape {data['obs'].shape[1:]}, task {task.name!r} "
                        f"expects {tuple(task.obs_shape)}")
    return data


def mapped_only(data: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The frames of `data` that have a teacher map, pixels as float32 (what the policies take; labels store
    them as uint8): what saliency metrics and pictures compare against."""
    picked = {k: v[data["mapped"]] for k, v in data.items()} if "mapped" in data else dict(data)
    picked["obs"] = picked["obs"].astype(np.float32, copy=False)
    return picked


def split(data: Dict[str, np.ndarray], held_out: float = 0.2):
    """(train, held-out) by whole episodes: the last `held_out` share of episodes is held out."""
    episodes = np.unique(data["episode"])
    cut = episodes[int(np.floor(len(episodes) * (1 - held_out)))] if len(episodes) > 1 else episodes[-1] + 1
    test = data["episode"] >= cut
    if test.all() or not test.any():  # one long episode: hold out its tail instead
        test = np.arange(len(data["episode"])) >= int(len(data["episode"]) * (1 - held_out))
    return ({k: v[~test] for k, v in data.items()}, {k: v[test] for k, v in data.items()})
