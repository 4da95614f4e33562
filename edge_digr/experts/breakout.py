"""Breakout expert: a privileged controller on the ALE RAM, for DAgger labels of the pixel teacher.

What it reads (RAM addresses, all measured on ALE 0.12.1 against the rendered screen and outcomes):
  * ball x = RAM[99], ball y = RAM[101] (0 while no ball is in play: before the serve, after a lost life);
  * paddle x = RAM[72] (left edge, 55..191) and the paddle *pot* reading RAM[70]: Breakout uses the 2600
    paddle controller, each frame of LEFT/RIGHT turns the pot by 6 units and the paddle only follows it,
    closing half the gap per frame. So RAM[72] lags the input by several frames, while 235 - RAM[70] is
    where the paddle will come to rest; controlling on RAM[72] alone overshoots by about 5 px per move;
  * paddle half-width RAM[108] in 2 px units: 16 px, 12 px once the ball has reached the top wall;
  * lives = RAM[57].

How it predicts: the ball's velocity is its displacement over the last agent step (4 frames), unfolded
through a side-wall bounce if one happened inside the step. A descending ball's x where it reaches the
paddle row is its straight line folded between the side walls (`predict_landing_x`); a rising ball is
assumed to come back from the bottom of the brick wall. The ball is caught when ball x - paddle x is in
[1, width + 1] on any frame it spends in the paddle rows (y 177..183: one frame for a fast ball, up to
seven for a slow one), so the aim is the middle of that window.

How it acts: FIRE serves whenever no ball is in play. One agent step moves the paddle's rest point by
24 px, more than the 17 px catch window, so the fine placement comes from where the still-moving paddle
is at the contact frame. Within the last three steps before contact it plans exactly: an expectimax over
its actions and the sticky-action delays (the first frames of a changed action may still run the old
one; it re-plans each step, seeing where the paddle went), simulating the paddle frame by frame and
minimising the chance of a miss (ties go to fewer presses: a late sweep through the middle is worth less
than a paddle already standing in the window). Further away it only picks the rest point after this step
whose final three steps catch best; for a rising or just-served ball it heads the rest point to the
expected landing (a dead-band of half a step, 12 px, so it does not jitter).

Under DAgger the env runs the student's action: the sticky-action model then uses the action the pot's
travel shows, not the expert's own previous choice (`executed_action`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

NOOP, FIRE, RIGHT, LEFT = 0, 1, 2, 3
FRAME_SKIP = 4  # emulator frames per agent step (AtariPreprocessing)

RAM_LIVES = 57
RAM_PADDLE_POT = 70
RAM_PADDLE_X = 72
RAM_BALL_X = 99
RAM_BALL_Y = 101
RAM_PADDLE_HALF_WIDTH = 108  # 8 (16 px paddle); 6 (12 px) once the ball has reached the top wall

# Ball x runs from 55 to 201 between the side walls (its direction flips at those values).
LEFT_WALL = 55.0
RIGHT_WALL = 201.0
# Ball y range where the paddle can catch it (the paddle rows): the ball may be caught at any frame in it.
PADDLE_ROW_Y = 177.0
CATCH_BOTTOM_Y = 183.0
# Ball y where a rising ball is assumed to turn back: the bottom of the brick wall.
BRICKS_BOTTOM_Y = 84.0
# The ball is caught when ball_x - paddle_x is in [HIT_REL_MIN, HIT_REL_MIN + paddle width].
HIT_REL_MIN = 1
PADDLE_MIN_X = 55
PADDLE_MAX_X = 191
# Paddle pot: rest x = POT_ORIGIN - pot, each frame of RIGHT (LEFT) lowers (raises) the pot by POT_STEP.
POT_ORIGIN = 235
POT_STEP = 6
POT_MIN = 0
POT_MAX = 184
# Largest ball displacement in one agent step along x (2 px/frame measured; margin for speed-ups).
MAX_STEP_DX = 12.0
# Breakout-v5 repeats the previous frame's action with this probability, per emulator frame.
STICKY_P = 0.25
# How many leading frames of a step still run the previous action, with their probability (2+ lumped).
STICKY_DELAYS = ((0, 1.0 - STICKY_P), (1, STICKY_P * (1.0 - STICKY_P)), (2, STICKY_P ** 2))
# Contact within this many agent steps: plan it exactly (3 actions x 3 sticky delays per step).
PLAN_STEPS = 3
# Pot travel over one step (units) that shows a press ran at the step's end (one frame turns it by 6).
PRESS_EVIDENCE = 15
# Cost of one press in the plan, against a catch cost in [0, 1]: breaks ties towards keeping still.
PRESS_COST = 0.001


@dataclass(frozen=True)
class BallPaddle:
    """The game state the expert uses, decoded from one RAM snapshot."""

    ball_x: int
    ball_y: int
    paddle_x: int
    paddle_pot: int
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
                      paddle_pot=int(ram[RAM_PADDLE_POT]), paddle_width=2 * int(ram[RAM_PADDLE_HALF_WIDTH]),
                      lives=int(ram[RAM_LIVES]))


def pot_to_x(pot: int) -> int:
    """Rest x of the paddle for a pot reading (linear fit, within 1 px over the whole range)."""
    return int(min(PADDLE_MAX_X, max(PADDLE_MIN_X, POT_ORIGIN - pot)))


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


def paddle_frame(x: int, pot: int, action: int) -> Tuple[int, int]:
    """One emulator frame of the paddle: x closes half the gap to the pot's rest point, then the pot turns.

    Fitted on 20 000 random-action frames: predicts RAM[72] exactly on 98 % of them (1 px off otherwise).
    """
    x = x + (pot_to_x(pot) - x) // 2
    if action == RIGHT:
        pot = max(POT_MIN, pot - POT_STEP)
    elif action == LEFT:
        pot = min(POT_MAX, pot + POT_STEP)
    return x, pot


PaddleState = Tuple[int, int, int]  # (x, pot, last executed action)


@lru_cache(maxsize=1 << 16)
def sticky_step(x: int, pot: int, last: int, action: int, frames: int) -> Tuple[Tuple[PaddleState, float], ...]:
    """Paddle states after `frames` frames of `action`, with their probabilities under sticky actions.

    Each frame repeats the previous frame's action with probability STICKY_P, so a changed action may
    start a frame or two late (`STICKY_DELAYS`); an unchanged one is certain.
    """
    outcomes: Dict[PaddleState, float] = {}
    for delay, p in ((0, 1.0),) if action == last else STICKY_DELAYS:
        bx, bpot = x, pot
        for f in range(frames):
            bx, bpot = paddle_frame(bx, bpot, last if f < delay else action)
        key = (bx, bpot, last if delay >= frames else action)
        outcomes[key] = outcomes.get(key, 0.0) + p
    return tuple(outcomes.items())


@dataclass(frozen=True)
class Contact:
    """The ball's pass through the paddle rows, as the planner needs it (integers: a cache key)."""

    ball_x: int  # at the first frame the ball can touch the paddle
    step_dx: int  # ball x travel per agent step (4 frames), signed
    frames: int  # how many frames the ball stays low enough to be caught (1 for a fast ball)
    width: int  # paddle width, px


def catch_cost(x: int, pot: int, last: int, contact: Contact) -> float:
    """1 if the paddle (state at the contact's first frame, still running `last`) misses the ball, plus
    a little for its distance from the middle of the catch window.

    The ball is caught on any of its `contact.frames` frames in the paddle rows where ball_x - paddle_x
    is in the catch window; a 1 px margin inside the window covers prediction error.
    """
    aim = HIT_REL_MIN + contact.width / 2.0
    best = float("inf")
    for k in range(contact.frames):
        best = min(best, abs(contact.ball_x + contact.step_dx * k / FRAME_SKIP - x - aim))
        x, pot = paddle_frame(x, pot, last)
    return (1.0 if best > contact.width / 2.0 - 1.0 else 0.0) + 0.01 * best / contact.width


@lru_cache(maxsize=1 << 18)
def contact_cost(x: int, pot: int, last: int, frames: int, contact: Contact) -> float:
    """Expected `catch_cost` of a ball reaching the paddle rows `frames` frames from now, playing optimally.

    Expectimax over agent steps: the expert picks an action, sticky actions pick its delay, and the expert
    sees the paddle again at the next step (so it re-plans; it does not commit to a sequence). Each
    press costs PRESS_COST so that of equally safe plans the quieter one wins.
    """
    if frames <= 0:
        return catch_cost(x, pot, last, contact)
    return min(action_cost(x, pot, last, frames, contact, a) for a in (NOOP, RIGHT, LEFT))


def action_cost(x: int, pot: int, last: int, frames: int, contact: Contact, action: int) -> float:
    """`contact_cost` when taking `action` for the next agent step."""
    n = min(FRAME_SKIP, frames)
    return (PRESS_COST if action != NOOP else 0.0) + sum(
        p * contact_cost(*state, frames - n, contact) for state, p in sticky_step(x, pot, last, action, n))


def plan_contact(x: int, pot: int, last_action: int, frames: int, contact: Contact) -> int:
    """The action that best catches the ball reaching the paddle rows `frames` frames from now.

    Exact up to PLAN_STEPS agent steps. Further away, only the paddle's rest point after this step is
    chosen: the catch is then planned from the paddle settled there, over the last PLAN_STEPS steps with
    the same contact frame phase (the paddle settles within two steps, so earlier steps only move the
    rest point, 24 px a step).
    """
    last = last_action if last_action in (RIGHT, LEFT) else NOOP  # FIRE does not move the paddle
    if frames <= PLAN_STEPS * FRAME_SKIP:
        # min() keeps the first of equal costs: NOOP, listed first, wins ties.
        return min((NOOP, RIGHT, LEFT), key=lambda a: action_cost(x, pot, last, frames, contact, a))
    phase_frames = (PLAN_STEPS - 1) * FRAME_SKIP + (frames - 1) % FRAME_SKIP + 1

    def settled_cost(action: int) -> float:
        delta = {RIGHT: -POT_STEP, LEFT: POT_STEP}.get(action, 0) * FRAME_SKIP
        rest_pot = int(min(POT_MAX, max(POT_MIN, pot + delta)))
        return (PRESS_COST if action != NOOP else 0.0) + contact_cost(
            pot_to_x(rest_pot), rest_pot, NOOP, phase_frames, contact)

    return min((NOOP, RIGHT, LEFT), key=settled_cost)


def approach_rest(pot: int, target_x: float) -> int:
    """The action whose rest point after one step is nearest `target_x`; NOOP on ties (no jitter).

    Rest points are compared before the wall clamp: a pot turned past a wall needs unwinding first.
    """
    target = min(PADDLE_MAX_X, max(PADDLE_MIN_X, target_x))
    delta = {NOOP: 0, RIGHT: -POT_STEP, LEFT: POT_STEP}
    return min((NOOP, RIGHT, LEFT),
               key=lambda a: abs(POT_ORIGIN - min(POT_MAX, max(POT_MIN, pot + delta[a] * FRAME_SKIP)) - target))


def executed_action(own_last: int, pot_before: int, pot_now: int) -> int:
    """The action the emulator most likely ran on the last frame of the previous step (the one sticky
    actions may repeat), from the expert's own previous choice and the pot's travel over that step.

    Under DAgger the env runs the student's action, not the expert's: then the pot contradicts the
    expert's choice and its travel tells the direction instead (a full step of presses turns it by 18-24
    units; a press carried over by sticky actions into a release by 6-12).
    """
    delta = pot_now - pot_before
    if own_last == RIGHT and (delta <= -PRESS_EVIDENCE or pot_now == POT_MIN):
        return RIGHT
    if own_last == LEFT and (delta >= PRESS_EVIDENCE or pot_now == POT_MAX):
        return LEFT
    if own_last not in (RIGHT, LEFT) and abs(delta) <= 2 * POT_STEP:
        return NOOP
    return RIGHT if delta <= -PRESS_EVIDENCE else LEFT if delta >= PRESS_EVIDENCE else NOOP


class BreakoutExpert:
    """Privileged Breakout controller on the ALE RAM (see the module docstring for the why).

    Reads `env.unwrapped.ale.getRAM()` (and the frame number) once per agent step: serves (FIRE) when no
    ball is in play, otherwise predicts where the ball meets the paddle rows (side-wall bounces included)
    and steers the paddle so the ball lands on its middle. Keeps the previous ball position (for the
    velocity) and the previous action (the one sticky actions may repeat: its own, unless the paddle
    shows that the env ran another one, as under DAgger). Asked twice about the same frame it answers the
    same without updating; a frame number going back means a new episode.
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
            prev = None  # not called for a while: an old position says nothing about the velocity
        last = executed_action(self._last_action, prev.paddle_pot, state.paddle_pot) if prev else self._last_action
        if not state.ball_in_play:
            self._vx = None
            return FIRE
        aim = HIT_REL_MIN + state.paddle_width / 2.0  # ball_x - paddle_x that lands the ball mid-paddle
        if prev is None or not prev.ball_in_play:
            # Just served: no velocity yet, so head under the ball.
            return approach_rest(state.paddle_pot, state.ball_x - aim)
        scale = FRAME_SKIP / elapsed  # to px per agent step
        self._vx = ball_vx(prev.ball_x, state.ball_x, None if self._vx is None else self._vx / scale,
                           max_dx=MAX_STEP_DX / scale) * scale
        vx = self._vx / FRAME_SKIP
        vy = (state.ball_y - prev.ball_y) / elapsed
        if vy > 0:
            frames = max(1, int(np.ceil((PADDLE_ROW_Y - state.ball_y) / vy)))
            first_y = state.ball_y + vy * frames  # the ball's y at the first frame it can touch the paddle
            landing = predict_landing_x(state.ball_x, state.ball_y, vx, vy, first_y, LEFT_WALL, RIGHT_WALL)
            contact = Contact(ball_x=int(round(landing)), step_dx=int(round(self._vx)), width=state.paddle_width,
                              frames=max(1, int((CATCH_BOTTOM_Y - first_y) // vy) + 1))
            return plan_contact(state.paddle_x, state.paddle_pot, last, frames, contact)
        if vy < 0:
            landing = predict_return_x(state.ball_x, state.ball_y, vx, vy, BRICKS_BOTTOM_Y, PADDLE_ROW_Y,
                                       LEFT_WALL, RIGHT_WALL)
        else:
            landing = float(state.ball_x)
        return approach_rest(state.paddle_pot, landing - aim)
