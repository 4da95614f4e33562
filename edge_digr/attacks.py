"""White-box observation attacks on pixel policies: FGSM, L∞ PGD, Gaussian noise and MAD.

Every attack works in raw pixel space (0–255, the scale of the graph input `obs`), with ε on that scale:
the result lies inside the L∞ ball of radius ε around the clean frame *and* inside [0, 255]. The policy
applies its own normalisation (x / 255) inside, so gradients flow through exactly the deployed model.
Only `obs` is attacked; extra inputs (e.g. the mission one-hot) pass through unchanged. Perturbed frames
stay float32 (not rounded to integers): the policy and the exported graph both take float input.

Losses, per head kind:

* discrete, `fgsm`/`pgd`: cross-entropy of the attacked logits against the clean greedy action a*
  (untargeted: push probability away from the action the policy would take);
* discrete, `mad`: KL(π(·|x) ‖ π(·|x')), the maximal action distribution deviation of Zhang et al.
  (2020, "Robust Deep RL against Adversarial Perturbations on State Observations");
* continuous, all: ½‖μ(x') − μ(x)‖² on the action mean. This is the Gaussian analogue of the KL: for a
  Gaussian head with fixed covariance Σ, KL = ½(μ−μ')ᵀΣ⁻¹(μ−μ'), and the deployed head has no Σ, so
  Σ = I. `fgsm`/`pgd` and `mad` then share the loss and differ only in one step versus many.

The KL and the mean distance have zero gradient at x' = x, so a sign step from the clean frame would do
nothing. Iterative attacks on those losses therefore always start from a random point in the ball, and
FGSM on a continuous head takes the R+FGSM form of Tramèr et al. (2018): a random sign step of ε/2,
then a gradient sign step of ε/2 (still inside the ε ball).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from edge_digr.evaluation import Episodes, rollout, torch_head
from edge_digr.policies import PixelPolicy
from edge_digr.core.tasks import Task

ATTACKS = ("fgsm", "pgd", "noise", "mad")
PIXEL_MAX = 255.0

Inputs = Tuple[torch.Tensor, ...]
LossFn = Callable[[torch.Tensor], torch.Tensor]  # attacked obs -> per-sample loss (N,)


@dataclass(frozen=True)
class AttackConfig:
    """`steps`, `step_size` and `random_start` are for pgd/mad; `sigma` for noise (default ε)."""

    name: str
    eps: float
    steps: int = 10
    step_size: Optional[float] = None  # default 2.5·ε/steps (Madry et al.): can cross the ball in the budget
    random_start: bool = True
    sigma: Optional[float] = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise ValueError(f"unknown attack {self.name!r}; choose one of: {', '.join(ATTACKS)}")
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0 (pixel units, 0-255), got {self.eps}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps


def project(adv: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip into the L∞ ball of radius `eps` around `clean`, then into the valid pixel range."""
    return torch.min(torch.max(adv, clean - eps), clean + eps).clamp(0.0, PIXEL_MAX)


def action_loss(policy: PixelPolicy, inputs: Inputs) -> LossFn:
    """The loss FGSM/PGD raise: CE against the clean greedy action, or ½‖μ'−μ‖² (continuous)."""
    with torch.no_grad():
        clean = policy(*inputs)
    if policy.cfg.continuous:
        return lambda obs: 0.5 * (policy(obs, *inputs[1:]) - clean).pow(2).sum(-1)
    greedy = clean.argmax(-1)
    return lambda obs: F.cross_entropy(policy(obs, *inputs[1:]), greedy, reduction="none")


def kl_loss(policy: PixelPolicy, inputs: Inputs) -> LossFn:
    """The loss MAD raises: KL(π(x) ‖ π(x')), or its fixed-covariance Gaussian analogue ½‖μ'−μ‖²."""
    if policy.cfg.continuous:
        return action_loss(policy, inputs)
    with torch.no_grad():
        log_p = torch.log_softmax(policy(*inputs), -1)
    return lambda obs: (log_p.exp() * (log_p - torch.log_softmax(policy(obs, *inputs[1:]), -1))).sum(-1)


def _grad(loss: LossFn, obs: torch.Tensor) -> torch.Tensor:
    obs = obs.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(obs).sum(), obs)  # samples are independent: per-sample gradients
    return grad


class ObservationAttack:
    """`attack(inputs) -> perturbed obs` for a batch of positional policy inputs (obs[, extra])."""

    def __init__(self, policy: PixelPolicy, config: AttackConfig):
        self.policy = policy
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)
        # Losses with zero gradient at the clean frame need a random start (see the module docstring).
        self.flat_at_clean = config.name == "mad" or policy.cfg.continuous
        if config.name == "pgd" and self.flat_at_clean and not config.random_start:
            raise ValueError("pgd on a continuous head needs a random start: the action-mean distance "
                             "has zero gradient at the clean frame")

    def loss_fn(self, inputs: Inputs) -> LossFn:
        """The per-sample loss this attack raises on `inputs` (what the tests check it raises)."""
        return (kl_loss if self.config.name == "mad" else action_loss)(self.policy, inputs)

    def _uniform(self, like: torch.Tensor, eps: float) -> torch.Tensor:
        return (torch.rand(like.shape, generator=self.generator) * 2 - 1).to(like) * eps

    def __call__(self, inputs: Inputs) -> torch.Tensor:
        clean = inputs[0].detach()
        cfg = self.config
        if cfg.eps == 0:
            return clean.clone()
        if cfg.name == "noise":
            sigma = cfg.eps if cfg.sigma is None else cfg.sigma
            noise = torch.randn(clean.shape, generator=self.generator).to(clean) * sigma
            return project(clean + noise, clean, cfg.eps)
        loss = self.loss_fn(inputs)
        if cfg.name == "fgsm":
            return self._fgsm(loss, clean)
        return self._pgd(loss, clean)

    def _fgsm(self, loss: LossFn, clean: torch.Tensor) -> torch.Tensor:
        eps = self.config.eps
        if not self.flat_at_clean:
            return project(clean + eps * _grad(loss, clean).sign(), clean, eps)
        start = project(clean + 0.5 * eps * self._uniform(clean, 1.0).sign(), clean, eps)
        return project(start + 0.5 * eps * _grad(loss, start).sign(), clean, eps)

    def _pgd(self, loss: LossFn, clean: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        adv = clean
        if cfg.random_start or self.flat_at_clean:
            adv = project(clean + self._uniform(clean, cfg.eps), clean, cfg.eps)
        for _ in range(cfg.steps):
            adv = project(adv + cfg.alpha * _grad(loss, adv).sign(), clean, cfg.eps)
        return adv.detach()


def make_attack(name: str, policy: PixelPolicy, eps: float, **opts) -> ObservationAttack:
    """`make_attack("pgd", policy, eps=4, steps=10)`: an attack on `policy` (white box)."""
    return ObservationAttack(policy, AttackConfig(name=name, eps=eps, **opts))


def attacked_rollout(policy: PixelPolicy, task: Task, config: Optional[AttackConfig], episodes: int,
                     seed: int, max_steps: Optional[int] = None) -> Episodes:
    """`Episodes` of `policy` on `task` with `config`'s attack applied to every step's observation.

    The attack targets the very policy that acts (white box); `config=None` gives the clean rollout.
    """
    hook = None
    if config is not None:
        attack = ObservationAttack(policy, config)

        def hook(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
            return {**inputs, "obs": attack(policy.inputs_from(inputs)).cpu().numpy()}

    return rollout(torch_head(policy), task, episodes, seed=seed, max_steps=max_steps, obs_hook=hook)
