"""Feeds: where the frames the policy sees come from, and `--save-feed` recording of what it saw.

- ``env``: the task's gymnasium env with the task's own preprocessing (`edge_digr.core.tasks`, shared with
  training and evaluation); the policy's actions drive it.
- ``replay:PATH``: a `.npz` holding one array (T, *input shape) per graph input, named like the inputs
  (what `--save-feed` writes), or a folder of PNG frames (RGB for 3-channel inputs; grey frames stacked
  like the env stacks them for multi-channel inputs). Actions are computed but drive nothing.
- ``carla://HOST:PORT``: the CARLA lane-following env on that server (bounded reconnects, dropped
  camera frames counted; see `edge_digr.core.carla_env`).

Every feed yields `Frame`s; a frame's `inputs` are unbatched float32 arrays keyed by graph input name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edge_digr.core.errors import UserError
from edge_digr.core.fileio import PathLike, atomic_path
from edge_digr.core.manifest import Manifest


@dataclass
class Frame:
    inputs: Dict[str, np.ndarray]  # unbatched, float32, named like the graph inputs
    reward: float = 0.0  # reward received on arriving at this frame
    done: bool = False  # this frame ends its episode (no action is taken on it)
    dropped: bool = False  # the source lost this frame: `inputs` repeats the previous one
    info: Dict[str, Any] = field(default_factory=dict)


class Feed:
    """A source of frames. `reset()` starts an episode; `step(action)` returns the next frame or None at end."""

    interactive = False  # whether actions change what comes next

    def reset(self) -> Optional[Frame]:
        raise NotImplementedError

    def step(self, action: Any) -> Optional[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Feed":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class EnvFeed(Feed):
    """The task's gymnasium env; observations go through the task's one preprocessing function."""

    interactive = True

    def __init__(self, task_name: str, seed: int = 0, **env_options: Any):
        from edge_digr.core.tasks import get_task

        self.task = get_task(task_name)
        self.env = self.task.make_env(seed=seed, **env_options)
        self.seed = seed
        self._episode = 0

    def reset(self) -> Frame:
        # Seed each episode from the run seed so a run is reproducible episode by episode.
        raw, info = self.env.reset(seed=self.seed + self._episode)
        self._episode += 1
        return Frame(self.task.preprocess(raw), info=dict(info))

    def step(self, action: Any) -> Frame:
        raw, reward, terminated, truncated, info = self.env.step(action)
        return Frame(self.task.preprocess(raw), float(reward), bool(terminated or truncated),
                     bool(info.get("frame_dropped", False)), dict(info))

    def close(self) -> None:
        self.env.close()


class ReplayFeed(Feed):
    """Recorded frames, one episode; the actions computed on them drive nothing."""

    def __init__(self, frames: Dict[str, np.ndarray], source: str):
        lengths = {len(v) for v in frames.values()}
        if len(lengths) != 1:
            raise UserError(f"{source}: the inputs hold different numbers of frames "
                            f"({', '.join(f'{k}: {len(v)}' for k, v in frames.items())})")
        self.frames = frames
        self.length = lengths.pop()
        self._t = 0
        self._started = False

    def reset(self) -> Optional[Frame]:
        if self._started or self.length == 0:
            return None  # a replay is one episode
        self._started = True
        return self._frame()

    def step(self, action: Any) -> Optional[Frame]:
        self._t += 1
        if self._t >= self.length:
            return None
        return self._frame()

    def _frame(self) -> Frame:
        return Frame({k: v[self._t] for k, v in self.frames.items()}, done=self._t == self.length - 1)


# ------------------------------------------------------------------------------------------- parsing
def open_feed(spec: str, manifest: Manifest, seed: int = 0) -> Feed:
    """The feed for `--feed` (env | replay:PATH | carla://HOST:PORT), checked against the model's inputs."""
    if spec == "env":
        return EnvFeed(manifest.task, seed=seed)
    if spec.startswith("replay:"):
        return ReplayFeed(load_replay(spec[len("replay:"):], manifest), spec)
    if spec.startswith("carla://"):
        host, port, options = parse_carla_url(spec)
        if manifest.task != "carla":
            raise UserError(f"--feed {spec} drives the carla task, but this model is for {manifest.task!r}")
        return EnvFeed("carla", seed=seed, host=host, port=port, **options)
    raise UserError(f"unknown feed {spec!r}; use env, replay:PATH (.npz or a PNG folder) or carla://HOST:PORT")


# Bounds of carla:// query values: beyond them a typo would hang a run for days (NaN fails every comparison).
MAX_CARLA_TIMEOUT_S = 600.0
MAX_CARLA_RETRIES = 100


def parse_carla_url(spec: str) -> Tuple[str, int, Dict[str, Any]]:
    """(host, port, connection options) from carla://HOST:PORT[?timeout=SECONDS&retries=N]."""
    from urllib.parse import parse_qs, urlsplit

    from edge_digr.core.carla_env import Backoff

    bad = (f"bad CARLA address {spec!r}; expected carla://HOST:PORT[?timeout=SECONDS&retries=N] with "
           f"0 < SECONDS <= {MAX_CARLA_TIMEOUT_S} and 1 <= N <= {MAX_CARLA_RETRIES}")
    try:
        url = urlsplit(spec)
        host, port = url.hostname, url.port or 2000  # CARLA's default RPC port
        query = {k: v[-1] for k, v in parse_qs(url.query, strict_parsing=bool(url.query)).items()}
        options: Dict[str, Any] = {}
        if "timeout" in query:
            options["timeout_s"] = float(query.pop("timeout"))
        if "retries" in query:
            options["backoff"] = Backoff(attempts=int(query.pop("retries")))
    except ValueError:
        raise UserError(bad) from None
    if not host or query or url.path not in ("", "/") or not 0 < options.get("timeout_s", 1) <= MAX_CARLA_TIMEOUT_S \
            or ("backoff" in options and not 1 <= options["backoff"].attempts <= MAX_CARLA_RETRIES):
        raise UserError(bad)
    return host, port, options


def _input_shapes(manifest: Manifest) -> Dict[str, Tuple[int, ...]]:
    return {i["name"]: tuple(i["shape"][1:]) for i in manifest.inputs}


def load_replay(path: PathLike, manifest: Manifest) -> Dict[str, np.ndarray]:
    """{input name: (T, *shape) float32} from a .npz or a folder of PNG frames, shapes checked."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"replay source {path} does not exist; check the path")
    frames = _load_png_folder(p, manifest) if p.is_dir() else _load_npz(p, manifest)
    if any(a.ndim >= 1 and len(a) == 0 for a in frames.values()):
        raise UserError(f"replay {path} holds no frames; record some with `edge-digr run --save-feed FILE.npz`")
    for name, shape in _input_shapes(manifest).items():
        got = frames[name].shape[1:]
        if got != shape:
            raise UserError(f"replay {path}: frames of input {name!r} have shape {got}, the model takes {shape}")
    return frames


def _load_npz(path: Path, manifest: Manifest) -> Dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:  # nothing user-supplied is unpickled
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # zipfile / ValueError / OSError for corrupt or truncated archives
        raise UserError(f"replay {path} is not a readable .npz ({type(exc).__name__}); "
                        "record one with `edge-digr run --save-feed FILE.npz`") from None
    missing = [n for n in manifest.input_names if n not in arrays]
    if missing:
        raise UserError(f"replay {path} lacks array(s) {', '.join(missing)} (has {', '.join(arrays) or 'none'}); "
                        "it needs one array per model input, named like the inputs")
    bad = [n for n in manifest.input_names if arrays[n].dtype.kind not in "biuf"]
    if bad:
        raise UserError(f"replay {path}: array {bad[0]!r} holds {arrays[bad[0]].dtype} values, not numbers; "
                        "it needs pixel values (as `--save-feed` writes them)")
    return {n: np.asarray(arrays[n], dtype=np.float32) for n in manifest.input_names}


def _load_png_folder(folder: Path, manifest: Manifest) -> Dict[str, np.ndarray]:
    from PIL import Image

    if len(manifest.inputs) != 1:
        raise UserError(f"a PNG folder holds images only, but this model also needs "
                        f"{', '.join(manifest.input_names[1:])}; replay a .npz recorded with --save-feed")
    files = sorted(folder.glob("*.png"))
    if not files:
        raise UserError(f"replay folder {folder} holds no .png frames")
    channels = int(manifest.inputs[0]["shape"][1])
    images: List[np.ndarray] = []
    for f in files:
        try:
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("RGB" if channels == 3 else "L"), dtype=np.float32))
        except OSError:
            raise UserError(f"replay frame {f} is not a readable PNG") from None
    sizes = sorted({im.shape[:2] for im in images})
    if len(sizes) != 1:
        raise UserError(f"replay PNG frames in {folder} differ in size (height, width): "
                        f"{', '.join(map(str, sizes))}; a replay needs frames of one size")
    if channels == 3:
        obs = np.stack([np.transpose(im, (2, 0, 1)) for im in images])
    else:
        obs = _stack_grey(images, channels)
    return {manifest.input_names[0]: obs}


def _stack_grey(images: Sequence[np.ndarray], depth: int) -> np.ndarray:
    """(T, depth, H, W): each frame with the depth-1 frames before it, the first frame repeated at the start
    (as gymnasium's FrameStackObservation pads with the reset observation). The frames share one size."""
    padded = [images[0]] * (depth - 1) + list(images)
    return np.stack([np.stack(padded[t:t + depth]) for t in range(len(images))])


# ------------------------------------------------------------------------------------------ recording
class FeedRecorder:
    """Collects the inputs the policy actually saw; `save()` writes them as one .npz array per input."""

    def __init__(self, path: PathLike, input_names: Sequence[str]):
        self.path = Path(path)
        self.input_names = list(input_names)
        self._frames: Dict[str, List[np.ndarray]] = {n: [] for n in self.input_names}

    def add(self, inputs: Dict[str, np.ndarray]) -> None:
        for n in self.input_names:
            self._frames[n].append(np.asarray(inputs[n], dtype=np.float32))

    def __len__(self) -> int:
        return len(self._frames[self.input_names[0]])

    def save(self) -> Path:
        arrays = {n: np.stack(v) if v else np.zeros((0,), np.float32) for n, v in self._frames.items()}
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as f:  # a file object: np.savez would otherwise append ".npz" to the name
                np.savez_compressed(f, **arrays)
        return self.path
