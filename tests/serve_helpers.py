"""Helpers for the `run --serve` tests (not collected: no test_ prefix).

Every request goes to 127.0.0.1 with a timeout; every run is bounded by --max-steps or its replay's length.
"""
from __future__ import annotations

import http.client
import select
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlsplit

# `run` in a child process with torch made unimportable: the served run is the Jetson's torch-free path.
_RUN = "import sys; sys.modules['torch'] = None; from edge_digr.cli import main; main()"


def start_run(*args: str, timeout: float = 180.0) -> Tuple[subprocess.Popen, str]:
    """`edge-digr run ARGS` in a child process; returns it and the base URL its live view printed."""
    proc = subprocess.Popen([sys.executable, "-c", _RUN, "run", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("live view: "):
                url = urlsplit(line.split()[2])
                return proc, f"{url.scheme}://{url.netloc}"
            if not line and proc.poll() is not None:
                break
    proc.kill()
    raise AssertionError(f"no live view URL printed; stderr: {proc.communicate(timeout=30)[1][-2000:]}")


def request(base: str, path: str, method: str = "GET", timeout: float = 20.0) -> Tuple[int, Dict[str, str], bytes]:
    url = urlsplit(base)
    assert url.hostname == "127.0.0.1"
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class MjpegReader:
    """Reads parts of /stream.mjpg one at a time."""

    def __init__(self, base: str, path: str, timeout: float = 20.0):
        url = urlsplit(base)
        assert url.hostname == "127.0.0.1"
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
        self.conn.request("GET", path)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.content_type = self.resp.getheader("Content-Type", "")

    def frame(self) -> bytes:
        line = self.resp.readline()
        while line in (b"\r\n", b"\n"):
            line = self.resp.readline()
        assert line.strip() == b"--frame", line
        headers = {}
        while True:
            line = self.resp.readline().strip()
            if not line:
                break
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        assert headers["content-type"] == "image/jpeg"
        return self.resp.read(int(headers["content-length"]))

    def close(self) -> None:
        self.resp.close()  # the response holds the socket once the connection handed it over
        self.conn.close()


def distinct_frames(reader: MjpegReader, want: int = 2, limit: int = 30) -> List[bytes]:
    """The first `want` mutually different frames among at most `limit`."""
    seen: List[bytes] = []
    for _ in range(limit):
        f = reader.frame()
        if f not in seen:
            seen.append(f)
            if len(seen) == want:
                break
    return seen


def finish(proc: subprocess.Popen, timeout: float = 120.0) -> Tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def wait_for(predicate, timeout: float = 20.0, every: float = 0.1) -> Optional[object]:
    """The first truthy value of predicate() within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    return None

