"""`edge-digr run --serve [HOST:]PORT`: watch a headless device's run from a browser on the same network.

Built on the standard library's `http.server.ThreadingHTTPServer`, not a web framework: the Jetson
install stays numpy / onnxruntime / click / pillow, there is nothing more to pin or audit, and a handful of
fixed routes for a few viewers need nothing more. One thread per connection means that a slow viewer
blocks only its own thread.

The policy loop never waits for a viewer. Per inferred frame, `LiveView.publish` copies the frame's
arrays into a latest-frame slot under a lock (a few dict writes and two small copies). An encoder thread
composes the newest frame with `overlay.compose` (the panels `--record` writes) and encodes it as JPEG
once, at most `fps` times a second and only while someone watches; frames published in between are
superseded. Each viewer's thread sends the newest JPEG whenever its client is ready for one; the frames
a viewer skipped are counted (`view.missed` in `/stats`).

Routes (nothing else exists; no file is ever served), each requiring `?token=T` under `--serve-token T`:

- ``/``: the page (inline CSS and JavaScript only, so it works on an offline robot network);
- ``/stream.mjpg``: multipart JPEG (``multipart/x-mixed-replace``), for scripts and video players;
- ``/frame.jpg?after=N``: the newest JPEG once it is newer than frame N (waits up to 10 s, else 204);
  the page polls it, which also works where a browser mishandles endless multipart streams;
- ``/stats``: JSON: step, episode, return, action, latency p50/p99 over the last 1000 calls, deadline
  misses, loop rate, viewer counters, playback state;
- ``/control?action=pause|resume|step`` (POST): replay feeds only; a live feed is never paused (the
  robot must not stall), so there the route answers 409.
"""
from __future__ import annotations

import collections
import hmac
import ipaddress
import io
import json
import re
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Deque, Dict, Optional, Sequence, Tuple
from urllib.parse import parse_qs, urlsplit

import numpy as np

from edge_digr.core.errors import UserError
from edge_digr.core.manifest import Manifest

if TYPE_CHECKING:
    from edge_digr.runtime.loop import StepResult

DEFAULT_HOST = "127.0.0.1"
LATENCY_WINDOW = 1000  # live p50/p99 describe the recent calls, not the whole run
POLL_WAIT_S = 10.0  # longest a /frame.jpg request waits for a newer frame
WATCH_GRACE_S = 3.0  # a page that polled this recently still counts as watching
CLIENT_TIMEOUT_S = 10.0  # a client that takes no data for this long is dropped
JPEG_QUALITY = 85
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{1,128}")  # URL-unreserved: goes into ?token= without escaping


@dataclass
class ServeOptions:
    host: str = DEFAULT_HOST
    port: int = 8080  # 0: the system picks a free port (the URL printed at start names it)
    token: Optional[str] = None
    fps: float = 15.0  # most frames per second encoded for viewers; also a served replay's pace


def parse_address(spec: str) -> Tuple[str, int]:
    """(host, port) from PORT, HOST:PORT or [IPv6]:PORT; the host defaults to loopback."""
    bad = f"--serve {spec!r}: expected PORT, HOST:PORT or [IPv6]:PORT, e.g. 8080 or 0.0.0.0:8080"
    host, sep, port = spec.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UserError(bad)  # a bare IPv6 address is ambiguous with its port: it needs brackets
    if sep and not host:
        raise UserError(bad)
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UserError(bad)
    return host or DEFAULT_HOST, int(port)


def check_token(token: str) -> str:
    if not _TOKEN.fullmatch(token):
        raise UserError("--serve-token: use 1 to 128 characters from A-Z a-z 0-9 . _ ~ - "
                        "(the token travels in the URL as ?token=...)")
    return token


def exposure_warning(opts: ServeOptions) -> Optional[str]:
    """A warning when the view is reachable from other machines, else None."""
    if _is_loopback(opts.host):
        return None
    return (f"warning: --serve {opts.host}:{opts.port} is reachable from other machines (not a loopback "
            "address) over unencrypted HTTP; "
            + ("anyone who learns the token can watch" if opts.token else
               "anyone who can reach it can watch and, for a replay, pause it: add --serve-token"))


def _is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback
                   for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (socket.gaierror, ValueError):
        return False


# -------------------------------------------------------------------------------------------- playback
class Playback:
    """The pace of a simulated or replayed feed, and pause/step for replays. The loop calls `wait()`
    before it takes each next frame; a live feed is never paused."""

    def __init__(self, rate_hz: Optional[float] = None, pausable: bool = False):
        self.period = 1.0 / rate_hz if rate_hz else 0.0
        self.pausable = pausable
        self._cond = threading.Condition()
        self._paused = False
        self._steps = 0  # frames granted by `step` while paused
        self._next = 0.0

    def wait(self) -> None:
        if self.pausable:
            with self._cond:
                held = False
                while self._paused and not self._steps:
                    held = True
                    self._cond.wait()
                if self._paused:
                    self._steps -= 1
            if held:
                self._next = 0.0  # no burst of frames to catch up the paused time
        if self.period:
            now = time.monotonic()
            if now < self._next:
                time.sleep(self._next - now)
            # On a fixed grid while the loop keeps up; a late frame moves the grid instead of causing a burst.
            self._next = max(self._next, now) + self.period

    def control(self, action: str) -> Dict[str, Any]:
        if action not in ("pause", "resume", "step"):
            raise ValueError(action)
        with self._cond:
            self._paused = action != "resume"
            self._steps = self._steps + 1 if action == "step" else 0
            self._cond.notify_all()
        return self.state()

    def state(self) -> Dict[str, Any]:
        return {"pausable": self.pausable, "paused": self._paused,
                "rate_hz": round(1.0 / self.period, 3) if self.period else None}


# ------------------------------------------------------------------------------------------- live view
class LiveView:
    """The server and its latest-frame slot. Use as a context manager around the run; `publish` per step."""

    def __init__(self, opts: ServeOptions, manifest: Manifest, labels: Sequence[str], playback: Playback,
                 feed: str, deadline_ms: Optional[float] = None, feed_length: Optional[int] = None):
        self.opts = opts
        self.manifest = manifest
        self.obs_name = manifest.input_names[0]
        self.head_name = "action" if manifest.continuous else "logits"
        self.labels = list(labels)
        self.playback = playback
        self.feed = feed
        self.feed_length = feed_length
        self.deadline_ms = deadline_ms
        self._lock = threading.Lock()
        self._published = threading.Condition(self._lock)  # loop → encoder: a new frame
        self._wanted = threading.Condition(self._lock)  # viewers → idle encoder: someone watches again
        self._encoded = threading.Condition(self._lock)  # encoder → viewers
        self._closing = False
        # what the loop hands over (under the lock)
        self._seq = 0
        self._slot: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self._state: Dict[str, Any] = {}
        self._latencies: Deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._times: Deque[float] = collections.deque(maxlen=100)
        self._episode = -1
        self._return = 0.0
        self._returns: Deque[float] = collections.deque(maxlen=10)
        self._misses = 0
        # what the encoder and the viewers keep (under the lock)
        self._jpeg: Optional[bytes] = None
        self._jpeg_n = 0  # frames encoded so far; /frame.jpg?after= counts in these
        self._jpeg_step: Optional[int] = None
        self._encode_s = 0.0
        self._streams = 0
        self._waiting = 0
        self._watched_until = 0.0
        self._missed = 0
        self._sent = 0
        self.server = _bind(opts, self)
        self._threads = [threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                          name="serve-http", daemon=True),
                         threading.Thread(target=self._encode_loop, name="serve-encode", daemon=True)]

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        # The token itself stays out of logs (a service's output goes to the journal).
        return f"http://{host}:{port}/" + ("?token=..." if self.opts.token else "")

    def __enter__(self) -> "LiveView":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            for cond in (self._published, self._wanted, self._encoded):
                cond.notify_all()
        self.server.shutdown()
        self.server.server_close()
        for t in self._threads:
            t.join(timeout=5)

    # ------------------------------------------------------------------------------ the loop's side
    def publish(self, r: "StepResult") -> None:
        """Hand one inferred frame over; never waits for a viewer (the lock guards only these writes).

        The arrays are copied: a runner or feed may reuse its buffers for the next frame.
        """
        obs, saliency = np.array(r.frame.inputs[self.obs_name]), np.array(r.outputs["saliency"])
        head = np.asarray(r.outputs[self.head_name], np.float64).tolist()
        now = time.monotonic()
        with self._lock:
            if r.episode != self._episode:
                if self._episode >= 0:
                    self._returns.append(self._return)
                self._episode, self._return = r.episode, 0.0
            self._return += r.frame.reward
            self._latencies.append(r.latency_ms)
            self._times.append(now)
            self._misses += self.deadline_ms is not None and r.latency_ms > self.deadline_ms
            self._seq += 1
            self._slot = (obs, saliency)
            self._state = {"step": r.step, "episode": r.episode, "head": head, "action": r.action}
            self._published.notify()

    # ------------------------------------------------------------------------------ encoder
    def _watched(self) -> bool:
        return self._streams > 0 or self._waiting > 0 or time.monotonic() < self._watched_until

    def _encode_loop(self) -> None:
        from edge_digr.runtime.overlay import compose

        done = 0
        period = 1.0 / self.opts.fps
        while True:
            with self._lock:
                while not self._closing and (self._seq == done or not self._watched()):
                    # Idle on a condition the loop never signals, so that nobody watching costs the loop nothing.
                    (self._published if self._watched() else self._wanted).wait()
                if self._closing:
                    return
                done, (obs, saliency), step = self._seq, self._slot, self._state["step"]
            start = time.perf_counter()
            jpeg = encode_jpeg(compose(obs, saliency, self.labels))
            spent = time.perf_counter() - start
            with self._lock:
                self._jpeg, self._jpeg_step = jpeg, step
                self._jpeg_n += 1
                self._encode_s += spent
                self._encoded.notify_all()
            time.sleep(max(0.0, period - spent))

    # ------------------------------------------------------------------------------ the viewers' side
    def next_jpeg(self, after: int, timeout: float) -> Optional[Tuple[bytes, int]]:
        """The newest JPEG once it is newer than frame `after`, or None on timeout or shutdown."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._waiting += 1
            self._wanted.notify()
            try:
                while self._jpeg_n <= after and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    self._encoded.wait(left)
                if self._closing and self._jpeg_n <= after:
                    return None
                if after > 0:
                    self._missed += self._jpeg_n - after - 1
                self._sent += 1
                self._watched_until = time.monotonic() + WATCH_GRACE_S
                assert self._jpeg is not None
                return self._jpeg, self._jpeg_n
            finally:
                self._waiting -= 1

    def stream_opened(self, delta: int) -> None:
        with self._lock:
            self._streams += delta
            self._wanted.notify()

    @property
    def closing(self) -> bool:
        return self._closing

    def stats(self) -> Dict[str, Any]:
        with self._lock:
            lat = np.array(self._latencies, dtype=np.float64)
            times = list(self._times)
            state = dict(self._state)
            out: Dict[str, Any] = {
                "task": self.manifest.task, "feed": self.feed, "feed_length": self.feed_length,
                "running": not self._closing, "step": state.get("step"), "episode": state.get("episode"),
                "return": self._return if state else None, "recent_returns": list(self._returns),
                "deadline_ms": self.deadline_ms, "deadline_misses": self._misses,
                "view": {"fps": self.opts.fps, "frames_published": self._seq, "frames_encoded": self._jpeg_n,
                         "frame_step": self._jpeg_step, "frames_sent": self._sent, "missed": self._missed,
                         "streams": self._streams, "pages": self._waiting,
                         "encode_ms_mean": 1e3 * self._encode_s / self._jpeg_n if self._jpeg_n else None},
            }
        out["latency_ms"] = {"last": float(lat[-1]) if lat.size else None,
                             "p50": float(np.percentile(lat, 50)) if lat.size else None,
                             "p99": float(np.percentile(lat, 99)) if lat.size else None, "window": int(lat.size)}
        out["loop_hz"] = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] \
            else None
        out["action"] = self._action(state)
        out["playback"] = self.playback.state()
        return out

    def _action(self, state: Dict[str, Any]) -> Dict[str, Any]:
        """Names always (a page can lay itself out before the first step); values once a frame was inferred."""
        out: Dict[str, Any] = {"kind": "action" if self.manifest.continuous else "logits",
                               "names": list(self.manifest.action["names"]), "values": None, "chosen": None}
        if state and self.manifest.continuous:
            out["values"] = [float(v) for v in state["action"]]
        elif state:
            out["values"], out["chosen"] = state["head"], int(state["action"])
        return out


def encode_jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------- HTTP server
class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck viewer never keeps the process alive
    block_on_close = False
    view: LiveView

    def server_bind(self) -> None:
        # HTTPServer would look up the host's FQDN here, which can hang for seconds on an offline network.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def _bind(opts: ServeOptions, view: LiveView) -> _Server:
    try:
        family = socket.getaddrinfo(opts.host, opts.port, proto=socket.IPPROTO_TCP)[0][0]
    except socket.gaierror as exc:
        raise UserError(f"--serve {opts.host}:{opts.port}: cannot resolve host {opts.host!r} ({exc.strerror})") \
            from None
    server_class = type("_BoundServer", (_Server,), {"address_family": family})
    try:
        server = server_class((opts.host, opts.port), _Handler)
    except OSError as exc:
        if exc.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise UserError(f"--serve {opts.host}:{opts.port}: the port is in use; pick another port, "
                            "or 0 to let the system choose") from None
        raise UserError(f"--serve {opts.host}:{opts.port}: cannot listen there ({exc.strerror or exc})") from None
    server.view = view
    return server


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = CLIENT_TIMEOUT_S  # socket timeout: a vanished client frees its thread
    server_version = "edge-digr"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a page polls several times a second: per-request logging would drown the run's output

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        view = self.server.view
        if view.opts.token is not None and not hmac.compare_digest(query.get("token", ""), view.opts.token):
            return self._send(HTTPStatus.FORBIDDEN, b"a valid ?token= is required\n", "text/plain")
        routes = {"/": ("GET", self._page), "/stats": ("GET", self._stats), "/frame.jpg": ("GET", self._frame),
                  "/stream.mjpg": ("GET", self._stream), "/control": ("POST", self._control)}
        if url.path not in routes:
            return self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        allowed, handler = routes[url.path]
        if method != allowed:
            return self._send(HTTPStatus.METHOD_NOT_ALLOWED, f"use {allowed}\n".encode(), "text/plain",
                              {"Allow": allowed})
        try:
            handler(view, query)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass  # the client went away: it simply gets no more frames

    def _send(self, status: HTTPStatus, body: bytes, ctype: str, headers: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers(headers)
        self.end_headers()
        self.wfile.write(body)

    def _common_headers(self, headers: Optional[Dict[str, str]] = None) -> None:
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        # The page may load nothing but what this server sends: it must work on an offline network.
        self.send_header("Content-Security-Policy", "default-src 'none'; img-src 'self' blob:; connect-src 'self'; "
                                                    "style-src 'unsafe-inline'; script-src 'unsafe-inline'")
        for k, v in (headers or {}).items():
            self.send_header(k, v)

    def _page(self, view: LiveView, query: Dict[str, str]) -> None:
        initial = json.dumps(view.stats()).replace("<", "\\u003c")  # first paint has numbers, no round trip
        self._send(HTTPStatus.OK, PAGE.replace("/*INITIAL*/null", initial).encode(), "text/html; charset=utf-8")

    def _stats(self, view: LiveView, query: Dict[str, str]) -> None:
        self._send(HTTPStatus.OK, json.dumps(view.stats()).encode(), "application/json")

    def _frame(self, view: LiveView, query: Dict[str, str]) -> None:
        try:
            after = int(query.get("after", "0"))
        except ValueError:
            return self._send(HTTPStatus.BAD_REQUEST, b"after= takes a frame number\n", "text/plain")
        got = view.next_jpeg(after, POLL_WAIT_S)
        if got is None:
            return self._send(HTTPStatus.NO_CONTENT, b"", "text/plain")
        jpeg, n = got
        self._send(HTTPStatus.OK, jpeg, "image/jpeg", {"X-Frame": str(n)})

    def _stream(self, view: LiveView, query: Dict[str, str]) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self._common_headers()
        self.end_headers()
        view.stream_opened(+1)
        try:
            n = 0
            while not view.closing:
                got = view.next_jpeg(n, POLL_WAIT_S)
                if got is None:
                    continue
                jpeg, n = got
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                                 + jpeg + b"\r\n")
                self.wfile.flush()
        finally:
            view.stream_opened(-1)

    def _control(self, view: LiveView, query: Dict[str, str]) -> None:
        if not view.playback.pausable:
            return self._send(HTTPStatus.CONFLICT, b"pause and step exist for replay feeds only: a live feed "
                                                   b"never waits\n", "text/plain")
        try:
            state = view.playback.control(query.get("action", ""))
        except ValueError:
            return self._send(HTTPStatus.BAD_REQUEST, b"action= takes pause, resume or step\n", "text/plain")
        self._send(HTTPStatus.OK, json.dumps(state).encode(), "application/json")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>edge-digr live</title>
<style>
body{margin:0;padding:14px 18px;background:#111;color:#ddd;font:15px/1.35 system-ui,sans-serif}
h1{font-size:17px;font-weight:600;margin:0 0 10px}h1 span{color:#888;font-weight:400}
#main{display:flex;flex-wrap:wrap;gap:16px 28px;align-items:flex-start}
#view{image-rendering:pixelated;display:block;background:#000}
#cols{display:flex;flex-direction:column;gap:14px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
td{padding:2px 14px 2px 0;vertical-align:top}td:first-child{color:#999}
.num{font:600 16px ui-monospace,monospace;color:#fff}
.act td{padding:1px 10px 1px 0}.act .on td{color:#ffcf40}
.bar{display:inline-block;height:10px;background:#d4483f;vertical-align:middle}.bar.neg{background:#4a7fd4}
button{font:15px system-ui;padding:4px 14px;margin-right:6px;background:#333;color:#eee;border:1px solid #666}
#state{font-weight:600}#state.live{color:#6c6}#state.off{color:#e66}#state.paused{color:#fc4}
</style></head><body>
<h1>edge-digr live <span id="title"></span></h1>
<div id="main"><img id="view" alt="frame and saliency">
<div id="cols">
<table id="run"></table>
<table class="act" id="act"></table>
<p id="ctl" hidden><button id="pause">pause</button><button id="step">step</button></p>
</div></div>
<script>
"use strict";
const q = new URLSearchParams(location.search);
const tok = q.get("token") ? "&token=" + encodeURIComponent(q.get("token")) : "";
const $ = id => document.getElementById(id);
const fmt = (v, d = 2) => v === null || v === undefined ? "n/a" : Number(v).toFixed(d);
const esc = s => String(s).replace(/[&<>"]/g, c => "&#" + c.charCodeAt(0) + ";");
let seq = 0, stats = null, gone = false;
function render(s) {
  stats = s;
  $("title").textContent = s.task + " \\u00b7 feed " + s.feed;
  const l = s.latency_ms, v = s.view, p = s.playback;
  const state = gone ? ["off", "disconnected (run over?)"] : !s.running ? ["off", "run finished"]
              : p.paused ? ["paused", "paused"] : ["live", "live"];
  const rows = [["state", '<span id="state" class="' + state[0] + '">' + state[1] + "</span>"],
    ["step", s.step === null ? "n/a" : s.step + (s.feed_length ? " (of " + s.feed_length + " frames)" : "")],
    ["episode", s.episode ?? "n/a"], ["return", fmt(s["return"])],
    ["latency p50", fmt(l.p50) + " ms"], ["latency p99", fmt(l.p99) + " ms"],
    ["last call", fmt(l.last) + " ms"],
    ["deadline misses", s.deadline_ms === null ? "no --deadline-ms" : s.deadline_misses + " (" + s.deadline_ms + " ms)"],
    ["loop rate", fmt(s.loop_hz, 1) + " steps/s"],
    ["view", v.frames_encoded + " frames, up to " + v.fps + "/s, missed " + v.missed]];
  $("run").innerHTML = rows.map(r => '<tr><td>' + r[0] + '</td><td class="num">' + r[1] + "</td></tr>").join("");
  const a = s.action, vals = a.values || a.names.map(() => null);
  const top = Math.max(...vals.map(x => Math.abs(x || 0)), 1e-9);
  $("act").innerHTML = '<tr><td colspan="3">' + (a.kind === "logits" ? "logits (greedy action in yellow)" : "action") + "</td></tr>"
    + a.names.map((n, i) => '<tr class="' + (i === a.chosen ? "on" : "") + '"><td>' + esc(n) + '</td><td class="num">'
    + fmt(vals[i], 3) + '</td><td><span class="bar' + (vals[i] < 0 ? " neg" : "") + '" style="width:'
    + Math.round(90 * Math.abs(vals[i] || 0) / top)
    + 'px"></span></td></tr>').join("");
  $("ctl").hidden = !p.pausable;
  $("pause").textContent = p.paused ? "resume" : "pause";
}
// Whole-number zoom (pixelated: each pixel a crisp square) that leaves room for the numbers beside the
// image, but panels at least 320 px wide.
function fit() {
  const img = $("view"), w = img.naturalWidth, h = img.naturalHeight;
  if (!w) return;
  const panels = 1 + (stats && stats.action.kind === "action" ? stats.action.names.length : 1);
  const fits = Math.min(Math.floor((innerWidth - 420) / w), Math.floor((innerHeight - 70) / h));
  const k = Math.min(4, Math.max(1, fits, Math.ceil(320 * panels / w)));
  img.style.width = w * k + "px";
}
async function frames() {
  for (;;) {
    try {
      const r = await fetch("/frame.jpg?after=" + seq + tok, {cache: "no-store"});
      if (r.status === 200) {
        seq = Number(r.headers.get("X-Frame"));
        const u = URL.createObjectURL(await r.blob()), img = $("view"), old = img.src;
        img.src = u;
        if (old.startsWith("blob:")) URL.revokeObjectURL(old);
        gone = false;
        poll();
      } else if (r.status !== 204) throw new Error(r.status);
    } catch (e) { gone = true; if (stats) render(stats); await new Promise(f => setTimeout(f, 1000)); }
  }
}
async function poll() {
  try { const r = await fetch("/stats?x=1" + tok, {cache: "no-store"}); if (r.ok) { gone = false; render(await r.json()); } }
  catch (e) { gone = true; if (stats) render(stats); }
}
async function control(action) {
  const r = await fetch("/control?action=" + action + tok, {method: "POST"});
  if (r.ok) poll();
}
$("pause").onclick = () => control(stats && stats.playback.paused ? "resume" : "pause");
$("step").onclick = () => control("step");
$("view").onload = fit;
addEventListener("resize", fit);
render(/*INITIAL*/null);
// Set during parsing so that the page's load event waits for the first frame.
$("view").src = "/frame.jpg?after=0" + tok;
setInterval(poll, 1000);
frames();
</script></body></html>
"""
