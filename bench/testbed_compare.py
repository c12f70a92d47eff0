#!/usr/bin/env python3
"""Measured comparison of issue 5 ("Measured results"): PAC against every baseline on
the same emulated testbed, in one invocation, sequentially. For each strategy x method
row: pac-plan, pac-sim (the prediction), pac-run --testbed (the measurement),
pac-sim --validate (predicted vs measured). Writes bench/results/testbed_compare.json and
the markdown table into docs/testbed-compare.md (between the table markers), with the
issue's target ratios:

  - PAC total time vs the best baseline's total (target: baseline / PAC >= 2),
  - PAC per-device peak memory vs full fine-tuning (target: >= 75% lower),
  - PAC epochs 2+ vs epoch 1 (target: <= 25%),
  - runtime overhead: a stage's compute inside the runtime (trace compute events of one
    device) vs the same layers timed alone by pac-profile under the same CPU quota
    (the testbed profile's calibration.timings), target < 10%.

    BUILD_DIR=build-cmp sudo -E python3 bench/testbed_compare.py
    python3 bench/testbed_compare.py --rows pac/parallel_adapters,eddl/lora   # a subset

Needs what pac-run --testbed needs (root, ip netns, tc, cgroups; docs/testbed.md).
Python 3 standard library only; shares the command/data helpers of bench/fidelity.py.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fidelity  # noqa: E402
from fidelity import ROOT, last_line, run_cmd, write_atomic, write_train_data  # noqa: E402

BASELINES = ["standalone", "eddl", "ecofl", "asteroid"]
BASELINE_METHODS = ["full", "lora", "adapters"]
PAC_ROWS = [("pac", "parallel_adapters"), ("pac-opt", "parallel_adapters")]
TARGET_SPEEDUP = 2.0          # PAC total at least 2x better than the best baseline
TARGET_MEMORY_CUT = 0.75      # per-device peak memory at least 75% below full fine-tuning
TARGET_LATER_EPOCHS = 0.25    # epochs 2+ at most 25% of epoch 1
TARGET_OVERHEAD = 0.10        # runtime compute vs LibTorch alone
DOC_BEGIN = "<!-- testbed-compare begin (bench/testbed_compare.py) -->"
DOC_END = "<!-- testbed-compare end -->"


def log(msg):
    print("testbed_compare: " + msg, file=sys.stderr, flush=True)


def uptime():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "load average: %.2f, %.2f, %.2f" % os.getloadavg()


def mean(xs):
    return sum(xs) / len(xs) if xs else None


# ---------------------------------------------------------------- the model

def write_random_checkpoint(path, model_json, seed=1):
    """A llama2.c .bin of the model profile's shape with random weights (normal-ish,
    std 0.02; norm weights 1), since pac-run has no preset for llama-d512-l8 and no
    such checkpoint is shipped. Layout as src/llm/checkpoint.cpp bin_layout: header of 7
    int32 (vocab > 0 = tied classifier), embeddings, each kind for all layers, final
    norm, two legacy RoPE tables (unused, zeros)."""
    import array
    import random
    m = json.load(open(model_json))
    d, h, L, nh, kvh, v, seq = (m["hidden"], m["ffn"], m["decoder_layers"], m["heads"], m["kv_heads"],
                                m["vocab"], m["max_seq"])
    if not m.get("tied_embeddings", True) or m.get("family") != "llama" or m.get("encoder_layers", 0):
        raise SystemExit("testbed_compare: %s: only tied decoder-only llama models are written" % model_json)
    kv = d // nh * kvh
    rng = random.Random(seed)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        array.array("i", [d, h, L, nh, kvh, v, seq]).tofile(f)

        def weights(n):
            # Sum of two uniforms (triangular, std 0.02): cheap and bounded.
            a = 0.02 * 1.224744871
            array.array("f", [(rng.random() + rng.random() - 1.0) * a * 2 for _ in range(n)]).tofile(f)

        def ones(n):
            array.array("f", [1.0] * n).tofile(f)
        weights(v * d)
        ones(L * d)
        for shape in ((d, d), (kv, d), (kv, d), (d, d)):
            weights(L * shape[0] * shape[1])
        ones(L * d)
        for shape in ((h, d), (d, h), (h, d)):
            weights(L * shape[0] * shape[1])
        ones(d)
        array.array("f", [0.0] * (2 * seq * (d // nh // 2))).tofile(f)
    os.replace(tmp, path)


# ---------------------------------------------------------------- one row

def one_row(a, scen, strategy, method, data_file):
    d = os.path.join(a.work, "%s-%s" % (strategy, method))
    os.makedirs(d, exist_ok=True)
    plan = os.path.join(d, "plan.json")
    row = {"strategy": strategy, "method": method, "status": "ok", "groups": None,
           "sim": None, "measured": None, "validation": None}
    rc, out, err = run_cmd([os.path.join(a.bin_dir, "pac-plan"), a.scenario, "--strategy", strategy,
                            "--method", method, "--profiles", a.profiles, "-o", plan], a.timeout)
    if rc != 0:
        row["status"] = "no plan: " + last_line(err or out)
        return row
    p = json.load(open(plan))
    row["planner"] = p.get("predicted")

    # The simulator's prediction of the same plan.
    sim = os.path.join(d, "sim.json")
    rc, out, err = run_cmd([os.path.join(a.bin_dir, "pac-sim"), a.scenario, "--plan", plan, "--profiles",
                            a.profiles, "--json", sim, "--quiet"], a.timeout)
    if rc in (0, 1) and os.path.exists(sim):
        s = json.load(open(sim))
        row["groups"] = s.get("groups")
        row["sim"] = {"status": s.get("status"), "epochs_s": [e["time_s"] for e in s.get("epochs", [])],
                      "total_s": s.get("total_s"),
                      "peak_memory_bytes": [dv["peak_memory_bytes"] for dv in s.get("devices", [])],
                      "bytes_sent": sum(l["bytes"] for l in s.get("links", []))}
    else:
        row["sim"] = {"status": "failed: " + last_line(err or out)}

    report = os.path.join(d, "run.json")
    trace = os.path.join(d, "run.trace.json")
    cmd = [os.path.join(a.bin_dir, "pac-run"), plan, "--testbed", "--tokenizer", a.tokenizer, "--data", data_file,
           "--eval-fraction", "0", "--samples", "0", "--model", a.model, "--report", report, "--quiet",
           "--timeout-s", str(a.wait_timeout)]
    # pac-run --trace works on the pac-pipeline executor only: the pipeline-train executor
    # (full/lora/adapters) refuses the step's "trace" field ($.trace: unknown field), so
    # baseline rows run without a trace (docs/testbed-compare.md, "Known problems").
    if method == "parallel_adapters":
        cmd += ["--trace", trace]
    log("%s / %s: pac-run --testbed (groups %s)" % (strategy, method, row["groups"]))
    load_before = os.getloadavg()[0]
    t0 = time.time()
    rc, out, err = run_cmd(cmd, a.run_timeout)
    wall = time.time() - t0
    # The machine is shared: other work slows the measured side only, so keep the load.
    row["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    row["wall_s"] = round(wall, 1)
    if rc != 0 or not os.path.exists(report):
        row["status"] = "run failed (exit %s after %.0f s): %s" % (rc, wall, last_line(err or out))
        return row
    r = json.load(open(report))
    if r.get("status") != "ok":
        row["status"] = "run: %s %s" % (r.get("status"), r.get("failure", {}).get("message", ""))
    devs = r.get("devices", [])
    sent = {}
    for l in r.get("links", []):
        sent[l["src"]] = sent.get(l["src"], 0) + l["bytes"]
    row["measured"] = {"epochs_s": [e["time_s"] for e in r.get("epochs", [])],
                       "phases": [e.get("phase") for e in r.get("epochs", [])],
                       "total_s": r.get("total_s"), "switch_s": r.get("switch_s"),
                       "device_ids": [dv["id"] for dv in devs],
                       "peak_memory_bytes": [dv["peak_memory_bytes"] for dv in devs],
                       # LibTorch tensor bytes (what pac-sim counts), and both peaks over
                       # the cached epochs alone (PAC rows with a cache).
                       "peak_tensor_bytes": [dv.get("peak_tensor_bytes") for dv in devs],
                       "cached_peak_memory_bytes": [dv.get("cached_peak_memory_bytes") for dv in devs],
                       "cached_peak_tensor_bytes": [dv.get("cached_peak_tensor_bytes") for dv in devs],
                       "busy_s": [dv.get("busy_s") for dv in devs],
                       "bytes_sent_by_device": [sent.get(dv["id"], 0) for dv in devs],
                       "bytes_sent": sum(sent.values()),
                       "trace": trace if os.path.exists(trace) else None}
    val = os.path.join(d, "validate.json")
    rc, out, err = run_cmd([os.path.join(a.bin_dir, "pac-sim"), "--validate", report, "--plan", plan,
                            "--json", val, "--quiet"], a.timeout)
    if rc in (0, 3) and os.path.exists(val):
        v = json.load(open(val))
        row["validation"] = {"epoch_mape_pct": v.get("epoch_mape_pct"),
                             "epoch_max_error_pct": v.get("epoch_max_error_pct")}
    else:
        row["validation"] = {"error": last_line(err or out)}
    return row


# ---------------------------------------------------------------- targets

def ok_rows(rows):
    return [r for r in rows if r["status"] == "ok" and r["measured"]]


def targets(rows, floor_bytes=None):
    """The issue's three ratios, all for the headline PAC row (the PAC row of the
    shortest measured total); the other PAC rows are listed beside it."""
    ok = ok_rows(rows)
    pac = [r for r in ok if r["method"] == "parallel_adapters"]
    base = [r for r in ok if r["method"] != "parallel_adapters"]
    full = [r for r in base if r["method"] == "full"]
    t = {}
    if not pac:
        return t
    head = min(pac, key=lambda r: r["measured"]["total_s"])
    name = "%s/%s" % (head["strategy"], head["method"])
    t["pac_row"] = name
    if base:
        best_base = min(base, key=lambda r: r["measured"]["total_s"])
        ratio = best_base["measured"]["total_s"] / head["measured"]["total_s"]
        t["speedup"] = {"pac": name, "pac_total_s": head["measured"]["total_s"],
                        "best_baseline": "%s/%s" % (best_base["strategy"], best_base["method"]),
                        "best_baseline_total_s": best_base["measured"]["total_s"],
                        "baseline_over_pac": ratio, "target": TARGET_SPEEDUP, "met": ratio >= TARGET_SPEEDUP}
    if full:
        # Per-device peak = the largest peak over the devices (what a device must hold),
        # on three bases: the process's resident set (VmHWM, with LibTorch's code and
        # allocator), the same above an idle worker's (floor_bytes), and LibTorch tensor
        # bytes (the CPU analogue of the max_memory_allocated the paper's PyTorch numbers
        # come from; what pac-sim counts). PAC's peak is over the whole run (phase 1
        # included) and, separately, over its cached epochs.
        def peak(row, key):
            xs = [x for x in row["measured"].get(key) or [] if x is not None]
            return max(xs) if xs else None

        def cut(p, f, floor=0):
            return None if p is None or not f or f <= floor else 1 - (p - floor) / (f - floor)
        P = {k: peak(head, k) for k in ("peak_memory_bytes", "peak_tensor_bytes", "cached_peak_memory_bytes",
                                         "cached_peak_tensor_bytes")}
        per_full = []
        for f in full:
            fp, ft = peak(f, "peak_memory_bytes"), peak(f, "peak_tensor_bytes")
            x = {"row": "%s/full" % f["strategy"], "max_device_peak_bytes": fp, "max_device_tensor_bytes": ft,
                 "reduction": cut(P["peak_memory_bytes"], fp),
                 "reduction_tensors": cut(P["peak_tensor_bytes"], ft),
                 "cached_reduction_tensors": cut(P["cached_peak_tensor_bytes"], ft)}
            if floor_bytes:
                # Above an idle pac-worker's resident set (LibTorch and the process itself).
                x["reduction_above_floor"] = cut(P["peak_memory_bytes"], fp, floor_bytes)
            per_full.append(x)
        # The verdict: full fine-tuning of the model on a device (standalone/full: every
        # weight with its gradient and AdamW state in one device's memory) against PAC's
        # largest device over the whole run, on tensor bytes where the run counted them.
        # The pipeline-split full rows (ecofl, asteroid) hold a quarter of the layers per
        # device; they are listed, not judged (their partition is not PAC's).
        ref = next((x for x in per_full if x["row"] == "standalone/full"), per_full[0])
        basis = "tensors" if ref["reduction_tensors"] is not None else "resident"
        red = ref["reduction_tensors"] if basis == "tensors" else ref["reduction"]
        t["memory"] = {"pac": name, "pac_max_device_peak_bytes": P["peak_memory_bytes"],
                       "pac_max_device_tensor_bytes": P["peak_tensor_bytes"],
                       "pac_cached_max_device_peak_bytes": P["cached_peak_memory_bytes"],
                       "pac_cached_max_device_tensor_bytes": P["cached_peak_tensor_bytes"],
                       "vs_full": per_full, "idle_worker_rss_bytes": floor_bytes,
                       "judged_against": ref["row"], "basis": basis, "reduction": red,
                       "target": TARGET_MEMORY_CUT, "met": red is not None and red >= TARGET_MEMORY_CUT}
    later = []
    for r in pac:
        e = r["measured"]["epochs_s"]
        if len(e) >= 2:
            later.append({"row": "%s/%s" % (r["strategy"], r["method"]), "epoch1_s": e[0],
                          "later_mean_s": mean(e[1:]), "ratio": mean(e[1:]) / e[0]})
    mine = [x for x in later if x["row"] == name]
    if mine:
        t["later_epochs"] = {"rows": later, "ratio": mine[0]["ratio"], "target": TARGET_LATER_EPOCHS,
                             "met": mine[0]["ratio"] <= TARGET_LATER_EPOCHS}
    return t


def idle_worker_rss(bin_dir, work):
    """Peak resident set of a pac-worker that has started and is listening, nothing
    else: the floor under every device's measured peak memory (VmHWM)."""
    key = os.path.join(work, "idle.key")
    with open(key, "w") as f:
        f.write(os.urandom(32).hex())
    os.chmod(key, 0o600)
    p = subprocess.Popen([os.path.join(bin_dir, "pac-worker"), "--listen", "127.0.0.1:0", "--key-file", key,
                          "--idle-exit-s", "30"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            line = p.stdout.readline()
            if not line or "listening on" in line:
                break
        for l in open("/proc/%d/status" % p.pid):
            if l.startswith("VmHWM:"):
                return int(l.split()[1]) * 1024
    except OSError:
        return None
    finally:
        p.terminate()
        p.wait(timeout=10)
    return None


# ---------------------------------------------------------------- runtime overhead

def overhead(a, rows, scen):
    """Compute of one device inside the runtime vs the same layers timed alone in
    LibTorch under the same CPU quota. standalone/full puts every layer on one device,
    so its work is known in layer units; its busy_s is the pipeline-train executor's
    step time minus waits, sends and all-reduces (that executor writes no trace events).
    'Alone' is the device profile's calibration.timings (pac-profile in a cgroup of the
    same quota, 1 thread): micro-batches x (layers x (layer_fwd_grad + layer_bwd) + head
    + head_bwd). pac-profile does not time the AdamW step, which busy_s includes, so the
    ratio is an upper bound of the runtime's overhead."""
    cand = [r for r in ok_rows(rows) if r["strategy"] == "standalone" and r["method"] == "full"]
    if not cand:
        return {"status": "not measured: no standalone/full row"}
    r = cand[0]
    busy = r["measured"]["busy_s"]
    dev_i = max(range(len(busy)), key=lambda i: busy[i] or 0)
    dev = scen["cluster"]["devices"][dev_i]
    prof_file = a.alone_profile or os.path.join(a.profiles, "devices", dev["profile"] + ".json")
    prof = json.load(open(prof_file))
    cal = prof.get("calibration", prof)
    mb = scen["data"]["mini_batch"] // scen["data"]["micro_batches"]
    layers = json.load(open(os.path.join(a.profiles, "models", scen["model"] + ".json")))["decoder_layers"]
    micro = scen["data"]["samples"] // mb * scen["epochs"]

    def alone_of(timings):
        t = {}
        for x in timings:
            if x["micro_batch"] == mb and x.get("threads", 1) == 1:
                t[x["kind"]] = x["median_s"]
        if any(k not in t for k in ("layer_fwd_grad", "layer_bwd", "head", "head_bwd")):
            return None
        return micro * (layers * (t["layer_fwd_grad"] + t["layer_bwd"]) + t["head"] + t["head_bwd"])
    alone = alone_of(cal.get("timings", []))
    if alone is None:
        return {"status": "not measured: %s has no 1-thread timings at micro-batch %d" % (prof_file, mb)}
    out = {"status": "ok", "row": "standalone/full", "device": dev["id"], "cpu_quota": dev.get("cpu_quota"),
           "runtime_busy_s": busy[dev_i], "alone_s": alone, "alone_profile": os.path.relpath(prof_file, ROOT),
           "alone_load_average": [cal.get("load_average_before"), cal.get("load_average_after")],
           "alone_basis": "%d micro-batches x (%d x (layer_fwd_grad + layer_bwd) + head + head_bwd) at "
           "micro-batch %d, 1-thread medians under the same quota; the runtime side includes the AdamW steps, "
           "the profile does not: an upper bound" % (micro, layers, mb),
           "overhead": busy[dev_i] / alone - 1, "target": TARGET_OVERHEAD}
    # The sustained rate the simulator uses: the no-quota reference / quota (a CFS quota
    # lets short timings run in unthrottled bursts, so the raw medians can be optimistic).
    ref = alone_of(cal.get("reference_timings", []))
    if ref is not None and dev.get("cpu_quota"):
        out["alone_sustained_s"] = ref / min(1.0, dev["cpu_quota"])
        out["overhead_vs_sustained"] = busy[dev_i] / out["alone_sustained_s"] - 1
    return out


# ---------------------------------------------------------------- markdown

def mb(x):
    return "n/a" if x is None else "%.0f" % (x / 1e6)


def fmt(xs, f="%.2f"):
    return "n/a" if not xs else " / ".join(f % x for x in xs)


def markdown(res):
    out = ["Measured on the emulated testbed (%s), %s. Load before: `%s`; after: `%s`." %
           (res["scenario_file"], res["date"], res["uptime_before"], res["uptime_after"]), "",
           "| strategy | method | groups | epochs s measured (sim) | total s measured (sim) | switch s | "
           "peak resident MB per device | peak tensor MB per device measured (sim max) | MB sent | epoch MAPE | "
           "load |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        m, s = r.get("measured"), r.get("sim") or {}
        if r["status"] != "ok" or not m:
            out.append("| %s | %s | %s | %s | | | | | | | |" % (r["strategy"], r["method"], r.get("groups") or "",
                                                             r["status"].replace("|", "/")))
            continue
        sw = m.get("switch_s")
        out.append("| %s | %s | %s | %s (%s) | %.1f (%s) | %s | %s | %s (%s) | %.1f | %s | %s |" % (
            r["strategy"], r["method"], r["groups"], fmt(m["epochs_s"], "%.1f"), fmt(s.get("epochs_s"), "%.1f"),
            m["total_s"], "%.1f" % s["total_s"] if s.get("total_s") is not None else "n/a",
            "%.2f" % sw if sw is not None and sw >= 0 else "-",
            " / ".join(mb(x) for x in m["peak_memory_bytes"]),
            " / ".join(mb(x) for x in m.get("peak_tensor_bytes") or []) or "n/a",
            mb(max(s["peak_memory_bytes"])) if s.get("peak_memory_bytes") else "n/a",
            m["bytes_sent"] / 1e6,
            "%.0f%%" % r["validation"]["epoch_mape_pct"] if (r.get("validation") or {}).get("epoch_mape_pct")
            is not None else "n/a",
            fmt(r["load_average"], "%.1f")))
    t = res["targets"]
    out += ["", "| target | measured | met |", "|---|---|---|"]
    if "speedup" in t:
        x = t["speedup"]
        out.append("| PAC total >= 2x better than the best baseline | %s %.1f s vs %s %.1f s: %.2fx | %s |" % (
            x["pac"], x["pac_total_s"], x["best_baseline"], x["best_baseline_total_s"], x["baseline_over_pac"],
            "yes" if x["met"] else "**no**"))
    if "memory" in t:
        x = t["memory"]
        fl = x.get("idle_worker_rss_bytes")

        def pct(v):
            return "n/a" if v is None else "-%.0f%%" % (100 * v)
        out.append("| per-device peak memory >= 75%% below full fine-tuning (%s, %s) | %s max %s MB resident, %s MB "
                   "tensors (cached epochs: %s / %s MB); %s%s | %s |" % (
                       x["judged_against"], x["basis"], x["pac"], mb(x["pac_max_device_peak_bytes"]),
                       mb(x["pac_max_device_tensor_bytes"]), mb(x["pac_cached_max_device_peak_bytes"]),
                       mb(x["pac_cached_max_device_tensor_bytes"]),
                       ", ".join("%s %s MB resident / %s MB tensors (%s resident, %s above the floor, %s tensors, "
                                 "%s tensors in cached epochs)" % (
                                     f["row"], mb(f["max_device_peak_bytes"]), mb(f["max_device_tensor_bytes"]),
                                     pct(f["reduction"]), pct(f.get("reduction_above_floor")),
                                     pct(f["reduction_tensors"]), pct(f["cached_reduction_tensors"]))
                                 for f in x["vs_full"]),
                       "; idle pac-worker floor %s MB" % mb(fl) if fl else "", "yes" if x["met"] else "**no**"))
    if "later_epochs" in t:
        x = t["later_epochs"]
        out.append("| epochs 2+ <= 25%% of epoch 1 (%s) | %s | %s |" % (
            t["pac_row"], ", ".join("%s %.1f s -> %.1f s (%.0f%%)" % (l["row"], l["epoch1_s"], l["later_mean_s"],
                                                                     100 * l["ratio"]) for l in x["rows"]),
            "yes" if x["met"] else "**no**"))
    o = res.get("overhead") or {}
    if o.get("status") == "ok":
        sus = ""
        if o.get("alone_sustained_s"):
            sus = "; vs the sustained rate (reference / quota) %.1f s: %+.0f%%" % (o["alone_sustained_s"],
                                                                              100 * o["overhead_vs_sustained"])
        out.append("| runtime overhead < 10%% | %s on %s (quota %g): busy %.1f s in the runtime vs %.1f s F+B "
                   "alone (%s, load %s): %+.0f%%%s (upper bound: busy includes AdamW) | %s |" % (
                       o["row"], o["device"], o["cpu_quota"], o["runtime_busy_s"], o["alone_s"], o["alone_profile"],
                       fmt([x for x in o["alone_load_average"] if x is not None], "%.1f"), 100 * o["overhead"], sus,
                       "yes" if o["overhead"] < TARGET_OVERHEAD else "**no**"))
    else:
        out.append("| runtime overhead < 10%% | %s | n/a |" % o.get("status", "not measured"))
    return "\n".join(out) + "\n"


def update_doc(doc, table):
    """fidelity.update_docs with this table's markers (its markers are module globals)."""
    if not os.path.exists(doc):
        write_atomic(doc, "# Measured comparison on the emulated testbed\n")
    fidelity.DOC_BEGIN, fidelity.DOC_END = DOC_BEGIN, DOC_END
    fidelity.update_docs(doc, table)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-dir", default=os.environ.get("BUILD_DIR", "build-cmp"))
    ap.add_argument("--scenario", default=os.path.join(ROOT, "bench/testbed-compare/scenario.json"))
    ap.add_argument("--profiles", default=os.path.join(ROOT, "profiles"))
    ap.add_argument("--rows", default="", help="STRATEGY/METHOD,... (default: PAC and every baseline x method)")
    ap.add_argument("--methods", default=",".join(BASELINE_METHODS), help="baseline methods")
    ap.add_argument("--work", default="/tmp/pac-testbed-compare")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/testbed_compare.json"))
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs/testbed-compare.md"))
    model_dir = os.environ.get("PAC_MODEL_DIR", os.path.join(ROOT, "..", "shared", "models"))
    ap.add_argument("--tokenizer", default=os.path.join(model_dir, "stories260K", "tok512.bin"))
    ap.add_argument("--data", default=os.path.join(ROOT, "data/personal/train.txt"))
    ap.add_argument("--model", default="", help="checkpoint for pac-run (default: a random-init llama2.c .bin "
                    "of the scenario model's shape, written into --work)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds for pac-plan / pac-sim")
    ap.add_argument("--run-timeout", type=int, default=600, help="seconds for one pac-run")
    ap.add_argument("--wait-timeout", type=int, default=300, help="pac-run --timeout-s")
    ap.add_argument("--alone-profile", default="", help="pac-profile output (-o) whose 1-thread timings are the "
                    "'alone' side of the overhead (default: the device profile's calibration)")
    ap.add_argument("--from-json", default="", help="no runs: recompute the targets, overhead and table from "
                    "this results file (e.g. after changing the summary code)")
    a = ap.parse_args()
    a.bin_dir = os.path.join(a.build_dir if os.path.isabs(a.build_dir) else os.path.join(ROOT, a.build_dir), "bin")
    for exe in ("pac-plan", "pac-sim", "pac-run", "pac-worker"):
        if not os.path.exists(os.path.join(a.bin_dir, exe)):
            log("%s not built in %s (scripts/build.sh pac-plan pac-sim pac-run pac-worker)" % (exe, a.bin_dir))
            return 2
    try:
        scen = json.load(open(a.scenario))
    except (OSError, ValueError) as e:
        log("%s: %s" % (a.scenario, e))
        return 2
    if a.from_json:
        res = json.load(open(a.from_json))
        if not res.get("idle_worker_rss_bytes"):
            res["idle_worker_rss_bytes"] = idle_worker_rss(a.bin_dir, a.work)
        res["targets"] = targets(res["rows"], res.get("idle_worker_rss_bytes"))
        res["overhead"] = overhead(a, res["rows"], scen)
        write_atomic(a.out, json.dumps(res, indent=1, sort_keys=True) + "\n")
        update_doc(a.doc, markdown(res))
        return 0
    if a.rows:
        rows_to_run = [tuple(x.split("/", 1)) for x in a.rows.split(",") if x]
    else:
        rows_to_run = list(PAC_ROWS) + [(s, m) for s in BASELINES for m in a.methods.split(",") if m]
    os.makedirs(a.work, exist_ok=True)
    if not a.model:
        a.model = os.path.join(a.work, scen["model"] + "-seed1.bin")
        if not os.path.exists(a.model):
            log("writing a random-init checkpoint %s" % a.model)
            write_random_checkpoint(a.model, os.path.join(a.profiles, "models", scen["model"] + ".json"))
    data_file = os.path.join(a.work, "train.txt")
    write_train_data(data_file, scen["data"]["samples"], a.data)

    res = {"format": "pac-testbed-compare", "scenario_file": os.path.relpath(a.scenario, ROOT),
           "scenario": scen["name"], "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "uptime_before": uptime(), "cpus": os.cpu_count(), "rows": []}
    res["idle_worker_rss_bytes"] = idle_worker_rss(a.bin_dir, a.work)
    log("start: " + res["uptime_before"])
    t0 = time.time()
    for i, (strategy, method) in enumerate(rows_to_run):
        row = one_row(a, scen, strategy, method, data_file)
        res["rows"].append(row)
        m = row.get("measured") or {}
        log("[%d/%d] %s/%s: %s total %s s (%.0f s elapsed)" % (i + 1, len(rows_to_run), strategy, method,
                                                               row["status"], m.get("total_s"), time.time() - t0))
        # Written after every row, so an interrupted run still leaves its rows.
        res["uptime_after"] = uptime()
        res["elapsed_s"] = round(time.time() - t0, 1)
        res["rows_planned"] = len(rows_to_run)
        res["targets"] = targets(res["rows"], res.get("idle_worker_rss_bytes"))
        res["overhead"] = overhead(a, res["rows"], scen)
        write_atomic(a.out, json.dumps(res, indent=1, sort_keys=True) + "\n")
        update_doc(a.doc, markdown(res))
    log("wrote %s and %s in %.0f s; %s" % (a.out, a.doc, res["elapsed_s"], res["uptime_after"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
