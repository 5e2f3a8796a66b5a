#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with hoiguide (editable) and the
# extras the tests and the demo use. CPU only. Safe to re-run.
#   bash scripts/setup.sh            # creates .venv next to this repository's pyproject.toml
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# 1. torch first, pinned: an unpinned torch requirement would pull a multi-GB CUDA build.
#    Never install torchvision (no CPU build exists for this torch; it would replace torch).
$PIP install -q torch==2.13.0
# 2. hy3dgen without its app dependencies (gradio, rembg, pymeshlab, ...): only the shape
#    generator's classes are used; hoiguide[hunyuan-slim] lists what they need.
$PIP install -q --no-deps hy3dgen==2.0.2
# 3. hoiguide itself with the extras the tests exercise.
$PIP install -q -e ".[hunyuan-slim,open3d,bench,synth,dev]"
.venv/bin/python - <<'PY'
import torch, hoiguide
assert torch.__version__.startswith("2.13.0"), f"unexpected torch {torch.__version__}"
try:
    import torchvision  # noqa: F401
    raise SystemExit("torchvision is installed: remove it (pip uninstall torchvision)")
except ImportError:
    pass
print(f"hoiguide {hoiguide.__version__} ready (torch {torch.__version__})")
PY
