#!/usr/bin/env bash
# The main job: install dependencies, build, fine-tune the shipped stories260K model on
# the shipped personal corpus (data/personal, Tomas's notebook) with Parallel Adapters
# on this machine, and print generations before and after. A few minutes on 2 cores.
#
# Environment: PAC_MODEL_DIR (default ../shared/models), BUILD_DIR (default build),
# PAC_BUILD_JOBS, PAC_K (side-network reduction, default 2), PAC_EPOCHS (default 3), PAC_THREADS (default 1: stories260K's matmuls are too small to gain from more).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-deps.sh
build=${BUILD_DIR:-build}
BUILD_DIR="$build" bash scripts/build.sh pac-train

models=${PAC_MODEL_DIR:-../shared/models}
model="$models/stories260K/stories260K.bin"
tok="$models/stories260K/tok512.bin"
for f in "$model" "$tok"; do
  [ -f "$f" ] || { echo "main-job: $f not found (set PAC_MODEL_DIR to the folder holding stories260K/)" >&2; exit 2; }
done

out="$build/main-job"
mkdir -p "$out"
# k = 2 rather than the paper's 8: stories260K is only 64 wide, so k = 8 leaves an 8-wide
# side network (7.5K parameters, held-out loss 3.00 -> 1.48 in 6 epochs); k = 2 (76K
# parameters) reaches 0.42 in 3 epochs and writes recognisably like Tomas (docs/training.md).
k=${PAC_K:-2}
echo "== fine-tuning stories260K on data/personal with parallel adapters (k=$k, activation cache) =="
"$build/bin/pac-train" \
  --method parallel_adapters --k "$k" \
  --model "$model" --tokenizer "$tok" \
  --data data/personal/train.txt --eval-data data/personal/heldout.txt \
  --epochs "${PAC_EPOCHS:-3}" --batch-size 16 --seq-len 128 \
  --lr 1e-2 --lr-schedule cosine --warmup 10 --seed 42 \
  --threads "${PAC_THREADS:-1}" \
  --cache-dir "$out/activation-cache" --cache-dtype fp16 \
  --out "$out/personal-parallel-adapters.safetensors" --json "$out/summary.json" \
  --generate "Dear notebook," --gen-steps 100
echo
echo "== the saved side network, loaded back for generation =="
"$build/bin/pac-train" --model "$model" --tokenizer "$tok" \
  --adapter "$out/personal-parallel-adapters.safetensors" --generate "Dear notebook, it is Sunday." --gen-steps 100
echo
echo "summary: $out/summary.json"
