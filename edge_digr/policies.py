"""Pixel policies built only from layers the fused exporter supports (Conv2d, ReLU, Flatten, Linear, cat).

A policy maps raw 0–255 pixels (and, for some tasks, an extra vector input) to logits (discrete) or the
action mean (continuous). The same `PixelTrunk` is the SB3 features extractor of the PPO teacher, so a
teacher's SB3 weights map one-to-one onto a `PixelPolicy`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from edge_digr.core.errors import UserError
from edge_digr.core.tasks import ArchSpec, Task


@dataclass(frozen=True)
class PolicyConfig:
    obs_shape: Tuple[int, int, int]
    n_out: int
    continuous: bool
    convs: Tuple[Tuple[int, int, int, int], ...]
    hidden: Tuple[int, ...]
    extra_dim: int = 0  # size of the extra vector input (mission), 0 if none
    extra_name: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PolicyConfig":
        data = dict(data)
        data["obs_shape"] = tuple(data["obs_shape"])
        data["convs"] = tuple(tuple(c) for c in data["convs"])
        data["hidden"] = tuple(data["hidden"])
        return cls(**data)

    @classmethod
    def for_task(cls, task: Task, arch: str = "teacher") -> "PolicyConfig":
        spec: ArchSpec = {"teacher": task.teacher_arch, "edge": task.edge_arch}[arch]
        extra = task.extra_inputs[0] if task.extra_inputs else None
        return cls(obs_shape=tuple(task.obs_shape), n_out=task.action.n, continuous=task.action.continuous,
                   convs=spec.convs, hidden=spec.hidden,
                   extra_dim=extra.shape[0] if extra else 0, extra_name=extra.name if extra else "")


def conv_output_hw(cfg: PolicyConfig) -> Tuple[int, int]:
    h, w = cfg.obs_shape[1:]
    for _, k, s, p in cfg.convs:
        h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return h, w


class PixelTrunk(nn.Module):
    """Normalise pixels, convolve, gate the first conv's channels by the extra vector, fully connect.

    The extra vector (e.g. the mission) scales the stem's channels: `stem(x) * gate(extra)`, so a channel
    that detects "a blue key here" can be switched on by the mission "fetch the blue key". A product
    with a tensor that does not depend on `obs` is linear in `obs`, so the fused exporter's VJP is exact.
    """

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        channels = cfg.obs_shape[0]
        for out, k, s, p in cfg.convs:
            layers += [nn.Conv2d(channels, out, k, stride=s, padding=p), nn.ReLU()]
            channels = out
        h, w = conv_output_hw(cfg)
        if h < 1 or w < 1:
            raise ValueError(f"conv stack {cfg.convs} leaves no spatial extent for input {cfg.obs_shape}")
        layers.append(nn.Flatten())
        width = channels * h * w
        for hidden in cfg.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.stem = nn.Sequential(*layers[:2])
        self.gate = nn.Linear(cfg.extra_dim, cfg.convs[0][0]) if cfg.extra_dim else None
        self.body = nn.Sequential(*layers[2:])
        self.out_dim = width

    def forward(self, obs: torch.Tensor, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.stem(obs * (1.0 / 255.0))
        if self.gate is not None:
            x = x * self.gate(extra)[:, :, None, None]
        return self.body(x)

    def weight_layers(self) -> list[nn.Module]:
        """Conv2d and Linear layers of the image path, in forward order (the SB3 NatureCNN mapping)."""
        return [m for m in list(self.stem) + list(self.body) if isinstance(m, (nn.Conv2d, nn.Linear))]


class PixelPolicy(nn.Module):
    """forward(obs[, extra]) -> logits (N, A) or action mean (N, K)."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        self.trunk = PixelTrunk(cfg)
        self.head = nn.Linear(self.trunk.out_dim, cfg.n_out)

    def forward(self, obs: torch.Tensor, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.head(self.trunk(obs, extra))

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def inputs_from(self, arrays: Dict[str, Any], device: Any = None) -> Tuple[torch.Tensor, ...]:
        """Positional inputs from a dict of named (batched) arrays, in the graph's input order, on `device`
        (default: the policy's own)."""
        device = self.device if device is None else device
        names = ["obs"] + ([self.cfg.extra_name] if self.cfg.extra_dim else [])
        return tuple(torch.as_tensor(arrays[n], dtype=torch.float32, device=device) for n in names)


def saliency_target(policy_out: torch.Tensor, continuous: bool) -> torch.Tensor:
    """The quantity whose input gradient is the deployed saliency (DESIGN.md, "Saliency target").

    Discrete: log π(a*|x) for the greedy action a*, shape (N,). Continuous: the action mean, (N, K), one
    map per component.
    """
    if continuous:
        return policy_out
    logp = torch.log_softmax(policy_out, dim=-1)
    return logp.gather(1, policy_out.argmax(dim=-1, keepdim=True)).squeeze(1)


def start_from_teacher(student: PixelPolicy, teacher: PixelPolicy, inputs: Tuple[torch.Tensor, ...]) -> None:
    """Set `student`'s weights from `teacher`'s, for a student with the teacher's convs and hidden layers
    no wider than the teacher's (structured pruning).

    Convs (and the extra-input gate) are copied whole. Each hidden layer keeps the teacher's units that
    matter most on `inputs` (a batch of training frames): RMS activation times the norm of the unit's
    outgoing weights. A ReLU unit that never fires scores 0 and costs nothing to drop (the shipped Breakout
    teacher has 232 such units of 512); each dropped unit's mean activation is folded into the next layer's
    bias. With equal widths this copies the teacher exactly. Distillation then starts from the teacher's
    function instead of learning it from frames: where a student from random weights cannot match the
    teacher closely enough to keep its return (Breakout), one started here can (docs/RESULTS.md).
    """
    s, t = student.cfg, teacher.cfg
    same = (s.obs_shape, s.n_out, s.continuous, s.convs, s.extra_dim) == (t.obs_shape, t.n_out, t.continuous,
                                                                          t.convs, t.extra_dim)
    if not same or len(s.hidden) != len(t.hidden) or any(a > b for a, b in zip(s.hidden, t.hidden)):
        raise UserError(f"--init teacher needs a student with the teacher's convs {t.convs} and hidden layers no "
                        f"wider than its {t.hidden}; this student has convs {s.convs}, hidden {s.hidden}: "
                        "use --arch teacher, or --init random")
    n_conv = len(t.convs)
    s_layers, t_layers = student.trunk.weight_layers(), teacher.trunk.weight_layers()
    with torch.no_grad():
        pairs = list(zip(s_layers[:n_conv], t_layers[:n_conv]))
        if t.extra_dim:
            pairs.append((student.trunk.gate, teacher.trunk.gate))
        for mine, theirs in pairs:
            mine.load_state_dict(theirs.state_dict())
        acts = hidden_activations(teacher, inputs)
        s_lin, t_lin = s_layers[n_conv:] + [student.head], t_layers[n_conv:] + [teacher.head]
        cols: Any = slice(None)  # the previous layer's kept outputs: every conv feature for the first
        # What the previous layer's dropped units added, on average, to this layer's outputs.
        shift = torch.zeros(t_lin[0].out_features, device=teacher.device)
        for i, (mine, theirs) in enumerate(zip(s_lin, t_lin)):
            weight, bias = theirs.weight[:, cols], theirs.bias + shift
            if i < len(acts):
                nxt = t_lin[i + 1].weight
                score = acts[i].pow(2).mean(0).sqrt() * nxt.norm(dim=0)
                keep = score.argsort(descending=True)[:mine.out_features].sort().values
                dropped = torch.ones(len(score), dtype=torch.bool, device=score.device)
                dropped[keep] = False
                shift = nxt[:, dropped] @ acts[i].mean(0)[dropped]
                weight, bias, cols = weight[keep], bias[keep], keep
            mine.weight.copy_(weight)
            mine.bias.copy_(bias)


def hidden_activations(policy: PixelPolicy, inputs: Tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Each hidden layer's post-ReLU activations (N, width) on `inputs`, in forward order."""
    relus = [m for prev, m in zip(policy.trunk.body, list(policy.trunk.body)[1:]) if isinstance(prev, nn.Linear)]
    acts: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: acts.append(out.detach())) for m in relus]
    try:
        with torch.no_grad():
            policy(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return acts
