"""edge-digr: interpretable RL policies with fused saliency, from the desktop to the Jetson.

The base install is the Jetson install: numpy, onnxruntime, click and the small runtime helpers, no torch.
"""
from setuptools import setup

ENVS = [
    "gymnasium==1.4.0",
    "minigrid==3.2.0",
    "ale-py==0.12.1",
    "opencv-python-headless>=4.8",
    "box2d==2.3.10",
]
TRAIN = ENVS + [
    # Pinned exactly: an unpinned torch pulls several GB of CUDA wheels on a CPU-only machine.
    "torch==2.13.0",
    "stable-baselines3==2.9.2",
    "onnx>=1.16",
    "matplotlib>=3.8",
    "scipy>=1.11",
]

setup(
    name="edge-digr",
    version="0.1.0",
    description="DIGR-distilled RL policies exported as fused logits+saliency graphs for ONNX Runtime and TensorRT",
    python_requires=">=3.8",
    packages=["edge_digr", "edge_digr.core", "edge_digr.experts", "edge_digr.export", "edge_digr.runtime",
              "edge_digr.calibration"],
    package_dir={
        "edge_digr": "edge_digr",  # also holds edge_digr.core (torch-free) and edge_digr.experts
        "edge_digr.export": "export",
        "edge_digr.runtime": "runtime",
        "edge_digr.calibration": "calibration",
    },
    install_requires=[
        "numpy>=1.21",
        "onnxruntime>=1.14",
        "click>=8.0",
        "tqdm>=4.60",
        "pillow>=9.0",
        "imageio>=2.28",
        "imageio-ffmpeg>=0.4.8",
    ],
    extras_require={
        "envs": ENVS,
        "train": TRAIN,
        # The CARLA client runs the reconnect tests against real sockets; its wheels are x86_64 Linux/Windows.
        "test": ["pytest>=7", "hypothesis>=6.80", "onnx>=1.16", "ray==2.60.0",
                 "carla==0.9.16; platform_machine == 'x86_64' and platform_system != 'Darwin'"],
        "trt": ["tensorrt", "pycuda"],
        "calibrate": ["onnx>=1.14"],  # INT8 QDQ quantization (onnxruntime.quantization needs onnx)
        "carla": ["carla==0.9.16"],
        # Scale-out: `label --ray` and the study scripts' --ray (docs/scale-out.md); never on the Jetson.
        "ray": ["ray[client]==2.60.0"],  # [client]: grpcio, for ray://HOST:10001 addresses
        "profile": ["onnx>=1.14", "matplotlib>=3.5"],  # forward-only graph derivation, latency CDF plot
    },
    entry_points={"console_scripts": ["edge-digr=edge_digr.cli:main"]},
)
