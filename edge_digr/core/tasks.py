"""Task registry: environments, their graph inputs, and the one preprocessing function per task.

Torch-free: the runtime's `env` feed uses these same functions on the Jetson. Each task's `make_env`
returns a gymnasium env whose raw observations `preprocess` turns into the graph inputs (float32,
channels first, raw 0–255 pixel scale: normalisation happens inside the policy/graph).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from edge_digr.core.errors import UserError, missing_dependency


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: Tuple[int, ...]  # without the batch dimension
    dtype: str = "float32"


@dataclass(frozen=True)
class ActionSpec:
    kind: str  # "discrete" | "continuous"
    n: int  # number of discrete actions, or of continuous components
    names: Tuple[str, ...]
    low: Optional[Tuple[float, ...]] = None  # continuous bounds, for clipping the deployed action mean
    high: Optional[Tuple[float, ...]] = None

    @property
    def continuous(self) -> bool:
        return self.kind == "continuous"

    def choose(self, head_out: np.ndarray) -> np.ndarray:
        """Deployed actions from head outputs (..., n): greedy index, or the mean clipped to the bounds."""
        if self.continuous:
            return np.clip(head_out, self.low, self.high).astype(np.float32)
        return np.asarray(head_out).argmax(axis=-1)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ActionSpec":
        """From a manifest's `action` entry."""
        bounds = {k: tuple(data[k]) if data.get(k) is not None else None for k in ("low", "high")}
        return cls(kind=data["kind"], n=int(data["n"]), names=tuple(data.get("names", ())), **bounds)


@dataclass(frozen=True)
class ArchSpec:
    """A policy architecture from exporter-supported layers only (Conv2d, ReLU, Flatten, Linear, concat)."""

    convs: Tuple[Tuple[int, int, int, int], ...]  # (out_channels, kernel, stride, padding)
    hidden: Tuple[int, ...]  # fully-connected widths after the conv trunk


@dataclass(frozen=True)
class TrainSpec:
    """PPO teacher and distillation budgets; `demo` and the tests scale these down."""

    teacher_steps: int
    n_envs: int
    n_steps: int
    batch_size: int
    n_epochs: int
    learning_rate: float
    ent_coef: float
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    label_frames: int = 2000
    # Of the labelled frames, how many get the teacher's perturbation map (None: all); the others carry the
    # teacher's output only, for distillation's action term (edge_digr.labels.mapped_frames).
    label_maps: Optional[int] = None
    distill_epochs: int = 30
    eval_episodes: int = 50
    # How label and DAgger rollouts act on a discrete task: None samples the actor's own distribution; ε acts
    # greedily, with a uniformly random action on a share ε of the steps. The rollouts' frames should be the
    # ones the greedy evaluation reaches: Breakout's teacher scores ≈ 56 sampling its distribution and 131
    # greedy, so sampled frames miss the later game (docs/RESULTS.md, "Breakout students, third attempt").
    rollout_epsilon: Optional[float] = None
    # Gradient-penalty weights (docs/RESULTS.md, "Which penalty is DIGR's"): DIGR's share-normalised penalty
    # at 0.3 held the return on minigrid-fetch (car-racing sets 0.1; atari-breakout's is unswept); IGR's raw,
    # global penalty needs its own.
    digr_lambda: float = 0.3
    igr_lambda: float = 1.0
    dagger_rounds: int = 0  # distillation rounds of student rollouts labelled by the teacher
    dagger_frames: int = 2000
    dagger_maps: Optional[int] = None  # of each DAgger round's frames, how many get a teacher map (None: all)
    student_arch: str = "teacher"  # the students' default architecture: "teacher", or "edge" where it holds
    # How a student starts: "random" weights, or "teacher": the teacher's own, its hidden layers pruned to the
    # student's widths (edge_digr.policies.start_from_teacher; needs the teacher's convs). Such a student
    # starts at the teacher's function, so it trains at a lower rate to keep it.
    student_init: str = "random"
    distill_lr: float = 1e-3  # Adam's learning rate for the students
    max_episode_steps: Optional[int] = None
    expected_wall_time: str = ""
    # How `train-teacher` gets this task's teacher by default: "ppo", or "expert" (DAgger imitation of a
    # privileged controller, edge_digr.imitation). For "expert", teacher_steps counts the environment steps
    # of all DAgger rounds together.
    teacher_method: str = "ppo"
    imitation_rounds: int = 6
    imitation_updates: int = 1000  # gradient steps after each DAgger round
    imitation_lr: float = 3e-4  # Adam's learning rate for the DAgger learner
    # For a left-right symmetric game, the action each discrete action becomes in the mirrored frame: the
    # DAgger learner and the students then train on mirrored frames too (edge_digr.mirror). Empty: none.
    mirror_actions: Tuple[int, ...] = ()


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    inputs: Tuple[InputSpec, ...]  # inputs[0] is always the image `obs`
    action: ActionSpec
    teacher_arch: ArchSpec
    edge_arch: ArchSpec
    train: TrainSpec
    make_env: Callable[..., Any] = field(repr=False)
    preprocess: Callable[[Any], Dict[str, np.ndarray]] = field(repr=False)
    # Whether an episode's outcome counts as success, from its return.
    success: Callable[[float], bool] = field(repr=False, default=lambda ret: ret > 0)

    @property
    def obs_shape(self) -> Tuple[int, int, int]:
        return self.inputs[0].shape  # type: ignore[return-value]

    @property
    def extra_inputs(self) -> Tuple[InputSpec, ...]:
        return self.inputs[1:]

    def with_train(self, **changes: Any) -> "Task":
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **changes))


def _require(module: str, extra: str = "envs"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing_dependency(module, extra, "this task's environment") from exc


def _chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(image, (2, 0, 1)), dtype=np.float32)


# --------------------------------------------------------------------------------------- minigrid-fetch
# 5x5 grid (3x3 interior, 2 objects) rendered at 8 px a tile: the size at which the PPO teacher reaches
# >= 0.9 success inside the 5-minute budget on 2 cores (see docs/RESULTS.md).
MINIGRID_ENV_ID = "MiniGrid-Fetch-5x5-N2-v0"
MINIGRID_TILE = 8
FETCH_COLORS = ("red", "green", "blue", "purple", "yellow", "grey")
FETCH_TYPES = ("key", "ball")
FETCH_ACTIONS = ("left", "right", "forward", "pickup")


def mission_vector(mission: str) -> np.ndarray:
    """One-hot colour (6) + type (2) of the object to fetch, parsed from the mission text."""
    words = mission.replace(",", " ").split()
    vec = np.zeros(len(FETCH_COLORS) + len(FETCH_TYPES), dtype=np.float32)
    try:
        vec[FETCH_COLORS.index(next(w for w in words if w in FETCH_COLORS))] = 1.0
        vec[len(FETCH_COLORS) + FETCH_TYPES.index(next(w for w in words if w in FETCH_TYPES))] = 1.0
    except StopIteration:
        raise UserError(f"mission {mission!r} names no colour/type of {FETCH_COLORS}/{FETCH_TYPES}") from None
    return vec


def _make_minigrid(seed: Optional[int] = None, render_mode: Optional[str] = None, **_: Any):
    gym = _require("gymnasium")
    _require("minigrid")

    class FullGridImage(gym.ObservationWrapper):
        """MiniGrid's RGBImgObsWrapper(highlight=False), pixel for pixel, without its waste: MiniGrid works out
        the agent's partial view twice a step (`gen_obs` in `step`, `gen_obs_grid` for the highlight mask in
        `get_full_render`) though the full-grid image uses neither; that was 70 % of a step (0.83 → 0.2 ms
        measured), and the PPO teacher steps the env 250 000 times. tests/test_tasks.py holds the equality."""

        def __init__(self, inner, tile_size: int):
            super().__init__(inner)
            base = inner.unwrapped
            self.tile_size = tile_size
            # Only `mission` and `direction` of MiniGrid's own observation are used; its partial-view `image`
            # is replaced below, so a (fresh, tiny) blank of its shape keeps gymnasium's env checker satisfied.
            shape = inner.observation_space["image"].shape
            base.gen_obs = lambda: {"image": np.zeros(shape, np.uint8), "direction": base.agent_dir,
                                    "mission": base.mission}
            image = gym.spaces.Box(0, 255, (base.height * tile_size, base.width * tile_size, 3), dtype=np.uint8)
            self.observation_space = gym.spaces.Dict({**inner.observation_space.spaces, "image": image})

        def observation(self, obs):
            base = self.unwrapped
            return {**obs, "image": base.grid.render(self.tile_size, base.agent_pos, base.agent_dir,
                                                     highlight_mask=None)}

    class FetchActions(gym.ActionWrapper):
        """Fetch's useful actions only: left, right, forward, pickup (MiniGrid's indices 0-3). drop, toggle
        and done do nothing in Fetch; leaving them out spares the teacher 3/7 wasted exploration."""

        def __init__(self, inner):
            super().__init__(inner)
            self.action_space = gym.spaces.Discrete(len(FETCH_ACTIONS))

        def action(self, action):
            return int(action)

    # No view-cone highlight: the full grid is observed, the cone would only be noise in the pixels.
    env = gym.make(MINIGRID_ENV_ID, render_mode=render_mode, highlight=False)
    return FetchActions(FullGridImage(env, MINIGRID_TILE))


def _preprocess_minigrid(raw: Dict[str, Any]) -> Dict[str, np.ndarray]:
    return {"obs": _chw(raw["image"]), "mission": mission_vector(raw["mission"])}


def fetch_target_mask(env: Any) -> np.ndarray:
    """Pixel mask (H, W) of the tile(s) holding the object the mission asks for, read from the env's grid."""
    base = env.unwrapped
    mask = np.zeros((base.height * MINIGRID_TILE, base.width * MINIGRID_TILE), dtype=bool)
    for j in range(base.height):
        for i in range(base.width):
            cell = base.grid.get(i, j)
            if cell is not None and cell.type == base.targetType and cell.color == base.targetColor:
                mask[j * MINIGRID_TILE:(j + 1) * MINIGRID_TILE, i * MINIGRID_TILE:(i + 1) * MINIGRID_TILE] = True
    return mask


# --------------------------------------------------------------------------------------- atari-breakout
def _make_atari(seed: Optional[int] = None, render_mode: Optional[str] = None, **_: Any):
    gym = _require("gymnasium")
    ale_py = _require("ale_py")
    _require("cv2")  # AtariPreprocessing resizes with OpenCV
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    gym.register_envs(ale_py)
    env = gym.make("ALE/Breakout-v5", frameskip=1, render_mode=render_mode)
    env = AtariPreprocessing(env, frame_skip=4, screen_size=84, grayscale_obs=True, noop_max=30)
    return FrameStackObservation(env, 4)


def _preprocess_atari(raw: Any) -> Dict[str, np.ndarray]:
    return {"obs": np.asarray(raw, dtype=np.float32)}


# ---------------------------------------------------------------------------------------- car-racing
def _make_car_racing(seed: Optional[int] = None, render_mode: Optional[str] = None, **_: Any):
    gym = _require("gymnasium")
    _require("Box2D")
    from edge_digr.core.car_racing_render import install

    return install(gym.make("CarRacing-v3", continuous=True, render_mode=render_mode))


def _preprocess_rgb(raw: np.ndarray) -> Dict[str, np.ndarray]:
    return {"obs": _chw(raw)}


# -------------------------------------------------------------------------------------------- carla
CARLA_CAMERA = (96, 160)  # (height, width) of the front RGB camera the policy sees


def _make_carla(seed: Optional[int] = None, render_mode: Optional[str] = None, host: str = "localhost",
                port: int = 2000, **kwargs: Any):
    from edge_digr.core.carla_env import CarlaLaneEnv

    return CarlaLaneEnv(host=host, port=port, image_size=CARLA_CAMERA, seed=seed, **kwargs)


NATURE = ArchSpec(convs=((32, 8, 4, 0), (64, 4, 2, 0), (64, 3, 1, 0)), hidden=(512,))
NATURE_EDGE = ArchSpec(convs=((16, 8, 4, 0), (32, 4, 2, 0)), hidden=(256,))
# Breakout's students keep the teacher's convs so they can start from it (TrainSpec.student_init): from
# random weights no student, NATURE_EDGE or the teacher's own, agreed with the teacher on more than ~79 % of
# held-out frames, and none kept more than 35 % of its return. 224 of the teacher's 512 hidden units start
# at 97 % agreement (232 never fire), for half its weights (docs/RESULTS.md, "Breakout students, fourth
# attempt").
NATURE_PRUNED = ArchSpec(convs=NATURE.convs, hidden=(224,))
# car-racing's students start from the teacher too: DIGR − plain Pearson went from −0.135 ± 0.027 (random
# weights, NATURE_EDGE) to +0.155 ± 0.011 over seeds 0-2 (docs/RESULTS.md). 192 hidden units on 96x96
# frames give 0.86 M weights, about NATURE_EDGE's 0.83 M, so models/ keeps its size budget.
NATURE_PRUNED_CAR = ArchSpec(convs=NATURE.convs, hidden=(192,))

TASKS: Dict[str, Task] = {
    "minigrid-fetch": Task(
        name="minigrid-fetch",
        description=f"{MINIGRID_ENV_ID}, full-grid RGB ({MINIGRID_TILE} px tiles) + mission one-hot",
        inputs=(InputSpec("obs", (3, 5 * MINIGRID_TILE, 5 * MINIGRID_TILE)),
                InputSpec("mission", (len(FETCH_COLORS) + len(FETCH_TYPES),))),
        action=ActionSpec("discrete", len(FETCH_ACTIONS), FETCH_ACTIONS),
        # First conv is one tile wide and one tile apart: one embedding per grid cell.
        teacher_arch=ArchSpec(convs=((32, MINIGRID_TILE, MINIGRID_TILE, 0), (64, 3, 1, 1)), hidden=(128,)),
        edge_arch=ArchSpec(convs=((16, MINIGRID_TILE, MINIGRID_TILE, 0), (32, 3, 1, 1)), hidden=(64,)),
        # lr 1e-3, 10 epochs and gamma 0.95 ground the mission in ~100k steps; SB3's defaults had not
        # left chance level (~50 % success) by 150k. 250k steps give >= 0.9 greedy success
        # (docs/RESULTS.md, "Teacher"). Five DAgger rounds, not three: with three, seed 0's students kept
        # 92.8 % (DIGR) and 93.8 % (plain) of the teacher's return, with five 95.9 % and 95.9 % (RESULTS,
        # "The shipped minigrid-fetch models"). The students start from the teacher (they share its
        # architecture, so the start is an exact copy) at Adam 1e-4: from random weights DIGR's Pearson gain
        # over plain was +0.033 ± 0.058 over seeds 0-2, from the teacher +0.134 ± 0.002 (RESULTS, "Which
        # penalty is DIGR's").
        train=TrainSpec(teacher_steps=250_000, n_envs=8, n_steps=128, batch_size=256, n_epochs=10,
                        learning_rate=1e-3, ent_coef=0.01, gamma=0.95, label_frames=8000, distill_epochs=30,
                        dagger_rounds=5, dagger_frames=2000, student_init="teacher", distill_lr=1e-4,
                        eval_episodes=100,
                        expected_wall_time="about 5 minutes for the teacher on 2 cores"),
        make_env=_make_minigrid,
        preprocess=_preprocess_minigrid,
    ),
    "atari-breakout": Task(
        name="atari-breakout",
        description="ALE Breakout-v5, 84x84 grey, frame skip 4, stack 4",
        inputs=(InputSpec("obs", (4, 84, 84)),),
        action=ActionSpec("discrete", 4, ("noop", "fire", "right", "left")),
        teacher_arch=NATURE,
        edge_arch=NATURE_PRUNED,
        # PPO from scratch needs ~10M steps (~30 h on 2 cores); DAgger on the RAM expert needs far fewer frames.
        # Its learner is fed more updates, at a higher rate, than car-racing's: Breakout's labels hinge on
        # a few pixels (docs/RESULTS.md, "Breakout: an expert the frames explain").
        train=TrainSpec(teacher_steps=240_000, n_envs=8, n_steps=128, batch_size=256, n_epochs=4,
                        learning_rate=2.5e-4, ent_coef=0.01, label_frames=5000, distill_epochs=8,
                        student_arch="edge", student_init="teacher", distill_lr=1e-4, eval_episodes=10,
                        max_episode_steps=27_000, teacher_method="expert",
                        imitation_rounds=12, imitation_updates=2000, imitation_lr=1e-3,
                        mirror_actions=(0, 1, 3, 2),  # noop, fire, right <-> left
                        rollout_epsilon=0.02,
                        expected_wall_time="DAgger on the RAM expert: see docs/RESULTS.md (PPO: ~30 h for 10M steps)"),
        make_env=_make_atari,
        preprocess=_preprocess_atari,
    ),
    "car-racing": Task(
        name="car-racing",
        description="Gymnasium CarRacing-v3, continuous steer/gas/brake from the 96x96 RGB frame",
        inputs=(InputSpec("obs", (3, 96, 96)),),
        action=ActionSpec("continuous", 3, ("steer", "gas", "brake"), low=(-1.0, 0.0, 0.0), high=(1.0, 1.0, 1.0)),
        teacher_arch=NATURE,
        edge_arch=NATURE_PRUNED_CAR,
        # PPO needs ~2M steps (~12 h on 2 cores); DAgger on the track-geometry expert needs ~50k frames.
        # Students: the shipped ones' budget (docs/RESULTS.md, "Students from the car-racing teacher"): half
        # of it (8000 frames, 12 epochs, rounds of 3000) left both below 65 % of the teacher's return. They
        # start from the teacher at Adam 1e-4. DIGR's share penalty on the demo's seed-0 labels: λ 0.1 kept
        # 95.1 % of the return, 0.03 kept 100.1 % with the same agreement and a higher deletion gain (RESULTS,
        # "Which penalty is DIGR's"). igr's 0.03 is the raw penalty's λ from random weights, not swept for igr.
        train=TrainSpec(teacher_steps=48_000, n_envs=8, n_steps=256, batch_size=256, n_epochs=10,
                        learning_rate=3e-4, ent_coef=0.0, label_frames=16_000, label_maps=1600, distill_epochs=20,
                        dagger_rounds=3, dagger_frames=4000, dagger_maps=400, student_arch="edge",
                        student_init="teacher", distill_lr=1e-4, digr_lambda=0.03, igr_lambda=0.03,
                        eval_episodes=20, max_episode_steps=1000, teacher_method="expert",
                        imitation_rounds=6, imitation_updates=1000,
                        expected_wall_time="DAgger on the track expert: see docs/RESULTS.md (PPO: ~12 h for 2M steps)"),
        make_env=_make_car_racing,
        preprocess=_preprocess_rgb,
        success=lambda ret: ret >= 900.0,  # the task's "solved" threshold
    ),
    "carla": Task(
        name="carla",
        description="CARLA 0.9.16 lane following: front RGB camera, continuous steer/throttle, synchronous mode",
        inputs=(InputSpec("obs", (3,) + CARLA_CAMERA),),
        action=ActionSpec("continuous", 2, ("steer", "throttle"), low=(-1.0, 0.0), high=(1.0, 1.0)),
        teacher_arch=NATURE,
        edge_arch=NATURE_EDGE,
        train=TrainSpec(teacher_steps=1_000_000, n_envs=1, n_steps=1024, batch_size=256, n_epochs=10,
                        learning_rate=3e-4, ent_coef=0.0, label_frames=3000, distill_epochs=20,
                        eval_episodes=5, max_episode_steps=1000, teacher_method="expert",
                        expected_wall_time="server-bound: about 20 FPS synchronous, so ~14 hours for 1M steps"),
        make_env=_make_carla,
        preprocess=_preprocess_rgb,
        success=lambda ret: ret >= 500.0,
    ),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None
