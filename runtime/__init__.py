"""The torch-free runtime: runners (ONNX Runtime, TensorRT), feeds, saliency overlays and the run loop.

Imports numpy and the manifest only; onnxruntime, tensorrt, pycuda and carla load when first used.
"""
from edge_digr.runtime.runners import OnnxRuntimeRunner, Runner, open_runner

__all__ = ["Runner", "OnnxRuntimeRunner", "open_runner"]
