"""Privileged CARLA expert: lane following on the map's waypoints, PID on heading error and speed.

Written to the carla 0.9.16 client API (`carla.Map.get_waypoint`, `carla.Waypoint.next`,
`Actor.get_transform`/`get_velocity`) against `edge_digr.core.carla_env.CarlaLaneEnv`. **It has not run
against a CARLA server** (none runs where it was written); the controller maths below are plain
functions of poses and points and are tested on recorded values.

CARLA's world frame is left-handed (x forward, y to the right, yaw in degrees, clockwise seen from
above), and a positive steer turns right, so a target to the right gives a positive heading error and a
positive steer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Tuple

import numpy as np


@dataclass(frozen=True)
class LaneFollowConfig:
    lookahead_m: float = 6.0  # waypoint distance ahead at standstill
    lookahead_per_ms: float = 0.5  # extra look-ahead per m/s of speed
    steer_kp: float = 1.2  # steer per radian of heading error
    steer_kd: float = 0.1  # steer per rad/s of heading-error change: damps weaving
    target_speed_ms: float = 8.0  # CarlaLaneEnv's target speed
    speed_kp: float = 0.25  # throttle per m/s below the target
    speed_ki: float = 0.05  # throttle per m·s accumulated error: holds speed uphill
    integral_limit: float = 10.0  # anti-windup bound on the speed integral (m)


@dataclass
class PidState:
    last_error: float = 0.0
    integral: float = 0.0
    started: bool = False


def heading_error(x: float, y: float, yaw_deg: float, target_x: float, target_y: float) -> float:
    """Signed angle (rad) from the vehicle's forward axis to the target, positive = target to the right."""
    yaw = math.radians(yaw_deg)
    fx, fy = math.cos(yaw), math.sin(yaw)
    dx, dy = target_x - x, target_y - y
    return math.atan2(fx * dy - fy * dx, fx * dx + fy * dy)


def lane_follow_action(pose: Tuple[float, float, float], speed_ms: float, target: Tuple[float, float],
                       state: PidState, cfg: LaneFollowConfig, dt: float) -> np.ndarray:
    """(steer, throttle) from the pose (x, y, yaw°), the speed and the look-ahead waypoint; updates `state`."""
    error = heading_error(pose[0], pose[1], pose[2], target[0], target[1])
    rate = (error - state.last_error) / dt if state.started else 0.0
    state.last_error, state.started = error, True
    steer = float(np.clip(cfg.steer_kp * error + cfg.steer_kd * rate, -1.0, 1.0))
    speed_error = cfg.target_speed_ms - speed_ms
    state.integral = float(np.clip(state.integral + speed_error * dt, -cfg.integral_limit, cfg.integral_limit))
    throttle = float(np.clip(cfg.speed_kp * speed_error + cfg.speed_ki * state.integral, 0.0, 1.0))
    return np.array([steer, throttle], dtype=np.float32)


@dataclass
class CarlaExpert:
    """Reads the ego vehicle's pose and the lane's waypoints from a CarlaLaneEnv (never the camera)."""

    cfg: LaneFollowConfig = LaneFollowConfig()
    state: PidState = field(default_factory=PidState)

    def reset(self) -> None:
        self.state = PidState()

    def act(self, env: Any) -> np.ndarray:
        base = env.unwrapped
        transform = base.vehicle.get_transform()
        velocity = base.vehicle.get_velocity()
        speed = math.hypot(velocity.x, velocity.y)
        waypoint = base.map.get_waypoint(transform.location, project_to_road=True, lane_type=base._driving)
        ahead = waypoint.next(self.cfg.lookahead_m + self.cfg.lookahead_per_ms * speed)
        target = (ahead[0] if ahead else waypoint).transform.location
        pose = (transform.location.x, transform.location.y, transform.rotation.yaw)
        return lane_follow_action(pose, speed, (target.x, target.y), self.state, self.cfg,
                                  base.config.fixed_delta_s)
