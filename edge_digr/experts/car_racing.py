"""Privileged CarRacing expert: pure pursuit on the track's centre line, speed set by the curvature ahead.

It reads what the pixel policy never sees: the track geometry (`env.unwrapped.track`, one centre-line
point per tile) and the car's pose and velocity (`env.unwrapped.car.hull`). The maths are plain functions
of arrays so that they can be tested on recorded poses without Box2D.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np


@dataclass(frozen=True)
class PursuitConfig:
    # Chosen by a 60-point random search on seeds 1000-1007 (benchmarks/expert_car_racing.py reports the
    # held-out seeds 0-19); see docs/RESULTS.md.
    lookahead: float = 10.2  # look-ahead distance at standstill (world units; a tile is 3.5 long)
    lookahead_per_speed: float = 0.226  # added look-ahead per unit of speed: faster, look further
    steer_gain: float = 2.0  # action steer per radian of heading error to the look-ahead point
    yaw_damping: float = 0.234  # action steer per rad/s of yaw rate: damps the rear-drive fishtail
    traction: float = 0.64  # gas is scaled by 1 - traction·|steer|: full throttle in a turn spins the car
    v_straight: float = 82.0  # target speed on straights (world units/s)
    v_corner: float = 39.8  # target speed in the sharpest corners
    curve_window: float = 35.2  # how far ahead the curvature is read (world units)
    curve_full: float = 1.4  # heading change over the window (rad) that means "sharpest corner"
    brake_margin: float = 10.6  # brake only when this much faster than the target


@dataclass(frozen=True)
class CarState:
    x: float
    y: float
    angle: float  # Box2D body angle; the car's forward is the body's +y axis
    vx: float
    vy: float
    yaw_rate: float = 0.0  # rad/s, positive = turning left (counter-clockwise)

    @property
    def forward(self) -> np.ndarray:
        return np.array([-np.sin(self.angle), np.cos(self.angle)])

    @property
    def course(self) -> np.ndarray:
        """Unit direction of travel: the velocity's once moving (a sliding car goes where it moves, not where
        it points), the body's forward axis at a standstill."""
        v = np.array([self.vx, self.vy])
        norm = float(np.linalg.norm(v))
        return v / norm if norm > 3.0 else self.forward

    @property
    def speed(self) -> float:
        return float(np.hypot(self.vx, self.vy))


def car_state(env: Any) -> CarState:
    hull = env.unwrapped.car.hull
    return CarState(float(hull.position[0]), float(hull.position[1]), float(hull.angle),
                    float(hull.linearVelocity[0]), float(hull.linearVelocity[1]), float(hull.angularVelocity))


def track_points(env: Any) -> np.ndarray:
    """(N, 2) centre-line points in driving order; the track's rows are (alpha, beta, x, y)."""
    return np.asarray([(t[2], t[3]) for t in env.unwrapped.track], dtype=np.float64)


def nearest_index(points: np.ndarray, x: float, y: float, hint: Optional[int] = None, window: int = 30) -> int:
    """Index of the centre-line point nearest to (x, y). With `hint` (the last index), only points from a
    few behind to `window` ahead are searched: where the track passes close to itself, the globally
    nearest point can belong to another stretch, and steering for it cuts across the grass."""
    if hint is None:
        candidates = np.arange(len(points))
    else:
        candidates = (hint + np.arange(-5, window)) % len(points)
    d2 = (points[candidates, 0] - x) ** 2 + (points[candidates, 1] - y) ** 2
    return int(candidates[np.argmin(d2)])


def point_ahead(points: np.ndarray, start: int, distance: float) -> Tuple[int, np.ndarray]:
    """Index and position of the first centre-line point at least `distance` along the loop from `start`."""
    n = len(points)
    travelled, i = 0.0, start
    for _ in range(n):
        j = (i + 1) % n
        travelled += float(np.linalg.norm(points[j] - points[i]))
        i = j
        if travelled >= distance:
            break
    return i, points[i]


def heading_error(state: CarState, target: np.ndarray) -> float:
    """Signed angle (rad, positive = to the left) from the car's direction of travel to `target`."""
    d = target - np.array([state.x, state.y])
    f = state.course
    left = np.array([-f[1], f[0]])
    return float(np.arctan2(d @ left, d @ f))


def curvature_ahead(points: np.ndarray, start: int, window: float) -> float:
    """Largest absolute heading change (rad) between the car's tile and any point within `window` ahead."""
    end, _ = point_ahead(points, start, window)
    n = len(points)
    count = (end - start) % n + 1
    idx = (start + np.arange(count)) % n
    seg = np.diff(points[np.append(idx, (end + 1) % n)], axis=0)
    heading = np.unwrap(np.arctan2(seg[:, 1], seg[:, 0]))
    return float(np.max(np.abs(heading - heading[0])))


def pursuit_action(points: np.ndarray, state: CarState, cfg: PursuitConfig = PursuitConfig(),
                   hint: Optional[int] = None) -> Tuple[np.ndarray, int]:
    """(steer, gas, brake) in CarRacing's convention (steer +1 turns right, so left errors steer negative),
    and the centre-line index the car is at (the next call's `hint`)."""
    i = nearest_index(points, state.x, state.y, hint)
    _, target = point_ahead(points, i, cfg.lookahead + cfg.lookahead_per_speed * state.speed)
    steer = float(np.clip(-cfg.steer_gain * heading_error(state, target) + cfg.yaw_damping * state.yaw_rate,
                          -1.0, 1.0))
    bend = min(curvature_ahead(points, i, cfg.curve_window) / cfg.curve_full, 1.0)
    v_target = cfg.v_straight + (cfg.v_corner - cfg.v_straight) * bend
    gas = float(np.clip((v_target - state.speed) / 10.0, 0.0, 1.0)) * (1.0 - cfg.traction * abs(steer))
    brake = float(np.clip((state.speed - v_target - cfg.brake_margin) / 20.0, 0.0, 0.8))
    return np.array([steer, gas, brake], dtype=np.float32), i


class CarRacingExpert:
    """Pure pursuit + curvature speed control on the privileged track geometry and car pose."""

    def __init__(self, cfg: PursuitConfig = PursuitConfig()):
        self.cfg = cfg
        self._points: Optional[np.ndarray] = None
        self._index: Optional[int] = None

    def reset(self) -> None:
        self._points, self._index = None, None  # a new episode has a new random track

    def act(self, env: Any) -> np.ndarray:
        if self._points is None:
            self._points = track_points(env)
        action, self._index = pursuit_action(self._points, car_state(env), self.cfg, self._index)
        return action
