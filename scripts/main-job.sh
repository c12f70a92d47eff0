#!/usr/bin/env bash
# The main job: install dependencies, build, fine-tune the shipped stories260K model on
# the shipped personal corpus (data/personal, Tomas's notebook) with Parallel Adapters
# across local workers (pac-plan + pac-run --local), then generate with the result.
#
# Environment: PAC_MODEL_DIR (default ../shared/models), BUILD_DIR (default build),
# PAC_BUILD_JOBS, PAC_K (side-network reduction, default 2), PAC_EPOCHS (default 3), PAC_THREADS (default 1: stories260K's matmuls are too small to gain from more).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-deps.sh
build=${BUILD_DIR:-build}
BUILD_DIR="$build" bash scripts/build.sh pac-plan pac-run pac-worker pac-train

models=${PAC_MODEL_DIR:-../shared/models}
model="$models/stories260K/stories260K.bin"
tok="$models/stories260K/tok512.bin"
for f in "$model" "$tok"; do
  [ -f "$f" ] || { echo "main-job: $f not found (set PAC_MODEL_DIR to the folder holding stories260K/)" >&2; exit 2; }
done

out="$build/main-job"
mkdir -p "$out"
# The embedded default: two local pac-worker processes on this machine, planned by
# pac-plan from scenarios/local-personal.json (epoch 1 a 2-stage pipeline that fills
# each worker's activation cache, then the switch, then data parallel from the cache).
# k = 2 rather than the paper's 8: stories260K is only 64 wide, so k = 8 leaves an 8-wide
# side network (7.5K parameters); k = 2 (76K parameters) writes recognisably like Tomas
# (docs/training.md).
echo "== planning scenarios/local-personal.json =="
"$build/bin/pac-plan" scenarios/local-personal.json -o "$out/plan.json"
echo
echo "== fine-tuning stories260K on data/personal across 2 local workers (parallel adapters, activation cache) =="
"$build/bin/pac-run" "$out/plan.json" --local \
  --model "$model" --tokenizer "$tok" \
  --data data/personal/train.txt --eval-data data/personal/heldout.txt \
  --epochs "${PAC_EPOCHS:-3}" --k "${PAC_K:-2}" \
  --side-init pruned --lr 1e-2 --lr-schedule cosine --warmup 10 --seed 42 --threads "${PAC_THREADS:-1}" \
  --out "$out/personal-parallel-adapters.safetensors" --report "$out/report.json"
echo
echo "== the fine-tuned side network, loaded for generation =="
"$build/bin/pac-train" --model "$model" --tokenizer "$tok" \
  --adapter "$out/personal-parallel-adapters.safetensors" --generate "Dear notebook, it is Sunday." --gen-steps 100
echo
echo "report: $out/report.json"
