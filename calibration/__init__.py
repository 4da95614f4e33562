"""INT8 precision for the fused logits+saliency graph: ONNX Runtime QDQ quantization with its layer search,
the fidelity report against fp32, and the engine selftest. The calibration-frame format is the core's
(`edge_digr.core.frames`, re-exported here); the TensorRT entropy calibrator is in the runtime's one
TensorRT backend (`edge_digr.runtime.trt_backend`).

Torch-free (it runs on the Jetson): numpy, onnx and onnxruntime; imports the core and the runtime only.
"""
from edge_digr.calibration.fidelity import Fidelity, compare_outputs, fidelity_table
from edge_digr.core.frames import Frames, load_frames, model_inputs, save_frames

__all__ = ["Frames", "load_frames", "save_frames", "model_inputs", "Fidelity", "compare_outputs",
           "fidelity_table"]
