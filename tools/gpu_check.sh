#!/usr/bin/env bash
# The first command of any session that has a CUDA GPU (5 minutes in all, run from the repository root):
#   1. python -m visionattn.check --quick --strict (every op backend against its oracle in fp32/fp16/bf16, forward
#      and gradients; every model family forward+backward under bf16 autocast at 224 and 192x256 against the
#      reference backend; short timings), 210 s budget: cases not started by then are reported as skipped;
#   2. pytest -m gpu -x -q (the CUDA tests), 80 s.
# Report: $OUT/check.md and check.json (commit as benchmarks/gpu_<device>_<date>.md); pytest log: $OUT/pytest_gpu.log.
# Needs only torch, timm and triton (no mmcv, no natten). Exit code: non-zero when either step failed.
#   bash tools/gpu_check.sh [OUT]      (default OUT: gpu_check_<UTC date>)
set -u
OUT=${1:-gpu_check_$(date -u +%Y%m%d_%H%M)}
PY=${PYTHON:-python}
mkdir -p "$OUT"
python_path="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())' \
    || exit 2
PYTHONPATH=$python_path timeout 270 "$PY" -m visionattn.check --quick --strict --budget-s 210 --out "$OUT" \
    2>&1 | tee "$OUT/check.log"
rc_check=${PIPESTATUS[0]}
PYTHONPATH=$python_path VISIONATTN_STRICT=1 timeout 80 "$PY" -m pytest -m gpu -x -q -p no:cacheprovider tests/ops \
    tests/layers 2>&1 | tee "$OUT/pytest_gpu.log" | tail -20
rc_pytest=${PIPESTATUS[0]}
echo "check: exit $rc_check (report $OUT/check.md); pytest -m gpu: exit $rc_pytest ($OUT/pytest_gpu.log)"
[ "$rc_check" = 0 ] && [ "$rc_pytest" = 0 ]
