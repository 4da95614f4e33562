"""INT8 precision for the fused logits+saliency graph: calibration frames, ONNX Runtime QDQ quantization,
the TensorRT 8.5 entropy calibrator and its cache, and the fidelity report against fp32.

Torch-free (it runs on the Jetson): numpy, onnx and onnxruntime; tensorrt and pycuda load when first used.
"""
from edge_digr.calibration.fidelity import Fidelity, compare_outputs, fidelity_table
from edge_digr.calibration.frames import Frames, load_frames, model_inputs, save_frames

__all__ = ["Frames", "load_frames", "save_frames", "model_inputs", "Fidelity", "compare_outputs",
           "fidelity_table"]
