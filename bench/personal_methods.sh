#!/usr/bin/env bash
# Fine-tunes stories260K on the shipped personal corpus with every method and reports
# held-out loss / perplexity before and after (docs/training.md, "Results").
# Writes bench/results/personal_<method>.json (pac-train --json) and prints a table.
# Environment: BUILD_DIR (default build), PAC_MODEL_DIR, PAC_EPOCHS (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
models=${PAC_MODEL_DIR:-../shared/models}
epochs=${PAC_EPOCHS:-3}
[ -x "$build/bin/pac-train" ] || BUILD_DIR="$build" bash scripts/build.sh pac-train
mkdir -p bench/results
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
for method in full lora adapters parallel_adapters; do
  lr=1e-2
  [ "$method" = full ] && lr=2e-3
  echo "personal: $method (lr $lr, $epochs epochs)" >&2
  "$build/bin/pac-train" --method "$method" \
    --model "$models/stories260K/stories260K.bin" --tokenizer "$models/stories260K/tok512.bin" \
    --data data/personal/train.txt --eval-data data/personal/heldout.txt \
    --epochs "$epochs" --batch-size 16 --seq-len 128 --lr "$lr" --lr-schedule cosine --warmup 10 \
    --seed 42 --threads 1 --cache-dir "$cache/$method" --cache-dtype fp16 --quiet \
    --generate "Dear notebook," --gen-steps 80 \
    --json "bench/results/personal_$method.json" >/dev/null
done
python3 - <<'PY'
import json
print("| method | trainable params | held-out loss before | after | perplexity before | after | epoch seconds |")
print("|---|---|---|---|---|---|---|")
for m in ["full", "lora", "adapters", "parallel_adapters"]:
    d = json.load(open(f"bench/results/personal_{m}.json"))
    e = d["eval"]
    secs = " / ".join(f"{x['seconds']:.1f}" for x in d["epochs"])
    print(f"| {m} | {d['trainable_params']} | {e['loss_before']:.3f} | {e['loss_after']:.3f} | "
          f"{e['ppl_before']:.2f} | {e['ppl_after']:.2f} | {secs} |")
PY
