"""Saliency overlays and their recording: frame | heat map(s) side by side, to .mp4, .gif or a window.

numpy + Pillow + imageio only (the Jetson install): the colour map is computed here, not by matplotlib.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from edge_digr.core.errors import UserError
from edge_digr.core.fileio import PathLike, atomic_path

MIN_PANEL_HEIGHT = 160  # small frames (MiniGrid's 40 px) are enlarged to stay readable
# A map's colour scale ends at this percentile of its values, and the top 1 % saturates: a gradient map
# whose maximum is a handful of pixels (DIGR's share penalty makes them) would otherwise draw all but
# those pixels near black.
SCALE_PERCENTILE = 99.0
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


def heat_overlay(frame: np.ndarray, saliency: np.ndarray, alpha: float = 0.55,
                 peak: Optional[float] = None) -> np.ndarray:
    """The frame (in grey, so the colours are the map's) blended with the map divided by `peak` (default:
    the map's own maximum; values above it saturate)."""
    sal = np.nan_to_num(np.asarray(saliency, dtype=np.float32))
    peak = float(sal.max()) if peak is None else peak
    heat = colormap(sal / peak if peak > 0 else sal).astype(np.float32)
    grey = frame.astype(np.float32).mean(axis=2, keepdims=True)
    return np.clip((1 - alpha) * grey + alpha * heat, 0, 255).astype(np.uint8)


def scale_peak(saliency: np.ndarray) -> Optional[float]:
    """The value a map's colour scale ends at: its SCALE_PERCENTILE-th percentile, or None (its maximum) where
    that is 0, as for a map with fewer than 1 % non-zero pixels."""
    peak = float(np.percentile(np.nan_to_num(np.asarray(saliency, dtype=np.float32)), SCALE_PERCENTILE))
    return peak if peak > 0 else None


def compose(obs: np.ndarray, saliency: np.ndarray, labels: Sequence[str] = ()) -> np.ndarray:
    """frame | overlay [| overlay ...]: one overlay for a (H, W) map, one per component of a (K, H, W) map.

    Panels are enlarged by an integer factor for small frames and the result has even sides (H.264 needs it).
    """
    frame = display_frame(obs)
    maps = saliency[None] if saliency.ndim == 2 else saliency
    panels = [frame] + [heat_overlay(frame, m, peak=scale_peak(m)) for m in maps]
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
    """Streams composed frames to .mp4 (an ffmpeg process) or .gif (encoded frame by frame), so memory stays
    flat however long the run. Frames go to a temporary file in the destination folder, which replaces `path`
    only once the encoder has closed cleanly (ffmpeg exit status 0): a full disk or a crash leaves the
    previous file as it was, and the error is one line."""

    def __init__(self, path: PathLike, fps: float = 10.0):
        self.path = Path(path)
        if self.path.suffix.lower() not in RECORD_SUFFIXES:
            raise UserError(f"--record {path}: use a .mp4 or .gif file name")
        self.fps = fps
        self.frames = 0
        self._atomic: Any = None
        self._sink: Any = None

    def __enter__(self) -> "Recorder":
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        sink = _Mp4Sink if self.path.suffix.lower() == ".mp4" else _GifSink
        self._sink = sink(tmp, self.fps, self.path)
        return self

    def add(self, image: np.ndarray) -> None:
        self._sink.write(image)
        self.frames += 1

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self._sink.close(complete=exc_type is None)
            if exc_type is None and self.frames == 0:
                raise UserError(f"nothing recorded to {self.path}: the run produced no frames")
        except BaseException as error:  # the encoder did not finish the file: discard the temporary file
            self._atomic.__exit__(type(error), error, error.__traceback__)  # may say it in one line instead
            raise
        self._atomic.__exit__(exc_type, exc, tb)  # moves the file into place only on success


class _GifSink:
    """GIF frames appended one at a time (Pillow's frame encoder, an adaptive palette per frame)."""

    def __init__(self, tmp: Path, fps: float, name: Path):
        self._file = open(tmp, "wb")
        self._duration_ms = 1000.0 / fps
        self._started = False

    def write(self, image: np.ndarray) -> None:
        from PIL import GifImagePlugin, Image

        frame = Image.fromarray(image).quantize(256)
        if not self._started:
            header, _ = GifImagePlugin.getheader(frame, info={"loop": 0, "duration": self._duration_ms})
            self._file.write(b"".join(header))
            self._started = True
        for chunk in GifImagePlugin.getdata(frame, include_color_table=True, duration=self._duration_ms):
            self._file.write(chunk)

    def close(self, complete: bool) -> None:
        try:
            if complete and self._started:
                self._file.write(b";")  # the GIF trailer
        finally:
            self._file.close()


class _Mp4Sink:
    """H.264 through imageio-ffmpeg's ffmpeg binary, fed raw RGB frames on its stdin; its exit status is checked
    (imageio's writer ignores it, so a failed trailer write went unnoticed)."""

    def __init__(self, tmp: Path, fps: float, name: Path):
        self.tmp, self.fps, self.name = tmp, fps, name
        self._proc: Any = None
        self._log: Any = None

    def _start(self, shape: Sequence[int]) -> None:
        import subprocess
        import tempfile

        import imageio_ffmpeg

        h, w = shape[:2]
        self._log = tempfile.TemporaryFile()
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{self.fps:g}", "-i", "pipe:0",
               "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "mp4", str(self.tmp)]
        # Its own session: a terminal's Ctrl-C or a signal to our process group must not cut the file short
        # before this process has closed it.
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log,
                                      start_new_session=True)

    def _failure(self) -> UserError:
        self._log.seek(0)
        lines = [line.strip() for line in self._log.read().decode(errors="replace").splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit status {self._proc.returncode}"
        return UserError(f"recording {self.name} failed (ffmpeg: {why}); the previous file, if any, is unchanged")

    def write(self, image: np.ndarray) -> None:
        if self._proc is None:
            self._start(image.shape)
        try:
            self._proc.stdin.write(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
        except OSError:  # ffmpeg exited (e.g. the disk is full): its log says why
            self._proc.wait()
            raise self._failure() from None

    def close(self, complete: bool) -> None:
        if self._proc is None:
            return
        try:
            self._proc.stdin.close()
        except OSError:
            pass  # ffmpeg already exited; its status says whether it finished the file
        if not complete:
            self._proc.kill()
        code = self._proc.wait()
        try:
            if complete and code != 0:
                raise self._failure()
        finally:
            self._log.close()


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

