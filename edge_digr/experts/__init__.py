"""Privileged experts: controllers that read simulator state the pixel policy never sees.

`train-teacher --method expert` rolls one out with DAgger (edge_digr.imitation) into the task's teacher
network on pixels. An expert has `reset()` (new episode) and `act(env) -> action` in the task's action
space, reading the wrapped env's `unwrapped` state.
"""
from __future__ import annotations

import importlib
from typing import Any, Protocol

from edge_digr.core.errors import UserError


class Expert(Protocol):
    def reset(self) -> None: ...

    def act(self, env: Any) -> Any: ...


# task -> "module:class", imported on demand (each expert needs only its own environment's packages)
EXPERTS = {
    "car-racing": "edge_digr.experts.car_racing:CarRacingExpert",
    "atari-breakout": "edge_digr.experts.breakout:BreakoutExpert",
    "carla": "edge_digr.experts.carla:CarlaExpert",
}


def make_expert(task_name: str) -> Expert:
    if task_name not in EXPERTS:
        raise UserError(f"task {task_name!r} has no privileged expert (those with one: {', '.join(EXPERTS)}); "
                        "use --method ppo")
    module, name = EXPERTS[task_name].split(":")
    return getattr(importlib.import_module(module), name)()
