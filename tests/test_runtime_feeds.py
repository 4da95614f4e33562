"""Feeds (env, replay .npz / PNG folder, carla:// parsing), --save-feed files, overlays and recordings."""
from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from edge_digr.core.errors import UserError
from edge_digr.core.manifest import for_task
from edge_digr.runtime.feeds import EnvFeed, FeedRecorder, ReplayFeed, load_replay, open_feed, parse_carla_url
from edge_digr.runtime.overlay import Recorder, colormap, compose, display_frame, heat_overlay
from edge_digr.core.tasks import get_task


def test_env_feed_uses_the_task_preprocessing():
    task = get_task("minigrid-fetch")
    with EnvFeed("minigrid-fetch", seed=5) as feed:
        frame = feed.reset()
        env = task.make_env(seed=5)
        raw, _ = env.reset(seed=5)
        expected = task.preprocess(raw)
        assert set(frame.inputs) == {"obs", "mission"}
        for name in expected:
            np.testing.assert_array_equal(frame.inputs[name], expected[name])
        nxt = feed.step(2)  # forward
        raw2, reward, term, trunc, _ = env.step(2)
        np.testing.assert_array_equal(nxt.inputs["obs"], task.preprocess(raw2)["obs"])
        assert nxt.reward == reward and nxt.done == (term or trunc)


def test_save_feed_round_trip_is_exact_and_named_like_the_inputs(tmp_path):
    rng = np.random.default_rng(0)
    rec = FeedRecorder(tmp_path / "frames.data", ["obs", "mission"])  # any suffix: no ".npz" appended
    seen = [{"obs": rng.uniform(0, 255, (3, 40, 40)).astype(np.float32),
             "mission": np.eye(8, dtype=np.float32)[i]} for i in range(5)]
    for inputs in seen:
        rec.add(inputs)
    path = rec.save()
    assert path.exists() and not (tmp_path / "frames.data.npz").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["frames.data"]  # no temporary file left behind
    with np.load(path) as data:
        assert sorted(data.files) == ["mission", "obs"] and data["obs"].shape == (5, 3, 40, 40)
    frames = load_replay(path, for_task("minigrid-fetch"))
    feed = ReplayFeed(frames, "test")
    got = [feed.reset()]
    while not got[-1].done:
        got.append(feed.step(0))
    assert feed.step(0) is None and feed.reset() is None  # a replay is one episode
    for want, frame in zip(seen, got):
        for name in want:
            np.testing.assert_array_equal(frame.inputs[name], want[name])
    assert len(got) == 5


def test_png_folder_rgb_and_stacked_grey(tmp_path):
    rgb_dir, grey_dir = tmp_path / "rgb", tmp_path / "grey"
    rgb_dir.mkdir()
    grey_dir.mkdir()
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (3, 84, 84), dtype=np.uint8)
    for i in range(3):
        Image.fromarray(rgb[i]).save(rgb_dir / f"{i:03d}.png")
        Image.fromarray(grey[i]).save(grey_dir / f"{i:03d}.png")
    obs = load_replay(rgb_dir, for_task("car-racing"))["obs"]
    np.testing.assert_array_equal(obs, np.transpose(rgb, (0, 3, 1, 2)).astype(np.float32))
    stack = load_replay(grey_dir, for_task("atari-breakout"))["obs"]
    assert stack.shape == (3, 4, 84, 84)
    np.testing.assert_array_equal(stack[0], np.stack([grey[0]] * 4))  # padded with the first frame
    np.testing.assert_array_equal(stack[2], np.stack([grey[0], grey[0], grey[1], grey[2]]))


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"),
    ("corrupt", "not a readable .npz"),
    ("pickled", "not a readable .npz"),
    ("lacks", "lacks array"),
    ("shape", "have shape"),
    ("uneven", "different numbers of frames"),
    ("png_size", "have shape"),
    ("png_extra_input", "PNG folder holds images only"),
    ("empty_folder", "no .png"),
])
def test_bad_replays_are_one_line_errors(tmp_path, case, match):
    task = "minigrid-fetch" if case in ("lacks", "uneven", "png_extra_input") else "car-racing"
    path = tmp_path / "f.npz"
    if case == "corrupt":
        path.write_bytes(b"PK\x03\x04 truncated")
    elif case == "pickled":
        np.savez(path, obs=np.array([object()], dtype=object))
    elif case == "lacks":
        np.savez(path, obs=np.zeros((2, 3, 40, 40), np.float32))
    elif case == "shape":
        np.savez(path, obs=np.zeros((2, 3, 84, 84), np.float32))
    elif case == "uneven":
        np.savez(path, obs=np.zeros((2, 3, 40, 40), np.float32), mission=np.zeros((3, 8), np.float32))
    elif case in ("png_size", "png_extra_input", "empty_folder"):
        path = tmp_path / "frames"
        path.mkdir()
        if case != "empty_folder":
            Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path / "0.png")
    with pytest.raises(UserError, match=match) as info:
        open_feed(f"replay:{path}", for_task(task))
    assert "\n" not in str(info.value)


def test_feed_spec_errors():
    with pytest.raises(UserError, match="unknown feed"):
        open_feed("webcam", for_task("atari-breakout"))
    with pytest.raises(UserError, match="drives the carla task"):
        open_feed("carla://localhost:2000", for_task("atari-breakout"))


def test_carla_url_parsing():
    assert parse_carla_url("carla://10.0.0.7:2010") == ("10.0.0.7", 2010, {})
    assert parse_carla_url("carla://sim") == ("sim", 2000, {})
    host, port, opts = parse_carla_url("carla://sim:2000?timeout=0.5&retries=3")
    assert (host, port, opts["timeout_s"], opts["backoff"].attempts) == ("sim", 2000, 0.5, 3)
    for bad in ("carla://:2000", "carla://sim:70000", "carla://sim:x", "carla://sim:2000?speed=1",
                "carla://sim:2000?retries=0", "carla://sim:2000?timeout=-1"):
        with pytest.raises(UserError, match="bad CARLA address"):
            parse_carla_url(bad)


# ------------------------------------------------------------------------------------------ overlays
def test_colormap_runs_dark_to_bright():
    rgb = colormap(np.linspace(0, 1, 50)).astype(int)
    brightness = rgb.sum(axis=1)
    assert brightness[0] < 20 and brightness[-1] > 600
    assert np.all(np.diff(brightness) >= 0)


def test_display_frame_rgb_and_stack():
    obs = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    np.testing.assert_array_equal(display_frame(obs)[1, 2], obs[:, 1, 2])
    stack = np.stack([np.zeros((4, 5)), np.full((4, 5), 200.0)])
    assert np.all(display_frame(stack) == 200)  # the newest frame of the stack


@settings(max_examples=15, deadline=None)
@given(k=st.sampled_from([0, 1, 2, 3]), h=st.integers(5, 50), w=st.integers(5, 50))
def test_compose_layout(k, h, w):
    rng = np.random.default_rng(h * w)
    obs = rng.uniform(0, 255, (3, h, w)).astype(np.float32)
    sal = rng.uniform(0, 1, (h, w) if k == 0 else (k, h, w))
    image = compose(obs, sal, ["a"] * max(k, 1))
    panels = 1 + max(k, 1)
    scale = max(1, -(-160 // h))
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert image.shape[0] % 2 == 0 and image.shape[1] % 2 == 0
    assert image.shape[0] - h * scale in (0, 1) and image.shape[1] - panels * w * scale in (0, 1)


def test_overlay_is_brightest_where_saliency_peaks():
    obs = np.full((3, 20, 20), 100.0, np.float32)
    sal = np.zeros((20, 20))
    sal[5, 7] = 1.0
    image = compose(obs, sal).astype(int)
    scale = 8  # 160 / 20
    overlay = image[:, 20 * scale:].sum(axis=2)
    y, x = np.unravel_index(np.argmax(overlay), overlay.shape)
    assert (y // scale, x // scale) == (5, 7)


def test_a_spiky_map_is_drawn_on_its_99th_percentile_not_its_peak():
    """One pixel far above the rest (a concentrated gradient) must not draw the rest black."""
    obs = np.full((3, 20, 20), 100.0, np.float32)
    sal = np.full((20, 20), 0.5)
    sal[5, 7] = 100.0
    image = compose(obs, sal).astype(int)
    scale = 8
    overlay = image[:, 20 * scale:]
    np.testing.assert_array_equal(overlay[0, 0], overlay[5 * scale, 7 * scale])  # both at the top colour
    assert overlay[0, 0].sum() > heat_overlay(np.full((20, 20, 3), 100, np.uint8), sal)[0, 0].astype(int).sum()


def test_overlay_on_a_given_scale_saturates_above_it():
    frame = np.zeros((1, 3, 3), np.uint8)
    sal = np.array([[0.5, 1.0, 3.0]])
    own = heat_overlay(frame, sal)  # its own maximum, 3, is the top colour
    shared = heat_overlay(frame, sal, peak=1.0)
    np.testing.assert_array_equal(shared[0, 1], shared[0, 2])  # 1 and 3 both at the top of the scale
    np.testing.assert_array_equal(shared[0, 1], own[0, 2])
    assert shared[0, 0].astype(int).sum() > own[0, 0].astype(int).sum()  # 0.5 of 1 is brighter than 0.5 of 3


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_recorder_writes_readable_file(tmp_path, suffix):
    frames = [compose(np.full((3, 40, 40), 20.0 * i, np.float32), np.random.rand(40, 40)) for i in range(6)]
    path = tmp_path / f"out{suffix}"
    with Recorder(path, fps=5) as rec:
        for f in frames:
            rec.add(f)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    if suffix == ".gif":
        got = imageio.mimread(path)
        assert len(got) == 6 and got[0].shape[:2] == frames[0].shape[:2]
    else:
        reader = imageio.get_reader(path)
        assert reader.count_frames() == 6 and reader.get_meta_data()["size"] == frames[0].shape[1::-1]
        reader.close()


def test_recorder_refuses_other_suffixes_and_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(UserError, match=".mp4 or .gif"):
        Recorder(tmp_path / "out.avi")
    with pytest.raises(RuntimeError):
        with Recorder(tmp_path / "out.gif") as rec:
            rec.add(np.zeros((8, 8, 3), np.uint8))
            raise RuntimeError("feed died")
    with pytest.raises(UserError, match="no frames"):
        with Recorder(tmp_path / "empty.mp4"):
            pass
    assert list(tmp_path.iterdir()) == []
