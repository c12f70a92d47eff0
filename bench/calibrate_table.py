#!/usr/bin/env python3
"""Markdown tables of the testbed profiles (profiles/devices/testbed-*.json) for
docs/profiling.md, and bench/results/calibration/summary.json. Run by
bench/calibrate_testbed.sh; stdlib only."""
import glob
import json
import os
import statistics
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
KINDS = ["layer", "layer_bwd", "side", "side_bwd", "cached_step"]
MBS = [1, 2, 4, 8]


def g(v):
    return "%.1f" % (v / 1e9)


def main():
    files = sorted(glob.glob(os.path.join(ROOT, "profiles/devices/testbed-q*.json")))
    if not files:
        print("calibrate_table: no profiles/devices/testbed-q*.json", file=sys.stderr)
        return 2
    rows = []
    for f in files:
        p = json.load(open(f))
        c = p["calibration"]
        longest = {}
        for chk in c.get("quota_check", []):
            if chk["kind"] == "layer":
                longest[chk["micro_batch"]] = chk["measured_over_ref"]
        rows.append({"name": p["name"], "model": c["model"], "cpu_quota": c["cpu_quota"],
                     "load_before": c["load_average_before"], "load_after": c["load_average_after"],
                     "date": c["date"], "rates": p["eff_flops_by_kind"],
                     "layer_raw_over_ref": longest,
                     "storage_write_bytes_per_s": p["storage_write_bytes_per_s"],
                     "storage_read_bytes_per_s": p["storage_read_bytes_per_s"]})
    out = os.path.join(ROOT, "bench/results/calibration/summary.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "w") as fh:
        json.dump({"format": "pac-calibration-summary", "profiles": rows}, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(out + ".tmp", out)

    print("Sustained rates, GFLOP/s at micro-batch 1 / 2 / 4 / 8 (1 thread):\n")
    print("| profile | quota | " + " | ".join(KINDS) + " | layer under quota / no quota, mb 1 / 8 | load |")
    print("|---|---|" + "---|" * len(KINDS) + "---|---|")
    for r in rows:
        cells = []
        for k in KINDS:
            cells.append(" / ".join(g(r["rates"].get("%s@%d" % (k, mb), 0)) for mb in MBS))
        chk = r["layer_raw_over_ref"]
        ratio = "%.2f / %.2f" % (chk.get(1, 0), chk.get(8, 0)) if chk else "-"
        print("| %s | %.2f | %s | %s | %.1f-%.1f |" % (r["name"], r["cpu_quota"], " | ".join(cells), ratio,
                                                      r["load_before"], r["load_after"]))
    # The no-quota reference runs, 1 against 2 threads.
    refs = sorted(glob.glob(os.path.join(ROOT, "bench/results/calibration/ref-*.profile.json")))
    if refs:
        print("\nNo-quota reference, layer forward GFLOP/s at micro-batch 1 / 2 / 4 / 8:\n")
        print("| model | 1 thread | 2 threads | load |")
        print("|---|---|---|---|")
        for f in refs:
            c = json.load(open(f))["calibration"]
            by = {}
            for t in c["timings"]:
                if t["kind"] == "layer":
                    by[(t["threads"], t["micro_batch"])] = t["flops_per_s"]
            cols = [" / ".join(g(by.get((th, mb), 0)) for mb in MBS) for th in (1, 2)]
            print("| %s | %s | %s | %.1f-%.1f |" % (c["model"], cols[0], cols[1], c["load_average_before"],
                                                   c["load_average_after"]))
    overhead_table(files)
    return 0


def overhead_table(files):
    """The runtime costs of bench/calibrate_overhead.py (calibration.overhead) as the
    table of docs/profiling.md, "Runtime overhead"."""
    print("\nRuntime costs (bench/calibrate_overhead.py; times in s, costs in ms):\n")
    print("| profile | cpu_work_factor (measured) | one device: measured / simulated without | task_overhead_s "
          "| step_overhead_s | 2-stage check: measured / simulated | CPU beyond the work per message end "
          "| probed speed (one device / check) |")
    print("|---|---|---|---|---|---|---|---|")
    for f in files:
        p = json.load(open(f))
        o = p["calibration"].get("overhead") or {}
        plans = o.get("plans", {})
        task, chk = plans.get("task"), plans.get("message")
        if not task:
            continue
        fac = o.get("cpu_work_factor") or {}
        extra = o.get("pipeline_extra_cpu") or {}
        def speed(rec):
            return "x%.2f" % rec["fitted_at_speed"] if rec and rec.get("fitted_at_speed") else "-"
        print("| %s | %s | %.2f / %.2f | %.1f | %.1f | %s | %s | %s / %s |" % (
            p["name"], "%.2f (%.2f)" % (p.get("cpu_work_factor", 1.0), fac["measured"]) if fac else "-",
            task["median_total_s"], task["sim_total_s_without"], 1e3 * p.get("task_overhead_s", 0.0),
            1e3 * p.get("step_overhead_s", 0.0),
            "%.2f / %.2f (%+.0f%%)" % (chk["median_total_s"], chk["sim_total_s_without"],
                                       100 * (chk["sim_total_s_without"] - chk["median_total_s"]) / chk["median_total_s"])
            if chk else "-",
            "%.1f" % (1e3 * extra["per_end_sustained_s"]) if extra else "-", speed(task), speed(chk)))
    sync_table(files)


def sync_table(files):
    """The sync plan's figures (calibration.overhead.sync: 4 devices, data parallel) and
    the two values they give, for the profiles where it ran."""
    rows = [json.load(open(f)) for f in files]
    rows = [(p, (p["calibration"].get("overhead") or {}).get("sync")) for p in rows]
    rows = [(p, s) for p, s in rows if s]
    if not rows:
        return
    print("\nThe sync plan (4 devices, data parallel; spread of the devices' compute per step, and the all-reduce's "
          "tail after the last arrival, in ms; medians of the runs):\n")
    print("| profile | compute spread: runs / simulated | compute_jitter_cv | all-reduce tail: runs / simulated "
          "| message_overhead_s | probed speed |")
    print("|---|---|---|---|---|---|")
    for p, s in rows:
        print("| %s | %.3f / %.3f | %.3f | %.2f / %.2f | %.3f | %s |" % (
            p["name"], statistics.median(s["run_cv"]), s["sim_cv"], s["value_compute_jitter_cv"],
            1e3 * statistics.median(s["run_tail_s"]), 1e3 * s["sim_tail_s"], 1e3 * s["value_message_overhead_s"],
            "x%.2f" % s["simulated_at_speed"] if s.get("simulated_at_speed") else "-"))


if __name__ == "__main__":
    sys.exit(main())
