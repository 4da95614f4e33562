"""Saliency of torch policies: the cheap input-gradient map and the teacher's perturbation map.

Captum-like shape: `Saliency(policy).attribute(inputs)` and `Perturbation(policy).attribute(inputs)`,
both returning numpy maps (N, H, W), or (N, K, H, W) for the gradient of continuous policies.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch

from edge_digr.core.perturbation import PerturbationConfig, perturbation_saliency
from edge_digr.policies import PixelPolicy, saliency_target


def input_gradient(policy: PixelPolicy, inputs: Tuple[torch.Tensor, ...],
                   create_graph: bool = False) -> torch.Tensor:
    """∂g/∂obs for the saliency target g of DESIGN.md: (N, C, H, W), or (N, K, C, H, W) when continuous.

    With `create_graph=True` the result is differentiable in the weights (the DIGR regulariser needs it).
    """
    obs = inputs[0].detach().requires_grad_(True)
    target = saliency_target(policy(obs, *inputs[1:]), policy.cfg.continuous)
    if target.dim() == 1:
        (grad,) = torch.autograd.grad(target.sum(), obs, create_graph=create_graph)
        return grad
    # One backward per action component: K is small (2-3), and each map is what the graph exports.
    grads = [torch.autograd.grad(target[:, k].sum(), obs, create_graph=create_graph, retain_graph=True)[0]
             for k in range(target.shape[1])]
    return torch.stack(grads, dim=1)


def reduce_channels(grad: torch.Tensor) -> torch.Tensor:
    """Deployed saliency: |gradient| max-reduced over colour/stack channels (the channel axis is -3)."""
    return grad.abs().amax(dim=-3)


class Saliency:
    """Gradient saliency of a policy, exactly the quantity the fused graph computes."""

    def __init__(self, policy: PixelPolicy):
        self.policy = policy

    def attribute(self, inputs: Tuple[torch.Tensor, ...]) -> np.ndarray:
        return reduce_channels(input_gradient(self.policy, inputs)).detach().cpu().numpy()


class Perturbation:
    """Greydanus perturbation saliency of a policy (batched over masks)."""

    def __init__(self, policy: PixelPolicy, config: PerturbationConfig = PerturbationConfig()):
        self.policy = policy
        self.config = config
        self.names = ["obs"] + ([policy.cfg.extra_name] if policy.cfg.extra_dim else [])

    def _forward(self, feed: Dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return self.policy(*self.policy.inputs_from(feed)).cpu().numpy()

    def attribute(self, inputs: Tuple[torch.Tensor, ...]) -> np.ndarray:
        feed = {name: t.detach().cpu().numpy() for name, t in zip(self.names, inputs)}
        return perturbation_saliency(self._forward, feed, "obs", self.config)


def gradient_saliency(policy: PixelPolicy, inputs: Tuple[torch.Tensor, ...]) -> np.ndarray:
    return Saliency(policy).attribute(inputs)
