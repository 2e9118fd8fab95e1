#!/usr/bin/env bash
# The GPU check (SPEC section 7), under ten minutes on one GPU: the CUDA tests (pytest -m cuda;
# the suite skips them where there is no GPU) and the GPU overhead benchmark (benches/bench_gpu.py:
# a GPT-2-small-sized model, watch() with defaults against the bare step, interleaved rounds,
# medians, host synchronisations counted with torch.cuda.set_sync_debug_mode("warn")), whose
# figures go to benches/RESULTS.md as the section "GPU check: <GPU name>" (a rerun on the same
# GPU replaces it, another GPU adds its own).
#
#   benches/gpu_check.sh            # exit status: 0 all passed, 1 a test or the benchmark failed, 3 no GPU
#
# It installs nothing beyond the project's own setup (scripts/dev setup: the virtualenv and the
# package with its test extras); a torch with CUDA must already be in that virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${NNPROBE_VENV:-}" ]; then VENV=$NNPROBE_VENV
elif [ -x .venv/bin/python ]; then VENV=.venv
else VENV=$HOME/.cache/nnprobe/venv; fi
PY=$VENV/bin/python

scripts/dev setup
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no CUDA device; nothing to check here" >&2
  exit 3
fi
"$PY" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"

status=0
# the CUDA tests: about a minute
timeout 300 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests || status=1
# the benchmark: about a minute on a recent GPU (120 timed steps, 15 counted, 3 copies of the model)
timeout 300 "$PY" benches/bench_gpu.py --device cuda --rounds 12 --steps 5 || status=1
exit $status
