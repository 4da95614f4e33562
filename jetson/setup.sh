#!/usr/bin/env bash
# Install edge-digr's runtime on a Jetson with JetPack 5.1 (L4T R35) or JetPack 6.x (L4T R36).
#
#   bash jetson/setup.sh [--src DIR] [--venv DIR] [--extras LIST] [--jetpack 5|6] [--no-apt] [--no-gpu-check]
#
# What it does, in order:
#   1. detects the JetPack generation from /etc/nv_tegra_release (or --jetpack);
#   2. apt: the system TensorRT Python bindings (python3-libnvinfer; there are no aarch64 TensorRT
#      wheels for Jetson on PyPI), the CUDA toolkit headers and nvcc that the pycuda build needs, and
#      python3-venv/-dev;
#   3. a virtual environment created with --system-site-packages, so the system `tensorrt` module is
#      importable from it;
#   4. pycuda, built from source against /usr/local/cuda;
#   5. the base edge-digr package (numpy, onnxruntime, click: no torch) with EXTRAS (default "profile":
#      onnx + matplotlib for `edge-digr profile --plot`), then a torch-free import check that also opens
#      the GPU, unless --no-gpu-check (a `docker build` has no GPU: the driver is mounted at run time).
#
# The [trt] extra is deliberately not installed here: it names the PyPI tensorrt/pycuda packages,
# which are for x86_64 desktops.
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV=/opt/edge-digr/venv
EXTRAS=profile
JETPACK=""
APT=1
GPU_CHECK=1

usage() { sed -n '2,19p' "$0"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --src) SRC="$2"; shift 2 ;;
    --venv) VENV="$2"; shift 2 ;;
    --extras) EXTRAS="$2"; shift 2 ;;
    --jetpack) JETPACK="$2"; shift 2 ;;
    --no-apt) APT=0; shift ;;
    --no-gpu-check) GPU_CHECK=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "setup.sh: unknown option $1" >&2; usage 2 ;;
  esac
done

if [ -z "$JETPACK" ]; then
  release=$(head -n 1 /etc/nv_tegra_release 2>/dev/null || true)
  case "$release" in
    *R35*) JETPACK=5 ;;
    *R36*) JETPACK=6 ;;
    *) echo "setup.sh: not a JetPack 5.1 / 6.x system (/etc/nv_tegra_release: '${release:-missing}');" \
            "pass --jetpack 5 or --jetpack 6 to override" >&2; exit 1 ;;
  esac
fi
case "$JETPACK" in
  5) echo "JetPack 5.1 (L4T R35): Python 3.8, CUDA 11.4, TensorRT 8.5" ;;
  6) echo "JetPack 6.x (L4T R36): Python 3.10, CUDA 12.x, TensorRT 8.6 (6.0) or 10.3 (6.1, 6.2)" ;;
  *) echo "setup.sh: --jetpack must be 5 or 6, got '$JETPACK'" >&2; exit 2 ;;
esac
[ -f "$SRC/setup.py" ] || { echo "setup.sh: $SRC is not the edge-digr source folder (no setup.py)" >&2; exit 2; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

if [ "$APT" -eq 1 ]; then
  $SUDO apt-get update
  # python3-libnvinfer: TensorRT's Python bindings for the system python3.
  # nvidia-cuda-dev: CUDA headers, libraries and nvcc (pycuda's build needs them).
  $SUDO apt-get install -y --no-install-recommends \
    python3-libnvinfer python3-venv python3-dev python3-pip build-essential nvidia-cuda-dev
fi

CUDA_ROOT=${CUDA_ROOT:-/usr/local/cuda}
[ -x "$CUDA_ROOT/bin/nvcc" ] || { echo "setup.sh: $CUDA_ROOT/bin/nvcc not found; install the CUDA toolkit" \
                                        "(apt-get install nvidia-cuda-dev) or set CUDA_ROOT" >&2; exit 1; }
export CUDA_ROOT PATH="$CUDA_ROOT/bin:$PATH" CPATH="$CUDA_ROOT/include${CPATH:+:$CPATH}"
# lib64/stubs holds a link-time libcuda for building pycuda where the driver is not mounted (containers).
export LIBRARY_PATH="$CUDA_ROOT/lib64:$CUDA_ROOT/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"

if [ "$GPU_CHECK" -eq 1 ]; then
  /usr/bin/python3 -c "import tensorrt" 2>/dev/null || {
    echo "setup.sh: the system python3 cannot import tensorrt; install python3-libnvinfer (JetPack)" >&2; exit 1; }
fi

if [ ! -x "$VENV/bin/python" ]; then
  $SUDO mkdir -p "$(dirname "$VENV")"
  $SUDO chown "$(id -u):$(id -g)" "$(dirname "$VENV")"
  # --system-site-packages: the venv sees the apt-installed tensorrt module.
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
"$VENV/bin/python" -m pip install --upgrade pip wheel setuptools
"$VENV/bin/python" -m pip install "pycuda>=2022.1"
"$VENV/bin/python" -m pip install "$SRC${EXTRAS:+[$EXTRAS]}"

"$VENV/bin/python" - "$GPU_CHECK" <<'PY'
import sys
sys.modules["torch"] = None  # the device install must not need torch
import edge_digr
import edge_digr.runtime

line = f"edge-digr {edge_digr.__version__}, python {sys.version.split()[0]}"
if sys.argv[1] == "1":
    import pycuda.driver as cuda
    import tensorrt

    cuda.init()
    line += f", TensorRT {tensorrt.__version__}, GPU {cuda.Device(0).name()}"
print(line)
PY
echo "installed: $VENV/bin/edge-digr"
