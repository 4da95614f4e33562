"""The fused graph's saliency is the autograd input gradient, for random supported architectures.

Property-based: hypothesis draws conv stacks (channels, kernels, strides, paddings, dilations, groups,
input sizes that are not multiples of the stride), residual blocks, activations, eval BatchNorm, input
normalisation, a second (vector) input and discrete or continuous (K maps) heads; the exported graph runs
in ONNX Runtime with the runner's session options for the batch size, and its `saliency` must equal
|autograd gradient| max-reduced over channels with relative error <= 1e-4.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
import torch.nn.functional as F
from torch import nn

from edge_digr.export import build_vjp, export_fused
from edge_digr.runtime.runners import session_options

REL_TOL = 1e-4
ACTIVATIONS = {"relu": nn.ReLU, "leaky": lambda: nn.LeakyReLU(0.1), "elu": lambda: nn.ELU(0.7),
               "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


@dataclass
class ConvSpec:
    out: int
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    groups: int
    act: str
    batchnorm: bool
    residual: bool  # a same-shape residual block (conv-act-conv + skip) instead of a plain conv


@dataclass
class NetSpec:
    in_ch: int
    hw: Tuple[int, int]
    convs: List[ConvSpec]
    hidden: int
    head: int
    extra_dim: int  # a second input, broadcast as planes (like the mission); 0 for none
    extra_into: str  # "planes" (concatenated to the image), "features" (after flatten) or "gate" (scales channels)
    standardise: bool  # (x - mean) / std with buffers instead of x / 255
    continuous: bool


def _out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@st.composite
def net_specs(draw) -> NetSpec:
    in_ch = draw(st.integers(1, 4))
    hw = (draw(st.integers(5, 19)), draw(st.integers(5, 19)))
    extra_dim = draw(st.sampled_from([0, 3]))
    extra_into = draw(st.sampled_from(["planes", "features", "gate"]))
    channels = in_ch + (extra_dim if extra_dim and extra_into == "planes" else 0)
    size = list(hw)
    convs = []
    for _ in range(draw(st.integers(1, 3))):
        act = draw(st.sampled_from(sorted(ACTIVATIONS)))
        bn = draw(st.booleans())
        if draw(st.integers(0, 3)) == 0:  # residual block keeps the shape
            k = draw(st.sampled_from([1, 3]))
            convs.append(ConvSpec(channels, (k, k), (1, 1), (k // 2, k // 2), (1, 1), 1, act, bn, True))
            continue
        kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        groups = draw(st.sampled_from([1, 2])) if channels % 2 == 0 else 1
        out = groups * draw(st.integers(1, 4))
        new = [_out(size[i], kernel[i], stride[i], padding[i], dilation[i]) for i in range(2)]
        if min(new) < 1:
            break
        size = new
        convs.append(ConvSpec(out, kernel, stride, padding, dilation, groups, act, bn, False))
        channels = out
    return NetSpec(in_ch, hw, convs, draw(st.integers(2, 12)), draw(st.integers(2, 5)), extra_dim, extra_into,
                   draw(st.booleans()), draw(st.booleans()))


class Residual(nn.Module):
    def __init__(self, channels: int, k: int, act: str):
        super().__init__()
        self.a = nn.Conv2d(channels, channels, k, padding=k // 2)
        self.act = ACTIVATIONS[act]()
        self.b = nn.Conv2d(channels, channels, k, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.act(self.a(x)))


class RandomNet(nn.Module):
    def __init__(self, spec: NetSpec):
        super().__init__()
        self.spec = spec
        layers: List[nn.Module] = []
        channels = spec.in_ch + (spec.extra_dim if spec.extra_into == "planes" else 0)
        for c in spec.convs:
            if c.residual:
                layers.append(Residual(channels, c.kernel[0], c.act))
            else:
                layers += [nn.Conv2d(channels, c.out, c.kernel, c.stride, c.padding, c.dilation, c.groups),
                           ACTIVATIONS[c.act]()]
                channels = c.out
            if c.batchnorm:
                bn = nn.BatchNorm2d(channels)
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.data.uniform_(0.5, 1.5)
                layers.append(bn)
        self.convs = nn.Sequential(*layers)
        self.gate = nn.Linear(spec.extra_dim, channels) if spec.extra_dim and spec.extra_into == "gate" else None
        self.register_buffer("mean", torch.rand(1, spec.in_ch, 1, 1) * 255)
        self.register_buffer("std", torch.rand(1, spec.in_ch, 1, 1) * 100 + 20)
        self.convs.eval()  # the shape probe must not update BatchNorm statistics
        with torch.no_grad():
            probe = self.features(torch.zeros(1, spec.in_ch, *spec.hw),
                                  torch.zeros(1, spec.extra_dim) if spec.extra_dim else None)
        self.fc = nn.Linear(probe.shape[1], spec.hidden)
        self.head = nn.Linear(spec.hidden, spec.head)

    def features(self, obs: torch.Tensor, extra: Optional[torch.Tensor]) -> torch.Tensor:
        spec = self.spec
        x = (obs - self.mean) / self.std if spec.standardise else obs * (1.0 / 255.0)
        if spec.extra_dim and spec.extra_into == "planes":
            x = torch.cat([x, extra[:, :, None, None].expand(-1, -1, *spec.hw)], dim=1)
        x = self.convs(x)
        if self.gate is not None:  # like PixelTrunk's mission gate: a product with an obs-free tensor
            x = x * self.gate(extra)[:, :, None, None]
        x = torch.flatten(x, 1)
        if spec.extra_dim and spec.extra_into == "features":
            x = torch.cat([x, extra * 2.0], dim=1)
        return x

    def forward(self, obs: torch.Tensor, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.head(torch.tanh(self.fc(self.features(obs, extra))))


def autograd_saliency(net: nn.Module, inputs: Tuple[torch.Tensor, ...], continuous: bool) -> np.ndarray:
    """|d target / d obs| max over channels, with torch.autograd (the reference)."""
    obs = inputs[0].clone().requires_grad_(True)
    out = net(obs, *inputs[1:])
    if continuous:
        grads = [torch.autograd.grad(out[:, k].sum(), obs, retain_graph=True)[0] for k in range(out.shape[1])]
        grad = torch.stack(grads, 1)
    else:
        target = torch.log_softmax(out, -1).gather(1, out.argmax(-1, keepdim=True)).sum()
        grad = torch.autograd.grad(target, obs)[0]
    return grad.abs().amax(dim=-3).numpy()


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def make_inputs(spec: NetSpec, batch: int, seed: int) -> Tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.rand(batch, spec.in_ch, *spec.hw, generator=gen) * 255
    return (obs, torch.rand(batch, spec.extra_dim, generator=gen)) if spec.extra_dim else (obs,)


def logit_margin(net: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> float:
    """Smallest gap between the top two logits: near-ties let float noise pick another greedy action."""
    with torch.no_grad():
        top = net(*inputs).topk(2, dim=-1).values
    return float((top[:, 0] - top[:, 1]).min())


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(spec=net_specs(), batch=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_onnx_saliency_equals_autograd(spec: NetSpec, batch: int, seed: int, tmp_path_factory) -> None:
    torch.manual_seed(seed)
    net = RandomNet(spec).eval()
    inputs = make_inputs(spec, batch, seed)
    if not spec.continuous:
        assume(logit_margin(net, inputs) > 1e-4)
    ref = autograd_saliency(net, inputs, spec.continuous)
    assume(np.abs(ref).max() > 0)  # all-dead ReLU nets have no gradient to compare
    path = tmp_path_factory.mktemp("vjp") / "net.onnx"
    export_fused(net, make_inputs(spec, 2, seed + 1), path, continuous=spec.continuous)
    # The runner's session for this batch size: at batch 1 the weights are not prepacked and every Linear
    # transpose of a continuous head is K one-row products (Layout.matmul), which takes other MLAS kernels.
    session = ort.InferenceSession(str(path), session_options(batch=batch), providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    out, saliency = session.run(None, feed)
    with torch.no_grad():
        np.testing.assert_allclose(out, net(*inputs).numpy(), rtol=1e-4, atol=1e-5)
    assert saliency.shape == ref.shape
    assert rel_err(saliency, ref) <= REL_TOL


@settings(max_examples=40, deadline=None, derandomize=True)
@given(spec=net_specs(), seed=st.integers(0, 10_000))
def test_torch_vjp_equals_autograd(spec: NetSpec, seed: int) -> None:
    """The fused module itself (before ONNX) is exact up to float rounding, with raw_grad signs too."""
    torch.manual_seed(seed)
    net = RandomNet(spec).eval()
    inputs = make_inputs(spec, 3, seed)
    if not spec.continuous:
        assume(logit_margin(net, inputs) > 1e-4)
    fused = build_vjp(net, inputs, spec.continuous, raw_grad=True)
    out, saliency, grad = fused(*inputs)
    ref = autograd_saliency(net, inputs, spec.continuous)
    assume(np.abs(ref).max() > 0)
    assert grad.shape[-3:] == inputs[0].shape[-3:]
    assert rel_err(saliency.detach().numpy(), ref) <= REL_TOL
    np.testing.assert_allclose(grad.abs().amax(-3).detach().numpy(), ref, rtol=1e-5, atol=1e-12 + 1e-5 * ref.max())


def test_product_of_two_obs_paths_uses_the_product_rule() -> None:
    class Square(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3)
            self.head = nn.Linear(3 * 5 * 5, 4)

        def forward(self, obs):
            h = self.conv(obs / 255.0)
            return self.head((h * h - h).flatten(1))

    net = Square().eval()
    inputs = (torch.rand(2, 2, 7, 7) * 255,)
    _, saliency = build_vjp(net, inputs, continuous=False)(*inputs)
    assert rel_err(saliency.detach().numpy(), autograd_saliency(net, inputs, False)) <= REL_TOL


@pytest.mark.parametrize("continuous", [False, True])
def test_mission_planes_get_no_gradient_and_change_nothing_else(continuous: bool) -> None:
    """Only obs is explained: the graph's saliency is the obs gradient even when extra planes are concatenated."""
    spec = NetSpec(3, (9, 11), [ConvSpec(4, (3, 3), (2, 2), (1, 1), (1, 1), 1, "relu", False, False)], 6, 3,
                   extra_dim=5, extra_into="planes", standardise=False, continuous=continuous)
    torch.manual_seed(1)
    net = RandomNet(spec).eval()
    inputs = make_inputs(spec, 2, 3)
    _, saliency, grad = build_vjp(net, inputs, continuous, raw_grad=True)(*inputs)
    assert grad.shape[-3] == 3  # obs channels only
    assert rel_err(saliency.detach().numpy(), autograd_saliency(net, inputs, continuous)) <= REL_TOL


@pytest.mark.parametrize("continuous", [False, True])
def test_saliency_reduced_before_the_first_layers_interleave(continuous: bool) -> None:
    """Without raw_grad, the first conv's transpose yields the saliency itself (reduced over channels before
    its phase interleave); it equals autograd's and the raw_grad graph's saliency."""
    spec = NetSpec(4, (20, 20), [ConvSpec(6, (4, 4), (2, 2), (0, 0), (1, 1), 1, "relu", False, False),
                                 ConvSpec(5, (3, 3), (1, 1), (1, 1), (1, 1), 1, "relu", False, False)], 8, 3,
                   extra_dim=0, extra_into="planes", standardise=False, continuous=continuous)
    torch.manual_seed(2)
    net = RandomNet(spec).eval()
    inputs = make_inputs(spec, 3, 4)
    reduced = build_vjp(net, inputs, continuous)
    full = build_vjp(net, inputs, continuous, raw_grad=True)
    assert reduced.vjp.reduced and not full.vjp.reduced
    _, saliency = reduced(*inputs)
    _, full_saliency, _ = full(*inputs)
    assert saliency.shape == full_saliency.shape
    assert rel_err(saliency.detach().numpy(), autograd_saliency(net, inputs, continuous)) <= REL_TOL
    assert rel_err(saliency.detach().numpy(), full_saliency.detach().numpy()) <= REL_TOL


class FunctionalNet(nn.Module):
    """Functional forms and a two-branch structure: F.conv2d/F.linear, cat of two obs paths, sub, neg, view."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(4, 1, 3, 3) * 0.3)  # groups=2 over the 2 input channels
        self.w2 = nn.Parameter(torch.randn(3, 2, 2, 2) * 0.3)
        self.fc = nn.Parameter(torch.randn(5, 7 * 4 * 3) * 0.1)
        self.head = nn.Linear(5, 3)

    def forward(self, obs):
        x = obs / 255.0
        a = F.leaky_relu(F.conv2d(x, self.w1, None, (2, 2), (1, 0), (1, 2), 2), negative_slope=0.2)  # (4, 4, 3)
        b = F.elu(F.conv2d(x, self.w2, stride=(2, 4), padding=(0, 1)), alpha=0.5)  # (3, 4, 3)
        h = torch.cat([a, -b], dim=1)
        h = torch.relu(h - 0.1 * h.neg())
        return self.head(torch.tanh(F.linear(h.view(h.size(0), -1), self.fc)))


@pytest.mark.parametrize("continuous", [False, True])
def test_functional_two_branch_net(continuous: bool, tmp_path) -> None:
    torch.manual_seed(3)
    net = FunctionalNet().eval()
    inputs = (torch.rand(3, 2, 8, 9) * 255,)
    ref = autograd_saliency(net, inputs, continuous)
    path = tmp_path / "f.onnx"
    export_fused(net, inputs, path, continuous=continuous)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (_, saliency) = session.run(None, {"obs": inputs[0].numpy()})
    assert rel_err(saliency, ref) <= REL_TOL
