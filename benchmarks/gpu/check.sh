#!/usr/bin/env bash
# vrm's GPU readiness check (benchmarks/gpu/check.py): one JSON, benchmarks/results/gpu_check.json by default.
#
#   bash benchmarks/gpu/check.sh                   # on a GPU machine (under 8 minutes on one GPU)
#   bash benchmarks/gpu/check.sh --cpu             # the CPU part (GPU-only sections: "skipped: no CUDA device")
#   bash benchmarks/gpu/check.sh --cpu --tiny --output /tmp/gpu_check.json
#
# On a machine without network, the Python packages vrm needs that are missing there are installed from the
# wheels `benchmarks/gpu/prepare.sh` put in benchmarks/gpu/wheels/ (carried along with the tree), into a
# scratch directory put first on PYTHONPATH; nothing is installed where the packages import already.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
WHEELS=benchmarks/gpu/wheels
NEEDED="import datasets, fastapi, uvicorn, pydantic"
if ! "$PYTHON" -c "$NEEDED" 2>/dev/null; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "check.sh: datasets / fastapi / uvicorn / pydantic are missing and $WHEELS has no wheels" \
            "(run benchmarks/gpu/prepare.sh where pip works, and carry $WHEELS)" >&2
        exit 2
    fi
    SITE=${VRM_GPU_SITE:-${TMPDIR:-/tmp}/vrm-gpu-site}
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    "$PYTHON" -c "$NEEDED"
fi
export PYTHONPATH="$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m benchmarks.gpu.check "$@"
