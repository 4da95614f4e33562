"""INT8 QDQ quantization of the fused graph with onnxruntime.quantization, in the form TensorRT consumes.

TensorRT's explicit quantization takes symmetric INT8 only (zero point 0; weights in [-127, 127]), and
TensorRT 8.5 dequantizes INT8 tensors only, so biases stay fp32, and weights keep the QAT-export form
float initializer -> QuantizeLinear -> DequantizeLinear.

Q/DQ placement follows TensorRT's recommendation: quantize the inputs of the weighted operations (Conv,
ConvTranspose, Gemm, MatMul) and not their outputs. Everything between them — ReLU, the ReLU masks the
backward reads, a mission gate, the 1/255 scale, the logits and what the saliency target computes from
them — stays fp32; TensorRT still runs the weighted layers in INT8 and fuses the elementwise ops into
them. (Quantizing the outputs too, ORT's default, put every pre-activation on an INT8 grid and dropped
the trained minigrid-fetch student's saliency Pearson r from 0.98 to 0.89 and its action agreement from
99 % to 88 %: docs/RESULTS.md.)

Weights are quantized per output channel where the quantizer manages it; if per-channel quantization
fails on this graph (an initializer shared by a forward Gemm and a backward MatMul, which want different
channel axes: export with `--separate-backward-weights`), the model is quantized per tensor and the reason
is recorded. The backward (gradient) path, whose nodes carry the exporter's "/vjp/" scope, can be kept in
fp32 when the saliency must stay closer to fp32, and so can named forward layers (mixed precision: TensorRT
runs a layer without Q/DQ on its inputs in fp16/fp32): `edge-digr calibrate` finds them by sensitivity.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from edge_digr.core.frames import Frames
from edge_digr.core.errors import UserError, missing_dependency
from edge_digr.core.fileio import PathLike, atomic_path, sha256_file
from edge_digr.core.fused_graph import backward_nodes
from edge_digr.core.manifest import METADATA_KEY, Manifest

METHODS = ("minmax", "entropy", "percentile")
WEIGHTED_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul"]


@dataclass(frozen=True)
class QuantizeConfig:
    per_channel: bool = True  # falls back to per-tensor if the quantizer fails on the graph
    method: str = "minmax"  # activation range calibration: minmax | entropy | percentile
    keep_backward: bool = False  # leave the gradient (saliency) path in fp32
    batch_size: int = 16  # frames per calibration batch
    fp32_layers: Tuple[str, ...] = ()  # forward weighted nodes left unquantized (see forward_weighted_nodes)


@dataclass
class QuantizeResult:
    path: str
    per_channel: bool
    method: str
    keep_backward: bool
    excluded_nodes: int
    fp32_layers: List[str]
    dequantize_nodes: int  # DequantizeLinear nodes in the QDQ graph
    calibration_frames: int
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def _reader(frames: Frames, batch_size: int):
    from onnxruntime.quantization import CalibrationDataReader

    class FramesReader(CalibrationDataReader):
        """Feeds the calibration frames to the quantizer batch by batch (rewindable)."""

        def __init__(self) -> None:
            self._it: Iterator[Dict[str, np.ndarray]] = iter(())
            self.rewind()

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = frames.batches(batch_size)

    return FramesReader()


def _onnx():
    try:
        import onnx
    except ImportError as exc:
        raise missing_dependency("onnx", "calibrate", "INT8 quantization") from exc
    return onnx


def load_model(onnx_path: PathLike):
    onnx = _onnx()
    try:
        return onnx.load(str(onnx_path))
    except Exception as exc:  # onnx raises DecodeError / OSError / ValueError for unreadable files
        raise UserError(f"{onnx_path} is not a readable ONNX model ({str(exc).splitlines()[0][:160]})") from None


def _manifest_of(model, onnx_path: PathLike) -> Manifest:
    meta = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in meta:
        raise UserError(f"{onnx_path} has no edge-digr manifest; export it with `edge-digr export`")
    return Manifest.from_json(meta[METADATA_KEY], f"the manifest in {onnx_path}")


def is_quantized(model) -> bool:
    """Whether a graph already holds Q/DQ nodes (explicit quantization)."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def forward_weighted_nodes(model) -> List[str]:
    """The forward pass's quantizable layers (Conv/Gemm/MatMul outside the /vjp/ scope), in graph order."""
    backward = set(backward_nodes(model))
    return [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS and n.name not in backward]


def check_fp32_layers(model, names, onnx_path: PathLike) -> None:
    forward = forward_weighted_nodes(model)
    unknown = sorted(set(names) - set(forward))
    if unknown:
        raise UserError(f"--fp32-layers names no forward layer of {onnx_path}: {', '.join(unknown)}; "
                        f"choose from {', '.join(forward)}")


def backward_node_names(model) -> List[str]:
    """The gradient-path nodes of a fused graph, as the exporter names them."""
    names = list(backward_nodes(model))
    if not names:
        raise UserError("the graph has no backward (/vjp/) nodes to keep in fp32; "
                        "is it a fused logits+saliency graph from `edge-digr export`?")
    return names


def _quantize_static(src: Path, dst: Path, frames: Frames, cfg: QuantizeConfig, per_channel: bool,
                     exclude: List[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.method]
    quantize_static(
        str(src), str(dst), _reader(frames, cfg.batch_size),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        op_types_to_quantize=WEIGHTED_OPS,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude or None,
        calibrate_method=method,
        extra_options={
            "ActivationSymmetric": True,  # TensorRT: zero point 0
            "WeightSymmetric": True,  # weights in [-127, 127]
            "QuantizeBias": False,  # TensorRT 8.5 cannot dequantize the INT32 bias ORT would make
            "AddQDQPairToWeight": True,  # float weight -> Q -> DQ, the form TensorRT 8.5 parses
            "DedicatedQDQPair": True,  # one Q/DQ pair per consumer, as TensorRT's fusions expect
            "OpTypesToExcludeOutputQuantization": WEIGHTED_OPS,  # inputs only (see the module docstring)
        },
    )


@contextlib.contextmanager
def _quiet_root_logger():
    # The ORT quantizer logs every skipped tensor on the root logger: keep the CLI output readable.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _smoke_test(path: Path, frames: Frames) -> Optional[str]:
    """Why the quantized model is unusable (fails to load, or non-finite outputs), or None if it runs."""
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        outs = session.run(None, next(frames.batches(4)))
    except Exception as exc:  # any load/run failure means this variant is unusable
        return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    if not all(np.isfinite(o).all() for o in outs):
        return "non-finite outputs"
    return None


def quantize_qdq(onnx_path: PathLike, calib: Frames, out_path: PathLike,
                 cfg: QuantizeConfig = QuantizeConfig()) -> QuantizeResult:
    """Write an INT8 QDQ copy of a fused graph, calibrated on `calib`, with its manifest marked int8."""
    onnx = _onnx()
    if cfg.method not in METHODS:
        raise UserError(f"unknown calibration method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    model = load_model(onnx_path)
    manifest = _manifest_of(model, onnx_path)
    if is_quantized(model):
        raise UserError(f"{onnx_path} is already quantized (it holds Q/DQ nodes); calibrate the fp32 export")
    exclude = backward_node_names(model) if cfg.keep_backward else []
    check_fp32_layers(model, cfg.fp32_layers, onnx_path)
    exclude += list(cfg.fp32_layers)
    notes: List[str] = []
    with _quiet_root_logger(), atomic_path(out_path) as tmp:
        per_channel = cfg.per_channel
        try:
            _quantize_static(Path(onnx_path), tmp, calib, cfg, per_channel, exclude)
            problem = _smoke_test(tmp, calib)
        except Exception as exc:  # the quantizer raises assorted errors on graphs it can't do per-channel
            if not per_channel:
                raise UserError(f"onnxruntime could not quantize {onnx_path}: {str(exc).splitlines()[0][:200]}") \
                    from None
            problem = str(exc).strip().splitlines()[0][:200]
        if problem and per_channel:
            notes.append(f"per-channel quantization failed ({problem}); quantized per tensor instead")
            per_channel = False
            _quantize_static(Path(onnx_path), tmp, calib, cfg, per_channel, exclude)
            problem = _smoke_test(tmp, calib)
        if problem:
            raise UserError(f"the INT8 model made from {onnx_path} does not run ({problem})")
        qmodel = onnx.load(str(tmp))
        info = {"method": cfg.method, "per_channel": per_channel, "keep_backward": cfg.keep_backward,
                "fp32_layers": list(cfg.fp32_layers),
                "calibration_frames": len(calib), "format": "QDQ", "symmetric": True}
        manifest.precision = "int8"
        manifest.source = Path(onnx_path).name
        manifest.source_sha256 = sha256_file(onnx_path)
        manifest.extra = {**manifest.extra, "quantization": info}
        del qmodel.metadata_props[:]
        for prop in model.metadata_props:
            if prop.key != METADATA_KEY:
                qmodel.metadata_props.add(key=prop.key, value=prop.value)
        qmodel.metadata_props.add(key=METADATA_KEY, value=manifest.to_json())
        onnx.save(qmodel, str(tmp))
    dequantize = sum(n.op_type == "DequantizeLinear" for n in qmodel.graph.node)
    return QuantizeResult(path=str(out_path), per_channel=per_channel, method=cfg.method,
                          keep_backward=cfg.keep_backward, excluded_nodes=len(exclude),
                          fp32_layers=list(cfg.fp32_layers),
                          dequantize_nodes=dequantize, calibration_frames=len(calib), notes=notes)


