#!/usr/bin/env bash
# Install PyTorch (CPU use; PyPI only has the CUDA build, about 4.5 GB) and TRL into a venv in
# triad's cache, once, for the side-by-side benchmarks: `triad bench train/generate/grpo` find it
# there.
set -euo pipefail
venv="${TRIAD_CACHE:-$HOME/.cache/triad}/torch-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, trl" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch numpy trl
fi
"$venv/bin/python" -c "import torch, trl; print('torch', torch.__version__, 'trl', trl.__version__, 'in', '$venv')"
