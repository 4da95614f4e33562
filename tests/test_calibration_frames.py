"""Calibration frames: loading and validation against the graph inputs, held-out split, batching."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_digr.core.frames import Frames, load_frames, save_frames
from edge_digr.core.errors import UserError

SPECS = [{"name": "obs", "shape": [-1, 3, 8, 8]}, {"name": "mission", "shape": [-1, 8]}]


def _frames(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return {"obs": rng.uniform(0, 255, (n, 3, 8, 8)).astype(np.float32),
            "mission": np.eye(8, dtype=np.float32)[rng.integers(0, 8, n)]}


def test_roundtrip_and_labels_file_extra_keys_ignored(tmp_path):
    arrays = _frames()
    # labels.npz from `edge-digr label` holds more than the inputs (saliency maps, actions, ...).
    np.savez(tmp_path / "labels.npz", **arrays, saliency=np.zeros((10, 8, 8)), actions=np.arange(10))
    frames = load_frames(tmp_path / "labels.npz", SPECS)
    assert frames.names == ["obs", "mission"] and len(frames) == 10
    np.testing.assert_array_equal(frames.arrays["obs"], arrays["obs"])
    save_frames(tmp_path / "copy.npz", frames)
    again = load_frames(tmp_path / "copy.npz", SPECS)
    np.testing.assert_array_equal(again.arrays["mission"], arrays["mission"])


def test_integer_pixels_are_cast_to_float32(tmp_path):
    arrays = _frames()
    arrays["obs"] = arrays["obs"].astype(np.uint8)
    np.savez(tmp_path / "f.npz", **arrays)
    assert load_frames(tmp_path / "f.npz", SPECS).arrays["obs"].dtype == np.float32


@pytest.mark.parametrize("mutate, message", [
    (lambda a: a.pop("mission"), "lacks the array"),
    (lambda a: a.update(obs=a["obs"][:, :2]), "has shape"),
    (lambda a: a.update(obs=a["obs"][0]), "has shape"),  # an unbatched frame
    (lambda a: a.update(mission=a["mission"][:5]), "different numbers of frames"),
    (lambda a: a["obs"].__setitem__((0, 0, 0, 0), np.nan), "NaN"),
    (lambda a: a.update(obs=a["obs"][:0], mission=a["mission"][:0]), "no frames"),
])
def test_bad_frames_are_refused_with_one_line(tmp_path, mutate, message):
    arrays = _frames()
    mutate(arrays)
    np.savez(tmp_path / "f.npz", **arrays)
    with pytest.raises(UserError, match=message) as err:
        load_frames(tmp_path / "f.npz", SPECS)
    assert "\n" not in str(err.value)


def test_pickled_objects_and_non_npz_are_refused(tmp_path):
    arrays = _frames()
    arrays["obs"] = np.array([object()] * 10, dtype=object)
    np.savez(tmp_path / "obj.npz", **arrays)
    with pytest.raises(UserError, match="not a readable .npz"):
        load_frames(tmp_path / "obj.npz", SPECS)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable .npz"):
        load_frames(tmp_path / "junk.npz", SPECS)
    with pytest.raises(UserError, match="does not exist"):
        load_frames(tmp_path / "missing.npz", SPECS)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 300), holdout=st.floats(0.01, 0.99))
def test_split_is_a_contiguous_partition(n, holdout):
    frames = Frames({"x": np.arange(n, dtype=np.float32)[:, None]})
    n_held = int(round(n * holdout))
    if n_held < 1 or n_held >= n:
        with pytest.raises(UserError):
            frames.split(holdout)
        return
    calib, held = frames.split(holdout)
    assert len(held) == n_held
    # calibration first, held-out the tail: together exactly the original frames, in order
    np.testing.assert_array_equal(np.concatenate([calib.arrays["x"], held.arrays["x"]]), frames.arrays["x"])


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 100), batch=st.integers(1, 40))
def test_batches_cover_every_frame_once(n, batch):
    frames = Frames({"x": np.arange(n, dtype=np.float32)[:, None], "y": -np.arange(n, dtype=np.float32)[:, None]})
    got = list(frames.batches(batch))
    assert all(len(b["x"]) <= batch and len(b["x"]) == len(b["y"]) for b in got)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in got])[:, 0], np.arange(n))


def test_bad_holdout_is_refused():
    frames = Frames({"x": np.zeros((10, 1), np.float32)})
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(UserError, match="--holdout"):
            frames.split(bad)
