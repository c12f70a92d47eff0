#!/usr/bin/env python3
"""Reproduces the PAC paper's Table 2 with the simulator.

Runs `pac-sim scenarios/paper-<model>-<task>.json --compare --json` for the 12 (model,
task) columns, compares PAC's speedup over the best runnable paper baseline (Standalone,
EDDL, Eco-FL, each with Full / LoRA / Adapters) with the paper's, checks the
out-of-memory pattern, and writes bench/results/sim_paper.json plus the markdown table
used in docs/paper-reproduction.md (stdout).

    python3 bench/paper_reproduction.py [--bin BUILD/bin]     (default: $BUILD_DIR/bin, else build/bin)
"""
import argparse
import json
import os
import subprocess
import sys

MODELS = ["t5-base", "bart-large", "t5-large"]
TASKS = ["mrpc", "stsb", "sst2", "qnli"]
# Paper, Table 2 (training hours): PAC and the best baseline per model.
PAPER = {
    "t5-base": {"pac": [0.14, 0.22, 1.34, 2.12], "best": [0.31, 0.48, 1.86, 2.94], "best_name": "eddl lora"},
    "bart-large": {"pac": [0.29, 0.45, 2.69, 4.25], "best": [0.54, 0.85, 3.27, 5.16], "best_name": "ecofl adapters"},
    "t5-large": {"pac": [0.69, 1.09, 8.88, 14.02], "best": [2.75, 4.31, 16.59, 26.19], "best_name": "ecofl adapters"},
}
# Paper: which baselines run out of memory (None: the brief does not say for T5-Base).
PAPER_OOM = {
    "t5-base": None,
    "bart-large": {"standalone full", "standalone lora", "standalone adapters", "eddl full", "eddl lora", "eddl adapters"},
    "t5-large": {"standalone full", "standalone lora", "standalone adapters", "eddl full", "eddl lora", "eddl adapters",
                 "ecofl full", "ecofl lora"},
}
BASELINES = [s + " " + m for s in ["standalone", "eddl", "ecofl"] for m in ["full", "lora", "adapters"]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(os.environ.get("BUILD_DIR", "build"), "bin"))
    ap.add_argument("--out", default="bench/results/sim_paper.json")
    args = ap.parse_args()
    results = {}
    for m in MODELS:
        for i, t in enumerate(TASKS):
            scen = f"scenarios/paper-{m}-{t}.json"
            out = f"/tmp/pac-paper-{m}-{t}.json"
            subprocess.run([os.path.join(args.bin, "pac-sim"), scen, "--compare", "--quiet", "--json", out],
                           check=True, stdout=subprocess.DEVNULL)
            rows = {r["label"].split(" ")[0] + " " + r["method"].split("+")[0]: r for r in json.load(open(out))["rows"]}
            pac = rows["pac parallel_adapters"]
            runnable = [(rows[b]["total_s"], b) for b in BASELINES if rows[b]["status"] == "ok"]
            best_s, best = min(runnable) if runnable else (float("nan"), "none")
            oom = {b for b in BASELINES if rows[b]["status"] == "oom"}
            ours = best_s / pac["total_s"] if pac["status"] == "ok" else float("nan")
            paper = PAPER[m]["best"][i] / PAPER[m]["pac"][i]
            fastest = all(pac["total_s"] <= r["total_s"] for r in rows.values()
                          if r["status"] == "ok" and not r["label"].startswith("pac"))
            ep = pac.get("epoch_s", [])
            results[f"{m}/{t}"] = {
                "pac_h": pac.get("total_s", 0) / 3600, "pac_groups": pac.get("groups", ""),
                "pac_opt_h": rows["pac-opt parallel_adapters"].get("total_s", 0) / 3600,
                "best_baseline": best, "best_baseline_h": best_s / 3600,
                "speedup_ours": ours, "speedup_paper": paper, "ratio": ours / paper,
                "within_30pct": abs(ours / paper - 1) <= 0.30, "pac_fastest": fastest,
                "oom_ours": sorted(oom), "oom_paper": None if PAPER_OOM[m] is None else sorted(PAPER_OOM[m]),
                "oom_match": None if PAPER_OOM[m] is None else oom == PAPER_OOM[m],
                "later_epoch_fraction": (sum(ep[1:]) / (len(ep) - 1) / ep[0]) if len(ep) > 1 else None,
                "paper_pac_h": PAPER[m]["pac"][i], "paper_best_h": PAPER[m]["best"][i],
                "pac_sim_over_predicted": pac["total_s"] / pac["predicted_s"] if pac["status"] == "ok" else None,
                "best_sim_over_predicted": rows[best]["total_s"] / rows[best]["predicted_s"] if runnable else None,
            }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(args.out + ".tmp", args.out)

    print("| model / task | paper PAC h | ours PAC h (groups) | paper best baseline h | ours best baseline (h) | "
          "paper speedup | ours speedup | ours/paper | PAC fastest | OOM as paper | later epoch / epoch 1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k, r in results.items():
        lef = f"{r['later_epoch_fraction']:.2f}" if r["later_epoch_fraction"] is not None else "-"
        print(f"| {k} | {r['paper_pac_h']:.2f} | {r['pac_h']:.2f} {r['pac_groups']} | {r['paper_best_h']:.2f} | "
              f"{r['best_baseline']} {r['best_baseline_h']:.2f} | {r['speedup_paper']:.2f}x | {r['speedup_ours']:.2f}x | "
              f"{r['ratio']:.2f} {'ok' if r['within_30pct'] else 'MISS'} | {'yes' if r['pac_fastest'] else 'NO'} | "
              f"{'n/s' if r['oom_match'] is None else 'yes' if r['oom_match'] else 'NO'} | {lef} |")
    misses = [k for k, r in results.items() if not (r["within_30pct"] and r["pac_fastest"] and r["oom_match"] is not False)]
    print(f"\n{12 - len(misses)}/12 columns match; misses: {', '.join(misses) if misses else 'none'}")
    for k in misses:
        r = results[k]
        if r["oom_match"] is False:
            print(f"  {k}: OOM ours {r['oom_ours']} vs paper {r['oom_paper']}")
    for m in MODELS:
        r = results[f"{m}/mrpc"]
        print(f"  {m}: OOM ours {r['oom_ours']}")
    print("\nsimulated / planner-predicted total time:")
    for k, r in results.items():
        print(f"  {k}: pac {r['pac_sim_over_predicted']:.3f}, {r['best_baseline']} {r['best_sim_over_predicted']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
