#!/usr/bin/env bash
# Training-step benchmarks of the four fine-tuning methods (docs/bench-training.md).
# Runs every benchmark of bench/llm_train_step_bench in its own process (clean peak
# memory), PAC_BENCH_REPS times (default 3), merges the JSON of each model into
# bench/results/llm_train_step_<model>.json and prints a markdown table of the medians.
# Environment: BUILD_DIR (default build), PAC_BENCH_MODELS (default "stories260K d768"),
# PAC_BENCH_THREADS (default 1), PAC_BENCH_REPS.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
reps=${PAC_BENCH_REPS:-3}
models=${PAC_BENCH_MODELS:-"stories260K d768"}
bin="$build/bench/llm_train_step_bench"
[ -x "$bin" ] || BUILD_DIR="$build" bash scripts/build.sh llm_train_step_bench
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p bench/results
for m in $models; do
  rm -f "$tmp"/*.json
  for meth in full lora adapters pa pa_cache; do
    echo "bench: $m $meth" >&2
    "$bin" --benchmark_filter="^BM_TrainStep/$m/$meth/" --benchmark_repetitions="$reps" \
      --benchmark_out="$tmp/$m-$meth.json" --benchmark_out_format=json >/dev/null
  done
  echo "bench: $m epochs" >&2
  "$bin" --benchmark_filter="^BM_Epochs/$m/" --benchmark_repetitions="$reps" \
    --benchmark_out="$tmp/$m-epochs.json" --benchmark_out_format=json >/dev/null
  python3 - "$tmp" "bench/results/llm_train_step_$m.json" <<'PY'
import glob, json, os, sys
tmp, out = sys.argv[1], sys.argv[2]
merged = {"context": None, "benchmarks": []}
for f in sorted(glob.glob(os.path.join(tmp, "*.json"))):
    d = json.load(open(f))
    merged["context"] = merged["context"] or d["context"]
    merged["benchmarks"] += d["benchmarks"]
with open(out + ".tmp", "w") as fh:
    json.dump(merged, fh, indent=1)
os.replace(out + ".tmp", out)
med = {b["run_name"]: b for b in merged["benchmarks"] if b.get("aggregate_name") == "median"}
print("| model | method | step wall ms | step CPU ms | forward CPU ms (of it backbone) | backward CPU ms | update CPU ms | peak RSS MB | peak torch MB |")
print("|---|---|---|---|---|---|---|---|---|")
for name, b in med.items():
    if not name.startswith("BM_TrainStep"):
        continue
    _, model, method = name.split("/")[:3]
    cpu = b['forward_cpu_ms'] + b['backward_cpu_ms'] + b['update_cpu_ms']
    print(f"| {model} | {method} | {b['real_time']:.1f} | {cpu:.1f} | {b['forward_cpu_ms']:.1f} ({b['backbone_cpu_ms']:.1f}) | "
          f"{b['backward_cpu_ms']:.1f} | {b['update_cpu_ms']:.1f} | {b['peak_rss_mb']:.0f} | {b['peak_torch_mb']:.0f} |")
print()
print("| model | epoch 1 wall s | epoch 2 wall s | epoch 1 CPU s | epoch 2 CPU s | epoch2/epoch1 (CPU) | epoch 1 peak RSS MB | epoch 2 peak RSS MB | cache MB |")
print("|---|---|---|---|---|---|---|---|---|")
for name, b in med.items():
    if name.startswith("BM_Epochs"):
        print(f"| {name.split('/')[1]} | {b['epoch1_s']:.2f} | {b['epoch2_s']:.2f} | {b['epoch1_cpu_s']:.2f} | "
              f"{b['epoch2_cpu_s']:.2f} | {b['epoch2_over_epoch1_cpu']:.3f} | "
              f"{b['epoch1_peak_rss_mb']:.0f} | {b['epoch2_peak_rss_mb']:.0f} | {b['cache_mb']:.0f} |")
PY
done
