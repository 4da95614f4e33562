"""`edge-digr run` end to end from exported ONNX: episodes, recordings, --save-feed → replay, bad input."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import imageio.v2 as imageio
import numpy as np
import pytest
from click.testing import CliRunner

from edge_digr.cli import main
from edge_digr.runtime import open_runner
from edge_digr.runtime.feeds import Feed, Frame
from edge_digr.runtime.loop import RunLimits, run_loop
from runtime_fixtures import exported_onnx


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {task: exported_onnx(folder, task) for task in ("minigrid-fetch", "atari-breakout", "car-racing")}


def cli(*args: str):
    result = CliRunner().invoke(main, ["run", *map(str, args)])
    return result


def summary_of(path):
    return json.loads(path.read_text())


def actions_of(output: str):
    """Per step: the action and the saliency peak (value and place), without the latency."""
    return [(m[0], m[2]) for m in re.findall(r"^step \d+ episode \d+: action ([^;]+); ([\d.]+) ms; (.+)$",
                                             output, flags=re.M)]


def test_two_minigrid_episodes_recorded(models, tmp_path):
    # .mp4 keeps every frame; a GIF writer merges identical consecutive frames (an untrained policy
    # that walks into a wall repeats its frame), so only the video can be counted frame by frame.
    video, js = tmp_path / "fetch.mp4", tmp_path / "s.json"
    result = cli("--engine", models["minigrid-fetch"], "--episodes", 2, "--record", video, "--json", js)
    assert result.exit_code == 0, result.output
    s = summary_of(js)
    assert s["episodes"] == 2 and len(s["returns"]) == 2 and s["steps"] > 2
    assert s["latency_p50_ms"] > 0 and s["latency_p99_ms"] >= s["latency_p50_ms"]
    assert "episodes 2" in result.output and "latency p50" in result.output
    frames = imageio.mimread(video, memtest=False)
    assert len(frames) == s["steps"]  # one overlay per inferred frame
    assert frames[0].shape[:2] == (160, 320)  # 40 px frame ×4: frame | saliency


def test_short_atari_run_recorded_to_mp4(models, tmp_path):
    mp4, js = tmp_path / "breakout.mp4", tmp_path / "s.json"
    result = cli("--engine", models["atari-breakout"], "--max-steps", 12, "--record", mp4, "--json", js,
                 "--deadline-ms", "1e-9")
    assert result.exit_code == 0, result.output
    s = summary_of(js)
    assert s["steps"] == 12 and s["deadline_misses"] == 12  # every call takes longer than a picosecond
    reader = imageio.get_reader(mp4)
    assert reader.count_frames() == 12 and reader.get_meta_data()["size"] == (336, 168)
    reader.close()


def test_continuous_task_one_overlay_per_action_component(models, tmp_path):
    gif = tmp_path / "car.gif"
    result = cli("--engine", models["car-racing"], "--max-steps", 3, "--record", gif, "--print-steps")
    assert result.exit_code == 0, result.output
    assert imageio.mimread(gif)[0].shape[:2] == (192, 4 * 192)  # frame | steer | gas | brake
    assert re.search(r"action steer=[-+]\d\.\d+, gas=[-+]\d\.\d+, brake=[-+]\d\.\d+", result.output)


def test_save_feed_then_replay_reproduces_the_actions(models, tmp_path):
    frames = tmp_path / "seen.npz"
    live = cli("--engine", models["atari-breakout"], "--max-steps", 25, "--seed", 3, "--save-feed", frames,
               "--print-steps")
    assert live.exit_code == 0, live.output
    with np.load(frames) as data:
        assert data.files == ["obs"] and data["obs"].shape == (25, 4, 84, 84)
    replay = cli("--engine", models["atari-breakout"], "--feed", f"replay:{frames}", "--print-steps")
    assert replay.exit_code == 0, replay.output
    live_actions, replay_actions = actions_of(live.output), actions_of(replay.output)
    assert len(live_actions) == 25 and replay_actions == live_actions


def test_save_feed_for_a_two_input_task(models, tmp_path):
    frames = tmp_path / "fetch.npz"
    live = cli("--engine", models["minigrid-fetch"], "--max-steps", 8, "--save-feed", frames, "--print-steps")
    replay = cli("--engine", models["minigrid-fetch"], "--feed", f"replay:{frames}", "--print-steps")
    assert live.exit_code == replay.exit_code == 0, live.output + replay.output
    with np.load(frames) as data:
        assert sorted(data.files) == ["mission", "obs"] and data["mission"].shape == (8, 8)
    assert actions_of(replay.output) == actions_of(live.output)


def test_nan_and_inf_frames_are_skipped_and_counted(models, tmp_path):
    obs = np.random.default_rng(0).uniform(0, 255, (6, 4, 84, 84)).astype(np.float32)
    obs[1, 0, 3, 3] = np.nan
    obs[4, 2, 0, 0] = np.inf
    np.savez(tmp_path / "f.npz", obs=obs)
    js = tmp_path / "s.json"
    result = cli("--engine", models["atari-breakout"], "--feed", f"replay:{tmp_path / 'f.npz'}", "--json", js)
    assert result.exit_code == 0, result.output
    s = summary_of(js)
    assert s["steps"] == 4 and s["nonfinite_frames"] == 2 and "NaN/Inf frames 2" in result.output


def test_forward_only_model_cannot_record_saliency(tmp_path):
    import torch

    from edge_digr.checkpoint import save_checkpoint
    from edge_digr.export import export_checkpoint
    from edge_digr.policies import PixelPolicy, PolicyConfig
    from edge_digr.core.tasks import get_task

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "p.pt", PixelPolicy(PolicyConfig.for_task(get_task("atari-breakout"), "edge")),
                    "atari-breakout", role="student")
    export_checkpoint(tmp_path / "p.pt", tmp_path / "fwd.onnx", forward_only=True)
    assert cli("--engine", tmp_path / "fwd.onnx", "--max-steps", 2).exit_code == 0
    result = cli("--engine", tmp_path / "fwd.onnx", "--max-steps", 2, "--record", tmp_path / "x.gif")
    assert result.exit_code == 2 and "no saliency output" in result.output


class ScriptedFeed(Feed):
    """An interactive feed of given frames that records the actions it is sent."""

    interactive = True

    def __init__(self, frames):
        self.frames, self.actions = list(frames), []

    def reset(self):
        return self.frames.pop(0)

    def step(self, action):
        self.actions.append(action)
        return self.frames.pop(0) if self.frames else None


def test_dropped_and_nonfinite_frames_are_counted_and_hold_the_last_action(models):
    rng = np.random.default_rng(0)

    def frame(**kw):
        return Frame({"obs": rng.uniform(0, 255, (4, 84, 84)).astype(np.float32)}, reward=1.0, **kw)

    frames = [frame(), frame(dropped=True), frame(), frame(), frame(info={"reconnected": True}, done=True)]
    frames[2].inputs["obs"][0, 0, 0] = np.nan
    feed = ScriptedFeed(frames)
    with open_runner(models["atari-breakout"]) as runner:
        summary = run_loop(runner, feed, RunLimits(episodes=1))
    assert (summary.steps, summary.dropped_frames, summary.nonfinite_frames) == (3, 1, 1)
    assert summary.reconnects == 1 and summary.episodes == 1 and summary.returns == [4.0]
    assert feed.actions[0] != 0  # differs from the idle action, so holding it is observable
    assert feed.actions[1] == feed.actions[0] and feed.actions[2] == feed.actions[0]  # held over skipped frames


def _bad_inputs(models, tmp_path):
    onnx_bytes = models["atari-breakout"].read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 3])
    (tmp_path / "corrupt.onnx").write_bytes(b"\x00garbage" * 100)
    np.savez(tmp_path / "wrong.npz", obs=np.zeros((3, 4, 64, 64), np.float32))
    atari = str(models["atari-breakout"])
    return {
        "missing engine": (["--engine", tmp_path / "nope.onnx"], "does not exist"),
        "truncated engine": (["--engine", tmp_path / "truncated.onnx"], "not a readable ONNX"),
        "corrupt engine": (["--engine", tmp_path / "corrupt.onnx"], "not a readable ONNX"),
        "wrong frame shape": (["--engine", atari, "--feed", f"replay:{tmp_path / 'wrong.npz'}"], "have shape"),
        "unknown feed": (["--engine", atari, "--feed", "webcam"], "unknown feed"),
        "bad record suffix": (["--engine", atari, "--record", tmp_path / "x.avi"], ".mp4 or .gif"),
        "carla for another task": (["--engine", atari, "--feed", "carla://127.0.0.1:2000"], "carla task"),
    }


@pytest.mark.parametrize("case", ["missing engine", "truncated engine", "corrupt engine", "wrong frame shape",
                                  "unknown feed", "bad record suffix", "carla for another task"])
def test_bad_input_is_one_line_error(models, tmp_path, case):
    args, match = _bad_inputs(models, tmp_path)[case]
    result = cli(*args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.avi").exists()


def test_show_without_a_display_is_one_line_error(models, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = cli("--engine", models["atari-breakout"], "--max-steps", 2, "--show")
    assert result.exit_code == 2 and result.output.startswith("error: --show needs a display")


def test_cli_run_without_torch(models, tmp_path):
    gif = tmp_path / "no_torch.gif"
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        from edge_digr.cli import main
        sys.argv = ["edge-digr", "run", "--engine", {str(models['minigrid-fetch'])!r}, "--episodes", "1",
                    "--record", {str(gif)!r}]
        main()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "episodes 1" in out.stdout and len(imageio.mimread(gif)) > 1
