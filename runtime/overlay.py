"""Saliency overlays and their recording: frame | heat map(s) side by side, to .mp4, .gif or a window.

numpy + Pillow + imageio only (the Jetson install): the colour map is computed here, not by matplotlib.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge_digr.errors import UserError
from edge_digr.fileio import PathLike, atomic_path

MIN_PANEL_HEIGHT = 160  # small frames (MiniGrid's 40 px) are enlarged to stay readable
RECORD_SUFFIXES = (".mp4", ".gif")

# Anchor colours of a perceptually ordered dark-to-bright map (inferno-like), interpolated linearly.
_ANCHORS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                     [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=np.float32)


def colormap(values: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) for values in [0, 1]."""
    x = np.clip(values, 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, len(_ANCHORS) - 1)
    t = (x - lo)[..., None]
    return ((1 - t) * _ANCHORS[lo] + t * _ANCHORS[hi]).astype(np.uint8)


def display_frame(obs: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) of a CHW raw-pixel input: the RGB image, or the newest grey frame of a stack."""
    obs = np.nan_to_num(np.asarray(obs, dtype=np.float32))
    image = np.transpose(obs, (1, 2, 0)) if obs.shape[0] == 3 else np.repeat(obs[-1][:, :, None], 3, axis=2)
    return np.clip(image, 0, 255).astype(np.uint8)


def heat_overlay(frame: np.ndarray, saliency: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The frame (in grey, so the colours are the map's) blended with the map normalised to its maximum."""
    sal = np.nan_to_num(np.asarray(saliency, dtype=np.float32))
    peak = float(sal.max())
    heat = colormap(sal / peak if peak > 0 else sal).astype(np.float32)
    grey = frame.astype(np.float32).mean(axis=2, keepdims=True)
    return np.clip((1 - alpha) * grey + alpha * heat, 0, 255).astype(np.uint8)


def compose(obs: np.ndarray, saliency: np.ndarray, labels: Sequence[str] = ()) -> np.ndarray:
    """frame | overlay [| overlay ...]: one overlay for a (H, W) map, one per component of a (K, H, W) map.

    Panels are enlarged by an integer factor for small frames and the result has even sides (H.264 needs it).
    """
    frame = display_frame(obs)
    maps = saliency[None] if saliency.ndim == 2 else saliency
    panels = [frame] + [heat_overlay(frame, m) for m in maps]
    scale = max(1, -(-MIN_PANEL_HEIGHT // frame.shape[0]))
    strip = np.concatenate([p.repeat(scale, 0).repeat(scale, 1) for p in panels], axis=1)
    if labels:
        strip = _label(strip, ["frame", *labels], frame.shape[1] * scale)
    pad_h, pad_w = strip.shape[0] % 2, strip.shape[1] % 2
    return np.pad(strip, ((0, pad_h), (0, pad_w), (0, 0))) if pad_h or pad_w else strip


def _label(strip: np.ndarray, labels: Sequence[str], panel_w: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.fromarray(strip)
    draw = ImageDraw.Draw(image)
    for i, text in enumerate(labels):
        draw.text((i * panel_w + 3, 2), text, fill=(255, 255, 255))
    return np.asarray(image)


class Recorder:
    """Streams composed frames to .mp4 (imageio-ffmpeg) or .gif; the file appears only when complete."""

    def __init__(self, path: PathLike, fps: float = 10.0):
        self.path = Path(path)
        if self.path.suffix.lower() not in RECORD_SUFFIXES:
            raise UserError(f"--record {path}: use a .mp4 or .gif file name")
        self.fps = fps
        self.frames = 0
        self._atomic: Any = None
        self._writer: Any = None

    def __enter__(self) -> "Recorder":
        import imageio.v2 as imageio

        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        if self.path.suffix.lower() == ".mp4":
            # macro_block_size=1: frames are padded to even sides already; no silent resize.
            self._writer = imageio.get_writer(tmp, format="FFMPEG", fps=self.fps, codec="libx264",
                                              macro_block_size=1, ffmpeg_log_level="error")
        else:
            self._writer = imageio.get_writer(tmp, format="GIF", mode="I", duration=1000.0 / self.fps, loop=0)
        return self

    def add(self, image: np.ndarray) -> None:
        self._writer.append_data(image)
        self.frames += 1

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._writer.close()
        if exc_type is None and self.frames == 0:
            error = UserError(f"nothing recorded to {self.path}: the run produced no frames")
            self._atomic.__exit__(UserError, error, None)  # discards the empty temporary file
            raise error
        self._atomic.__exit__(exc_type, exc, tb)  # moves the file into place only on success


class Window:
    """`--show`: an OpenCV window, where a display and a GUI-enabled OpenCV exist."""

    def __init__(self, title: str = "edge-digr run"):
        if os.name != "nt" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise UserError("--show needs a display (DISPLAY is not set); use --record out.mp4 instead")
        try:
            import cv2
        except ImportError:
            raise UserError("--show needs OpenCV with GUI support: pip install opencv-python") from None
        self.cv2 = cv2
        self.title = title

    def show(self, image: np.ndarray) -> bool:
        """Draw one frame; False once the user closed the window or pressed q/Esc."""
        try:
            self.cv2.imshow(self.title, image[:, :, ::-1])
            key = self.cv2.waitKey(1) & 0xFF
        except self.cv2.error:
            raise UserError("--show: this OpenCV has no GUI support (headless build); "
                            "pip install opencv-python, or use --record") from None
        return key not in (ord("q"), 27)

    def close(self) -> None:
        self.cv2.destroyAllWindows()

