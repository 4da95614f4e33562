"""The torch-free runtime: runners (ONNX Runtime, TensorRT), feeds, saliency overlays and the run loop.

Imports numpy and the core only (never the training code, never calibration); onnxruntime, tensorrt, pycuda
and carla load when first used, TensorRT and pycuda only through `edge_digr.runtime.trt_backend`.
"""
from edge_digr.runtime.runners import OnnxRuntimeRunner, Runner, open_runner

__all__ = ["Runner", "OnnxRuntimeRunner", "open_runner"]
