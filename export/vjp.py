"""The input-gradient (vector-Jacobian product) of a policy, written as ordinary forward ops.

`torch.onnx.export` cannot export `autograd.grad`, and TensorRT has no autograd, so the backward pass is
built explicitly: the policy is traced with torch.fx, every node on a path from `obs` to the head output
gets its transpose (Conv2d -> the transposed convolution: a Conv with flipped, rearranged weights where
that is exact and faster, else ConvTranspose2d with the same weights; Linear -> MatMul with the weight,
ReLU -> multiply by the forward activation mask, reshape -> reshape back, add -> fan-out, cat -> slice,
...), and the result is one `nn.Module` (`FusedSaliency`) whose forward returns the head output and the
saliency. Nodes that do not depend on `obs` (e.g. the mission gate) need no transpose; a constant
scaling right before a Conv2d/Linear (the input normalisation) is folded into that layer's transposed
weight.

The backward runs inside the child module `vjp`, so the legacy ONNX exporter names every gradient-path
node with the "/vjp/" scope prefix (the calibration keeps that path in higher precision).
"""
from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils._pytree import tree_leaves

from edge_digr.core.errors import UserError

# What the error message lists: the ops whose transpose is implemented below.
SUPPORTED = (
    "Conv2d/F.conv2d (zeros padding, any stride/padding/dilation/groups)", "Linear/F.linear", "ReLU",
    "LeakyReLU", "ELU", "Tanh", "Sigmoid", "BatchNorm2d (eval, running stats)", "Flatten/flatten/view/reshape",
    "add/sub (residual, constants)", "mul (product rule; constants and obs-free tensors)",
    "div by obs-free values", "neg", "cat", "Identity/Dropout (eval)", "contiguous/clone",
    "any op on inputs other than obs")


class UnsupportedOpError(UserError):
    """A layer on the obs -> output path whose transpose the builder does not have."""


def _refuse(op: str, path: str, why: str = "") -> UnsupportedOpError:
    detail = f" ({why})" if why else ""
    return UnsupportedOpError(f"cannot build the input gradient through {op} at {path!r}{detail}; "
                              f"supported on the path from obs: {', '.join(SUPPORTED)}")


# ------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Layout:
    """Where the gradient lives: (N, *shape) for one target, (N, K, *shape) for K stacked targets.

    Continuous heads differentiate each of K action components; the K backward passes are batched by
    carrying an extra axis right after the batch axis, so forward activations broadcast over it.
    """

    k: int = 0  # 0: a single target (discrete head)

    def lift(self, value: Any, rank: int) -> Any:
        """A forward tensor of the node's rank, broadcastable against the gradient."""
        if self.k and isinstance(value, torch.Tensor) and value.dim() == rank:
            return value.unsqueeze(1)
        return value

    def axis(self, dim: int, rank: int) -> int:
        dim = dim % rank
        return dim + 1 if self.k and dim > 0 else dim

    def reshape(self, g: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Reshape to the forward shape `shape` (batch first, batch kept dynamic)."""
        return g.reshape(-1, self.k, *shape[1:]) if self.k else g.reshape(-1, *shape[1:])

    def to_batch(self, g: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Fold K into the batch axis for layers that need the forward rank (conv)."""
        return g.reshape(-1, *shape[1:]) if self.k else g

    def matmul(self, g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """g @ weight, the transpose of a Linear layer, one product per target.

        At batch 1 a single (K, in) x (in, out) product has K rows, and ONNX Runtime's CPU MatMul then repacks
        the whole weight on every call unless the session prepacks it, which keeps a second copy of the
        weight beside the forward Gemm's (two copies of the 512x4096 car-racing weight do not stay in cache).
        K products of one row each take MLAS's one-row kernel straight from the forward's initializer, which
        then stays the only copy: the 512x4096 layer's forward and backward alone at K = 3 took 1.0 ms (p50)
        against 2.0 ms as one prepacked 3-row product and 7.6 ms repacked (1 thread, 2-core EPYC, load 3).
        Convolutions keep K on the batch axis, where it is one pass of batch N*K.
        """
        if self.k < 2:
            return torch.matmul(g, weight)
        return torch.cat([torch.matmul(part, weight) for part in g.split(1, dim=1)], dim=1)


# ------------------------------------------------------------------------------------------ tracing
@dataclass
class _Meta:
    shape: Tuple[int, ...]  # () for a container of tensors (tuple from split, ...): it has no transpose


def _module_path(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return f"{list(stack)[-1]} ({node.name})" if stack else node.name


def _op_name(node: fx.Node, modules: Dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__name__", str(node.target))


def trace(module: nn.Module, n_inputs: int) -> fx.GraphModule:
    """fx-trace `module`; forward parameters past the example inputs are fixed to their defaults."""
    params = list(inspect.signature(module.forward).parameters.values())
    concrete = {p.name: p.default for p in params[n_inputs:] if p.default is not inspect.Parameter.empty}
    try:
        return fx.symbolic_trace(module, concrete_args=concrete or None)
    except Exception as exc:  # fx raises TraceError, TypeError, ... for data-dependent Python control flow
        raise UserError(f"torch.fx cannot trace {type(module).__name__} "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); the fused export needs "
                        "a forward without data-dependent Python control flow") from None


def record_shapes(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> Dict[str, _Meta]:
    """Shape of every node that holds tensors, from one run on the example inputs."""
    shapes: Dict[str, _Meta] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                shapes[n.name] = _Meta(tuple(out.shape))
            elif any(isinstance(leaf, torch.Tensor) for leaf in tree_leaves(out)):
                shapes[n.name] = _Meta(())
            return out

    with torch.no_grad():
        _Recorder(gm).run(*inputs)
    return shapes


# ------------------------------------------------------------------------------------ backward rules
Grads = List[Tuple[fx.Node, torch.Tensor]]


@dataclass
class _Rule:
    """The transpose of one node: fn(g, needed forward values) -> [(input node, its gradient share)]."""

    node: fx.Node
    needs: Tuple[fx.Node, ...]
    fn: Callable[[torch.Tensor, Sequence[Any]], Grads]


class _Builder:
    def __init__(self, gm: fx.GraphModule, shapes: Dict[str, _Meta], active: set, layout: Layout):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.shapes = shapes
        self.active = active  # names of tensor nodes that depend on obs
        self.layout = layout
        # Constant scalings folded into the transposed weight of the layer that consumes them (the
        # input normalisation obs * (1/255) before the first conv): one full-resolution pass fewer.
        self.fold: Dict[str, float] = {}  # layer node -> factor for its backward weight
        self.folded: set = set()  # scaling nodes whose backward is then the identity
        # The layer whose input gradient is the obs gradient up to folded scalings. Without raw_grad its
        # transpose returns the saliency itself: the max over channels of |g| commutes with the spatial
        # interleave and crop, so reducing first moves C times fewer bytes through them.
        self.saliency_layer: Optional[str] = None

    def constant_scale(self, node: fx.Node) -> Optional[float]:
        """The factor of `tensor * number` / `tensor / number` nodes, else None."""
        if node.kwargs or len(node.args) != 2 or not (node.op == "call_function" or node.op == "call_method"):
            return None
        lhs, rhs = node.args
        if node.target in (operator.mul, torch.mul, "mul"):
            if isinstance(lhs, (int, float)):
                lhs, rhs = rhs, lhs
            return float(rhs) if self.is_active(lhs) and isinstance(rhs, (int, float)) else None
        if node.target in (operator.truediv, torch.div, "div"):
            return 1.0 / rhs if self.is_active(lhs) and isinstance(rhs, (int, float)) and rhs != 0 else None
        return None

    def plan_folds(self, path: Sequence[fx.Node]) -> None:
        on_path = {n.name for n in path}
        for node in path:
            factor = self.constant_scale(node)
            users = list(node.users)
            if factor is None or len(users) != 1 or users[0].name not in on_path:
                continue
            user = users[0]
            if user.op == "call_module" and isinstance(self.modules[user.target], (nn.Conv2d, nn.Linear)):
                self.fold[user.name] = self.fold.get(user.name, 1.0) * factor
                self.folded.add(node.name)

    def plan_saliency(self, obs: fx.Node, path: Sequence[fx.Node]) -> None:
        on_path = {n.name for n in path}
        node = obs
        while len(node.users) == 1:
            (user,) = node.users
            if user.name not in on_path:
                return
            if user.name not in self.folded:
                if user.op == "call_module" and isinstance(self.modules[user.target], nn.Conv2d):
                    self.saliency_layer = user.name
                return
            node = user

    def backward_weight(self, node: fx.Node, mod: nn.Module) -> torch.Tensor:
        factor = self.fold.get(node.name)
        return mod.weight if factor is None else mod.weight * factor

    # helpers ------------------------------------------------------------------------------------
    def shape(self, node: Any) -> Tuple[int, ...]:
        return self.shapes[node.name].shape

    def is_active(self, arg: Any) -> bool:
        return isinstance(arg, fx.Node) and arg.name in self.active

    def refuse(self, node: fx.Node, why: str = "") -> UnsupportedOpError:
        return _refuse(_op_name(node, self.modules), _module_path(node), why)

    def unbroadcast(self, g: torch.Tensor, node: fx.Node, out: fx.Node) -> torch.Tensor:
        """Sum the gradient over the axes along which `node` was broadcast to `out`'s shape."""
        src, dst = self.shape(node), self.shape(out)
        if src == dst:
            return g
        if len(src) != len(dst) or src[0] != dst[0]:
            raise self.refuse(out, f"an obs-dependent operand of shape {src} is broadcast to {dst}")
        axes = [self.layout.axis(i, len(dst)) for i in range(1, len(dst)) if src[i] == 1 and dst[i] != 1]
        return g.sum(dim=axes, keepdim=True)

    # dispatch -----------------------------------------------------------------------------------
    def rule(self, node: fx.Node) -> _Rule:
        if node.name in self.folded:
            x = next(a for a in node.args if self.is_active(a))
            return _Rule(node, (), lambda g, v: [(x, g)])
        if node.op == "call_module":
            mod = self.modules[node.target]
            for cls, make in _MODULE_RULES:
                if isinstance(mod, cls):
                    return make(self, node, mod)
            raise self.refuse(node)
        if node.op in ("call_function", "call_method"):
            make = _FUNCTION_RULES.get((node.op, node.target))
            if make is None:
                raise self.refuse(node)
            return make(self, node)
        raise self.refuse(node)

    def single_input(self, node: fx.Node) -> fx.Node:
        x = node.args[0]
        others = [a for a in list(node.args[1:]) + list(node.kwargs.values()) if self.is_active(a)]
        if not self.is_active(x) or others:
            raise self.refuse(node, "only its first tensor argument may depend on obs")
        return x


# ---- elementwise activations: the derivative from the forward values
def _relu(b: _Builder, node: fx.Node, *_: Any) -> _Rule:
    x, L, rank = b.single_input(node), b.layout, len(b.shape(node))
    # (y > 0) equals (x > 0). Multiply by the cast mask rather than Where(mask, g, 0): ONNX Runtime's
    # CPU Where with a scalar branch measured ~10x slower than Greater+Cast+Mul on (32, 32, 20, 20).
    return _Rule(node, (node,), lambda g, v: [(x, g * (L.lift(v[0], rank) > 0).to(g.dtype))])


def _leaky_relu_from(slope: float):
    def make(b: _Builder, node: fx.Node, *_: Any) -> _Rule:
        x, L, rank = b.single_input(node), b.layout, len(b.shape(node))
        return _Rule(node, (x,), lambda g, v: [(x, torch.where(L.lift(v[0], rank) > 0, g, g * slope))])
    return make


def _leaky_relu_module(b: _Builder, node: fx.Node, mod: nn.LeakyReLU) -> _Rule:
    return _leaky_relu_from(mod.negative_slope)(b, node)


def _leaky_relu_function(b: _Builder, node: fx.Node) -> _Rule:
    slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
    return _leaky_relu_from(float(slope))(b, node)


def _elu_from(alpha: float):
    def make(b: _Builder, node: fx.Node, *_: Any) -> _Rule:
        x, L, rank = b.single_input(node), b.layout, len(b.shape(node))
        # d elu/dx = 1 for x > 0, alpha * exp(x) = y + alpha otherwise
        return _Rule(node, (x, node), lambda g, v: [
            (x, torch.where(L.lift(v[0], rank) > 0, g, g * (L.lift(v[1], rank) + alpha)))])
    return make


def _elu_module(b: _Builder, node: fx.Node, mod: nn.ELU) -> _Rule:
    return _elu_from(mod.alpha)(b, node)


def _elu_function(b: _Builder, node: fx.Node) -> _Rule:
    alpha = node.kwargs.get("alpha", node.args[1] if len(node.args) > 1 else 1.0)
    return _elu_from(float(alpha))(b, node)


def _tanh(b: _Builder, node: fx.Node, *_: Any) -> _Rule:
    x, L, rank = b.single_input(node), b.layout, len(b.shape(node))
    return _Rule(node, (node,), lambda g, v: [(x, g * (1 - L.lift(v[0] * v[0], rank)))])


def _sigmoid(b: _Builder, node: fx.Node, *_: Any) -> _Rule:
    x, L, rank = b.single_input(node), b.layout, len(b.shape(node))
    return _Rule(node, (node,), lambda g, v: [(x, g * L.lift(v[0] * (1 - v[0]), rank))])


def _identity(b: _Builder, node: fx.Node, *_: Any) -> _Rule:
    x = b.single_input(node)
    return _Rule(node, (), lambda g, v: [(x, g)])


def _reshape_back(b: _Builder, node: fx.Node, *_: Any) -> _Rule:
    x = b.single_input(node)
    src, dst = b.shape(x), b.shape(node)
    if src[0] != dst[0]:
        raise b.refuse(node, f"it mixes the batch axis ({src} -> {dst})")
    return _Rule(node, (), lambda g, v: [(x, b.layout.reshape(g, src))])


# ---- linear layers: the transpose with the same weights
# ONNX Runtime's CPU ConvTranspose (GEMM + col2im in plain NCHW) costs 1.5-1.7x the Conv it transposes
# (Nature-CNN, batch 32, 1 thread), while Conv gets the blocked NCHWc kernels. So where it is exact and
# cheap, the transpose is written as an ordinary Conv instead: with flipped, in/out-swapped weights at
# stride 1, and for stride s with kernel k = m*s as s_h*s_w stride-1 "phase" convolutions in one Conv
# (pixel s*q + r of the input gradient only sees the taps r, r + s, ... of the kernel) whose output
# channels are interleaved back into space. Other cases keep ConvTranspose.
def _phase_weight(w: torch.Tensor, stride: Sequence[int], groups: int) -> torch.Tensor:
    """Conv weight (C_in*s_h*s_w, C_out/groups, m_h, m_w) of the transposed conv; channels (c_in, r, t)."""
    cout, cin_g, kh, kw = w.shape
    (sh, sw), mh, mw = stride, kh // stride[0], kw // stride[1]
    # Reversing the taps with index_select, not flip: torch.onnx cannot constant-fold flip's negative-step
    # Slice (it warns; edge_digr's own folding would still remove it).
    w = w.reshape(groups, cout // groups, cin_g, mh, sh, mw, sw)
    reverse = lambda n: torch.arange(n - 1, -1, -1, device=w.device)  # noqa: E731
    w = w.index_select(3, reverse(mh)).index_select(5, reverse(mw))
    return w.permute(0, 2, 4, 6, 1, 3, 5).reshape(groups * cin_g * sh * sw, cout // groups, mh, mw)


def _interleave(y: torch.Tensor, channels: int, stride: Sequence[int], h: int, w: int) -> torch.Tensor:
    """(N, C*s_h*s_w, h, w), channels (c, r, t) -> (N, C, h*s_h, w*s_w) with pixel (q*s_h + r, p*s_w + t).

    Two 3-D Transposes rather than DepthToSpace: ONNX Runtime's CPU DepthToSpace (and a 6-D Transpose)
    took 1.6-1.9x (and > 3x) as long on the Nature-CNN's gradients.
    """
    sh, sw = stride
    if sw > 1:
        y = y.reshape(-1, sw, h * w).transpose(1, 2)
    y = y.reshape(-1, sh, h, w * sw)
    if sh > 1:
        y = y.transpose(1, 2)
    return y.reshape(-1, channels, h * sh, w * sw)


def _saliency(g: torch.Tensor) -> torch.Tensor:
    return g.abs().amax(dim=1, keepdim=True)  # max over colour/stack channels


def _transpose_as_conv(src: Sequence[int], dst: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                       padding: Sequence[int], out_pad: Sequence[int], dilation: Sequence[int], groups: int,
                       reduce: bool = False) -> Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The input gradient of the conv src -> dst as a Conv (+ interleave, crop), None where it does not apply.

    With `reduce`, the (N, 1, H, W) saliency of that gradient instead, reduced before the interleave.
    """
    strided = any(s > 1 for s in stride)
    if strided and (any(d > 1 for d in dilation) or any(k % s for k, s in zip(kernel, stride))):
        return None
    m = [k // s for k, s in zip(kernel, stride)]
    reach = [d * (mi - 1) for d, mi in zip(dilation, m)]  # "full" padding of the phase correlation
    # The forward padding p crops p rows off the start of the transposed output and p - output_padding
    # rows off its end: whole phase rows of that (c per end) are cropped by padding the Conv less, the
    # rest by a Slice. Where p < output_padding, c = -1 pads the Conv one phase row more, which yields
    # the zero gradient of the input rows the forward dropped (no Pad needed).
    cut = [min((p - op) // s, r) for p, op, s, r in zip(padding, out_pad, stride, reach)]
    conv_pad = [r - c for r, c in zip(reach, cut)]
    h, w = (o + r - 2 * c for o, r, c in zip(dst[2:], reach, cut))  # the Conv's output size
    start = [p - s * c for p, s, c in zip(padding, stride, cut)]
    crop = start != [0, 0] or [stride[0] * h, stride[1] * w] != list(src[2:])

    def fn(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(g, _phase_weight(weight, stride, groups), None, 1, conv_pad, dilation, groups)
        channels = src[1]
        if reduce:  # phase channels are (c, r, t): reduce over c, keep the phases
            y = _saliency(y.reshape(-1, channels, stride[0] * stride[1] * h, w)).reshape(-1, stride[0] * stride[1], h, w)
            channels = 1
        if strided:
            y = _interleave(y, channels, stride, h, w)
        return y[:, :, start[0]:start[0] + src[2], start[1]:start[1] + src[3]] if crop else y
    return fn


def _conv(b: _Builder, node: fx.Node, x: fx.Node, weight: Callable[[], torch.Tensor], stride: Sequence[int],
          padding: Any, dilation: Sequence[int], groups: int) -> _Rule:
    src, dst = b.shape(x), b.shape(node)
    if len(src) != 4:
        raise b.refuse(node, "only 2-D convolutions on NCHW tensors")
    w = weight()
    kernel = w.shape[2:]
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        if any(t % 2 for t in total):
            raise b.refuse(node, "padding='same' with an even effective kernel pads asymmetrically")
        padding = tuple(t // 2 for t in total)
    # ConvTranspose's output size is ambiguous when the forward input was not a multiple of the
    # stride: output_padding restores the rows/columns the forward conv dropped, from the recorded shapes.
    out_pad = tuple(src[2 + i] - ((dst[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + 1)
                    for i in range(2))
    if any(p < 0 or p >= max(stride[i], dilation[i]) for i, p in enumerate(out_pad)):
        raise b.refuse(node, f"cannot invert its output size {dst} -> {src}")
    L = b.layout
    reduce = node.name == b.saliency_layer
    as_conv = _transpose_as_conv(src, dst, kernel, stride, padding, out_pad, dilation, groups, reduce)
    out_shape = (src[0], 1, *src[2:]) if reduce else src

    def fn(g: torch.Tensor, v: Sequence[Any]) -> Grads:
        g = L.to_batch(g, dst)
        if as_conv is not None:
            gx = as_conv(g, weight())
        else:
            gx = F.conv_transpose2d(g, weight(), None, stride, padding, out_pad, groups, dilation)
            gx = _saliency(gx) if reduce else gx
        return [(x, L.reshape(gx, out_shape) if L.k else gx)]
    return _Rule(node, (), fn)


def _conv_module(b: _Builder, node: fx.Node, mod: nn.Conv2d) -> _Rule:
    if mod.padding_mode != "zeros":
        raise b.refuse(node, f"padding_mode={mod.padding_mode!r}; only 'zeros'")
    return _conv(b, node, b.single_input(node), lambda: b.backward_weight(node, mod), mod.stride, mod.padding,
                 mod.dilation,
                 mod.groups)


def _linear_module(b: _Builder, node: fx.Node, mod: nn.Linear) -> _Rule:
    x = b.single_input(node)
    # y = x W^T + b  =>  dx = g W (a MatMul with the weight as stored)
    return _Rule(node, (), lambda g, v: [(x, b.layout.matmul(g, b.backward_weight(node, mod)))])


def _batchnorm_module(b: _Builder, node: fx.Node, mod: nn.BatchNorm2d) -> _Rule:
    x, L, rank = b.single_input(node), b.layout, len(b.shape(node))
    if mod.training or mod.running_var is None:
        raise b.refuse(node, "only in eval mode with running statistics (it is then a per-channel scale)")

    def fn(g: torch.Tensor, v: Sequence[Any]) -> Grads:
        scale = torch.rsqrt(mod.running_var + mod.eps)
        if mod.weight is not None:
            scale = scale * mod.weight
        return [(x, g * L.lift(scale.reshape(1, -1, 1, 1), rank))]
    return _Rule(node, (), fn)


def _linear_function(b: _Builder, node: fx.Node) -> _Rule:
    x, w = node.args[0], node.kwargs.get("weight", node.args[1] if len(node.args) > 1 else None)
    if not b.is_active(x) or b.is_active(w) or not isinstance(w, fx.Node):
        raise b.refuse(node, "only the input may depend on obs; the weight must be a tensor")
    return _Rule(node, (w,), lambda g, v: [(x, b.layout.matmul(g, v[0]))])


# ---- structure: residual add, subtraction, constant scaling, concatenation
def _binary_operands(node: fx.Node) -> Tuple[Any, Any]:
    a = node.args[0]
    bb = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    if "alpha" in node.kwargs:
        raise _refuse(str(node.target), _module_path(node), "alpha= is not supported")
    return a, bb


def _add_sub(sign: float):
    def make(b: _Builder, node: fx.Node) -> _Rule:
        lhs, rhs = _binary_operands(node)
        targets = [(a, s) for a, s in ((lhs, 1.0), (rhs, sign)) if b.is_active(a)]
        return _Rule(node, (), lambda g, v: [(a, b.unbroadcast(g if s > 0 else -g, a, node)) for a, s in targets])
    return make


def _mul(b: _Builder, node: fx.Node) -> _Rule:
    lhs, rhs = _binary_operands(node)
    L, rank = b.layout, len(b.shape(node))
    # product rule (an operand that does not depend on obs acts as a constant scale): each active
    # operand needs the other's forward value
    needs = tuple(other for a, other in ((lhs, rhs), (rhs, lhs))
                  if b.is_active(a) and isinstance(other, fx.Node))

    def value(a: Any, v: Sequence[Any]) -> Any:
        return L.lift(v[needs.index(a)], rank) if isinstance(a, fx.Node) else a

    def fn(g: torch.Tensor, v: Sequence[Any]) -> Grads:
        out = []
        if b.is_active(lhs):
            out.append((lhs, b.unbroadcast(g * value(rhs, v), lhs, node)))
        if b.is_active(rhs):
            out.append((rhs, b.unbroadcast(g * value(lhs, v), rhs, node)))
        return out
    return _Rule(node, needs, fn)


def _div(b: _Builder, node: fx.Node) -> _Rule:
    lhs, rhs = _binary_operands(node)
    if "rounding_mode" in node.kwargs or b.is_active(rhs):
        raise b.refuse(node, "only division of an obs-dependent tensor by a constant")
    L, rank = b.layout, len(b.shape(node))
    needs = (rhs,) if isinstance(rhs, fx.Node) else ()
    return _Rule(node, needs, lambda g, v: [
        (lhs, b.unbroadcast(g / (L.lift(v[0], rank) if needs else rhs), lhs, node))])


def _neg(b: _Builder, node: fx.Node) -> _Rule:
    x = b.single_input(node)
    return _Rule(node, (), lambda g, v: [(x, -g)])


def _cat(b: _Builder, node: fx.Node) -> _Rule:
    parts = node.args[0] if node.args else node.kwargs["tensors"]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    rank = len(b.shape(node))
    if dim % rank == 0 and any(b.is_active(p) for p in parts):
        raise b.refuse(node, "concatenation along the batch axis")
    axis, spans, start = b.layout.axis(dim, rank), [], 0
    for p in parts:
        size = b.shape(p)[dim]
        if b.is_active(p):  # parts that do not depend on obs (e.g. mission planes) get no gradient
            spans.append((p, start, size))
        start += size
    return _Rule(node, (), lambda g, v: [(p, g.narrow(axis, s, n)) for p, s, n in spans])


_MODULE_RULES: List[Tuple[type, Callable[..., _Rule]]] = [
    (nn.Conv2d, _conv_module), (nn.Linear, _linear_module), (nn.ReLU, _relu),
    (nn.LeakyReLU, _leaky_relu_module), (nn.ELU, _elu_module), (nn.Tanh, _tanh), (nn.Sigmoid, _sigmoid),
    (nn.BatchNorm2d, _batchnorm_module), (nn.Flatten, _reshape_back), (nn.Identity, _identity),
    (nn.Dropout, _identity),
]


def _fn_conv2d(b: _Builder, node: fx.Node) -> _Rule:
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    defaults = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    a = {**defaults, **dict(zip(names, node.args)), **node.kwargs}
    if b.is_active(a["weight"]) or not isinstance(a["weight"], fx.Node):
        raise b.refuse(node, "only the input may depend on obs; the weight must be a tensor")
    if a["weight"].op != "get_attr":
        raise b.refuse(node, "the weight must be a parameter or buffer")
    pair = lambda p: p if isinstance(p, str) else nn.modules.utils._pair(p)  # noqa: E731
    weight = operator.attrgetter(a["weight"].target)
    return _conv(b, node, a["input"], lambda: weight(b.gm), pair(a["stride"]), pair(a["padding"]),
                 pair(a["dilation"]), int(a["groups"]))


_FUNCTION_RULES: Dict[Tuple[str, Any], Callable[..., _Rule]] = {}
for _target in (operator.add, operator.iadd, torch.add):
    _FUNCTION_RULES[("call_function", _target)] = _add_sub(1.0)
for _target in (operator.sub, operator.isub, torch.sub):
    _FUNCTION_RULES[("call_function", _target)] = _add_sub(-1.0)
for _target in (operator.mul, operator.imul, torch.mul):
    _FUNCTION_RULES[("call_function", _target)] = _mul
for _target in (operator.truediv, operator.itruediv, torch.div):
    _FUNCTION_RULES[("call_function", _target)] = _div
for _target in (operator.neg, torch.neg):
    _FUNCTION_RULES[("call_function", _target)] = _neg
for _target in (torch.cat, torch.concat):
    _FUNCTION_RULES[("call_function", _target)] = _cat
for _target in (torch.relu, F.relu):
    _FUNCTION_RULES[("call_function", _target)] = _relu
for _target in (torch.tanh, F.tanh):
    _FUNCTION_RULES[("call_function", _target)] = _tanh
for _target in (torch.sigmoid, F.sigmoid):
    _FUNCTION_RULES[("call_function", _target)] = _sigmoid
for _target in (torch.flatten, torch.reshape):
    _FUNCTION_RULES[("call_function", _target)] = _reshape_back
_FUNCTION_RULES[("call_function", F.leaky_relu)] = _leaky_relu_function
_FUNCTION_RULES[("call_function", F.elu)] = _elu_function
_FUNCTION_RULES[("call_function", F.linear)] = _linear_function
_FUNCTION_RULES[("call_function", F.conv2d)] = _fn_conv2d
for _name, _make in {"add": _add_sub(1.0), "sub": _add_sub(-1.0), "mul": _mul, "div": _div, "neg": _neg,
                     "relu": _relu, "tanh": _tanh, "sigmoid": _sigmoid, "flatten": _reshape_back,
                     "view": _reshape_back, "reshape": _reshape_back, "contiguous": _identity,
                     "clone": _identity}.items():
    _FUNCTION_RULES[("call_method", _name)] = _make


# ------------------------------------------------------------------------------------------- module
class VJP(nn.Module):
    """The backward pass: from the head output and the saved forward values to (saliency, input grad)."""

    def __init__(self, rules: List[_Rule], saved: List[str], obs: str, head: str, continuous: bool,
                 n_out: int, obs_hw: Sequence[int], reduced: bool = False):
        super().__init__()
        self.obs_hw = tuple(obs_hw)
        self.reduced = reduced  # the rules already deliver the saliency as a one-channel obs "gradient"
        self.rules = rules
        self.slot = {name: i for i, name in enumerate(saved)}
        self.obs, self.head = obs, head
        self.continuous = continuous
        self.n_out = n_out

    def seed(self, out: torch.Tensor) -> torch.Tensor:
        if self.continuous:
            # one-hot rows of the identity: component k's map is the k-th stacked backward pass
            eye = torch.eye(self.n_out, dtype=out.dtype, device=out.device)
            return torch.zeros_like(out).unsqueeze(1) + eye
        # d log softmax(z)_{a*} / dz = onehot(a*) - softmax(z), a* = greedy action chosen in the graph.
        # ArgMax + Equal instead of OneHot: OneHot is not in TensorRT's ONNX parser before 8.5.
        actions = torch.arange(self.n_out, device=out.device)
        onehot = (actions == out.argmax(dim=-1, keepdim=True)).to(out.dtype)
        return onehot - torch.softmax(out, dim=-1)

    def forward(self, out: torch.Tensor, *saved: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        grads: Dict[str, torch.Tensor] = {self.head: self.seed(out)}
        for rule in self.rules:  # reverse topological order
            g = grads.pop(rule.node.name, None)
            if g is None:  # the node reaches the output only through non-differentiable paths
                continue
            for target, share in rule.fn(g, [saved[self.slot[n.name]] for n in rule.needs]):
                grads[target.name] = grads[target.name] + share if target.name in grads else share
        grad = grads[self.obs]
        if self.reduced:  # drop the channel axis with a constant Reshape (squeeze exports as an If)
            saliency = grad.reshape(-1, *grad.shape[1:-3], *self.obs_hw)
        else:
            saliency = grad.abs().amax(dim=-3)  # max over colour/stack channels
        return saliency, grad


class FusedSaliency(nn.Module):
    """forward(*inputs) -> (head output, saliency[, input_grad]): the graph that `export_fused` writes."""

    def __init__(self, model: fx.GraphModule, vjp: VJP, raw_grad: bool = False):
        super().__init__()
        self.model = model
        self.vjp = vjp
        self.raw_grad = raw_grad

    def forward(self, *inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        out, *saved = self.model(*inputs)
        saliency, grad = self.vjp(out, *saved)
        return (out, saliency, grad) if self.raw_grad else (out, saliency)


_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def _mutated(node: fx.Node, modules: Dict[str, nn.Module]) -> Optional[fx.Node]:
    """The node whose tensor `node` overwrites in place, if any."""
    inplace = ((node.op == "call_function" and node.target in _INPLACE_FUNCTIONS)
               or (node.op == "call_method" and str(node.target).endswith("_"))
               or (node.op == "call_module" and getattr(modules[node.target], "inplace", False)))
    arg = node.args[0] if inplace and node.args else None
    return arg if isinstance(arg, fx.Node) else None


def _refuse_overwritten(gm: fx.GraphModule, builder: "_Builder", saved: List[fx.Node]) -> None:
    """Refuse in-place ops that would make the traced graph lie about the gradient.

    The backward reads forward values after the whole forward ran, so none may be overwritten later;
    and an in-place op on an obs-dependent tensor changes values that fx's graph edges do not show
    (later users of the old name see the new values), unless it is a module like ReLU(inplace=True)
    whose output is the only way its input is used afterwards.
    """
    for node in gm.graph.nodes:
        target = _mutated(node, builder.modules)
        if target is None:
            continue
        if target in saved:
            raise builder.refuse(node, f"it overwrites {target.name!r} in place, which the gradient needs; "
                                       "use the out-of-place form")
        if builder.is_active(target) and (node.op != "call_module" or set(target.users) != {node}):
            raise builder.refuse(node, f"it changes {target.name!r} in place, which the traced graph cannot "
                                       "follow; use the out-of-place form")


def build_vjp(module: nn.Module, example_inputs: Sequence[torch.Tensor], continuous: bool,
              raw_grad: bool = False) -> FusedSaliency:
    """Trace `module` (first input: the image `obs`) and return its fused forward + input-gradient module.

    Raises UnsupportedOpError naming the op, its module path and the supported list for any layer on
    the path from obs to the output that has no transpose here.
    """
    example_inputs = tuple(example_inputs)
    gm = trace(module, len(example_inputs))
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    obs = placeholders[0]
    # Record shapes at batch >= 2 so that batch broadcasting cannot hide behind a batch of one.
    probe = tuple(torch.cat([t, t]) if t.shape[0] == 1 else t for t in example_inputs)
    shapes = record_shapes(gm, probe)

    # Nodes that depend on obs and hold tensors; size() and other plain values carry no gradient.
    active = {obs.name}
    for node in gm.graph.nodes:
        if node.name in shapes and any(a.name in active for a in node.all_input_nodes):
            active.add(node.name)
    (output,) = [n for n in gm.graph.nodes if n.op == "output"]
    head = output.args[0]
    if not isinstance(head, fx.Node) or head.name not in shapes or len(shapes[head.name].shape) != 2:
        raise UserError(f"{type(module).__name__} must return one (N, A) tensor to be exported with saliency")
    if head.name not in active:
        raise UserError("the policy output does not depend on obs: there is no input gradient to export")
    n_out = shapes[head.name].shape[1]

    # Only nodes that lie on a path obs -> head need a transpose.
    reaches_head = {head.name}
    for node in reversed(list(gm.graph.nodes)):
        if node.name in reaches_head:
            reaches_head.update(a.name for a in node.all_input_nodes)
    builder = _Builder(gm, shapes, active, Layout(n_out if continuous else 0))
    path = [n for n in gm.graph.nodes if n.name in active and n.name in reaches_head and n is not obs]
    builder.plan_folds(path)
    if not raw_grad:
        builder.plan_saliency(obs, path)
    rules = [builder.rule(n) for n in reversed(path)]

    saved: List[fx.Node] = []
    for rule in rules:
        saved.extend(n for n in rule.needs if n not in saved)
    _refuse_overwritten(gm, builder, saved)
    graph = gm.graph
    graph.erase_node(output)
    graph.output((head, *saved))
    graph.lint()
    gm.recompile()
    vjp = VJP(rules, [n.name for n in saved], obs.name, head.name, continuous, n_out, shapes[obs.name].shape[2:],
              reduced=builder.saliency_layer is not None)
    return FusedSaliency(gm, vjp, raw_grad)
