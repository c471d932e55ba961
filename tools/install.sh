#!/usr/bin/env bash
# Sets up the project's environment in ./.venv: torch, the package with its [mm,dev,deploy] extras, and mmcv with
# compiled ops built once per machine from its sdist (cached outside the checkout). Idempotent: the Makefile
# runs it only when setup.py or this script changed, and every step skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
MMCV_VERSION=2.1.0
CACHE=${VISIONATTN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/visionattn}

log() { printf '[install] %4ds %s\n' "$SECONDS" "$*"; }  # seconds since the start, for the README's estimates

[ -x $VENV/bin/python ] || { log "creating $VENV"; "$PYTHON" -m venv $VENV; }
PY=$PWD/$VENV/bin/python
pip_install() { $PY -m pip install --disable-pip-version-check -q "$@"; }

# setuptools < 82 still ships pkg_resources, which mmengine and mmcv's build need.
pip_install "setuptools==80.9.0" wheel ninja
$PY -c "import torch, torchvision" 2>/dev/null || { log "installing $TORCH_SPEC"; pip_install $TORCH_SPEC; }

# natten builds a pure-Python package without CUDA; its isolated build would pull another torch.
$PY -c "import natten" 2>/dev/null || { log "installing natten"; pip_install --no-build-isolation "natten==0.21.7"; }

# mmcv with compiled ops: no wheel exists for this torch, so build one from the sdist, once per machine.
tag=$($PY -c "import sys, torch; print(f'torch{torch.__version__.split(\"+\")[0]}-cp{sys.version_info[0]}{sys.version_info[1]}')")
WHEELS=$CACHE/wheels/$tag
if ! ls "$WHEELS"/mmcv-$MMCV_VERSION-*.whl >/dev/null 2>&1; then
  log "building mmcv $MMCV_VERSION with ops (about 9 minutes on 2 cores, once per machine) into $WHEELS"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  pip_install "mmengine==0.10.7" addict packaging pyyaml yapf opencv-python
  $PY -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: -d "$work" "mmcv==$MMCV_VERSION"
  tar -xzf "$work"/mmcv-$MMCV_VERSION.tar.gz -C "$work"
  # torch >= 2.10 headers need C++20; mmcv's setup.py pins an older standard.
  sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$work"/mmcv-$MMCV_VERSION/setup.py
  mkdir -p "$WHEELS"
  (cd "$work"/mmcv-$MMCV_VERSION && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    "$PY" -m pip wheel --disable-pip-version-check -q --no-build-isolation --no-deps -w "$work/dist" .)
  mv "$work"/dist/mmcv-*.whl "$WHEELS"/
  log "mmcv wheel built"
fi

log "installing visionattn[mm,dev,deploy]"
pip_install --find-links "$WHEELS" --only-binary mmcv -e ".[mm,dev,deploy]"
$PY -c "import mmcv.ops, mmseg, mmdet, mmpretrain, visionattn" 
log "done"
