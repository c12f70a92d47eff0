#!/usr/bin/env python3
"""Profile arithmetic for bench/calibrate_testbed.sh (docs/profiling.md, "Testbed profiles").

    calibrate_profiles.py merge OUT ROUND.json [ROUND.json ...]
        the reference rounds of one model -> one reference profile: every timing the median
        of its rounds' medians (kept in round_medians_s), each brought to the rounds'
        middle speed level first (calibration.reference_rounds[].level); the cache's
        figures those of the round with the median write rate
    calibrate_profiles.py sustained RAW.json REF.json QUOTA OUT
        a profile measured under a CPU quota -> the testbed profile: every rate the
        reference's no-quota 1-thread rate of the same kind and micro-batch x min(1, quota)
    calibrate_profiles.py storage REF.json PROFILE.json [PROFILE.json ...]
        only the activation cache's figures of testbed profiles, from a fresh no-quota run
        (rates x, fixed costs per record / the profile's sustained factor); the rest stays
    calibrate_profiles.py corun CORUN.json PROFILE.json [PROFILE.json ...]
        the co-run slowdown (pac-profile --corun of the same model) into testbed profiles:
        corun_slowdown per micro-batch, each at least 1 (below is the host's noise), the
        measurement kept in calibration.corun

Python 3 standard library only; files are written atomically (temp file, then rename).
"""
import json
import os
import statistics
import sys


def write_json_atomic(out, doc):
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, out)


STORAGE_RATES = ("storage_read_bytes_per_s", "storage_write_bytes_per_s")
STORAGE_RECORDS = ("storage_read_record_s", "storage_write_record_s")


def timing_key(t):
    return (t["kind"], t["micro_batch"], t["threads"])


def round_levels(profs):
    """Each round's speed level against the others: the median over the 1-thread timings
    every round has of (the round's median_s / the median of all rounds' median_s). 1.0 =
    a typical round; 1.2 = everything took 20% longer in this round (the host was slower
    then). pac-profile interleaves a round's measurements (its --rounds), so within a
    round the kinds and micro-batches share the host's moment; between rounds, minutes
    apart, the level moves and nothing else."""
    tables = [{timing_key(t): t["median_s"] for t in p["calibration"]["timings"]} for p in profs]
    common = [k for k in tables[0] if k[2] == 1 and all(tb.get(k, 0) > 0 for tb in tables)]
    if not common:
        return [1.0] * len(profs)
    mid = {k: statistics.median(tb[k] for tb in tables) for k in common}
    return [statistics.median(tb[k] / mid[k] for k in common) for tb in tables]


def merge(out, files):
    profs = [json.load(open(f)) for f in files]
    merged = profs[0]
    # Every timing is the median over rounds of the round's median brought to the middle
    # level (round_levels): a per-key median of the raw medians would take micro-batch 2
    # from one round and micro-batch 4 from another, and their ratio would carry the
    # host's drift between the rounds, which the interleaved rounds inside pac-profile
    # were there to remove.
    levels = round_levels(profs)
    level = statistics.median(levels)
    by_key = {}
    for p, lv in zip(profs, levels):
        for t in p["calibration"]["timings"]:
            by_key.setdefault(timing_key(t), []).append((t["median_s"], t["median_s"] * level / lv))
    for t in merged["calibration"]["timings"]:
        ms = by_key[timing_key(t)]
        t["round_medians_s"] = [m for m, _ in ms]
        t["median_s"] = statistics.median(n for _, n in ms)
        t["flops_per_s"] = t["flops"] / t["median_s"] if t["median_s"] > 0 else 0
    # The cache's figures come whole from one round, the one with the median write rate,
    # not as a median per field: a round's rates and fixed costs per record are one fit of
    # its measurements (calibration.cache_records), which stay beside them.
    # (Taken before anything is removed: the median round may be the first, which is
    # `merged` itself; popping first lost its rates, 1 time in 3, CI at 0b350eb.)
    mid = sorted(profs, key=lambda p: p["storage_write_bytes_per_s"])[(len(profs) - 1) // 2]
    figures = {k: mid[k] for k in STORAGE_RATES + STORAGE_RECORDS if k in mid}
    records = {k: mid["calibration"][k] for k in ("cache_records", "storage_device")
               if mid["calibration"].get(k) is not None}
    for k in STORAGE_RATES + STORAGE_RECORDS:
        merged.pop(k, None)
    merged.update(figures)
    c = merged["calibration"]
    for k in ("cache_records", "storage_device"):
        c.pop(k, None)
    c.update(records)
    c["load_average_after"] = profs[-1]["calibration"]["load_average_after"]
    c["reference_rounds"] = [{"date": p["calibration"]["date"], "level": round(lv, 6),
                              "load_average": [p["calibration"]["load_average_before"],
                                               p["calibration"]["load_average_after"]]}
                             for p, lv in zip(profs, levels)]
    write_json_atomic(out, merged)


def storage_apply(prof, ref, factor):
    """The activation cache's figures of a testbed profile from a no-quota reference run.
    They are CPU work too (conversion, SHA-256, file create, fsync, copies from the page
    cache): the reference's rates x min(1, q) and its fixed costs per record / min(1, q),
    as for compute."""
    for k in STORAGE_RATES:
        prof[k] = ref[k] * factor
    for k in STORAGE_RECORDS:
        prof.pop(k, None)
        if ref.get(k, 0) > 0:
            prof[k] = ref[k] / factor
    c = prof["calibration"]
    rc = ref["calibration"]
    c["storage_rates"] = ("activation cache write/read rates (pac-profile cache_measure) of the reference run of %s x "
                          "%.2f, its fixed costs per record / the same factor; the reference's measurements are in "
                          "reference_cache_records, its raw device rates in reference_storage_device"
                          % (rc["date"], factor))
    c["reference_storage_device"] = rc.get("storage_device")
    c["reference_cache_records"] = rc.get("cache_records")


def storage(ref_file, outs):
    """Only the cache figures, re-measured: the rates, runtime costs and their fits stay."""
    ref = json.load(open(ref_file))
    for out in outs:
        prof = json.load(open(out))
        if prof["calibration"].get("model") != ref["calibration"]["model"]:
            print("calibrate_profiles: %s: calibration.model %r, but the reference %s timed %r"
                  % (out, prof["calibration"].get("model"), ref_file, ref["calibration"]["model"]), file=sys.stderr)
            return 2
        storage_apply(prof, ref, prof["calibration"]["sustained_factor"])
        write_json_atomic(out, prof)
    return 0


def corun(corun_file, outs):
    """The co-run slowdown of one model's testbed profiles (docs/profiling.md, "Co-run
    slowdown"): one measurement per model and host, whatever the quota (a throttled
    device runs at full speed while its budget lasts, and the simulator scales the
    slowdown by how busy the host's other cores are)."""
    co = json.load(open(corun_file))
    if co.get("format") != "pac-corun":
        print("calibrate_profiles: %s: format %r, expected pac-corun (pac-profile --corun)" % (corun_file, co.get("format")),
              file=sys.stderr)
        return 2
    profs = [json.load(open(out)) for out in outs]
    # Every profile checked before any is written: a wrong one leaves them all as they were.
    for out, prof in zip(outs, profs):
        if prof["calibration"].get("model") != co["model"]:
            print("calibrate_profiles: %s: calibration.model %r, but %s measured %r"
                  % (out, prof["calibration"].get("model"), corun_file, co["model"]), file=sys.stderr)
            return 2
    for out, prof in zip(outs, profs):
        prof["corun_slowdown"] = {mb: round(max(1.0, f), 4) for mb, f in co["corun_slowdown"].items()}
        prof["calibration"]["corun"] = {k: co[k] for k in ("cpu", "blas_core", "cpus", "rounds", "timings") if k in co}
        write_json_atomic(out, prof)
    return 0


def sustained(raw_file, ref_file, q, out):
    raw = json.load(open(raw_file))
    ref = json.load(open(ref_file))
    factor = min(1.0, q)
    # Reference 1-thread rates per (kind, micro-batch) from its timing table.
    ref_rate = {}
    for row in ref["calibration"]["timings"]:
        if row["threads"] == 1 and row["flops_per_s"]:
            ref_rate[(row["kind"], row["micro_batch"])] = row["flops_per_s"]
    by_kind = {}
    for key in raw["eff_flops_by_kind"]:
        kind, _, mb = key.partition("@")
        mb = int(mb) if mb else max(raw["calibration"]["micro_batches"])
        by_kind[key] = ref_rate[(kind, mb)] * factor
    raw["eff_flops_by_kind"] = by_kind
    raw["eff_flops"] = {"fp32": by_kind["layer"]}
    storage_apply(raw, ref, factor)
    # What the simulator needs to model the quota's period (bursts at 1/q the rate while
    # the budget lasts): the quota these rates are sustained under, when it throttles.
    raw.pop("sustained_quota", None)
    if factor < 1:
        raw["sustained_quota"] = factor
    # The check: the longest rows measured under the quota against the sustained rule.
    check = []
    for row in raw["calibration"]["timings"]:
        r = ref_rate.get((row["kind"], row["micro_batch"]))
        if r and row["flops_per_s"]:
            check.append({"kind": row["kind"], "micro_batch": row["micro_batch"], "median_s": row["median_s"],
                          "measured_over_ref": row["flops_per_s"] / r})
    c = raw["calibration"]
    c["rates"] = ("sustained: no-quota 1-thread rate of the same kind and micro-batch (reference run %s, "
                  "load %.2f -> %.2f) x min(1, cpu_quota) = x %.2f; calibration.timings are the raw medians "
                  "under the quota (mostly unthrottled bursts, see docs/profiling.md)"
                  % (os.path.basename(ref_file), ref["calibration"]["load_average_before"],
                     ref["calibration"]["load_average_after"], factor))
    c["sustained_factor"] = factor
    c["reference_timings"] = ref["calibration"]["timings"]
    c["reference_rounds"] = ref["calibration"].get("reference_rounds")
    c["quota_check"] = check
    raw["notes"] = ("Testbed device: one pac-worker under a %.2f-core cgroup CPU quota, 1 thread, %s. "
                    "eff_flops_by_kind = sustained rates (calibration.rates). NIC: configured (the testbed "
                    "sets links with tc per scenario). Memory: 4 GB budget. Storage: measured in /tmp."
                    % (q, c["model"]))
    raw["source"] = "bench/calibrate_testbed.sh on this machine (%s)" % c["date"]
    write_json_atomic(out, raw)


def main(argv):
    if len(argv) >= 3 and argv[0] == "merge":
        merge(argv[1], argv[2:])
    elif len(argv) == 5 and argv[0] == "sustained":
        sustained(argv[1], argv[2], float(argv[3]), argv[4])
    elif len(argv) >= 3 and argv[0] == "storage":
        return storage(argv[1], argv[2:])
    elif len(argv) >= 3 and argv[0] == "corun":
        return corun(argv[1], argv[2:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
