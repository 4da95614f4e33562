"""CARLA env pieces that need no simulator: camera conversion, bounded (re)connection, lane reward."""
from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import textwrap
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_digr.core.carla_env import Backoff, CarlaLaneEnv, bgra_to_rgb, connect, image_to_rgb, lane_reward
from edge_digr.cli import main
from edge_digr.core.errors import UserError
from edge_digr.core.tasks import get_task
from runtime_fixtures import contract_onnx

# The client (not a server) is needed for the connection tests; the test extra installs it where a wheel exists.
needs_client = pytest.mark.skipif(importlib.util.find_spec("carla") is None,
                                  reason="the carla 0.9.16 client is not installed (pip install 'edge-digr[carla]')")


def carla_bgra_bytes(pixels):
    """carla.Image.raw_data layout: rows top to bottom, each pixel 4 bytes B, G, R, A."""
    out = bytearray()
    for row in pixels:
        for r, g, b in row:
            out += bytes((b, g, r, 255))
    return bytes(out)


def test_carla_image_cannot_be_built_in_python_so_we_use_its_byte_layout():
    carla = pytest.importorskip("carla")
    with pytest.raises(RuntimeError, match="cannot be instantiated"):
        carla.Image()


def test_bgra_bytes_become_rgb_and_then_the_policy_input():
    height, width = 96, 160
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (height, width, 3)).tolist()
    image = SimpleNamespace(raw_data=memoryview(carla_bgra_bytes(pixels)), width=width, height=height)
    rgb = image_to_rgb(image)
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == pixels[0][0] and rgb[95, 159].tolist() == pixels[95][159]
    assert rgb[17, 3].tolist() == pixels[17][3]
    obs = get_task("carla").preprocess(rgb)["obs"]
    assert obs.shape == get_task("carla").obs_shape == (3, 96, 160) and obs.dtype == np.float32
    assert obs[:, 17, 3].tolist() == pixels[17][3]  # channel 0 is red


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_bgra_conversion_any_size(h, w, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3)).tolist()
    np.testing.assert_array_equal(bgra_to_rgb(carla_bgra_bytes(pixels), w, h), np.array(pixels, np.uint8))


def test_frame_of_the_wrong_size_is_a_user_error():
    with pytest.raises(UserError, match="BGRA image has 640"):
        bgra_to_rgb(bytes(600), 16, 10)


def test_backoff_is_bounded_and_exponential():
    assert Backoff(6, 0.5, 2.0).delays() == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert Backoff(1).delays() == []


def _refused_port() -> int:
    with socket.socket() as s:  # bind, read the port, close: nothing listens there now
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_client
def test_refused_port_gives_one_line_error_after_bounded_retries():
    waited = []
    port = _refused_port()
    with pytest.raises(UserError) as info:
        connect("127.0.0.1", port, timeout_s=0.1, backoff=Backoff(3, 0.01, 0.015), sleep=waited.append)
    assert waited == [0.01, 0.015]  # two waits between three attempts, capped at max_s
    assert f"127.0.0.1:{port} after 3 attempts" in str(info.value) and "\n" not in str(info.value)


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers (a hung simulator)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.05)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@needs_client
def test_silent_server_times_out_instead_of_hanging(silent_server):
    with pytest.raises(UserError, match="after 2 attempts"):
        connect("127.0.0.1", silent_server, timeout_s=0.2, backoff=Backoff(2, 0.01))


@needs_client
def test_env_and_task_fail_clearly_without_a_server():
    port = _refused_port()
    with pytest.raises(UserError, match="no CARLA server answered"):
        CarlaLaneEnv(host="127.0.0.1", port=port, timeout_s=0.1, backoff=Backoff(2, 0.01))
    with pytest.raises(UserError, match="start the simulator"):
        get_task("carla").make_env(seed=0, host="127.0.0.1", port=port, timeout_s=0.1, backoff=Backoff(1))


def test_missing_carla_package_gives_the_install_hint():
    code = textwrap.dedent("""
        import sys
        sys.modules["carla"] = None
        from edge_digr.core.carla_env import connect
        from edge_digr.core.errors import UserError
        try:
            connect("127.0.0.1", 2000)
        except UserError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'edge-digr[carla]'" in out.stdout


@needs_client
def test_cli_carla_feed_unreachable_is_one_line_error(tmp_path):
    model = contract_onnx(tmp_path / "carla.onnx", "carla")
    url = f"carla://127.0.0.1:{_refused_port()}?timeout=0.1&retries=2"
    result = CliRunner().invoke(main, ["run", "--engine", str(model), "--feed", url, "--record",
                                       str(tmp_path / "x.mp4")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CARLA server answered")
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("speed, lateral, expected", [
    (8.0, 0.0, 1.0),  # target speed on the centre line
    (16.0, 0.0, 1.0),  # faster than the target earns no more
    (4.0, 0.875, 0.25),  # half speed, halfway to the lane edge (half width 1.75 m)
    (8.0, 1.75, 0.0),  # on the lane edge
    (-5.0, 0.0, 0.0),  # driving backwards
])
def test_lane_reward(speed, lateral, expected):
    assert lane_reward(speed, 8.0, lateral, 1.75) == pytest.approx(expected)
    assert lane_reward(speed, 8.0, -lateral, 1.75) == pytest.approx(expected)  # symmetric
