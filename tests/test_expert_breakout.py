"""Breakout RAM expert: landing prediction, RAM decoding on a recorded emulator trace, actions.

The fixture tests/data/breakout_ram.npz is a real ALE 0.12.1 run (seed 0, no sticky actions, one emulator
frame per row): FIRE, a scripted left/right paddle dance that misses the ball (which bounces off the
left wall on its way out), the lost life, FIRE again. Each row holds the action, the 128 RAM bytes after
the frame and the ball and paddle positions measured on the rendered screen, so `decode_ram` is checked
against pixels, not against itself. Regenerate it with `python tests/test_expert_breakout.py`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_digr.experts.breakout import (DEAD_BAND, FIRE, LEFT, LEFT_WALL, NOOP, RIGHT, BreakoutExpert, ball_vx,
                                        decode_ram, predict_landing_x, predict_return_x, reflect)

FIXTURE = Path(__file__).parent / "data" / "breakout_ram.npz"
# Screen (160 px wide) = RAM coordinate minus these, measured when recording the fixture.
BALL_SCREEN_DX, BALL_SCREEN_DY, PADDLE_SCREEN_DX = 49, -9, 47


# ------------------------------------------------------------------------------------ landing maths
def test_straight_drop_lands_below_the_ball():
    assert predict_landing_x(100, 50, 0.0, 2.0, 177, 55, 201) == pytest.approx(100)


def test_diagonal_without_bounce_follows_the_line():
    # 40 px to fall at 2 px/frame = 20 frames, 1 px/frame sideways.
    assert predict_landing_x(100, 137, 1.0, 2.0, 177, 55, 201) == pytest.approx(120)
    assert predict_landing_x(100, 137, -1.0, 2.0, 177, 55, 201) == pytest.approx(80)


def test_one_bounce_off_the_right_wall():
    # Would reach 220 unbounded: 19 px past the wall at 201 comes back to 182.
    assert predict_landing_x(180, 97, 0.5, 1.0, 177, 55, 201) == pytest.approx(182)


def test_one_bounce_off_the_left_wall():
    assert predict_landing_x(60, 117, -0.5, 1.0, 177, 55, 201) == pytest.approx(80)


def test_two_bounces_left_then_right():
    # 200 px of travel to the left from 60: 5 px to the left wall, 146 px across to the right wall,
    # 49 px back: 201 - 49 = 152.
    assert predict_landing_x(60, 77, -2.0, 1.0, 177, 55, 201) == pytest.approx(152)


def test_ball_at_the_paddle_row_lands_where_it_is():
    assert predict_landing_x(90, 177, 3.0, 2.0, 177, 55, 201) == pytest.approx(90)


def test_rising_ball_has_no_landing_point():
    with pytest.raises(ValueError, match="moving down"):
        predict_landing_x(100, 120, 1.0, -2.0, 177, 55, 201)


def test_rising_ball_returns_after_turning_at_the_bricks():
    # Rises 40 px to y 84 (+20 px sideways), falls 93 px to the paddle row (+46.5 px): 166.5.
    assert predict_return_x(100, 124, 1.0, -2.0, 84, 177, 55, 201) == pytest.approx(166.5)


def test_reflect_is_the_identity_between_the_walls_and_mirrors_outside():
    assert reflect(100, 55, 201) == 100
    assert reflect(54, 55, 201) == 56
    assert reflect(203, 55, 201) == 199


def test_ball_vx_counts_a_wall_bounce_inside_the_step_and_returns_the_velocity_after_it():
    # 59 -> 55 -> 57 over one step: 6 px of travel, and the ball now moves right.
    assert ball_vx(59, 57, vx_prev=-6) == pytest.approx(6)
    assert ball_vx(197, 199, vx_prev=6) == pytest.approx(-6)
    # Same speed, both walls far: the plain difference, a paddle-reversed ball included.
    assert ball_vx(100, 94, vx_prev=6) == pytest.approx(-6)
    assert ball_vx(100, 108, vx_prev=None) == pytest.approx(8)


# ------------------------------------------------------------------------ decode_ram on a real run
@pytest.fixture(scope="module")
def trace():
    return dict(np.load(FIXTURE))


def test_decoded_ball_matches_the_screen(trace):
    seen = trace["ball_screen"][:, 0] >= 0
    assert seen.sum() > 20
    decoded = [decode_ram(r) for r in trace["ram"][seen]]
    assert all(s.ball_in_play for s in decoded)
    np.testing.assert_array_equal([s.ball_x - BALL_SCREEN_DX for s in decoded], trace["ball_screen"][seen, 0])
    np.testing.assert_array_equal([s.ball_y - BALL_SCREEN_DY for s in decoded], trace["ball_screen"][seen, 1])


def test_decoded_paddle_matches_the_screen(trace):
    decoded = [decode_ram(r) for r in trace["ram"]]
    screen = trace["paddle_screen"]
    assert len(set(screen.tolist())) > 5  # the paddle did move
    np.testing.assert_array_equal([s.paddle_x - PADDLE_SCREEN_DX for s in decoded], screen)


def test_decoded_serve_and_lost_life(trace):
    states = [decode_ram(r) for r in trace["ram"]]
    lives = [s.lives for s in states]
    assert lives[0] == 5 and lives[-1] == 4 and sorted(lives, reverse=True) == lives
    assert {s.paddle_width for s in states} == {16}  # the ball never reached the top wall
    lost = lives.index(4)
    # In play from the first FIRE until the ball falls out; then no ball until FIRE serves again.
    assert states[0].ball_in_play  # row 0 is after the first FIRE frame
    assert not states[lost].ball_in_play
    fires = np.flatnonzero(trace["action"] == FIRE)
    assert fires[-1] > lost and states[-1].ball_in_play
    assert not any(s.ball_in_play for s in states[lost:fires[-1]])


def test_decode_ram_rejects_a_wrong_size():
    with pytest.raises(ValueError, match="128 bytes"):
        decode_ram(np.zeros(64, dtype=np.uint8))


def test_recorded_ball_bounces_off_the_left_wall(trace):
    xs = [decode_ram(r).ball_x for r in trace["ram"]]
    turn = int(np.argmin(xs[:100]))
    assert abs(xs[turn] - LEFT_WALL) <= 1 and xs[turn + 2] > xs[turn]


# ----------------------------------------------------------------------------------------- act
def make_ram(ball_x: int = 0, ball_y: int = 0, paddle_x: int = 120, lives: int = 5, half_width: int = 8
             ) -> np.ndarray:
    """A RAM image with only the expert's bytes set."""
    ram = np.zeros(128, dtype=np.uint8)
    ram[99], ram[101], ram[72], ram[57], ram[108] = ball_x, ball_y, paddle_x, lives, half_width
    return ram


def test_fire_when_no_ball_is_in_play():
    expert = BreakoutExpert()
    assert expert.act_on_ram(make_ram(ball_y=0, lives=5)) == FIRE
    assert expert.act_on_ram(make_ram(ball_x=100, ball_y=120)) != FIRE
    assert expert.act_on_ram(make_ram(ball_y=0, lives=4)) == FIRE  # lost a life: serve again


@pytest.mark.parametrize("ball_dx, expected", [(8, RIGHT), (-8, LEFT)])
def test_moves_towards_the_predicted_landing_point(ball_dx, expected):
    # The ball is right above the paddle but heading off to one side: the landing point, not the ball's
    # current x, decides.
    expert = BreakoutExpert()
    expert.act_on_ram(make_ram(ball_x=128, ball_y=100, paddle_x=120))
    assert expert.act_on_ram(make_ram(ball_x=128 + ball_dx, ball_y=108, paddle_x=120)) == expected


def test_moves_towards_a_landing_point_behind_a_wall_bounce():
    # Heading right into the right wall from 190: bounces back and lands left of the paddle's catch window.
    expert = BreakoutExpert()
    expert.act_on_ram(make_ram(ball_x=186, ball_y=60, paddle_x=175))
    assert expert.act_on_ram(make_ram(ball_x=194, ball_y=64, paddle_x=175)) == LEFT


def test_stays_put_when_the_ball_lands_mid_paddle():
    expert = BreakoutExpert()
    expert.act_on_ram(make_ram(ball_x=129, ball_y=100, paddle_x=120))
    assert expert.act_on_ram(make_ram(ball_x=129, ball_y=108, paddle_x=120)) == NOOP


def test_a_paddle_still_moving_is_credited_with_where_it_will_stop():
    # Landing 14 px right of the 16 px paddle's middle (120 + 9): a paddle at rest presses RIGHT; one that
    # moved 12 px right over the last step comes to rest 6 px further on, inside the dead band: it waits.
    still = BreakoutExpert()
    still.act_on_ram(make_ram(ball_x=143, ball_y=100, paddle_x=120))
    assert still.act_on_ram(make_ram(ball_x=143, ball_y=108, paddle_x=120)) == RIGHT
    moving = BreakoutExpert()
    moving.act_on_ram(make_ram(ball_x=143, ball_y=100, paddle_x=108))
    assert moving.act_on_ram(make_ram(ball_x=143, ball_y=108, paddle_x=120)) == NOOP


@pytest.mark.parametrize("half_width, expected", [(8, NOOP), (6, RIGHT)])
def test_the_aim_is_the_middle_of_the_paddle_as_wide_as_it_is_now(half_width, expected):
    # Landing DEAD_BAND + 1 px right of the 12 px paddle's middle (120 + 7), 3 px inside the band of the
    # 16 px one's (120 + 9).
    landing = 127 + int(DEAD_BAND) + 1
    expert = BreakoutExpert()
    expert.act_on_ram(make_ram(ball_x=landing, ball_y=100, half_width=half_width))
    assert expert.act_on_ram(make_ram(ball_x=landing, ball_y=108, half_width=half_width)) == expected


def test_act_reads_the_env_ram():
    class FakeAle:
        def getRAM(self) -> np.ndarray:
            return make_ram(ball_y=0)

        def getEpisodeFrameNumber(self) -> int:
            return 40

    class FakeEnv:
        unwrapped = type("U", (), {"ale": FakeAle()})()

    assert BreakoutExpert().act(FakeEnv()) == FIRE


def test_asking_twice_about_one_frame_does_not_spoil_the_velocity():
    # A ball above the paddle heading far left: asked twice per frame, the expert must still see it move
    # (a second update would make vx = vy = 0 and leave the paddle where it is).
    once, twice = BreakoutExpert(), BreakoutExpert()
    for frame, (x, y) in zip((100, 104, 108), ((136, 100), (128, 108), (120, 116))):
        ram = make_ram(ball_x=x, ball_y=y, paddle_x=120)
        expected = once.act_on_ram(ram, frame)
        assert twice.act_on_ram(ram, frame) == expected
        assert twice.act_on_ram(ram, frame) == expected
    assert expected == LEFT


def test_a_frame_number_going_back_starts_a_new_episode():
    expert = BreakoutExpert()
    expert.act_on_ram(make_ram(ball_x=128, ball_y=100, paddle_x=120), 5000)
    # New episode: without a reset, 5000 -> 60 would be read as a ball moving 8 px in -4940 frames.
    assert expert.act_on_ram(make_ram(ball_x=136, ball_y=108, paddle_x=120), 60) == \
        BreakoutExpert().act_on_ram(make_ram(ball_x=136, ball_y=108, paddle_x=120), 60)


@pytest.fixture
def env():
    """The task's Breakout env (sticky actions, frame skip 4), reset with seed 0."""
    pytest.importorskip("ale_py", reason="ale_py (Atari emulator) not installed")
    pytest.importorskip("cv2", reason="opencv not installed (AtariPreprocessing resizes with it)")
    from edge_digr.core.tasks import TASKS

    env = TASKS["atari-breakout"].make_env()
    env.reset(seed=0)
    yield env
    env.close()


def test_one_real_env_step(env):
    expert = BreakoutExpert()
    assert expert.act(env) == FIRE  # nothing served yet
    env.step(FIRE)
    env.step(NOOP)
    state = decode_ram(env.unwrapped.ale.getRAM())
    assert state.ball_in_play and state.lives == 5
    assert expert.act(env) in (NOOP, RIGHT, LEFT)


def test_keeps_the_ball_in_play_on_the_real_env(env):
    # 500 agent steps of seed 0 with sticky actions: the expert loses at most one ball (measured: one,
    # and 15 points); a tracker that follows the ball's current x without predicting loses three.
    expert, points = BreakoutExpert(), 0.0
    for _ in range(500):
        _, reward, terminated, truncated, _ = env.step(expert.act(env))
        points += float(reward)
        assert not (terminated or truncated)
    assert decode_ram(env.unwrapped.ale.getRAM()).lives >= 4 and points >= 10


# ----------------------------------------------------------------------------------- the fixture
def record_fixture(path: Path = FIXTURE) -> None:
    """Record the trace described in the module docstring (needs ale_py)."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make("ALE/Breakout-v5", frameskip=1, repeat_action_probability=0.0)
    env.reset(seed=0)
    actions = ([FIRE] + [RIGHT] * 6 + [NOOP] * 10 + [LEFT] * 12 + [NOOP] * 12 + [RIGHT] * 3 + [NOOP] * 70
               + [FIRE] + [NOOP] * 6)
    rows = []
    for action in actions:
        screen, *_ = env.step(action)
        area = screen[93:189, 8:152].sum(-1)  # between the bricks and the paddle, inside the walls
        ys, xs = np.nonzero(area)
        ball = (xs.min() + 8, ys.min() + 93) if len(xs) else (-1, -1)
        lit = screen[190, 8:152].sum(-1) > 0
        # The paddle's left edge: the first lit run of 4+ px (the 2 px ball can cross this row too).
        paddle = next(i for i in range(len(lit)) if lit[i:i + 4].all()) + 8
        rows.append((action, env.unwrapped.ale.getRAM().copy(), ball, paddle))
    env.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, action=np.array([r[0] for r in rows], dtype=np.uint8),
                        ram=np.stack([r[1] for r in rows]), ball_screen=np.array([r[2] for r in rows], dtype=np.int16),
                        paddle_screen=np.array([r[3] for r in rows], dtype=np.int16))


if __name__ == "__main__":
    record_fixture()
