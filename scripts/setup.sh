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
# 3. mediapipe 0.10.21 (MediaPipeHandEstimator: offline hand keypoints, models in the wheel)
#    without its pins: it declares numpy < 2 but runs with numpy 2; hoiguide[mediapipe] lists
#    what it imports (protobuf < 5).
$PIP install -q --no-deps mediapipe==0.10.21
# 4. hoiguide itself with the extras the tests exercise (app: Gradio; batch: Ray).
$PIP install -q -e ".[hunyuan-slim,open3d,bench,synth,app,batch,mediapipe,video,dev]"
# 5. Debian's Chromium for the browser test of the web app (tests/test_app.py drives it with
#    playwright; playwright's own browser download cannot work here). Root + apt-get only;
#    without it that one test is skipped.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
      >/dev/null 2>&1; then
    echo "note: apt-get install chromium failed; tests/test_app.py's browser test will be skipped"
  fi
fi
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
