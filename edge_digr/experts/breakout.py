"""Breakout expert: a privileged controller on the ALE RAM whose actions the frame stack can explain.

What it reads (RAM addresses, all measured on ALE 0.12.1 against the rendered screen and outcomes):
  * ball x = RAM[99], ball y = RAM[101] (0 while no ball is in play: before the serve, after a lost life);
  * paddle x = RAM[72] (left edge, 55..191), and its half-width RAM[108] in 2 px units: 16 px, 12 px once
    the ball has reached the top wall;
  * lives = RAM[57].
Each of these is drawn on the screen, and the expert uses them at this agent step and the last one only:
exactly what the teacher's four stacked frames show. The privilege is exactness, not hidden state.

Why not more: an earlier expert planned each catch on the paddle controller's dial (RAM[70], which the
paddle follows with a lag) and on the sticky-action delays frame by frame. It scored 649 ± 171, but a
pixel network imitating it by DAgger scored 26: its actions hinged on state the frames do not show.

How it predicts: the ball's velocity is its displacement over the last agent step (4 frames), unfolded
through a side-wall bounce if one happened inside the step (`ball_vx`). A descending ball's x where it
reaches the paddle row is its straight line folded between the side walls (`predict_landing_x`); a
rising ball is assumed to come back from the bottom of the brick wall (`predict_return_x`).

How it acts: FIRE serves whenever no ball is in play. Otherwise it compares where the ball will land with
where the paddle will come to rest: the paddle closes half the gap to its controller every frame, so a
paddle that moved Δx over the last step still has about Δx/2 to go (`REST_LEAD`). It presses towards the
landing point when the two are more than `DEAD_BAND` px apart and keeps still otherwise; the band is
wider than one frame of travel so that sticky actions (a press that starts or ends a frame late) do not
turn into oscillation. The two constants come from a sweep over seeds 0–9 (docs/RESULTS.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

NOOP, FIRE, RIGHT, LEFT = 0, 1, 2, 3
FRAME_SKIP = 4  # emulator frames per agent step (AtariPreprocessing)

RAM_LIVES = 57
RAM_PADDLE_X = 72
RAM_BALL_X = 99
RAM_BALL_Y = 101
RAM_PADDLE_HALF_WIDTH = 108  # 8 (16 px paddle); 6 (12 px) once the ball has reached the top wall

# Ball x runs from 55 to 201 between the side walls (its direction flips at those values).
LEFT_WALL = 55.0
RIGHT_WALL = 201.0
# Ball y of the first row where the paddle can catch it.
PADDLE_ROW_Y = 177.0
# Ball y where a rising ball is assumed to turn back: the bottom of the brick wall.
BRICKS_BOTTOM_Y = 84.0
# The ball is caught when ball_x - paddle_x is in [HIT_REL_MIN, HIT_REL_MIN + paddle width].
HIT_REL_MIN = 1
# Largest ball displacement in one agent step along x (2 px/frame measured; margin for speed-ups).
MAX_STEP_DX = 12.0
# Where the paddle comes to rest: x + REST_LEAD * (its move over the last step).
REST_LEAD = 0.5
# Press only when the landing point is further than this from the paddle's middle at rest (px).
DEAD_BAND = 10.0


@dataclass(frozen=True)
class BallPaddle:
    """The game state the expert uses, decoded from one RAM snapshot."""

    ball_x: int
    ball_y: int
    paddle_x: int
    paddle_width: int
    lives: int

    @property
    def ball_in_play(self) -> bool:
        return self.ball_y != 0


def decode_ram(ram: Sequence[int]) -> BallPaddle:
    """Ball, paddle and lives from the 128-byte Breakout RAM."""
    if len(ram) != 128:
        raise ValueError(f"Breakout RAM has 128 bytes, got {len(ram)}")
    return BallPaddle(ball_x=int(ram[RAM_BALL_X]), ball_y=int(ram[RAM_BALL_Y]), paddle_x=int(ram[RAM_PADDLE_X]),
                      paddle_width=2 * int(ram[RAM_PADDLE_HALF_WIDTH]), lives=int(ram[RAM_LIVES]))


def reflect(x: float, left_wall: float, right_wall: float) -> float:
    """Fold an unbounded x into [left_wall, right_wall], as mirror bounces off both side walls."""
    width = right_wall - left_wall
    u = (x - left_wall) % (2.0 * width)
    return left_wall + (u if u <= width else 2.0 * width - u)


def predict_landing_x(x: float, y: float, vx: float, vy: float, paddle_y: float,
                      left_wall: float, right_wall: float) -> float:
    """Ball x when it comes down to `paddle_y`, straight line with side-wall bounces.

    `vx`, `vy` are in px per any common time unit; y grows downwards. A ball moving up (vy <= 0) has no
    landing point on this straight line: that is an error for the caller to handle.
    """
    if vy <= 0:
        raise ValueError(f"the ball must be moving down (vy > 0) to land, got vy={vy}")
    t = max(0.0, paddle_y - y) / vy
    return reflect(x + vx * t, left_wall, right_wall)


def predict_return_x(x: float, y: float, vx: float, vy: float, turn_y: float, paddle_y: float,
                     left_wall: float, right_wall: float) -> float:
    """Ball x at `paddle_y` for a ball moving up (vy < 0) that turns back down at `turn_y`."""
    rise = max(0.0, y - turn_y)
    return predict_landing_x(x + vx * rise / -vy, turn_y, vx, -vy, paddle_y, left_wall, right_wall)


def ball_vx(x_prev: float, x_now: float, vx_prev: Optional[float], left_wall: float = LEFT_WALL,
            right_wall: float = RIGHT_WALL, max_dx: float = MAX_STEP_DX) -> float:
    """The ball's x velocity now (px per step, signed), from its x one step ago and now.

    A side-wall bounce inside the step makes x_now - x_prev short or of the wrong sign. The candidates
    are "no bounce" and "bounced off the left / right wall" (then the travel is the distance to the wall
    and back, and the ball now moves away from that wall); the one whose speed and pre-bounce direction
    best continue the previous step's velocity wins (walls flip the sign only; only the paddle changes the
    speed). Returns the velocity the ball has *now*, so a bounce is not mirrored a second time.
    """
    plain = x_now - x_prev
    # (velocity before the step's bounce, velocity now)
    candidates = [(plain, plain)]
    left_travel = (x_prev - left_wall) + (x_now - left_wall)
    if 0 <= left_travel <= max_dx:
        candidates.append((-left_travel, left_travel))
    right_travel = (right_wall - x_prev) + (right_wall - x_now)
    if 0 <= right_travel <= max_dx:
        candidates.append((right_travel, -right_travel))
    if vx_prev is None:  # just served: nothing to continue, and a serve starts away from the walls
        return plain
    return min(candidates, key=lambda c: abs(c[0] - vx_prev))[1]


def landing_x(prev: BallPaddle, now: BallPaddle, vx: float, elapsed: int) -> float:
    """Where the ball in play will cross the paddle row, from its positions `elapsed` frames apart and its
    x velocity `vx` (px per frame, bounce-corrected)."""
    vy = (now.ball_y - prev.ball_y) / elapsed
    if vy > 0:
        return predict_landing_x(now.ball_x, now.ball_y, vx, vy, PADDLE_ROW_Y, LEFT_WALL, RIGHT_WALL)
    if vy < 0:
        return predict_return_x(now.ball_x, now.ball_y, vx, vy, BRICKS_BOTTOM_Y, PADDLE_ROW_Y, LEFT_WALL,
                                RIGHT_WALL)
    return float(now.ball_x)


class BreakoutExpert:
    """Privileged Breakout controller on the ALE RAM (see the module docstring for the why).

    Reads `env.unwrapped.ale.getRAM()` (and the frame number) once per agent step and keeps the previous
    step's state (for the ball's and the paddle's velocity). Asked twice about the same frame it answers
    the same without updating; a frame number going back means a new episode.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._prev: Optional[BallPaddle] = None
        self._prev_frame: Optional[int] = None
        self._vx: Optional[float] = None  # ball x velocity, px per agent step
        self._last_action = NOOP

    def act(self, env: Any) -> int:
        ale = env.unwrapped.ale
        return self.act_on_ram(ale.getRAM(), ale.getEpisodeFrameNumber())

    def act_on_ram(self, ram: Sequence[int], frame: Optional[int] = None) -> int:
        """`act` on a RAM snapshot and its episode frame number (None: one agent step after the last call),
        for tests without an emulator."""
        if frame is not None and self._prev_frame is not None:
            if frame == self._prev_frame:
                return self._last_action
            if frame < self._prev_frame:
                self.reset()
        elapsed = FRAME_SKIP if frame is None or self._prev_frame is None else frame - self._prev_frame
        self._prev_frame = frame
        self._last_action = self._choose(decode_ram(ram), elapsed)
        return self._last_action

    def _choose(self, state: BallPaddle, elapsed: int) -> int:
        prev, self._prev = self._prev, state
        if prev is not None and elapsed > 2 * FRAME_SKIP:
            prev = None  # not called for a while: an old position says nothing about a velocity
        if not state.ball_in_play:
            self._vx = None
            return FIRE
        scale = FRAME_SKIP / elapsed  # to px per agent step
        rest = state.paddle_x + (REST_LEAD * (state.paddle_x - prev.paddle_x) * scale if prev else 0.0)
        if prev is None or not prev.ball_in_play:
            target = float(state.ball_x)  # just served: no velocity yet, so head under the ball
        else:
            self._vx = ball_vx(prev.ball_x, state.ball_x, None if self._vx is None else self._vx / scale,
                               max_dx=MAX_STEP_DX / scale) * scale
            target = landing_x(prev, state, self._vx / FRAME_SKIP, elapsed)
        gap = target - (HIT_REL_MIN + state.paddle_width / 2.0) - rest  # landing point - paddle middle
        if gap > DEAD_BAND:
            return RIGHT
        if gap < -DEAD_BAND:
            return LEFT
        return NOOP
