#!/usr/bin/env bash
# Type-checks `triad` with the `cuda` feature on a machine without a GPU or a system CUDA
# toolkit: installs NVIDIA's CUDA 13.4 compiler wheels from PyPI into a venv, points candle's
# build (cudarc, candle-kernels via cudaforge/nvcc) at it, and runs `cargo check`.
#
# CUDA 13 wheels are used because the CUDA 12 `nvidia-cuda-nvcc-cu12` wheel ships only ptxas
# (no nvcc driver, no cicc); the CUDA 13 wheels install a complete tree under nvidia/cu13.
# cudarc 0.19.10 knows CUDA versions up to 13.4; the CCCL pin is the one the
# `cuda-toolkit==13.4.3` meta-package names.
#
# Environment overrides:
#   TRIAD_CUDA_VENV      venv location        (default ~/.cache/triad/cuda-toolkit)
#   CARGO_TARGET_DIR     cargo target dir     (default ~/.cache/triad/cuda-target: the
#                        feature rebuilds candle and all above it, so it gets a folder of its own)
#   CUDA_COMPUTE_CAP     GPU arch for nvcc    (default 80)
#   CARGO_BUILD_JOBS     cargo jobs           (default 1)
#   CUDAFORGE_THREADS    parallel nvcc jobs   (default 1)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TRIAD_CUDA_VENV:-$HOME/.cache/triad/cuda-toolkit}"

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet \
    'nvidia-cuda-nvcc==13.4.92' \
    'nvidia-nvvm==13.4.92' \
    'nvidia-cuda-runtime==13.4.92' \
    'nvidia-cuda-crt==13.4.92' \
    'nvidia-cuda-cccl==13.3.4.3.1'

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cuda="$site/nvidia/cu13"
[[ -x "$cuda/bin/nvcc" ]] || { echo "nvcc not found at $cuda/bin/nvcc" >&2; exit 1; }
# The wheel ships only the versioned runtime library; give the linker the plain name too.
ln -sf libcudart.so.13 "$cuda/lib/libcudart.so"

export CUDA_HOME="$cuda" CUDA_PATH="$cuda" NVCC="$cuda/bin/nvcc" PATH="$cuda/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/triad/cuda-target}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-1}"

"$NVCC" --version | tail -n 2
cd "$repo_root"
start=$(date +%s)
nice -n 19 cargo check -p triad --features cuda "$@"
echo "cargo check -p triad --features cuda: ok in $(( $(date +%s) - start ))s"
