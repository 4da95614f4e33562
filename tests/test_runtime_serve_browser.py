"""The `run --serve` page in headless Chromium: two screenshots a second apart show a changing live frame.

Chromium comes from Debian's `chromium` package: installed here when absent if we are root with apt-get
(CI runs the tests as root on a fresh Debian machine), otherwise the test is skipped with the reason.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from runtime_fixtures import exported_onnx
from serve_helpers import finish, start_run

WINDOW = (1280, 720)
# The page zooms a minigrid view (2 panels of 160 px) by 2 in this window: the image spans x 18-658 and
# y ≈ 47-367 (under the one-line title); this box lies inside it whatever the title's font height.
IMAGE_BOX = (40, 110, 620, 340)
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          # without these Chromium waits on the network for updates and sync, and hangs offline
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}"]


def _apt(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], capture_output=True, text=True, timeout=1200, env=env)


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if getattr(os, "geteuid", lambda: -1)() != 0 or not shutil.which("apt-get"):
        pytest.skip("headless Chromium is not installed and cannot be installed here (needs root and apt-get); "
                    "install Debian's chromium package to run this test")
    done = _apt("install", "-y", "-q", "chromium")
    if done.returncode != 0:  # a fresh machine has no package lists yet
        _apt("update", "-q")
        done = _apt("install", "-y", "-q", "chromium")
    found = shutil.which("chromium")
    if done.returncode != 0 or not found:
        lines = (done.stderr or done.stdout).strip().splitlines()
        pytest.skip(f"apt-get install chromium failed: {lines[-1] if lines else done.returncode}")
    return found


def screenshot(chromium: str, url: str, out, profile) -> np.ndarray:
    done = subprocess.run([chromium, *_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", url],
                          capture_output=True, text=True, timeout=120)
    errors = [line for line in done.stderr.splitlines() if "dbus" not in line]  # no D-Bus here: harmless noise
    assert done.returncode == 0 and out.exists(), f"chromium exited {done.returncode}: {errors[-20:]}"
    with Image.open(out) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_page_shows_a_live_frame(chromium, tmp_path):
    # A replay of noise: no two frames alike (an untrained policy in the env may cycle through a few views).
    rng = np.random.default_rng(0)
    frames = tmp_path / "noise.npz"
    np.savez(frames, obs=rng.uniform(0, 255, (300, 3, 40, 40)).astype(np.float32),
             mission=np.eye(8, dtype=np.float32)[rng.integers(0, 8, 300)])
    model = exported_onnx(tmp_path, "minigrid-fetch")
    # 2 frames a second: a new frame between the shots, and 150 s of replay for a slow, busy machine.
    proc, base = start_run("--engine", model, "--feed", f"replay:{frames}", "--serve", "127.0.0.1:0",
                           "--serve-fps", 2)
    try:
        # A profile each: a Chromium that is still exiting keeps its profile locked.
        first = screenshot(chromium, f"{base}/", tmp_path / "first.png", tmp_path / "profile1")
        time.sleep(1.0)
        second = screenshot(chromium, f"{base}/", tmp_path / "second.png", tmp_path / "profile2")
    finally:
        proc.terminate()  # it would stop by itself after 150 s (300 frames at 2/s)
        finish(proc)
    assert first.shape == second.shape == (WINDOW[1], WINDOW[0], 3)
    x0, y0, x1, y1 = IMAGE_BOX
    a, b = first[y0:y1, x0:x1], second[y0:y1, x0:x1]
    page_background = np.all(a == 17, axis=2).mean()  # #111
    assert page_background < 0.05, "the box is not on the live image: did the page layout change?"
    changed = np.abs(a - b).max(axis=2) > 24
    assert changed.mean() > 0.01, "the live image did not change between the screenshots"
