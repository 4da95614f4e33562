"""CARLA lane following as a Gymnasium env, written to the carla 0.9.16 client API.

One ego vehicle with a front RGB camera, a collision sensor and a lane-invasion sensor, in synchronous
mode (the client ticks the world, so every action gets exactly one frame). Observation: the camera image
as RGB uint8 (H, W, 3) — `edge_digr.core.tasks` turns it into the policy's CHW input with the same function
as every other RGB task. Action: continuous (steer in [-1, 1], throttle in [0, 1]).

Reward (per step): progress along the lane, ``speed_along_lane / target_speed`` scaled by how close the
car is to the lane centre; an episode ends on a collision or on crossing a lane marking (with a penalty),
or is truncated after `max_steps`.

Connection: bounded retries with exponential backoff; no server → a one-line `UserError`, never a hang.
A server that drops mid-episode is reconnected the same way; the episode is then truncated and the step's
`info["reconnected"]` is set. A camera frame that does not arrive within `frame_timeout_s` after a tick is
counted in `info["dropped_frames"]` and the previous frame is returned (flagged `info["frame_dropped"]`).

`carla` is imported lazily, with the install hint, so this module imports anywhere.
"""
from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import gymnasium as gym
import numpy as np

from edge_digr.core.errors import UserError, missing_dependency

COLLISION_PENALTY = -10.0
LANE_INVASION_PENALTY = -5.0


def import_carla() -> Any:
    try:
        import carla
    except ImportError as exc:
        raise missing_dependency("carla", "carla", "the CARLA task and the carla:// feed") from exc
    return carla


# ------------------------------------------------------------------------------------- camera frames
def bgra_to_rgb(raw_data: Any, width: int, height: int) -> np.ndarray:
    """RGB uint8 (height, width, 3) from a carla.Image's raw_data: 32-bit BGRA pixels, row-major."""
    buf = np.frombuffer(raw_data, dtype=np.uint8)
    if buf.size != width * height * 4:
        raise UserError(f"camera frame has {buf.size} bytes; a {width}x{height} BGRA image has "
                        f"{width * height * 4}")
    return np.ascontiguousarray(buf.reshape(height, width, 4)[:, :, 2::-1])


def image_to_rgb(image: Any) -> np.ndarray:
    """RGB uint8 (H, W, 3) from a carla.Image (sensor.camera.rgb output)."""
    return bgra_to_rgb(image.raw_data, image.width, image.height)


# -------------------------------------------------------------------------------------- connecting
@dataclass(frozen=True)
class Backoff:
    """Bounded exponential backoff: `attempts` tries, waiting base·2^k seconds (at most `max_s`) between."""

    attempts: int = 5
    base_s: float = 0.5
    max_s: float = 8.0

    def delays(self) -> List[float]:
        return [min(self.base_s * 2 ** k, self.max_s) for k in range(self.attempts - 1)]


def connect(host: str, port: int, timeout_s: float = 5.0, backoff: Backoff = Backoff(),
            sleep: Callable[[float], None] = time.sleep) -> Any:
    """A carla.Client that answered `get_server_version`, after at most `backoff.attempts` tries."""
    carla = import_carla()
    delays = backoff.delays() + [0.0]
    start = time.monotonic()
    last = ""
    for delay in delays:
        try:
            client = carla.Client(host, port)  # raises at once for a host name that does not resolve
            client.set_timeout(timeout_s)
            client.get_server_version()
            return client
        except RuntimeError as exc:  # the client raises RuntimeError on time-out / refused connection / no host
            last = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        if delay:
            sleep(delay)
    raise UserError(f"no CARLA server answered at {host}:{port} after {backoff.attempts} attempts in "
                    f"{time.monotonic() - start:.1f} s ({last}); start the simulator (CarlaUE4.sh) or pass "
                    "the right carla://HOST:PORT")


# -------------------------------------------------------------------------------------------- reward
def lane_reward(speed_along: float, target_speed: float, lateral_m: float, half_width_m: float) -> float:
    """Progress along the lane (capped at the target speed), scaled by 1 at the centre → 0 at the edge."""
    progress = max(0.0, min(speed_along / target_speed, 1.0))
    centred = max(0.0, 1.0 - abs(lateral_m) / max(half_width_m, 1e-3))
    return progress * centred


@dataclass
class CarlaConfig:
    host: str = "localhost"
    port: int = 2000
    image_size: Tuple[int, int] = (96, 160)  # (height, width)
    timeout_s: float = 5.0
    backoff: Backoff = Backoff()
    fixed_delta_s: float = 0.05  # 20 Hz simulation step
    frame_timeout_s: float = 2.0
    max_steps: int = 1000
    target_speed_ms: float = 8.0
    vehicle: str = "vehicle.tesla.model3"
    town: Optional[str] = None  # e.g. "Town04"; None keeps the loaded map
    camera_fov: float = 90.0


class CarlaLaneEnv(gym.Env):
    """gymnasium.Env over a CARLA server (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, host: str = "localhost", port: int = 2000, image_size: Tuple[int, int] = (96, 160),
                 seed: Optional[int] = None, render_mode: Optional[str] = None, **options: Any):
        self.config = CarlaConfig(host=host, port=port, image_size=tuple(image_size), **options)
        h, w = self.config.image_size
        self.observation_space = gym.spaces.Box(0, 255, (h, w, 3), dtype=np.uint8)
        self.action_space = gym.spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 1.0], np.float32))
        self.render_mode = render_mode
        self.np_random = np.random.default_rng(seed)
        self.dropped_frames = 0
        self.reconnects = 0
        self._actors: List[Any] = []
        self._frames: "queue.Queue[Any]" = queue.Queue()
        self._events: Dict[str, bool] = {"collision": False, "lane_invasion": False}
        self._last_rgb = np.zeros((h, w, 3), np.uint8)
        self._steps = 0
        self._original_settings: Any = None
        self.client = connect(host, port, self.config.timeout_s, self.config.backoff)
        self._setup_world()

    # -- gymnasium API --------------------------------------------------------------------------------
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        if seed is not None:
            self.np_random = np.random.default_rng(seed)
        reconnected = False
        for attempt in range(2):
            try:
                self._destroy_actors()
                self._spawn_actors()
                rgb, _ = self._tick()
                break
            except RuntimeError as exc:  # the server dropped: reconnect (bounded) and try once more
                if attempt:
                    raise UserError(f"the CARLA server at {self.config.host}:{self.config.port} failed twice "
                                    f"while starting an episode ({str(exc)[:160]})") from None
                self._reconnect()
                reconnected = True
        self._steps = 0
        return rgb, {"dropped_frames": self.dropped_frames, "reconnected": reconnected}

    def step(self, action: Any):
        carla = import_carla()
        steer, throttle = (float(v) for v in np.clip(np.asarray(action, np.float32), self.action_space.low,
                                                     self.action_space.high))
        try:
            self.vehicle.apply_control(carla.VehicleControl(throttle=throttle, steer=steer, brake=0.0))
            rgb, dropped = self._tick()
        except RuntimeError:  # the server stopped answering: reconnect, then truncate this episode
            self._reconnect()
            return self._last_rgb, 0.0, False, True, {"reconnected": True, "dropped_frames": self.dropped_frames}
        self._steps += 1
        info = {"dropped_frames": self.dropped_frames, "frame_dropped": dropped}
        if self._events["collision"]:
            return rgb, COLLISION_PENALTY, True, False, {**info, "event": "collision"}
        if self._events["lane_invasion"]:
            return rgb, LANE_INVASION_PENALTY, True, False, {**info, "event": "lane_invasion"}
        return rgb, self._lane_reward(), False, self._steps >= self.config.max_steps, info

    def render(self) -> np.ndarray:
        return self._last_rgb

    def close(self) -> None:
        try:
            self._destroy_actors()
            if self._original_settings is not None:
                # Leave the server asynchronous: a synchronous server without a client freezes.
                self.world.apply_settings(self._original_settings)
        except RuntimeError:
            pass  # the server is gone; nothing left to restore

    # -- internals ------------------------------------------------------------------------------------
    def _setup_world(self) -> None:
        carla = import_carla()
        cfg = self.config
        self.world = self.client.load_world(cfg.town) if cfg.town else self.client.get_world()
        if self._original_settings is None:  # after a reconnect the world may still be in our settings
            self._original_settings = self.world.get_settings()
        settings = self.world.get_settings()
        settings.synchronous_mode = True
        settings.fixed_delta_seconds = cfg.fixed_delta_s
        self.world.apply_settings(settings)
        self.map = self.world.get_map()
        self._driving = carla.LaneType.Driving

    def _reconnect(self) -> None:
        self.reconnects += 1
        self.client = connect(self.config.host, self.config.port, self.config.timeout_s, self.config.backoff)
        self._actors = []  # the old actors died with the old connection's world
        self._setup_world()

    def _spawn_actors(self) -> None:
        carla = import_carla()
        cfg = self.config
        library = self.world.get_blueprint_library()
        points = self.map.get_spawn_points()
        vehicle = None
        for index in self.np_random.permutation(len(points))[:20]:
            vehicle = self.world.try_spawn_actor(library.find(cfg.vehicle), points[int(index)])
            if vehicle is not None:
                break
        if vehicle is None:
            raise UserError(f"CARLA could not spawn {cfg.vehicle} at any of 20 spawn points; is the map full?")
        self.vehicle = vehicle
        self._actors = [vehicle]
        h, w = cfg.image_size
        camera_bp = library.find("sensor.camera.rgb")
        camera_bp.set_attribute("image_size_x", str(w))
        camera_bp.set_attribute("image_size_y", str(h))
        camera_bp.set_attribute("fov", str(cfg.camera_fov))
        mount = carla.Transform(carla.Location(x=1.5, z=2.2), carla.Rotation(pitch=-10.0))
        camera = self.world.spawn_actor(camera_bp, mount, attach_to=vehicle)
        self._frames = queue.Queue()
        camera.listen(self._frames.put)
        collision = self.world.spawn_actor(library.find("sensor.other.collision"), carla.Transform(),
                                           attach_to=vehicle)
        invasion = self.world.spawn_actor(library.find("sensor.other.lane_invasion"), carla.Transform(),
                                          attach_to=vehicle)
        self._events = {"collision": False, "lane_invasion": False}
        collision.listen(lambda event: self._events.__setitem__("collision", True))
        invasion.listen(lambda event: self._events.__setitem__("lane_invasion", True))
        self._actors += [camera, collision, invasion]

    def _tick(self) -> Tuple[np.ndarray, bool]:
        """Advance the world one step and return the camera frame of that step (or the last one, dropped)."""
        frame_id = self.world.tick(self.config.timeout_s)
        deadline = time.monotonic() + self.config.frame_timeout_s
        while True:
            try:
                image = self._frames.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                self.dropped_frames += 1
                return self._last_rgb, True
            if image.frame >= frame_id:  # older frames queued before this tick are stale
                self._last_rgb = image_to_rgb(image)
                return self._last_rgb, False

    def _lane_reward(self) -> float:
        transform = self.vehicle.get_transform()
        waypoint = self.map.get_waypoint(transform.location, project_to_road=True, lane_type=self._driving)
        lane_dir = waypoint.transform.get_forward_vector()
        velocity = self.vehicle.get_velocity()
        speed_along = velocity.x * lane_dir.x + velocity.y * lane_dir.y
        # Signed distance from the lane centre, perpendicular to the lane direction.
        dx = transform.location.x - waypoint.transform.location.x
        dy = transform.location.y - waypoint.transform.location.y
        lateral = dx * -lane_dir.y + dy * lane_dir.x
        return lane_reward(speed_along, self.config.target_speed_ms, lateral, waypoint.lane_width / 2.0)

    def _destroy_actors(self) -> None:
        for actor in reversed(self._actors):
            if hasattr(actor, "is_listening") and actor.is_listening():
                actor.stop()
            actor.destroy()
        self._actors = []
