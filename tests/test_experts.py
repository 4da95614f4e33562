"""Privileged experts' controller maths on hand-made and recorded states (no simulator needed)."""
import math
from pathlib import Path

import numpy as np
import pytest

from edge_digr.core.errors import UserError
from edge_digr.experts import EXPERTS, make_expert
from edge_digr.experts.car_racing import (CarState, PursuitConfig, curvature_ahead, heading_error,
                                          nearest_index, point_ahead, pursuit_action)
from edge_digr.experts.carla import LaneFollowConfig, PidState, heading_error as carla_heading_error, \
    lane_follow_action

DATA = Path(__file__).parent / "data"


def straight_track(n=200, spacing=3.5):
    """A straight centre line along +y (heading 0 in Box2D's convention: the car's forward is +y)."""
    return np.stack([np.zeros(n), np.arange(n) * spacing], axis=1)


def circle_track(radius=50.0, n=120):
    """Counter-clockwise circle: driving along it is a constant left turn."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


# ------------------------------------------------------------------------------------------ car-racing
def test_centred_car_on_a_straight_goes_straight_and_accelerates():
    action, i = pursuit_action(straight_track(), CarState(0.0, 10.0, 0.0, 0.0, 0.0))
    assert abs(action[0]) < 1e-6 and action[1] > 0.5 and action[2] == 0.0
    assert i == 3  # 10.0 / 3.5 rounds to the fourth point


@pytest.mark.parametrize("offset, steer_sign", [(-3.0, +1), (3.0, -1)])
def test_car_beside_the_line_steers_back_towards_it(offset, steer_sign):
    # Driving along +y, x < 0 is left of the line and needs a right turn: CarRacing's steer > 0.
    action, _ = pursuit_action(straight_track(), CarState(offset, 10.0, 0.0, 0.0, 20.0))
    assert np.sign(action[0]) == steer_sign


def test_heading_error_sign_and_size():
    car = CarState(0.0, 0.0, 0.0, 0.0, 0.0)  # facing +y
    assert heading_error(car, np.array([0.0, 10.0])) == pytest.approx(0.0)
    assert heading_error(car, np.array([-10.0, 10.0])) == pytest.approx(math.pi / 4)  # ahead-left
    assert heading_error(car, np.array([10.0, 10.0])) == pytest.approx(-math.pi / 4)


def test_sliding_car_steers_by_where_it_moves_not_where_it_points():
    # Body rotated 30° left, but moving straight along +y at speed: nothing to correct on the course.
    car = CarState(0.0, 10.0, math.radians(30), 0.0, 40.0)
    assert heading_error(car, np.array([0.0, 30.0])) == pytest.approx(0.0, abs=1e-9)


def test_curvature_ahead_is_zero_on_a_straight_and_grows_with_the_window_on_a_circle():
    assert curvature_ahead(straight_track(), 5, 40.0) == pytest.approx(0.0)
    circle = circle_track(radius=50.0)
    spacing = np.linalg.norm(circle[1] - circle[0])
    short, long = curvature_ahead(circle, 0, 20.0), curvature_ahead(circle, 0, 40.0)
    assert long > short > 0
    assert long == pytest.approx(math.ceil(40.0 / spacing) * spacing / 50.0, rel=0.1)  # arc / radius


def test_corners_are_slower_than_straights():
    cfg = PursuitConfig()
    fast = CarState(0.0, 10.0, 0.0, 0.0, 60.0)  # 60 is under v_straight, over v_corner
    straight, _ = pursuit_action(straight_track(), fast, cfg)
    circle = circle_track(radius=30.0)
    on_circle = CarState(30.0, 0.0, 0.0, 0.0, 60.0)  # at angle 0, heading +y: tangent to the CCW circle
    corner, _ = pursuit_action(circle, on_circle, cfg)
    assert straight[1] > 0 and straight[2] == 0
    assert corner[1] == 0 and corner[2] > 0  # too fast for the bend: brake
    assert corner[0] < 0  # and turn left


def test_point_ahead_wraps_around_the_loop():
    circle = circle_track(n=10)
    i, _ = point_ahead(circle, 9, 1e-6)
    assert i == 0


def test_nearest_index_with_a_hint_ignores_a_close_stretch_elsewhere():
    # A hairpin: two parallel stretches 6 apart. The car is on the first, a little nearer the second.
    first = np.stack([np.zeros(30), np.arange(30) * 3.5], axis=1)
    second = np.stack([np.full(30, 6.0), np.arange(30)[::-1] * 3.5], axis=1)
    track = np.concatenate([first, second])
    x, y = 3.2, 35.0
    assert nearest_index(track, x, y) >= 30  # globally nearest: the wrong stretch
    assert nearest_index(track, x, y, hint=9) < 30


def test_recorded_drive_stays_on_the_real_track():
    """States recorded while the expert drove CarRacing seed 0: each is near the line, and the action
    steers towards the look-ahead point's side."""
    with np.load(DATA / "car_racing_track_seed0.npz") as f:
        track, states = f["track"], f["states"]
    hint = None
    for row in states:
        car = CarState(*row)
        action, hint = pursuit_action(track, car, PursuitConfig(), hint)
        assert np.hypot(*(track[hint] - (car.x, car.y))) < 7.0  # within the road's half width (6.7)
        assert -1 <= action[0] <= 1 and 0 <= action[1] <= 1 and 0 <= action[2] <= 0.8


# ------------------------------------------------------------------------------------------------ carla
def test_carla_heading_error_uses_the_left_handed_frame():
    # yaw 0 faces +x; CARLA's +y is to the right, and a positive steer turns right.
    assert carla_heading_error(0, 0, 0.0, 10, 0) == pytest.approx(0.0)
    assert carla_heading_error(0, 0, 0.0, 10, 10) == pytest.approx(math.pi / 4)
    assert carla_heading_error(0, 0, 90.0, 0, 10) == pytest.approx(0.0)
    assert carla_heading_error(0, 0, 90.0, -10, 10) == pytest.approx(math.pi / 4)  # facing +y, target to its right


def test_carla_pid_steers_to_the_waypoint_and_holds_speed():
    cfg = LaneFollowConfig()
    state = PidState()
    action = lane_follow_action((0.0, 0.0, 0.0), 2.0, (10.0, 2.0), state, cfg, dt=0.05)
    assert action[0] > 0 and action[1] > 0.5  # target right, well below the target speed
    fast = lane_follow_action((0.0, 0.0, 0.0), cfg.target_speed_ms + 5.0, (10.0, -2.0), PidState(), cfg, dt=0.05)
    assert fast[0] < 0 and fast[1] == 0.0


def test_carla_speed_integral_is_bounded():
    cfg = LaneFollowConfig()
    state = PidState()
    for _ in range(10_000):
        lane_follow_action((0.0, 0.0, 0.0), 0.0, (10.0, 0.0), state, cfg, dt=0.05)
    assert state.integral == pytest.approx(cfg.integral_limit)


# ---------------------------------------------------------------------------------------------- registry
def test_every_expert_task_exists_and_others_are_refused():
    from edge_digr.core.tasks import TASKS

    assert set(EXPERTS) <= set(TASKS)
    with pytest.raises(UserError, match="has no privileged expert"):
        make_expert("minigrid-fetch")


def test_machine_line_names_the_cpu_and_the_probe():
    from edge_digr.machine import machine_info, machine_line

    info = machine_info(probe=False)
    assert info["cores"] >= 1 and info["cpu"]
    line = machine_line({**info, "probe_ms": 12.5})
    assert line.startswith(str(info["cpu"])) and line.endswith("probe 12.5 ms")
