"""`edge-digr run --serve`: routes, the token rule, MJPEG frames, several and slow viewers, replay pause/step,
bad input. Requests go only to 127.0.0.1, each with a timeout; every run stops by itself."""
from __future__ import annotations

import json
import re
import socket
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

from edge_digr.cli import main
from edge_digr.core.errors import UserError
from edge_digr.core.manifest import for_task
from edge_digr.runtime.feeds import Frame
from edge_digr.runtime.loop import StepResult
from edge_digr.runtime.serve import LiveView, Playback, ServeOptions, exposure_warning, parse_address
from runtime_fixtures import exported_onnx
from serve_helpers import MjpegReader, distinct_frames, finish, request, start_run, wait_for

TOKEN = "t0k-en_1.~"


@pytest.fixture(scope="module")
def fetch_model(tmp_path_factory):
    # Weights seed 3: this untrained policy turns on the spot, so consecutive frames differ (the seed-0
    # one walks into a wall and its view stops changing until the episode times out).
    return exported_onnx(tmp_path_factory.mktemp("serve_models"), "minigrid-fetch", seed=3)


def test_live_run_serves_stats_frames_and_enforces_the_token(fetch_model):
    proc, base = start_run("--engine", fetch_model, "--serve", "127.0.0.1:0", "--serve-token", TOKEN,
                           "--max-steps", 60, "--rate", 10)
    try:
        status, headers, body = request(base, f"/stats?token={TOKEN}")
        assert status == 200 and headers["content-type"] == "application/json"
        stats = json.loads(body)
        assert stats["task"] == "minigrid-fetch" and stats["feed"] == "env"
        assert stats["action"]["names"] == ["left", "right", "forward", "pickup"]
        assert not stats["playback"]["pausable"]
        for path in ("/", "/stats", "/frame.jpg", "/stream.mjpg", "/nope"):
            assert request(base, path)[0] == 403, path
            assert request(base, path + "?token=wrong")[0] == 403, path
        assert request(base, f"/nope?token={TOKEN}")[0] == 404
        assert request(base, f"/../README.md?token={TOKEN}")[0] == 404  # no file serving
        assert request(base, f"/control?action=pause&token={TOKEN}", "POST")[0] == 409  # live feeds never wait

        reader = MjpegReader(base, f"/stream.mjpg?token={TOKEN}")
        assert reader.status == 200 and reader.content_type.startswith("multipart/x-mixed-replace")
        frames = distinct_frames(reader)
        reader.close()
        assert len(frames) == 2 and all(f.startswith(b"\xff\xd8") for f in frames)  # two JPEGs that differ

        status, headers, page = request(base, f"/?token={TOKEN}")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b"http://" not in page and b"https://" not in page  # loads nothing from elsewhere
        assert "default-src 'none'" in headers["content-security-policy"]
        later = json.loads(request(base, f"/stats?token={TOKEN}")[2])
        assert later["step"] >= 1 and later["view"]["frames_encoded"] >= 2
        assert later["latency_ms"]["p99"] >= later["latency_ms"]["p50"] > 0
    finally:
        code, out, err = finish(proc)
    assert code == 0, err
    assert "steps 60" in out and "Traceback" not in err


def test_replay_pauses_and_steps_from_the_page(fetch_model, tmp_path):
    rng = np.random.default_rng(0)
    frames = tmp_path / "noise.npz"
    np.savez(frames, obs=rng.uniform(0, 255, (120, 3, 40, 40)).astype(np.float32),
             mission=np.eye(8, dtype=np.float32)[rng.integers(0, 8, 120)])
    proc, base = start_run("--engine", fetch_model, "--feed", f"replay:{frames}", "--serve", "127.0.0.1:0",
                           "--serve-fps", 20)

    def stats():
        return json.loads(request(base, "/stats")[2])

    def control(action):
        status, _, body = request(base, f"/control?action={action}", "POST")
        assert status == 200
        return json.loads(body)

    try:
        assert control("pause")["paused"]
        time.sleep(0.3)  # the frame in flight when the pause came finishes
        held = stats()
        assert held["playback"] == {"pausable": True, "paused": True, "rate_hz": 20.0}
        assert held["feed_length"] == 120 and held["step"] < 119
        time.sleep(0.5)
        assert stats()["step"] == held["step"]
        control("step")
        assert wait_for(lambda: stats()["step"] == held["step"] + 1)
        time.sleep(0.3)
        assert stats()["step"] == held["step"] + 1
        assert request(base, "/control?action=rewind", "POST")[0] == 400
        assert request(base, "/control?action=resume")[0] == 405  # state changes only by POST
        control("resume")
    finally:
        code, out, err = finish(proc)
    assert code == 0, err
    assert "steps 120" in out


def _step(i: int, manifest) -> StepResult:
    obs = np.full((3, 40, 40), i % 256, np.float32)
    sal = np.random.default_rng(i).random((40, 40)).astype(np.float32)
    frame = Frame({"obs": obs, "mission": np.zeros(8, np.float32)}, reward=1.0, done=False)
    return StepResult(i, 0, frame, {"logits": np.arange(4, dtype=np.float32), "saliency": sal}, 3, 0.5)


def test_several_slow_and_vanished_viewers_never_hold_the_loop():
    manifest = for_task("minigrid-fetch", source="test")
    view = LiveView(ServeOptions(port=0, fps=50), manifest, ["saliency"], Playback(), "env", deadline_ms=0.4)
    steps = 400
    published = threading.Event()

    def loop():
        for i in range(steps):
            view.publish(_step(i, manifest))
            time.sleep(0.005)
        published.set()

    with view:
        base = view.url.rstrip("/")
        stalled = socket.create_connection(("127.0.0.1", view.server.server_address[1]), timeout=10)
        stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")  # then never reads
        publisher = threading.Thread(target=loop, daemon=True)
        publisher.start()
        got = {}

        def watch(name):
            reader = MjpegReader(base, "/stream.mjpg")
            got[name] = [reader.frame() for _ in range(3)]
            reader.close()

        def poll_slowly():  # like the page on a slow link: frames encoded meanwhile are skipped
            after, got["slow"] = 0, []
            for _ in range(3):
                status, headers, body = request(base, f"/frame.jpg?after={after}")
                after = int(headers["x-frame"])
                got["slow"].append(body)
                time.sleep(0.4)

        viewers = [threading.Thread(target=watch, args=(n,), daemon=True) for n in ("a", "b")]
        viewers.append(threading.Thread(target=poll_slowly, daemon=True))
        for v in viewers:
            v.start()
        vanished = MjpegReader(base, "/stream.mjpg")
        vanished.frame()
        vanished.close()  # gone mid-stream
        for v in viewers:
            v.join(timeout=30)
        assert published.wait(timeout=60), "the loop was held up by its viewers"
        stats = view.stats()
        stalled.close()
    assert all(len(got[n]) == 3 for n in ("a", "b", "slow"))
    assert stats["view"]["missed"] > 0  # the slow viewer skipped frames instead of slowing anything
    assert stats["view"]["frames_published"] == steps and stats["step"] == steps - 1
    assert stats["return"] == steps and stats["deadline_misses"] == steps  # 0.5 ms calls, 0.4 ms deadline
    assert stats["action"] == {"kind": "logits", "names": ["left", "right", "forward", "pickup"],
                               "values": [0.0, 1.0, 2.0, 3.0], "chosen": 3}


def test_nobody_watching_encodes_nothing():
    manifest = for_task("minigrid-fetch", source="test")
    with LiveView(ServeOptions(port=0), manifest, ["saliency"], Playback(), "env") as view:
        for i in range(50):
            view.publish(_step(i, manifest))
        time.sleep(0.2)
        assert view.stats()["view"]["frames_encoded"] == 0
        status, headers, body = request(view.url.rstrip("/"), "/frame.jpg?after=0")
        assert status == 200 and body.startswith(b"\xff\xd8") and headers["x-frame"] == "1"


@pytest.mark.parametrize("spec,expected", [("8080", ("127.0.0.1", 8080)), ("0.0.0.0:80", ("0.0.0.0", 80)),
                                           ("localhost:0", ("localhost", 0)), ("[::1]:9000", ("::1", 9000))])
def test_parse_address(spec, expected):
    assert parse_address(spec) == expected


@pytest.mark.parametrize("spec", ["", "http", "host:", ":80", "70000", "1:2:3", "::1:80", "80.5"])
def test_parse_address_rejects(spec):
    with pytest.raises(UserError, match="expected PORT"):
        parse_address(spec)


def test_only_loopback_is_quiet():
    assert exposure_warning(ServeOptions("127.0.0.1")) is None
    assert exposure_warning(ServeOptions("localhost")) is None
    assert exposure_warning(ServeOptions("::1")) is None
    assert "add --serve-token" in exposure_warning(ServeOptions("0.0.0.0"))
    assert "token" in exposure_warning(ServeOptions("192.0.2.7", token="abc"))


def test_bad_serve_input_is_one_line_error(fetch_model):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    cases = {
        ("--serve", "web"): "expected PORT",
        ("--serve", "127.0.0.1:99999"): "expected PORT",
        ("--serve", "0", "--serve-token", "a b"): "--serve-token: use 1 to 128 characters",
        ("--serve", "0", "--serve-token", "tok&x=1"): "--serve-token: use 1 to 128 characters",
        ("--serve-token", "abc"): "--serve-token needs --serve",
        ("--serve", f"127.0.0.1:{port}"): "the port is in use",
    }
    try:
        for args, match in cases.items():
            result = CliRunner().invoke(main, ["run", "--engine", str(fetch_model), "--max-steps", "1", *args])
            lines = [line for line in result.output.splitlines() if line.strip()]
            assert result.exit_code == 2 and len(lines) == 1, (args, result.output)
            assert lines[0].startswith("error: ") and match in lines[0] and "Traceback" not in result.output
        from_env = CliRunner(env={"EDGE_DIGR_SERVE_TOKEN": "not ok"}).invoke(
            main, ["run", "--engine", str(fetch_model), "--max-steps", "1", "--serve", "0"])
        assert from_env.exit_code == 2 and from_env.output.startswith("error: --serve-token: use 1 to 128")
        unused = CliRunner(env={"EDGE_DIGR_SERVE_TOKEN": "abc"}).invoke(
            main, ["run", "--engine", str(fetch_model), "--max-steps", "1"])
        assert unused.exit_code == 0, unused.output  # without --serve, a token in the environment is ignored
    finally:
        busy.close()


def test_help_lists_the_serve_options():
    out = CliRunner().invoke(main, ["run", "--help"]).output
    for option in ("--serve [HOST:]PORT", "--serve-token TOKEN", "--serve-fps", "--rate"):
        assert option in out
    assert re.search(r"0\.0\.0\.0", out)
