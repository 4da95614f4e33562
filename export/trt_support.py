"""TensorRT ONNX-parser support tables (torch-free), per target, with the documented restrictions as checks.

Sources (transcribed, not guessed):
- `trt8.5` (JetPack 5): onnx-tensorrt `docs/operators.md` of the TensorRT 8.5 release ("TensorRT 8.5
  supports operators up to Opset 17"). INT64 and DOUBLE are cast down to INT32 and FLOAT by the parser.
- `trt10` (JetPack 6): onnx-tensorrt `docs/operators.md` of TensorRT 10.15 ("supports operators in the
  inclusive range of opset 9 to opset 24"); earlier 10.x releases have a subset of these operators, so
  the check is the newest documented table, not a guarantee for every 10.x.
- Both: the ConvTranspose importer (onnx-tensorrt `builtin_op_importers.cpp`) refuses negative
  pre-padding ("TensorRT does not support negative pre-padding in the ConvTranspose operator!"), which
  arises when `output_shape` is given and implies begin padding below zero.

"Must be an initializer" is read as initializer or Constant-node output: the parser imports Constant
nodes as weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, List, Optional, Set, Tuple

import onnx

# --------------------------------------------------------------------------------- operator tables
# "types: Op Op ..." lines; types "N" = documented as unsupported.
_TRT85 = """
FP32 FP16 INT32: Abs Add Div Equal Greater GreaterOrEqual IsNaN Less LessOrEqual Max Mean Min Mod Mul Neg
  Sub Sum Range Shrink DepthToSpace SpaceToDepth
FP32 FP16: Acos Acosh ArgMax ArgMin Asin Asinh Atan Atanh BatchNormalization Ceil Celu Cos Cosh CumSum
  Dropout Einsum Erf Exp Floor GridSample GRU ImageScaler InstanceNormalization Log LogSoftmax LRN LSTM
  LpNormalization MatMul MeanVarianceNormalization NonMaxSuppression NonZero Pow QuantizeLinear
  RandomNormal RandomNormalLike RandomUniform RandomUniformLike Reciprocal ReduceL1 ReduceL2 ReduceLogSum
  ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Resize
  ReverseSequence RNN RoiAlign Scan Sin Sinh Softmax Sqrt Tan TopK Upsample
FP32 FP16 INT8: Clip Conv ConvTranspose Elu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool HardSwish
  HardSigmoid LeakyRelu LpPool MaxPool ParametricSoftplus PRelu Relu Round ScaledTanh Selu Sigmoid
  Softplus Softsign Tanh ThresholdedRelu
FP32 FP16 INT8 INT32: AveragePool Pad Scatter ScatterElements ScatterND Sign
FP32 FP16 INT32 INT8 BOOL: Cast Concat Constant Identity Reshape Shape Size Slice Squeeze Transpose Trilu
  Unsqueeze Gather GatherElements GatherND
FP32 FP16 INT32 BOOL: Expand EyeLike Flatten If Loop OneHot Split Tile Where
FP32: ConstantOfShape
INT8: DequantizeLinear
BOOL: And Not Or Xor
N: Bernoulli BitShift BlackmanWindow Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear
  HammingWindow HannWindow Hardmax IsInf LayerNormalization MatMulInteger MaxRoiPool MaxUnpool
  MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement
  QLinearConv QLinearMatMul STFT SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert
  SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringNormalizer TfIdfVectorizer Unique
"""

_TRT10 = """
FP32 FP16 BF16 INT32 INT64: Abs Add ArgMax ArgMin Div Equal Greater GreaterOrEqual IsNaN Less LessOrEqual
  Max Min Mod Mul Neg Pow Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
  ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Shrink Sign Sub Sum DepthToSpace SpaceToDepth Pad
  Scatter ScatterElements ScatterND TopK
FP32 FP16 BF16: Acos Acosh Asin Asinh Atan Atanh AveragePool BatchNormalization Ceil Celu Clip Conv
  ConvTranspose Cos Cosh CumSum Dropout Einsum Elu Erf Exp Floor Gemm GlobalAveragePool GlobalLpPool
  GlobalMaxPool GroupNormalization GRU HardSigmoid HardSwish Hardmax ImageScaler InstanceNormalization
  IsInf LayerNormalization LeakyRelu Log LogSoftmax LRN LSTM LpNormalization LpPool MatMul MaxPool
  MeanVarianceNormalization ParametricSoftplus PRelu QuantizeLinear RandomNormal RandomNormalLike
  RandomUniform RandomUniformLike Reciprocal Resize RMSNormalization RNN RotaryEmbedding Round ScaledTanh
  Scan Selu Sigmoid Sin Sinh Softmax Softplus Softsign Sqrt Tan Tanh ThresholdedRelu Upsample
FP32 FP16 BF16 INT32 INT64 BOOL: Concat Expand EyeLike Flatten Gather GatherElements GatherND Identity If
  Loop OneHot Reshape ReverseSequence Shape Size Slice Split Squeeze Tile Transpose Trilu Unsqueeze Where
FP32 FP16 BF16 INT32 INT64 UINT8 BOOL: Cast CastLike
FP32 FP16 BF16 FP8 FP4 INT4 INT32 INT64 BOOL: Constant ConstantOfShape
FP32 FP16 BF16 FP8 INT32 INT64: Mean
FP32 FP16 BF16 INT8 INT32 INT64: Gelu
FP32 FP16 BF16 INT8 FP8: Attention
FP32 FP16 BF16 INT32: TensorScatter
FP32 FP16: BlackmanWindow DeformConv GridSample HammingWindow HannWindow Mish NonMaxSuppression NonZero
  RoiAlign
FP32: STFT
INT8 FP8 FP4 INT4: DequantizeLinear
BOOL: And Not Or Xor
N: AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad Compress
  ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool
  MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement
  OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty
  SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence
  StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
"""


def _parse(table: str) -> Dict[str, Optional[FrozenSet[str]]]:
    ops: Dict[str, Optional[FrozenSet[str]]] = {}
    types: Optional[FrozenSet[str]] = None
    for line in table.strip().splitlines():
        if ":" in line:
            head, line = line.split(":", 1)
            types = None if head.strip() == "N" else frozenset(head.split())
        for op in line.split():
            ops[op] = types
    return ops


# ONNX element type -> TensorRT type name of the tables
_TYPE_NAMES = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.BFLOAT16: "BF16",
               onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64", onnx.TensorProto.INT8: "INT8",
               onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.BOOL: "BOOL", onnx.TensorProto.DOUBLE: "DOUBLE",
               onnx.TensorProto.FLOAT8E4M3FN: "FP8", onnx.TensorProto.INT4: "INT4",
               onnx.TensorProto.FLOAT4E2M1: "FP4"}
# Ops whose data type is that of their output (their inputs are shapes or nothing).
_OUTPUT_TYPED = {"Constant", "ConstantOfShape", "RandomNormal", "RandomUniform", "EyeLike", "Range"}


# ------------------------------------------------------------------------------------- graph view
@dataclass
class GraphView:
    """What the restriction checks need: constants, tensor types, and the model opset."""

    model: onnx.ModelProto
    constants: Dict[str, onnx.TensorProto] = field(default_factory=dict)
    types: Dict[str, int] = field(default_factory=dict)
    shapes: Dict[str, Tuple] = field(default_factory=dict)
    opset: int = 0

    @classmethod
    def of(cls, model: onnx.ModelProto) -> "GraphView":
        inferred = onnx.shape_inference.infer_shapes(model)
        view = cls(model, opset=next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0))
        g = inferred.graph
        for init in g.initializer:
            view.constants[init.name] = init
            view.types[init.name] = init.data_type
            view.shapes[init.name] = tuple(init.dims)
        for node in g.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                view.constants[node.output[0]] = node.attribute[0].t
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            t = vi.type.tensor_type
            view.types.setdefault(vi.name, t.elem_type)
            if t.HasField("shape"):
                view.shapes.setdefault(vi.name, tuple(d.dim_value if d.HasField("dim_value") else None
                                                      for d in t.shape.dim))
        return view

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def value(self, name: str):
        return onnx.numpy_helper.to_array(self.constants[name])


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


# ---------------------------------------------------------------------------- restriction checks
Check = Callable[[onnx.NodeProto, GraphView], Optional[str]]


def _input_constant(index: int, what: str, wording: str = "must be an initializer") -> Check:
    def check(node: onnx.NodeProto, view: GraphView) -> Optional[str]:
        if len(node.input) > index and node.input[index] and not view.is_constant(node.input[index]):
            return f"`{what}` {wording}"
        return None
    return check


def _rank(allowed: Set[int], what: str) -> Check:
    def check(node: onnx.NodeProto, view: GraphView) -> Optional[str]:
        shape = view.shapes.get(node.input[0])
        if shape is not None and len(shape) not in allowed:
            return f"{what} (input has rank {len(shape)})"
        return None
    return check


def _no_indices(node: onnx.NodeProto, view: GraphView) -> Optional[str]:
    return "`Indices` output tensor unsupported" if len(node.output) > 1 and node.output[1] else None


def _unit_dilations(node: onnx.NodeProto, view: GraphView) -> Optional[str]:
    dil = _attr(node, "dilations")
    return "`dilations` must be empty or all ones" if dil and any(d != 1 for d in dil) else None


def _zero_point(index: int, what: str) -> Check:
    def check(node: onnx.NodeProto, view: GraphView) -> Optional[str]:
        if len(node.input) > index and node.input[index]:
            if not view.is_constant(node.input[index]) or view.value(node.input[index]).any():
                return f"`{what}` must be zero"
        return None
    return check


def _conv_transpose_prepad(node: onnx.NodeProto, view: GraphView) -> Optional[str]:
    """Begin padding implied by `output_shape` (auto_pad NOTSET) must not be negative."""
    out_shape = _attr(node, "output_shape")
    if not out_shape or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    x = view.shapes.get(node.input[0])
    w = view.shapes.get(node.input[1])
    if not x or not w or any(d is None for d in x[2:]):
        return "cannot verify ConvTranspose pre-padding (unknown spatial shape with `output_shape` set)"
    n = len(out_shape)
    strides = _attr(node, "strides") or [1] * n
    dil = _attr(node, "dilations") or [1] * n
    out_pad = _attr(node, "output_padding") or [0] * n
    for i in range(n):
        total = strides[i] * (x[2 + i] - 1) + out_pad[i] + (w[2 + i] - 1) * dil[i] + 1 - out_shape[i]
        begin = total - int(total / 2)  # ONNX: pads[start] = total - total / 2 (C++ division) for NOTSET
        if begin < 0:
            return "TensorRT does not support negative pre-padding in ConvTranspose (from `output_shape`)"
    return None


def _conv_dims(node: onnx.NodeProto, view: GraphView) -> Optional[str]:
    shape = view.shapes.get(node.input[1])
    return None if shape is None or len(shape) in (4, 5) else "2D or 3D convolutions only"


def _resize_modes(node: onnx.NodeProto, view: GraphView) -> Optional[str]:
    ok = {"coordinate_transformation_mode": {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn",
                                             "asymmetric", "align_corners"},
          "mode": {"nearest", "linear"},
          "nearest_mode": {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}}
    for name, allowed in ok.items():
        value = _attr(node, name)
        if value is not None and value.decode() not in allowed:
            return f"Resize {name}={value.decode()!r} unsupported (supported: {', '.join(sorted(allowed))})"
    return None


def _topk10(node: onnx.NodeProto, view: GraphView) -> Optional[str]:
    if _attr(node, "sorted", 1) != 1:
        return "`sorted` must be 1"
    if view.is_constant(node.input[1]) and int(view.value(node.input[1]).max()) >= 3840:
        return "`K` input must be less than 3840"
    return None


def _first_output_only(node: onnx.NodeProto, view: GraphView) -> Optional[str]:
    return "only the first output `Y` is supported" if any(node.output[1:]) else None


def _dropout10(node: onnx.NodeProto, view: GraphView) -> Optional[str]:
    if len(node.input) > 2 and node.input[2]:
        if not view.is_constant(node.input[2]) or bool(view.value(node.input[2])):
            return "`is_training` must be an initializer and evaluate to False"
    return None


def _scatternd10(node: onnx.NodeProto, view: GraphView) -> Optional[str]:
    red = _attr(node, "reduction", b"none")
    return "`reduction` other than `none` is not supported" if red not in (b"none", "none") else None


def _instancenorm85(node: onnx.NodeProto, view: GraphView) -> Optional[str]:
    if not all(view.is_constant(i) for i in node.input[1:3]):
        return "scales `scale` and biases `B` must be initializers"
    return _rank({3, 4, 5}, "input rank must be >=3 & <=5")(node, view)


def _reduce_axes10(node: onnx.NodeProto, view: GraphView) -> Optional[str]:
    return _input_constant(1, "axes")(node, view)


_COMMON: Dict[str, List[Check]] = {
    "AveragePool": [_rank({4, 5}, "2D or 3D pooling only")],
    "MaxPool": [_rank({4, 5}, "2D or 3D pooling only"), _no_indices],
    "ConvTranspose": [_conv_dims, _conv_transpose_prepad],
    "Conv": [_conv_dims],
    "CumSum": [_input_constant(1, "axis")],
    "DequantizeLinear": [_zero_point(2, "x_zero_point")],
    "QuantizeLinear": [_zero_point(2, "y_zero_point")],
    "Resize": [_resize_modes],
}

RESTRICTIONS: Dict[str, Dict[str, List[Check]]] = {
    "trt8.5": {
        **_COMMON,
        "Slice": [_input_constant(3, "axes")],
        "Squeeze": [_input_constant(1, "axes")],
        "Unsqueeze": [_input_constant(1, "axes", "must be a constant tensor")],
        "TopK": [_input_constant(1, "K")],
        "InstanceNormalization": [_instancenorm85],
    },
    "trt10": {
        **_COMMON,
        "AveragePool": _COMMON["AveragePool"] + [_unit_dilations],
        "MaxPool": _COMMON["MaxPool"] + [_unit_dilations],
        "LpPool": [_unit_dilations],
        "CumSum": [_input_constant(1, "axis", "must be a build-time constant")],
        "OneHot": [_input_constant(1, "depth", "must be a build-time constant")],
        "Squeeze": [_input_constant(1, "axes", "must be resolvable to a constant")],
        "Unsqueeze": [_input_constant(1, "axes", "must be resolvable to a constant")],
        "TopK": [_topk10],
        "Dropout": [_dropout10],
        "ScatterND": [_scatternd10],
        "LayerNormalization": [_first_output_only],
        "STFT": [_input_constant(1, "frame_step"), _input_constant(2, "window")],
        "GridSample": [_rank({4}, "input must be 4D")],
        **{op: [_reduce_axes10] for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                                           "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
                                           "ReduceSumSquare")},
    },
}


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    opsets: Tuple[int, int]
    ops: Dict[str, Optional[FrozenSet[str]]]
    casts_down: Dict[str, str]  # types the parser converts before the type check applies


TARGETS: Dict[str, Target] = {
    "trt8.5": Target("trt8.5", "TensorRT 8.5 (JetPack 5)", (1, 17), _parse(_TRT85),
                     {"INT64": "INT32", "DOUBLE": "FP32"}),
    "trt10": Target("trt10", "TensorRT 10.x (JetPack 6; table of 10.15)", (9, 24), _parse(_TRT10),
                    {"DOUBLE": "FP32"}),
}


@dataclass(frozen=True)
class Violation:
    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"{self.node or '<unnamed>'} ({self.op}): {self.reason}"


def _data_type(node: onnx.NodeProto, view: GraphView) -> Optional[int]:
    names = list(node.output[:1]) if node.op_type in _OUTPUT_TYPED else [i for i in node.input if i][:1]
    return view.types.get(names[0]) if names else None


def check_model(model: onnx.ModelProto, target: str) -> List[Violation]:
    """Every node against `target`'s support table, documented types and restrictions."""
    if target not in TARGETS:
        from edge_digr.core.errors import UserError

        raise UserError(f"unknown TensorRT target {target!r}; choose one of: {', '.join(TARGETS)}")
    spec = TARGETS[target]
    view = GraphView.of(model)
    out: List[Violation] = []
    lo, hi = spec.opsets
    if not lo <= view.opset <= hi:
        out.append(Violation("<model>", "opset", f"opset {view.opset} outside {spec.title}'s range {lo}-{hi}"))
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            out.append(Violation(node.name, node.op_type, f"custom domain {node.domain!r} needs a plugin"))
            continue
        if node.op_type not in spec.ops:
            out.append(Violation(node.name, node.op_type, f"not in {spec.title}'s ONNX operator list"))
            continue
        types = spec.ops[node.op_type]
        if types is None:
            out.append(Violation(node.name, node.op_type, f"unsupported by {spec.title}"))
            continue
        dtype = _data_type(node, view)
        if dtype:
            name = _TYPE_NAMES.get(dtype, onnx.TensorProto.DataType.Name(dtype))
            if spec.casts_down.get(name, name) not in types:
                out.append(Violation(node.name, node.op_type,
                                     f"type {name} not supported (documented: {', '.join(sorted(types))})"))
        for check in RESTRICTIONS[target].get(node.op_type, []):
            reason = check(node, view)
            if reason:
                out.append(Violation(node.name, node.op_type, reason))
    return out
