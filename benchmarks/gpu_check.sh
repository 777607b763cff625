#!/usr/bin/env bash
# The GPU benchmark rows at SD1.5 size (860M-parameter UNet, 512 px, random weights), on one GPU, in < 8 minutes
# on an H100: (1) Diffusion-DPO step / plain fine-tune step (full, LoRA, +checkpointing; bf16 autocast as
# Trainer.train applies it), (2) scorer / bare UNet forwards at the best batch size, (4) peak GPU memory of LoRA
# Diffusion-DPO / LoRA plain fine-tune (fresh process each). With time left: the SD3.5-Medium-size DPO row
# (2.5B transformer), generation and caching rows.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # results in OUT_DIR (default: $OUT, else benchmarks/results)
#
# Packages: the GPU image here has torch, transformers, accelerate and peft but not diffusers, trl or datasets.
# Prepare them once on the CPU machine (pure-Python wheels, ~8 MB) and carry `.whl`:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     diffusers==0.42.1 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 importlib_metadata==8.7.0
# then run with carry [".whl"] and timeout_s 540. This script installs `.whl/*.whl` when an import is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-benchmarks/results}}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
PY="${PYTHON:-python3}"
START=$(date +%s)

if ! "$PY" -c "import diffusers, trl, datasets, peft, accelerate" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'EOF' 2>&1 | tee "$OUT_DIR/gpu_environment.txt" || exit 1
import importlib
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name())
for name in ("diffusers", "transformers", "accelerate", "peft", "trl", "datasets"):
    print(name, importlib.import_module(name).__version__)
print("matmul TF32", torch.backends.cuda.matmul.allow_tf32, "cudnn TF32", torch.backends.cudnn.allow_tf32)
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >> "$OUT_DIR/gpu_environment.txt" 2>&1

# Required rows. `timeout` leaves the JSON written after every finished row.
timeout 420 "$PY" benchmarks/run.py --device cuda --rows dpo,scoring,memory --json "$OUT_DIR/gpu_rows.json" \
  2> >(tee "$OUT_DIR/gpu_rows.log" >&2) | tee "$OUT_DIR/gpu_rows.md"
status=$?

# Optional rows, only in what is left of 8 minutes.
LEFT=$((470 - ($(date +%s) - START)))
if [ "$LEFT" -gt 90 ]; then
  timeout "$LEFT" "$PY" benchmarks/run.py --device cuda --rows dpo_sd3,generation,caching --json "$OUT_DIR/gpu_extra.json" \
    2> >(tee "$OUT_DIR/gpu_extra.log" >&2) | tee "$OUT_DIR/gpu_extra.md"
fi
echo "gpu_check: $(( $(date +%s) - START ))s, required rows exit status $status"
exit $status
