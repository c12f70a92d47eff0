#!/usr/bin/env python3
"""Runtime overhead (issue 5): the same training steps through pac-run (coordinator +
one local pac-worker, 1 thread) against pac-train (the single-device trainer, the same
LibTorch code without the runtime), on one device, same model, data, batch and steps.

For each method it alternates the two tools `--repeats` times and compares the median
time per training step: pac-train's epoch seconds / steps (its own training loop) and
pac-run's epoch time_s / steps (the coordinator's view: every Start/Result round trip,
the tokens sent as JSON, the worker's step). Overhead = pac-run / pac-train - 1.
Writes bench/results/runtime_overhead.json. Run on a quiet machine; it records the load.

    BUILD_DIR=build python3 bench/runtime_overhead.py [--steps 8] [--repeats 3]
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit("runtime_overhead: failed (%d): %s\n%s" % (r.returncode, " ".join(cmd), r.stderr[-2000:]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default=os.environ.get("BUILD_DIR", os.path.join(ROOT, "build")))
    ap.add_argument("--model", default="llama-d512-l8")
    ap.add_argument("--methods", default="full,lora,parallel_adapters")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/runtime_overhead.json"))
    a = ap.parse_args()
    b = os.path.join(a.build_dir, "bin")
    models = os.environ.get("PAC_MODEL_DIR", os.path.join(ROOT, "..", "shared", "models"))
    tok = os.path.join(models, "stories260K", "tok512.bin")
    data = os.path.join(ROOT, "data/personal/train.txt")
    work = tempfile.mkdtemp(prefix="pac-overhead-")
    rows = []
    load_before = load()
    for method in a.methods.split(","):
        # A one-device plan: the runtime with nothing to distribute, so what remains is
        # its own cost. Parallel adapters without the cache (epoch 1's path every step).
        sc = json.load(open(os.path.join(ROOT, "scenarios/local-personal.json")))
        sc.pop("stages", None)
        sc["name"] = "overhead-" + method
        sc["model"] = a.model
        sc["method"] = {"kind": method, "cache": False, "reduction_k": 8}
        sc["strategy"] = "standalone" if method != "parallel_adapters" else "pac"
        sc["data"].update({"seq_len": a.seq, "mini_batch": a.batch, "micro_batches": 1})
        sc["cluster"]["devices"][0]["count"] = 1
        sp = os.path.join(work, method + ".scenario.json")
        json.dump(sc, open(sp, "w"))
        plan = os.path.join(work, method + ".plan.json")
        run([os.path.join(b, "pac-plan"), sp, "--profiles", os.path.join(ROOT, "profiles"), "-o", plan])
        common = ["--tokenizer", tok, "--data", data, "--batch-size", str(a.batch), "--seq-len", str(a.seq),
                  "--epochs", "1", "--max-steps", str(a.steps), "--threads", "1", "--lr", "1e-3", "--seed", "42"]
        trainer, runtime = [], []
        for rep in range(a.repeats):
            j = os.path.join(work, "train.json")
            # --no-cache: pac-train would otherwise reuse ~/.cache/pac/activations and skip
            # the backbone, which the cache-less pac-run plan computes every step.
            run([os.path.join(b, "pac-train"), "--method", method, "--model-preset", a.model, "--k", "8",
                 "--side-init", "random", "--no-cache", "--json", j] + common)
            trainer.append(json.load(open(j))["epochs"][0]["seconds"] / a.steps)
            r = os.path.join(work, "run.json")
            run([os.path.join(b, "pac-run"), plan, "--local", "--quiet", "--model", a.model, "--k", "8",
                 "--report", r] + common)
            runtime.append(json.load(open(r))["epochs"][0]["time_s"] / a.steps)
        t, rt = statistics.median(trainer), statistics.median(runtime)
        rows.append({"method": method, "trainer_step_s": trainer, "runtime_step_s": runtime,
                     "trainer_median_s": t, "runtime_median_s": rt, "overhead": rt / t - 1})
        print("%-18s pac-train %.3f s/step, pac-run %.3f s/step: overhead %+.1f%%" % (method, t, rt, 100 * (rt / t - 1)))
    doc = {"format": "pac-runtime-overhead", "model": a.model, "batch": a.batch, "seq_len": a.seq, "steps": a.steps,
           "repeats": a.repeats, "threads": 1, "load_before": load_before, "load_after": load(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, a.out)
    print("load %.2f -> %.2f; wrote %s" % (doc["load_before"], doc["load_after"], a.out))


if __name__ == "__main__":
    main()
