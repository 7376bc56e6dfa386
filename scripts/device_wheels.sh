#!/usr/bin/env bash
# Gather here, into .device-wheels/ (git-ignored), what a GPU machine of the device tool lacks to run
# scripts/device_check.sh: those machines carry Python 3.12, torch 2.11 and torchvision 0.26, nvcc and
# ninja, and reach no network. The versions are the ones installed in this checkout's .venv (make setup
# detectron2 mmdet), where the suite's tests pass.
#
#   scripts/device_wheels.sh [--python-version 3.12] [--dest .device-wheels] [--mmcv-cuda PYTHON]
#
# What it gathers:
#   - cp312 manylinux wheels (or pure-Python ones) of the dependencies the GPU image does not carry:
#     pydantic and its core, pycocotools, shapely, ...; sdist-only pure-Python packages are built into
#     py3-none-any wheels here;
#   - detectron2 v0.6, built here from PyPI's pb1-detectron2 sdist with scripts/install_detectron2.py's
#     patch (pure Python), and its pure-Python dependencies;
#   - mmengine and mmdet (pure Python) and mmcv's sdist (its ops are compiled on the GPU machine);
#   - with --mmcv-cuda PYTHON (an interpreter like the device's: CPython 3.12 with torch 2.11 from PyPI,
#     e.g. .venvs/device-py312/bin/python): mmcv's wheel with CUDA ops for sm_90, compiled here (about
#     25 min on 2 cores), so the GPU machine spends none of its minutes on it;
# then checks with scripts/wheel_closure.py that nothing they need is missing and that the folder stays
# under 60 MiB (the device tool carries at most 64 MiB in all). Running it again starts from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."

PYVER=3.12
DEST=.device-wheels
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PYVER=$2; shift 2 ;;
    --dest) DEST=$2; shift 2 ;;
    --mmcv-cuda) MMCV_PYTHON=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "device_wheels.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-.venv/bin/python}
MMCV_PYTHON=${MMCV_PYTHON:-}
# an mmcv wheel already built (by an earlier --mmcv-cuda) is kept
KEEP_MMCV=$(ls "$DEST"/mmcv-*.whl 2>/dev/null | head -1 || true)
if ! "$PY" -c "import torch, detectron2, mmdet, mmengine" 2>/dev/null; then
  echo "device_wheels.sh: $PY lacks torch, detectron2 or mmdet; run 'make setup detectron2 mmdet' first" >&2
  exit 2
fi

# The dependencies the GPU image lacks, by distribution name: mrcnn-bench's own (pyproject.toml),
# detectron2's (scripts/install_detectron2.py), mmengine's, mmdet's and mmcv's pure-Python ones, and Holistic
# Trace Analysis (the trace step's GPU idle time) with the two of its own that it imports.
NAMES=(
  pydantic pydantic-core annotated-types typing-inspection pycocotools dockerfile-parse orjson
  yacs fvcore iopath termcolor omegaconf hydra-core antlr4-python3-runtime
  mmengine mmdet shapely terminaltables addict yapf platformdirs
  holistictraceanalysis plotly pydot
)
pins=()
for name in "${NAMES[@]}"; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || {
    echo "device_wheels.sh: $name is not installed in $PY" >&2; exit 2; }
  pins+=("$name==$version")
done

rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp"
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
ABI=cp${PYVER/./}
echo "== wheels for CPython $PYVER: ${pins[*]}"
for pin in "${pins[@]}"; do
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
       --abi "$ABI" --abi abi3 --abi none "${PLATFORMS[@]}" -d "$DEST.tmp" "$pin" 2>/dev/null; then
    # No wheel on PyPI (fvcore, antlr4-python3-runtime, ...): build one here; it must come out pure Python.
    echo "   $pin: no wheel for cp$PYVER on PyPI, building it here"
    "$PY" -m pip wheel -q --no-deps --no-binary=:all: -w "$DEST.tmp" "$pin"
  fi
done
for whl in "$DEST.tmp"/*.whl; do
  case "$whl" in
    *-none-any.whl|*-"$ABI"-*.whl|*-abi3-*.whl) ;;
    *) echo "device_wheels.sh: $whl does not run on CPython $PYVER" >&2; exit 1 ;;
  esac
done

echo "== detectron2 (pb1-detectron2 0.6, patched, pure Python)"
"$PY" scripts/install_detectron2.py --wheel-dir "$DEST.tmp"

echo "== mmcv's sdist (compiled on the GPU machine by scripts/install_mmdet.py --sdist ... --wheel-dir ...)"
"$PY" - "$DEST.tmp" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "scripts")
from install_mmdet import MMCV_SHA256, MMCV_VERSION
from pypi_sdist import fetch_sdist
print(fetch_sdist("mmcv", MMCV_VERSION, MMCV_SHA256, Path(sys.argv[1])))
EOF

if [ -n "$MMCV_PYTHON" ]; then
  echo "== mmcv's wheel with CUDA ops for sm_90, built with $MMCV_PYTHON"
  "$MMCV_PYTHON" -c "import sys, torch; assert sys.version_info[:2] == tuple(map(int, '$PYVER'.split('.'))), sys.version; print('torch', torch.__version__)"
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} \
    "$MMCV_PYTHON" scripts/install_mmdet.py --sdist "$DEST.tmp/mmcv-2.1.0.tar.gz" --wheel-dir "$DEST.tmp" --cuda on
  rm -f "$DEST.tmp/mmcv-build.log"
elif [ -n "$KEEP_MMCV" ]; then
  echo "== keeping the mmcv wheel built earlier: $KEEP_MMCV"
  cp "$KEEP_MMCV" "$DEST.tmp/"
fi

"$PY" scripts/wheel_closure.py "$DEST.tmp" --python "$PYVER"
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
du -sh "$DEST"
echo "device_wheels.sh: $DEST is ready; scripts/device_check.sh installs it on the GPU machine (carry: [\"$DEST\"])"
