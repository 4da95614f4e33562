"""Jetson state (power mode, clock locking) and tegrastats sampling, on a faked board and off a Jetson."""
import os
import stat
import sys
import time

import pytest

from edge_digr.runtime.jetson import (TegrastatsSampler, clocks_locked, device_state, is_jetson,
                                      parse_nvpmodel)
from test_tegrastats import ORIN_NANO_JP6


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _fake_board(root, locked: bool):
    _write(root / "etc/nv_tegra_release", "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic\n")
    _write(root / "proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\x00")
    for cpu in range(2):
        base = root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
        _write(base / "scaling_min_freq", "1510400\n" if locked else "115200\n")
        _write(base / "scaling_max_freq", "1510400\n")
    gpu = root / "sys/class/devfreq/17000000.gpu"
    _write(gpu / "min_freq", "624750000\n")
    _write(gpu / "max_freq", "624750000\n")
    _write(root / "sys/class/devfreq/other.device/min_freq", "1\n")  # not the GPU: ignored
    _write(root / "sys/class/devfreq/other.device/max_freq", "2\n")


def _fake_tool(folder, name, body):
    path = folder / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_nvpmodel_query_is_parsed():
    assert parse_nvpmodel("NV Power Mode: MAXN\n0\n") == parse_nvpmodel("NV Fan Mode:quiet\nNV Power Mode: MAXN\n0")
    mode = parse_nvpmodel("NV Power Mode: 15W\n2\n")
    assert (mode.name, mode.mode_id) == ("15W", 2)
    assert parse_nvpmodel("nvpmodel: command not permitted") is None


@pytest.mark.parametrize("locked", [True, False])
def test_clock_lock_is_read_from_sysfs(tmp_path, locked):
    _fake_board(tmp_path, locked)
    assert clocks_locked(str(tmp_path / "sys")) is locked


def test_device_state_on_a_faked_board(tmp_path, monkeypatch):
    _fake_board(tmp_path, locked=True)
    tools = tmp_path / "bin"
    tools.mkdir()
    _fake_tool(tools, "nvpmodel", "print('NV Power Mode: 25W')\nprint(1)\n")
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    state = device_state(str(tmp_path))
    assert state == {"jetson": True, "model": "NVIDIA Jetson Orin Nano Developer Kit",
                     "l4t": "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic",
                     "power_mode": "25W", "power_mode_id": 1, "clocks_locked": True}


def test_off_a_jetson_everything_is_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no tegrastats, no nvpmodel
    assert not is_jetson(str(tmp_path))
    assert device_state(str(tmp_path)) == {"jetson": False}
    assert clocks_locked(str(tmp_path / "sys")) is None
    with TegrastatsSampler() as sampler:
        pass
    assert not sampler.available and sampler.samples == []


def test_sampler_reads_a_running_tegrastats_and_windows_by_time(tmp_path, monkeypatch):
    tools = tmp_path / "bin"
    tools.mkdir()
    # Checks it is called with --interval 20, then prints one line every 20 ms until terminated.
    _fake_tool(tools, "tegrastats",
               "import sys, time\nassert sys.argv[1:] == ['--interval', '20'], sys.argv\n"
               f"while True:\n    print({ORIN_NANO_JP6!r}, flush=True)\n    time.sleep(0.02)\n")
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    sampler = TegrastatsSampler(interval_ms=20)
    assert sampler.available
    with sampler:
        deadline = time.monotonic() + 10
        while len(sampler.samples) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        t_mid = time.monotonic()
        while len(sampler.samples) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
    n = len(sampler.samples)
    assert n >= 6
    assert sampler.samples[0].rails_mw["VDD_IN"] == 16321
    assert 0 < len(sampler.between(0.0, t_mid)) < n
    assert len(sampler.between(0.0, time.monotonic())) == n
    time.sleep(0.1)
    assert len(sampler.samples) == n  # stopped: the process is gone
