#!/usr/bin/env python3
"""Fidelity harness (issue 6): for every testbed scenario in bench/fidelity/*.json and
every strategy, plan it (pac-plan), simulate the plan (pac-sim --plan), run the same
plan on the emulated testbed (pac-run --testbed) when that exists, and compare the
two (pac-sim --validate). Writes bench/results/fidelity.json, a markdown table
(bench/results/fidelity.md, and into docs/fidelity.md with --update-docs) and a PNG
plot of simulated against measured epoch times. docs/fidelity.md describes it.

Works without pac-run --testbed: measured columns are then "n/a", every row says
"skipped: <why>", and the plot puts the simulated epoch times against the planner's own
prediction (labelled so) until measurements exist.

    BUILD_DIR=build-val python3 bench/fidelity.py
    python3 bench/fidelity.py --scenarios bench/fidelity/fid-d512-4x050-switched1000-cache.json \\
        --strategies pac,eddl --model-map llama-d512-l8=/path/to/d512-checkpoint --update-docs

Python 3 standard library only (the PNG is written with zlib + struct).
"""
import argparse
import glob
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
STRATEGIES = "pac,pac-opt,standalone,eddl,ecofl,asteroid"
# Issue 6 targets: MAPE of epoch time over the suite and in every scenario, ranking.
TARGET_MEAN_PCT = 10.0
TARGET_SCENARIO_PCT = 15.0
DOC_BEGIN = "<!-- fidelity-table begin (bench/fidelity.py --update-docs) -->"
DOC_END = "<!-- fidelity-table end -->"


def log(msg):
    print("fidelity: " + msg, file=sys.stderr, flush=True)


def run_cmd(cmd, timeout_s):
    """(rc, stdout, stderr); rc None when it ran past timeout_s, -1 when it could not start."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        return None, e.stdout or "", "timed out after %d s" % timeout_s
    except OSError as e:
        return -1, "", str(e)


def last_line(text):
    lines = [l.strip() for l in (text or "").splitlines() if l.strip()]
    return lines[-1] if lines else ""


# ---------------------------------------------------------------- pac-run capability

def run_capability(bin_dir, timeout_s, mode):
    """"" when pac-run (--testbed in testbed mode) can be tried, else why not (the skip reason)."""
    exe = os.path.join(bin_dir, "pac-run")
    if not os.path.exists(exe):
        return "pac-run not built (%s)" % exe
    rc, out, err = run_cmd([exe, "--help"], timeout_s)
    if rc != 0:
        return "pac-run --help failed: " + last_line(err or out)
    if mode == "testbed" and "--testbed" not in out:
        return "pac-run has no --testbed option yet"
    return ""


def run_skip_reason(rc, err):
    """A pac-run failure that means 'cannot measure here' rather than 'the run broke'."""
    text = err.lower()
    if "--testbed" in text and ("not expected" in text or "unknown option" in text):
        return "pac-run has no --testbed option (%s)" % last_line(err)
    if "testbed" in text and any(k in text for k in ("not root", "namespace", "unavailable", "not available",
                                                     "cgroup", "capability")):
        return "testbed unavailable: " + last_line(err)
    return ""


# ---------------------------------------------------------------- one scenario x strategy

def local_mode_reason(scen):
    """--run-mode local runs the workers on loopback without quotas or tc: only a scenario
    of 1-core devices (no more than this machine has) on >= 1 Gbit/s links describes it."""
    devs = scen["cluster"]["devices"]
    n = sum(d.get("count", 1) for d in devs)
    if any(d.get("cpu_quota", 0) != 1.0 for d in devs) or n > (os.cpu_count() or 1):
        return "local mode needs devices of cpu_quota 1.0, at most %d of them" % (os.cpu_count() or 1)
    if scen["network"].get("bandwidth_mbps", 0) < 1000:
        return "local mode needs >= 1000 Mbit/s links (loopback has no tc)"
    return ""


def profile_calibration(profiles_dir, ref, scen_file=None):
    """The `calibration` block of a scenario device's profile reference: a name in
    <profiles_dir>/devices/, or (with scen_file) a .json path, relative to the scenario.
    {} for a profile without one; None for an inline profile, a path without scen_file,
    or a missing or broken file (pac-plan reports those itself)."""
    if not isinstance(ref, str):
        return None
    if ref.endswith(".json"):
        if scen_file is None:
            return None
        path = ref if os.path.isabs(ref) else os.path.join(os.path.dirname(scen_file), ref)
    else:
        path = os.path.join(profiles_dir, "devices", ref + ".json")
    try:
        return json.load(open(path)).get("calibration") or {}
    except (OSError, ValueError):
        return None


def quota_mismatches(scen_file, scen, profiles_dir):
    """Devices whose cpu_quota differs from the quota their calibrated profile was taken
    under: the simulation would describe another device than the testbed emulates."""
    bad = []
    for i, d in enumerate(scen["cluster"]["devices"]):
        ref = d.get("profile")
        cal = profile_calibration(profiles_dir, ref, scen_file)
        if cal is None:
            continue
        q = cal.get("cpu_quota")
        if q and abs(q - d.get("cpu_quota", 0)) > 1e-9:
            bad.append("%s: $.cluster.devices[%d].cpu_quota: expected %g (the quota %s was calibrated under), got %g"
                       % (scen_file, i, q, ref, d.get("cpu_quota", 0)))
    return bad


def host_info(bin_dir, timeout_s):
    """This machine's CPU and BLAS kernel as pac-profile sees them ({cpu, blas_core, cores});
    None when pac-profile is not built or too old to say."""
    rc, out, _ = run_cmd([os.path.join(bin_dir, "pac-profile"), "--host-info"], timeout_s)
    if rc != 0:
        return None
    try:
        return json.loads(out)
    except ValueError:
        return None


def scenario_profiles(files, profiles_dir):
    """{profile name: (model, cpu_quota, calibration or None)} for every named device
    profile the scenarios use (profiles given as a path or inline are the user's own)."""
    used = {}
    for f in files:
        try:
            scen = json.load(open(f))
        except (OSError, ValueError):
            continue  # main() reports it
        for d in scen.get("cluster", {}).get("devices", []):
            ref = d.get("profile")
            if not isinstance(ref, str) or ref.endswith(".json") or ref in used:
                continue
            cal = profile_calibration(profiles_dir, ref)
            model = scenario_model(scen)
            used[ref] = (model, d.get("cpu_quota", 0), cal)
    return used


def profiles_for_this_host(a, files, host):
    """The profiles folder the suite should use. A testbed profile is this machine's only
    if it was measured on this CPU with this BLAS kernel (calibration.cpu, blas_core): on
    another machine the committed rates can be 3x off (docs/profiling.md, "Another
    machine"), and the comparison would measure the machine, not the simulator. With
    --calibrate auto (default) such profiles are re-measured into <work>/profiles with
    bench/calibrate_testbed.sh (one reference run per model, one run per quota); always:
    every profile the scenarios use; never: the given folder as it is, with a warning."""
    used = scenario_profiles(files, a.profiles)
    a.calibration = {"mode": a.calibrate, "host": host, "profiles_dir": a.profiles, "recalibrated": []}
    if not used:
        return a.profiles
    if host is None:
        log("warning: pac-profile --host-info unavailable: cannot tell whether the profiles are this machine's")
        return a.profiles
    # Names of the profiles not measured on this CPU with this BLAS kernel.
    stale = {n for n, (_, _, cal) in used.items()
             if not cal or (cal.get("cpu"), cal.get("blas_core")) != (host["cpu"], host["blas_core"])}
    if a.calibrate == "never":
        if stale:
            log("warning: profiles %s were measured on another machine (--calibrate never)" % ", ".join(sorted(stale)))
        return a.profiles
    todo = {}
    for name, (model, quota, cal) in sorted(used.items()):
        if a.calibrate == "always" or name in stale:
            if not quota:
                log("warning: %s has no cpu_quota in its scenario: not recalibrated" % name)
                continue
            todo.setdefault(model, set()).add(quota)
    if not todo:
        return a.profiles
    out = os.path.join(a.work, "profiles")
    devices = os.path.join(out, "devices")
    os.makedirs(devices, exist_ok=True)
    for p in glob.glob(os.path.join(a.profiles, "devices", "*.json")):
        shutil.copy(p, devices)
    models = os.path.join(out, "models")
    if not os.path.exists(models):
        os.symlink(os.path.abspath(os.path.join(a.profiles, "models")), models)
    build = os.path.dirname(a.bin_dir)
    for model, quotas in sorted(todo.items()):
        qs = " ".join("%g" % q for q in sorted(quotas))
        log("calibrating %s at quota(s) %s on this machine (%s, BLAS %s) -> %s" % (
            model, qs, host["cpu"], host["blas_core"], devices))
        env = dict(os.environ, BUILD_DIR=build, OUT=devices, RESULTS=os.path.join(out, "raw"), MODELS=model,
                   QUOTAS=qs, REPEATS=str(a.calibrate_repeats),
                   OVERHEAD_CHECK="0")  # the 2-stage check sets nothing: the rows themselves are the check
        t0 = time.time()
        p = subprocess.run(["bash", os.path.join(ROOT, "bench/calibrate_testbed.sh")], cwd=ROOT, env=env,
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit("fidelity: calibrating %s failed (exit %d): %s" % (model, p.returncode,
                                                                                 last_line(p.stderr or p.stdout)))
        a.calibration["recalibrated"].append({"model": model, "quotas": sorted(quotas),
                                              "wall_s": round(time.time() - t0, 1)})
    a.calibration["profiles_dir"] = out
    return out


def reference_timings(a, scen):
    """(calibration, its 1-thread reference timings) of the scenario's first device's
    profile, what the probes and the sentinel compare with; (None, []) without them or
    without the model file they were timed on."""
    devs = scen.get("cluster", {}).get("devices", [])
    cal = profile_calibration(a.profiles, devs[0].get("profile")) if devs else None
    if not cal or not cal.get("model_file"):
        return None, []
    return cal, [t for t in cal.get("reference_timings") or cal.get("timings") or [] if t.get("threads") == 1]


def speed_probe(a, scen, work_dir, micro_batch=None):
    """How fast this machine computes now against when the scenario's profiles were
    calibrated: pac-profile times the scenario's model (1 thread, no quota, the scenario's
    micro-batch, 3 repeats, ~1-3 s) and the ratio is the profile's reference time over the
    time now, summed over the layer kinds both have. 1.0 = as calibrated; 0.7 = the
    machine computes 30% slower now (other tenants of the host: this VM's per-core speed
    was measured to swing 55-92 GFLOP/s between runs a few seconds apart, docs/fidelity.md).
    None when it cannot be measured (no profile with reference timings)."""
    cal, rows = reference_timings(a, scen)
    if not rows:
        return None
    data = scen.get("data", {})
    want = micro_batch or max(1, int(data.get("mini_batch", 1)) // max(1, int(data.get("micro_batches", 1))))
    mb = min(sorted({t["micro_batch"] for t in rows}), key=lambda m: (abs(m - want), m))
    out = os.path.join(work_dir, "probe.json")
    rc, _, err = run_cmd([os.path.join(a.bin_dir, "pac-profile"), "--model", cal["model_file"],
                          "--profiles-dir", a.profiles, "--seq", str(cal.get("seq_len", 128)),
                          "--k", str(cal.get("reduction_k", 8)), "--micro-batches", str(mb), "--threads", "1",
                          "--warmup", "1", "--repeats", "3", "--storage-mb", "0", "--storage-read-bps", "1e9",
                          "--storage-write-bps", "1e9", "--quiet", "-o", out], a.timeout)
    if rc != 0:
        log("speed probe failed: " + last_line(err))
        return None
    now = {t["kind"]: t["median_s"] for t in json.load(open(out))["calibration"]["timings"]}
    then = {t["kind"]: t["median_s"] for t in rows if t["micro_batch"] == mb}
    kinds = [k for k in then if k in now and then[k] > 0 and now[k] > 0 and k != "embed"]
    if not kinds:
        return None
    return sum(then[k] for k in kinds) / sum(now[k] for k in kinds)


def sentinel_reference(a, scen, micro_batch=None):
    """(calibration, micro_batch, seconds): the calibration's time of one backbone layer
    forward (the "layer" kind, 1 thread) at the reference size closest to micro_batch
    (the smallest without one), which the speed sentinel times during a run; None
    without reference timings."""
    cal, rows = reference_timings(a, scen)
    rows = [t for t in rows if t.get("kind") == "layer" and t.get("median_s", 0) > 0]
    if not rows:
        return None
    t = min(rows, key=lambda t: (abs(t["micro_batch"] - (micro_batch or 1)), t["micro_batch"]))
    return cal, t["micro_batch"], t["median_s"]


def sentinel_start(a, scen, work_dir, k, micro_batch=None):
    """Starts `pac-profile --sentinel` beside run k (one layer forward per
    a.sentinel_period seconds, its CPU time; docs/fidelity.md, "Speed during the run")
    and waits for its ready line. None when there is no reference to compare it with or
    it did not come up (the run then goes on with the probes alone)."""
    ref = sentinel_reference(a, scen, micro_batch)
    if ref is None:
        return None
    cal, mb, ref_s = ref
    out = os.path.join(work_dir, "sentinel-%d.json" % k)
    if os.path.exists(out):
        os.remove(out)
    cmd = [os.path.join(a.bin_dir, "pac-profile"), "--model", cal["model_file"], "--profiles-dir", a.profiles,
           "--seq", str(cal.get("seq_len", 128)), "--k", str(cal.get("reduction_k", 8)), "--micro-batches", str(mb),
           "--warmup", "2", "--quiet", "--sentinel",
           "--sentinel-period", "%.3f" % sentinel_period(a.sentinel_period, ref_s),
           "--sentinel-max-s", str(max(60, int(a.run_timeout) + 60)), "-o", out]
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        log("speed sentinel did not start: %s" % e)
        return None
    # The ready line, or the sentinel's end: a timer kills one that hangs in its warmup.
    timer = threading.Timer(a.timeout, p.kill)
    timer.start()
    line = p.stdout.readline()
    timer.cancel()
    if line.strip() != "ready":
        p.kill()
        _, err = p.communicate()
        log("speed sentinel not ready: %s" % last_line(err))
        return None
    return {"proc": p, "out": out, "ref_s": ref_s, "micro_batch": mb}


def sentinel_stop(s):
    """Stops a sentinel (SIGTERM: it writes its samples) and returns them ([] when it
    wrote none)."""
    p = s["proc"]
    p.terminate()
    try:
        p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
    try:
        return json.load(open(s["out"]))["samples"]
    except (OSError, ValueError, KeyError):
        return []


SENTINEL_MIN_SAMPLES = 2
# The sentinel's share of one core at most: its period is stretched for a layer whose
# two forwards per sample take longer than 1/20 of the asked period (d512: 13 ms at one
# sample -> 0.52 s, 50 ms at four -> 2.1 s).
SENTINEL_MAX_DUTY = 0.05
# Layer forwards per sample: one untimed, then the timed one (profile_sentinel).
SENTINEL_RUNS_PER_SAMPLE = 2


def sentinel_period(asked_s, layer_s):
    return max(asked_s, SENTINEL_RUNS_PER_SAMPLE * layer_s / SENTINEL_MAX_DUTY)


def samples_in(samples, t0, t1):
    """The sentinel's samples that started inside the run's window [t0, t1]."""
    return [x for x in samples if t0 <= x["t"] <= t1]


def speed_during(samples, ref_s, t0, t1):
    """The machine's speed during [t0, t1] against the calibration: the reference time of
    the sentinel's layer over the median CPU time of the sentinel's runs that started in
    the window. None with fewer than SENTINEL_MIN_SAMPLES of them."""
    w = [x["cpu_s"] for x in samples_in(samples, t0, t1) if x.get("cpu_s", 0) > 0]
    if len(w) < SENTINEL_MIN_SAMPLES:
        return None
    return ref_s / statistics.median(w)


def run_speed(run, source="during"):
    """(speed, "during" | "probes") a run is compared at: the sentinel's speed during it
    when there is one and `source` is "during", else the mean of the probes before and
    after; (None, None) without either."""
    if source == "during" and run.get("speed_during"):
        return run["speed_during"], "during"
    if run.get("machine_speed"):
        return sum(run["machine_speed"]) / 2, "probes"
    return None, None


def plan_at_speed(plan_file, speed, out_file, cores_taken=0.0):
    """The plan with every compute task (forward, backward, optimizer) taking 1/speed its
    planned seconds: what the simulator predicts for the machine as fast as the probes
    measured it. Communication and cache I/O are not CPU-speed bound and stay; so do the
    switch's local work (local tasks) and a phase's first use (first_extra_s): page
    faults and freeing memory, not the kernels the probe times. `cores_taken`: what else
    ran on the host during the run (the speed sentinel's share of a core), taken off a
    shared host's cores (cluster.host_cores, when the plan has one)."""
    p = json.load(open(plan_file))
    cl = p.get("scenario", {}).get("cluster", {})
    if cores_taken > 0 and cl.get("host_cores", 0) > 0:
        cl["host_cores"] = cl["host_cores"] - cores_taken
    for seg in p["segments"]:
        for t in seg["tasks"]:
            if t["kind"] in ("forward", "backward", "optimizer"):
                t["seconds"] = t["seconds"] / speed
    write_atomic(out_file, json.dumps(p))


# The runtime-cost and storage fields of a device profile: what --reprofile takes from
# other profiles while the plan's layout and rates stay.
REPROFILE_FIELDS = ("storage_read_bytes_per_s", "storage_write_bytes_per_s", "storage_read_record_s",
                    "storage_write_record_s", "task_overhead_s", "message_overhead_s", "step_overhead_s",
                    "throttle_delay_s", "sustained_quota", "cpu_work_factor", "compute_jitter_cv", "corun_slowdown")


def plan_reprofiled(plan_file, devices_dir, out_file):
    """The plan with each device's embedded profile given the REPROFILE_FIELDS of the
    profile of the same name in `devices_dir` (absent there = absent), and its compute
    tasks re-priced as the planner prices them: the kernels' part of each task (its
    seconds less task_overhead_s, and the optimizer's less step_overhead_s) scaled by
    the change in cpu_work_factor (every rate is divided by it), plus the new per-task
    costs. The same layout and rates, the other profiles' runtime costs. The simulator
    reads the rest (cache I/O, latencies, the quota) from the profiles."""
    p = json.load(open(plan_file))
    old, new = [], []
    for dev in p["scenario"]["cluster"]["devices"]:
        prof = dev["profile"]
        nprof = json.load(open(os.path.join(devices_dir, prof["name"] + ".json")))
        old.append(dict(prof))
        for k in REPROFILE_FIELDS:
            prof.pop(k, None)
            if k in nprof:
                prof[k] = nprof[k]
        new.append(prof)
    for seg in p["segments"]:
        for t in seg["tasks"]:
            if t["kind"] not in ("forward", "backward", "optimizer"):
                continue
            o, n = old[t["device"]], new[t["device"]]

            def costs(prof):
                return prof.get("task_overhead_s", 0) + (prof.get("step_overhead_s", 0) if t["kind"] == "optimizer" else 0)
            kernels = t["seconds"] - costs(o)
            t["seconds"] = kernels * n.get("cpu_work_factor", 1) / o.get("cpu_work_factor", 1) + costs(n)
    write_atomic(out_file, json.dumps(p))


def plan_on_host(plan_file, cores, out_file):
    """The plan with its scenario's devices on one host of `cores` cores
    (cluster.host_cores; 0 removes it): what --refinish --host-cores compares with."""
    p = json.load(open(plan_file))
    p["scenario"]["cluster"].pop("host_cores", None)
    if cores > 0:
        p["scenario"]["cluster"]["host_cores"] = cores
    write_atomic(out_file, json.dumps(p))


def scenario_on_host(a, scen_file, scen, work_dir):
    """The scenario to plan and simulate a measured row with: the file itself, or, when
    the runs share this machine (a.host_cores > 0), a copy in `work_dir` whose
    cluster.host_cores says so (the simulator then shares the host's cores among the
    devices that compute at once, docs/simulator.md "Shared host")."""
    cores = getattr(a, "host_cores", 0) or 0
    if cores <= 0:
        return scen_file
    s = json.loads(json.dumps(scen))
    s.setdefault("cluster", {})["host_cores"] = cores
    out = os.path.join(work_dir, "scenario.json")
    write_atomic(out, json.dumps(s, indent=1) + "\n")
    return out


def write_train_data(path, samples, source):
    """`samples` paragraphs (cycling through `source`). A paragraph longer than seq_len+1
    tokens becomes several examples, so pac-run also gets `--samples 0`: it trains on the
    first data.samples examples, exactly the epoch the plan and the simulator price
    (before that flag, runs trained on ~2x the simulated data)."""
    paras = [p.strip() for p in open(source).read().split("\n\n") if p.strip()]
    if not paras:
        raise SystemExit("fidelity: %s has no paragraphs" % source)
    with open(path, "w") as f:
        for i in range(samples):
            f.write(paras[i % len(paras)] + "\n\n")


def epochs_of(report):
    return [e["time_s"] for e in report.get("epochs", [])]


def scenario_model(scen):
    """The scenario's model name (its "model" is a name or an inline config)."""
    return scen["model"]["name"] if isinstance(scen["model"], dict) else scen["model"]


def speed_key(scen, micro_batch=None):
    """What a speed probe depends on: the scenario's model and data (micro-batch, seq), and
    the micro-batch size the probe times (the plan's, plan_micro_batch)."""
    key = scenario_model(scen) + " " + json.dumps(scen.get("data", {}), sort_keys=True)
    return key + (" probe-mb %d" % micro_batch if micro_batch else "")


def plan_micro_batch(plan_file):
    """The samples per compute task that carry most of the plan's forward and backward
    seconds (rounded; None for a plan without them): what the machine-speed probes and
    the sentinel time for this row. A pipeline plan of 8 micro-batches of one sample runs
    at 1 where the scenario says 2, and the calibration's rate of each size carries its
    own error (12-07: the d512 layer at 1 sample measured 0.495 of the time at 2, where
    the runtime and later probes took 0.51-0.56), which a probe at another size does not
    see."""
    p = json.load(open(plan_file))
    w = {}
    for seg in p.get("segments", []):
        times = seg.get("repeat", 1) * (seg.get("epoch_last", 1) - seg.get("epoch_first", 1) + 1)
        for t in seg.get("tasks", []):
            if t.get("kind") in ("forward", "backward"):
                mb = max(1, int(round(t.get("samples", 1))))
                w[mb] = w.get(mb, 0.0) + times * t.get("seconds", 0.0)
    return max(w, key=lambda m: (w[m], -m)) if w else None


def suite_speeds(rows):
    """Per speed key, the median of every machine-speed probe taken around the suite's
    runs of that model (two per run): how fast this machine was over the suite against
    the calibration, from ~2 x rows x repeats probes instead of the two around one run.
    A single 1-3 s probe is itself noisy (this VM's speed moves from second to second);
    their median over the suite is not, and it corrects what a per-run probe cannot: a
    calibration taken in a slower or faster stretch than the suite ran in."""
    probes = {}
    for r in rows:
        for run in r.get("runs") or []:
            if run.get("machine_speed") and r.get("speed_key"):
                probes.setdefault(r["speed_key"], []).extend(run["machine_speed"])
    return {k: statistics.median(v) for k, v in probes.items()}


def validate_at_speed(a, row, plan, report, speed, tag, prefix, cores_taken=0.0):
    """pac-sim --validate of the row's run against its plan with every compute task at
    1/speed its seconds (and cores_taken off a shared host, plan_at_speed):
    row[prefix + "sim_epoch_s" / "sim_total_s" / "epoch_mape_pct"]."""
    d = os.path.dirname(plan)
    adj_plan = os.path.join(d, "plan-at-%s.json" % tag)
    plan_at_speed(plan, speed, adj_plan, cores_taken)
    adj_val = os.path.join(d, "validate-at-%s.json" % tag)
    rc, out, err = run_cmd([os.path.join(a.bin_dir, "pac-sim"), "--validate", report, "--plan", adj_plan,
                            "--json", adj_val, "--quiet"], a.timeout)
    if rc != 0 or not os.path.exists(adj_val):
        log("validate at the %s failed: %s" % (tag, last_line(err or out)))
        return
    va = json.load(open(adj_val))
    row[prefix + "sim_epoch_s"] = [e["predicted_s"] for e in va["epochs"]]
    row[prefix + "sim_total_s"] = va["total"]["predicted_s"]
    row[prefix + "epoch_mape_pct"] = va["epoch_mape_pct"]


def prepare_row(a, scen_file, scen, strategy, work, run_reason, trace_this):
    """Plans and simulates one row. Returns (row, job): job is what measure_once needs to
    run the plan (None when the row is not measured: no plan, no simulation, or a reason
    the runs cannot happen here, which the row's `measured` says)."""
    bin_dir = a.bin_dir
    name = scen["name"]
    d = os.path.join(work, name, strategy)
    os.makedirs(d, exist_ok=True)
    plan = os.path.join(d, "plan.json")
    row = {"scenario": name, "strategy": strategy, "groups": None, "sim_epoch_s": None, "sim_total_s": None,
           "planner_epoch_s": None, "measured_epoch_s": None, "measured_total_s": None,
           "epoch_mape_pct": None, "epoch_max_error_pct": None, "status": "ok", "measured": None}
    scen_file = scenario_on_host(a, scen_file, scen, d)
    rc, out, err = run_cmd([os.path.join(bin_dir, "pac-plan"), scen_file, "--strategy", strategy,
                            "--profiles", a.profiles, "-o", plan], a.timeout)
    if rc != 0:
        row["status"] = "no plan: " + last_line(err or out)
        return row, None
    sim = os.path.join(d, "sim.json")
    cmd = [os.path.join(bin_dir, "pac-sim"), scen_file, "--plan", plan, "--profiles", a.profiles,
           "--json", sim, "--quiet"]
    if trace_this:
        cmd += ["--trace", os.path.join(a.trace_dir, "fidelity-%s-%s.sim.trace.json" % (name, strategy))]
    rc, out, err = run_cmd(cmd, a.timeout)
    if rc not in (0, 1) or not os.path.exists(sim):
        row["status"] = "sim failed: " + last_line(err or out)
        return row, None
    rep = json.load(open(sim))
    row["groups"] = rep.get("groups")
    if rep.get("status") != "ok":
        row["status"] = "sim: " + rep.get("status", "?") + " " + rep.get("failure", {}).get("message", "")
        return row, None
    row["sim_epoch_s"] = epochs_of(rep)
    row["sim_total_s"] = rep["total_s"]
    row["planner_epoch_s"] = rep.get("predicted", {}).get("epoch_s")

    if not run_reason and a.run_mode == "local":
        run_reason = local_mode_reason(scen)
    if run_reason:
        row["measured"] = "skipped: " + run_reason
        return row, None
    data = os.path.join(work, name, "train.txt")
    if not os.path.exists(data):
        write_train_data(data, scen["data"]["samples"], a.data)
    cmd = [os.path.join(bin_dir, "pac-run"), plan, "--" + a.run_mode, "--tokenizer", a.tokenizer, "--data", data,
           "--eval-fraction", "0", "--samples", "0", "--quiet"]
    model = scenario_model(scen)
    if model in a.model_map:
        cmd += ["--model", a.model_map[model]]
    cmd += a.run_args
    row["probe_micro_batch"] = plan_micro_batch(plan) if getattr(a, "probe_plan_micro_batch", False) else None
    row["speed_key"] = speed_key(scen, row["probe_micro_batch"])
    job = {"scen": scen, "dir": d, "plan": plan, "cmd": cmd, "runs": [], "probe_mb": row["probe_micro_batch"],
           "trace": (os.path.join(a.trace_dir, "fidelity-%s-%s.run.trace.json" % (name, strategy))
                     if trace_this and a.run_has_trace else None),
           "speed_key": row["speed_key"]}
    return row, job


def measure_once(a, job, k):
    """Run k (1-based) of a row's plan: pac-run -> <dir>/run-<k>.json, with the machine's
    speed probed right before and right after (the probe after one run is the probe
    before the next run of the same model). Returns the run's record."""
    report = os.path.join(job["dir"], "run-%d.json" % k)
    cmd = job["cmd"] + ["--report", report]
    if job["trace"]:
        cmd += ["--trace", os.path.join(job["dir"], "run-%d.trace.json" % k)]
    scen = job["scen"]
    log("%s / %s: pac-run --%s (run %d of %d)" % (scen["name"], os.path.basename(job["dir"]), a.run_mode, k,
                                                   a.repeats))
    speed_before = a.last_probe[1] if a.probe and a.last_probe and a.last_probe[0] == job["speed_key"] else (
        speed_probe(a, scen, job["dir"], job.get("probe_mb")) if a.probe else None)
    sentinel = (sentinel_start(a, scen, job["dir"], k, job.get("probe_mb"))
                if a.probe and getattr(a, "sentinel_period", 0) > 0 else None)
    t0 = time.time()
    load_before = os.getloadavg()[0]
    rc, out, err = run_cmd(cmd, a.run_timeout)
    t1 = time.time()
    samples = sentinel_stop(sentinel) if sentinel else []
    speed_after = speed_probe(a, scen, job["dir"], job.get("probe_mb")) if a.probe else None
    a.last_probe = (job["speed_key"], speed_after)
    # Other work on this machine slows the measured side only: keep the load with the run.
    run = {"run": k, "report": report, "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
           "machine_speed": ([round(speed_before, 3), round(speed_after, 3)]
                             if speed_before and speed_after else None)}
    if sentinel:
        sd = speed_during(samples, sentinel["ref_s"], t0, t1)
        run["speed_during"] = round(sd, 3) if sd else None
        inside = samples_in(samples, t0, t1)
        run["sentinel_samples"] = len(inside)
        # Its share of a core over the run, which the comparison takes off the host.
        run["sentinel_cores"] = (round(SENTINEL_RUNS_PER_SAMPLE * sum(x["wall_s"] for x in inside) / (t1 - t0), 4)
                                 if t1 > t0 else 0.0)
    if rc != 0:
        why = run_skip_reason(rc, err)
        run["measured"] = ("skipped: " + why) if why else (
            "failed (exit %s after %.0f s): %s" % (rc, time.time() - t0, last_line(err or out)))
        return run
    rep = json.load(open(report))
    run["measured"] = "ok"
    run["total_s"] = rep.get("total_s")
    run["epoch_s"] = epochs_of(rep)
    # The workers' CPU seconds (every thread; bench/calibrate_overhead.py's cpu_work_factor).
    run["cpu_s"] = [dv.get("cpu_s") for dv in rep.get("devices", []) if dv.get("used")]
    return run


def median_run(runs):
    """The run whose total time is the median of the row's successful runs (the lower of
    the two middle ones for an even count): the row is compared on one real run, whole
    (epochs, busy time, bytes and memory from the same report), and a run slowed or sped
    up by the host's swings (docs/fidelity.md, "Repeats") does not decide it."""
    ok = sorted([r for r in runs if r["measured"] == "ok" and r.get("total_s") is not None],
                key=lambda r: r["total_s"])
    return ok[(len(ok) - 1) // 2] if ok else None


def finish_row(a, row, job):
    """Compares the row's median run with its simulation (pac-sim --validate), also at the
    machine speed probed around that run."""
    bin_dir = a.bin_dir
    runs = job["runs"]
    row["runs"] = [{k: v for k, v in r.items() if k != "report"} for r in runs]
    bad = [r for r in runs if r["measured"] != "ok"]
    if bad:
        # One broken run fails the row (a crashing runtime must not pass on its other runs).
        row["measured"] = bad[0]["measured"]
        return row
    m = median_run(runs)
    row["median_run"] = m["run"]
    row["load_average"] = m["load_average"]
    report = m["report"]
    if job["trace"] and os.path.exists(os.path.join(job["dir"], "run-%d.trace.json" % m["run"])):
        shutil.copyfile(os.path.join(job["dir"], "run-%d.trace.json" % m["run"]), job["trace"])
    plan = job["plan"]
    d = job["dir"]
    val = os.path.join(d, "validate.json")
    rc, out, err = run_cmd([os.path.join(bin_dir, "pac-sim"), "--validate", report, "--plan", plan,
                            "--json", val, "--quiet"], a.timeout)
    if rc != 0 or not os.path.exists(val):
        row["measured"] = "validate failed (exit %s): %s" % (rc, last_line(err or out))
        return row
    v = json.load(open(val))
    row["measured"] = "ok"
    # The simulation compared is the plan's as validated, which --refinish with
    # --reprofile / --host-cores changes: the row's simulated times (its ranking, the plot)
    # must be that one, not the simulation prepare_row made of the plan that ran.
    row["sim_epoch_s"] = [e["predicted_s"] for e in v["epochs"]]
    row["sim_total_s"] = v["total"]["predicted_s"]
    row["measured_epoch_s"] = [e["measured_s"] for e in v["epochs"]]
    row["measured_total_s"] = v["total"]["measured_s"]
    row["epoch_mape_pct"] = v["epoch_mape_pct"]
    row["epoch_max_error_pct"] = v["epoch_max_error_pct"]
    row["validation"] = v
    # The same comparison with the simulation at the machine's probed speed: the simulator's
    # error with the host's speed swings taken out (docs/fidelity.md, "Machine speed").
    speed, source = run_speed(m, getattr(a, "speed_from", "during"))
    if speed:
        row["machine_speed"] = m.get("machine_speed")
        row["speed_during"] = m.get("speed_during")
        row["speed_source"] = source
        validate_at_speed(a, row, plan, report, speed, "speed", "adj_", m.get("sentinel_cores") or 0.0)
    # And at the suite's median probed speed for this model (suite_speeds).
    if a.suite_speed.get(row.get("speed_key")):
        row["suite_speed"] = round(a.suite_speed[row["speed_key"]], 3)
        validate_at_speed(a, row, plan, report, row["suite_speed"], "suite-speed", "suite_",
                          m.get("sentinel_cores") or 0.0)
    # How much of this host the run used: the workers' CPU seconds (every thread) and the
    # coordinator's, over host cores x training time. Near 1 the devices also compete
    # for the host (docs/fidelity.md, "Where the host runs out").
    rep = json.load(open(report))
    cpu = [dv.get("cpu_s") for dv in rep.get("devices", []) if dv.get("used")]
    coord = rep.get("coordinator_cpu_s")
    if cpu and all(c is not None for c in cpu) and coord is not None and rep.get("total_s"):
        row["measured_cpu"] = {"devices_cpu_s": [round(c, 3) for c in cpu], "coordinator_cpu_s": round(coord, 3),
                               "host_cores": os.cpu_count(),
                               "host_use": round((sum(cpu) + coord) / (os.cpu_count() * rep["total_s"]), 3)}
    return row


# ---------------------------------------------------------------- summary

def order(rows, key):
    ok = [r for r in rows if r.get(key) is not None]
    return [r["strategy"] for r in sorted(ok, key=lambda r: r[key])]


def sim_tied(x, y):
    """Two simulated totals the simulator cannot order: equal to 1e-9 relative (in
    practice, strategies that chose the same plan, e.g. pac and pac-opt both [2])."""
    return abs(x - y) <= 1e-9 * max(abs(x), abs(y))


def order_text(rows, key, tie=None):
    """"a < b = c": the order by `key`, with `=` between neighbours `tie` says are tied."""
    ok = sorted([r for r in rows if r.get(key) is not None], key=lambda r: r[key])
    out = ""
    for i, r in enumerate(ok):
        if i:
            out += " = " if tie and tie(ok[i - 1][key], r[key]) else " < "
        out += r["strategy"]
    return out


def ordered_pairs(rows, sim_key="sim_total_s"):
    """(a, b, same order) for every pair of measured strategies the simulation orders (does
    not tie): whether it is measured in the simulated order. A pair the simulation ties
    (the same plan) may be measured either way: that is run-to-run noise, not a ranking."""
    meas = [r for r in rows if r.get("measured_total_s") is not None and r.get(sim_key) is not None]
    for i, a in enumerate(meas):
        for b in meas[i + 1:]:
            if not sim_tied(a[sim_key], b[sim_key]):
                yield a, b, (a[sim_key] < b[sim_key]) == (a["measured_total_s"] < b["measured_total_s"])


def ranking_agrees(rows, sim_key="sim_total_s"):
    """The measured order agrees with the simulated one when every pair of measured
    strategies that the simulation orders is measured in that order (ordered_pairs)."""
    return all(same for _, _, same in ordered_pairs(rows, sim_key))


def run_totals(row):
    """The total times of a row's runs (the measured ones)."""
    return [r["total_s"] for r in row.get("runs") or [] if r.get("measured") == "ok" and r.get("total_s")]


def runs_separate(a, b):
    """Whether two rows' runs order them beyond the host's noise: every run of one is
    faster than every run of the other (the ranges of their total times do not overlap).
    A pair whose ranges overlap is one the measurement itself orders differently from
    round to round."""
    ta, tb = run_totals(a), run_totals(b)
    return len(ta) > 1 and len(tb) > 1 and (max(ta) < min(tb) or max(tb) < min(ta))


def separated_pairs(rows, sim_key="sim_total_s"):
    """(pairs, agreeing): the pairs of strategies the runs separate (runs_separate) and
    the simulation does not tie, and how many of them the simulation orders as measured.
    The ranking the measurement can vouch for, where ranking_agrees also judges pairs
    a second round of runs would order the other way."""
    sep = [same for a, b, same in ordered_pairs(rows, sim_key) if runs_separate(a, b)]
    return len(sep), sum(sep)


def epoch_mape(predicted, measured):
    """pac-sim --validate's epoch MAPE: the mean over epochs of |predicted - measured| /
    measured, in percent."""
    return 100.0 * sum(abs(p - m) / m for p, m in zip(predicted, measured)) / len(measured)


def repeatability(rows):
    """The measurement against itself: the runs of round j taken as the prediction of the
    runs of round k, for every ordered pair of rounds, scored as the simulation is (the
    scenarios' epoch MAPE, mean and worst, and the ranking by total time): how far a
    second measurement of the same plans lands from the first on this host. The median
    of three rounds, which the simulation is compared with, carries about half that
    noise (for independent normal noise: sd 0.67 sigma against sqrt(2) sigma;
    docs/fidelity.md, "Repeatability"; less with more rounds). None with fewer than 2
    rounds of every row measured."""
    full = [r for r in rows if r.get("runs") and all(x.get("measured") == "ok" for x in r["runs"])]
    rounds = min((len(r["runs"]) for r in full), default=0)
    if rounds < 2:
        return None
    pairs = []
    for j in range(rounds):
        for k in range(rounds):
            if j == k:
                continue
            pseudo = [{"scenario": r["scenario"], "strategy": r["strategy"],
                       "epoch_mape_pct": epoch_mape(r["runs"][j]["epoch_s"], r["runs"][k]["epoch_s"]),
                       "sim_total_s": r["runs"][j]["total_s"], "measured_total_s": r["runs"][k]["total_s"]}
                      for r in full]
            s = summarize(pseudo, adjusted=False)
            pairs.append({"predicted_by": j + 1, "measured": k + 1, "epoch_mape_mean_pct": s["epoch_mape_mean_pct"],
                          "epoch_mape_worst_scenario_pct": s["epoch_mape_worst_scenario_pct"],
                          "ranking_agrees": sum(1 for x in s["scenarios"] if x["ranking_agrees"]),
                          "scenarios": len(s["scenarios"])})
    med = lambda key: statistics.median(p[key] for p in pairs)
    return {"rounds": rounds, "rows": len(full), "pairs": pairs,
            "epoch_mape_mean_pct": med("epoch_mape_mean_pct"),
            "epoch_mape_worst_scenario_pct": med("epoch_mape_worst_scenario_pct"),
            "ranking_agrees": med("ranking_agrees"), "scenarios": pairs[0]["scenarios"]}


def summarize(rows, mape_key="epoch_mape_pct", sim_key="sim_total_s", adjusted=True):
    """Per scenario and over the suite, on the plain simulation (mape_key epoch_mape_pct)
    or, for summary["at_machine_speed"], on the simulation at the probed machine speed."""
    by_scen = {}
    for r in rows:
        by_scen.setdefault(r["scenario"], []).append(r)
    scen_out = []
    measured_mapes = []
    for name, rs in by_scen.items():
        sim_order = order(rs, sim_key)
        meas = [r for r in rs if r.get(mape_key) is not None]
        s = {"scenario": name, "sim_order": sim_order, "sim_order_text": order_text(rs, sim_key, sim_tied),
             "measured_order": None, "ranking_agrees": None, "epoch_mape_pct": None}
        if meas:
            s["epoch_mape_pct"] = sum(r[mape_key] for r in meas) / len(meas)
            measured_mapes.append(s["epoch_mape_pct"])
            s["measured_order"] = order(rs, "measured_total_s")
            # Compared on the strategies both sides have; simulated ties are not an order.
            s["ranking_agrees"] = ranking_agrees(rs, sim_key)
            s["separated_pairs"], s["separated_agree"] = separated_pairs(rs, sim_key)
        scen_out.append(s)
    summary = {"rows": len(rows), "rows_measured": sum(1 for r in rows if r.get(mape_key) is not None),
               "scenarios": scen_out, "target_mean_pct": TARGET_MEAN_PCT,
               "target_scenario_pct": TARGET_SCENARIO_PCT}
    sep = [s for s in scen_out if s.get("separated_pairs") is not None]
    summary["ranking_separated"] = {"pairs": sum(s["separated_pairs"] for s in sep),
                                     "agree": sum(s["separated_agree"] for s in sep),
                                     "scenarios_agreeing": sum(1 for s in sep if s["separated_agree"] == s["separated_pairs"]),
                                     "scenarios": len(sep)}
    if measured_mapes:
        summary["epoch_mape_mean_pct"] = sum(measured_mapes) / len(measured_mapes)
        summary["epoch_mape_worst_scenario_pct"] = max(measured_mapes)
        summary["targets_met"] = (summary["epoch_mape_mean_pct"] <= TARGET_MEAN_PCT and
                                  summary["epoch_mape_worst_scenario_pct"] <= TARGET_SCENARIO_PCT and
                                  all(s["ranking_agrees"] is not False for s in scen_out))
    else:
        summary["epoch_mape_mean_pct"] = None
        summary["targets_met"] = None
    if adjusted:
        summary["repeatability"] = repeatability(rows)
    if adjusted and any(r.get("adj_epoch_mape_pct") is not None for r in rows):
        # The speeds the rows were compared at (the sentinel's during the run, else the
        # probes' mean), and how many rows took each.
        speeds = [x for r in rows for x in (
            [r["speed_during"]] if r.get("speed_source") == "during" else r.get("machine_speed") or [])]
        summary["machine_speed_range"] = [min(speeds), max(speeds)]
        summary["speed_sources"] = {src: sum(1 for r in rows if r.get("adj_epoch_mape_pct") is not None and
                                             (r.get("speed_source") or "probes") == src) for src in ("during", "probes")}
        summary["at_machine_speed"] = summarize(rows, "adj_epoch_mape_pct", "adj_sim_total_s", adjusted=False)
    if adjusted and any(r.get("suite_epoch_mape_pct") is not None for r in rows):
        summary["suite_speeds"] = sorted({r["suite_speed"] for r in rows if r.get("suite_speed")})
        summary["at_suite_speed"] = summarize(rows, "suite_epoch_mape_pct", "suite_sim_total_s", adjusted=False)
    return summary


def fmt_list(xs, f="%.2f"):
    return "n/a" if not xs else " / ".join(f % x for x in xs)


def speeds_text(r):
    """"before / during / after", the one the row was compared at in bold ("-" for a
    missing one; the mean of before and after is compared when during is missing)."""
    ms, d = r.get("machine_speed"), r.get("speed_during")
    if not ms and not d:
        return "n/a"
    f = lambda x: "-" if x is None else "%.2f" % x
    mid = "**%s**" % f(d) if r.get("speed_source") == "during" else f(d)
    return "%s / %s / %s" % (f(ms[0]) if ms else "-", mid, f(ms[1]) if ms else "-")


def markdown(rows, summary):
    out = ["| scenario | strategy | groups | simulated epoch s | planner epoch s | measured epoch s | "
           "epoch MAPE | machine speed (before / during / after) | MAPE at that speed | suite's speed | MAPE at the suite's "
           "speed | measured |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    pct = lambda v: "n/a" if v is None else "%.1f%%" % v
    for r in rows:
        status = r["status"] if r["status"] != "ok" else (r["measured"] or "")
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["scenario"], r["strategy"], r["groups"] or "-", fmt_list(r["sim_epoch_s"]),
            fmt_list(r["planner_epoch_s"]), fmt_list(r["measured_epoch_s"]), pct(r.get("epoch_mape_pct")),
            speeds_text(r), pct(r.get("adj_epoch_mape_pct")),
            "n/a" if not r.get("suite_speed") else "%.2f" % r["suite_speed"], pct(r.get("suite_epoch_mape_pct")),
            status.replace("|", "/")))
    out.append("")
    adj = summary.get("at_machine_speed")
    adj_by = {x["scenario"]: x for x in adj["scenarios"]} if adj else {}
    sui = summary.get("at_suite_speed")
    sui_by = {x["scenario"]: x for x in sui["scenarios"]} if sui else {}
    out.append("| scenario | simulated order (fastest first; = the same time) | measured order | same ranking | "
               "scenario MAPE | at machine speed: MAPE, same ranking | at the suite's speed: MAPE, same ranking |")
    out.append("|---|---|---|---|---|---|---|")
    yn = lambda v: "n/a" if v is None else ("yes" if v else "**no**")
    both = lambda x: "n/a" if not x or x["epoch_mape_pct"] is None else "%s, %s" % (pct(x["epoch_mape_pct"]),
                                                                                    yn(x["ranking_agrees"]))
    for s in summary["scenarios"]:
        out.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            s["scenario"], s.get("sim_order_text") or " < ".join(s["sim_order"]) or "-",
            " < ".join(s["measured_order"]) if s["measured_order"] else "n/a", yn(s["ranking_agrees"]),
            pct(s["epoch_mape_pct"]), both(adj_by.get(s["scenario"])), both(sui_by.get(s["scenario"]))))
    out.append("")
    if summary["epoch_mape_mean_pct"] is None:
        out.append("Measured: none (%d rows simulated; the last column says why)." % summary["rows"])
    else:
        out.append("Epoch-time MAPE over %d measured rows: mean of scenarios %.1f%% (target <= %.0f%%), worst "
                   "scenario %.1f%% (target <= %.0f%%); targets met: %s." % (
                       summary["rows_measured"], summary["epoch_mape_mean_pct"], TARGET_MEAN_PCT,
                       summary["epoch_mape_worst_scenario_pct"], TARGET_SCENARIO_PCT,
                       "yes" if summary["targets_met"] else "no"))
    if adj and adj["epoch_mape_mean_pct"] is not None:
        out.append("")
        src = summary.get("speed_sources") or {}
        out.append("At the machine speed measured for each run (%s; x%.2f-%.2f of the calibration's): mean of "
                   "scenarios %.1f%%, worst scenario %.1f%%, ranking agrees in %d of %d; targets met: %s." % (
                       "during the run by the sentinel in %d rows, the probes around it in %d" % (
                           src.get("during", 0), src.get("probes", 0)) if src.get("during") else "the probes around it",
                       summary["machine_speed_range"][0], summary["machine_speed_range"][1],
                       adj["epoch_mape_mean_pct"], adj["epoch_mape_worst_scenario_pct"],
                       sum(1 for x in adj["scenarios"] if x["ranking_agrees"]),
                       sum(1 for x in adj["scenarios"] if x["ranking_agrees"] is not None),
                       "yes" if adj["targets_met"] else "no"))
    if sui and sui["epoch_mape_mean_pct"] is not None:
        out.append("")
        out.append("At the suite's median probed speed per model (x%s of the calibration's): mean of scenarios "
                   "%.1f%%, worst scenario %.1f%%, ranking agrees in %d of %d; targets met: %s." % (
                       " / ".join("%.2f" % x for x in summary["suite_speeds"]),
                       sui["epoch_mape_mean_pct"], sui["epoch_mape_worst_scenario_pct"],
                       sum(1 for x in sui["scenarios"] if x["ranking_agrees"]),
                       sum(1 for x in sui["scenarios"] if x["ranking_agrees"] is not None),
                       "yes" if sui["targets_met"] else "no"))
    sep_text = lambda x: "%d of %d pairs, every such pair in %d of %d scenarios" % (
        x["agree"], x["pairs"], x["scenarios_agreeing"], x["scenarios"])
    if summary["epoch_mape_mean_pct"] is not None and summary["ranking_separated"]["pairs"]:
        out.append("")
        out.append("On the pairs of strategies the runs separate (every run of one faster than every run of the "
                   "other) the simulation ranks as measured %s%s%s." % (
                       sep_text(summary["ranking_separated"]),
                       "; at the probed speed %s" % sep_text(adj["ranking_separated"]) if adj else "",
                       "; at the suite's speed %s" % sep_text(sui["ranking_separated"]) if sui else ""))
    rep = summary.get("repeatability")
    if rep:
        out.append("")
        out.append("The measurement against itself (each round of runs as the prediction of another, %d ordered "
                   "pairs of %d rounds; medians, range in brackets): mean of scenarios %.1f%% (%.1f-%.1f), worst "
                   "scenario %.1f%% (%.1f-%.1f), ranking agrees in %s of %d (%d-%d). That is one round against another; the "
                   "median of the rounds, which the simulation is compared with, carries less of the host's noise "
                   "(about half with three rounds: docs/fidelity.md, \"Repeatability\")." % (
                       len(rep["pairs"]), rep["rounds"], rep["epoch_mape_mean_pct"],
                       min(p["epoch_mape_mean_pct"] for p in rep["pairs"]),
                       max(p["epoch_mape_mean_pct"] for p in rep["pairs"]), rep["epoch_mape_worst_scenario_pct"],
                       min(p["epoch_mape_worst_scenario_pct"] for p in rep["pairs"]),
                       max(p["epoch_mape_worst_scenario_pct"] for p in rep["pairs"]),
                       ("%g" % rep["ranking_agrees"]), rep["scenarios"],
                       min(p["ranking_agrees"] for p in rep["pairs"]), max(p["ranking_agrees"] for p in rep["pairs"])))
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- PNG scatter plot

# 3x5 glyphs, rows top to bottom, 3 bits each (MSB = left).
FONT = {
    "0": [7, 5, 5, 5, 7], "1": [2, 6, 2, 2, 7], "2": [7, 1, 7, 4, 7], "3": [7, 1, 7, 1, 7], "4": [5, 5, 7, 1, 1],
    "5": [7, 4, 7, 1, 7], "6": [7, 4, 7, 5, 7], "7": [7, 1, 1, 2, 2], "8": [7, 5, 7, 5, 7], "9": [7, 5, 7, 1, 7],
    ".": [0, 0, 0, 0, 2], " ": [0, 0, 0, 0, 0], "-": [0, 0, 7, 0, 0], "%": [5, 1, 2, 4, 5], "(": [1, 2, 2, 2, 1],
    ")": [4, 2, 2, 2, 4], "/": [1, 1, 2, 4, 4], "=": [0, 7, 0, 7, 0], "+": [0, 2, 7, 2, 0], ":": [0, 2, 0, 2, 0],
    "A": [2, 5, 7, 5, 5], "B": [6, 5, 6, 5, 6], "C": [7, 4, 4, 4, 7], "D": [6, 5, 5, 5, 6], "E": [7, 4, 6, 4, 7],
    "F": [7, 4, 6, 4, 4], "G": [7, 4, 5, 5, 7], "H": [5, 5, 7, 5, 5], "I": [7, 2, 2, 2, 7], "K": [5, 5, 6, 5, 5],
    "L": [4, 4, 4, 4, 7], "M": [5, 7, 7, 5, 5], "N": [6, 5, 5, 5, 5], "O": [7, 5, 5, 5, 7], "P": [7, 5, 7, 4, 4],
    "R": [6, 5, 6, 5, 5], "S": [7, 4, 7, 1, 7], "T": [7, 2, 2, 2, 2], "U": [5, 5, 5, 5, 7], "V": [5, 5, 5, 5, 2],
    "W": [5, 5, 7, 7, 5], "X": [5, 5, 2, 5, 5], "Y": [5, 5, 2, 2, 2],
}


class Canvas:
    def __init__(self, w, h):
        self.w, self.h = w, h
        self.px = bytearray(b"\xff" * (w * h * 3))

    def dot(self, x, y, c):
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i:i + 3] = bytes(c)

    def line(self, x0, y0, x1, y1, c, dash=0):
        n = max(abs(x1 - x0), abs(y1 - y0), 1)
        for k in range(n + 1):
            if dash and (k // dash) % 2:
                continue
            self.dot(round(x0 + (x1 - x0) * k / n), round(y0 + (y1 - y0) * k / n), c)

    def text(self, x, y, s, c=(0, 0, 0), scale=2):
        for ch in s.upper():
            rows = FONT.get(ch, FONT[" "])
            for ry, bits in enumerate(rows):
                for rx in range(3):
                    if bits & (4 >> rx):
                        for dy in range(scale):
                            for dx in range(scale):
                                self.dot(x + rx * scale + dx, y + ry * scale + dy, c)
            x += 4 * scale

    def png(self):
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3]) for y in range(self.h))

        def chunk(tag, data):
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xffffffff)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)) +
                chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def plot(points, x_label, path):
    """Scatter of (x, y) epoch times with y = x and +-10% lines; returns the PNG bytes."""
    W, H, L, B, R, T = 640, 480, 70, 60, 20, 40
    c = Canvas(W, H)
    # Axis to a round number: ticks every 1, 2 or 5 x 10^k, about 5 of them.
    hi = max([max(x, y) for x, y in points] + [1e-3]) * 1.05
    step = 10 ** int(f"{hi / 5:e}".split("e")[1])
    for m in (1, 2, 5, 10):
        if hi / (m * step) <= 6:
            step *= m
            break
    ticks = int(-(-hi // step))
    top = ticks * step
    sx = lambda v: round(L + v / top * (W - L - R))
    sy = lambda v: round(H - B - v / top * (H - B - T))
    c.line(L, H - B, W - R, H - B, (0, 0, 0))
    c.line(L, H - B, L, T, (0, 0, 0))
    for k in range(ticks + 1):
        v = step * k
        c.line(sx(v), H - B, sx(v), H - B + 5, (0, 0, 0))
        c.line(L - 5, sy(v), L, sy(v), (0, 0, 0))
        label = "%g" % round(v, 6)
        c.text(sx(v) - 4 * len(label), H - B + 10, label)
        c.text(L - 10 - 8 * len(label), sy(v) - 5, label)
    c.line(sx(0), sy(0), sx(top), sy(top), (120, 120, 120))
    c.line(sx(0), sy(0), sx(top / 1.1), sy(top), (200, 160, 160), dash=4)
    c.line(sx(0), sy(0), sx(top), sy(top / 1.1), (200, 160, 160), dash=4)
    for x, y in points:
        for dx in range(-3, 4):
            for dy in range(-3, 4):
                if dx * dx + dy * dy <= 9:
                    c.dot(sx(x) + dx, sy(y) + dy, (30, 90, 200))
    c.text(L + 80, H - 22, x_label + " EPOCH S")
    c.text(8, 12, "SIMULATED EPOCH S (Y) - LINES: Y=X AND +-10%")
    data = c.png()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return data


# ---------------------------------------------------------------- main

def write_atomic(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def update_docs(doc, table):
    text = open(doc).read()
    block = DOC_BEGIN + "\n" + table + DOC_END
    if DOC_BEGIN in text and DOC_END in text:
        i, j = text.index(DOC_BEGIN), text.index(DOC_END) + len(DOC_END)
        text = text[:i] + block + text[j:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    write_atomic(doc, text)


def resummarize(a):
    doc = json.load(open(a.resummarize))
    rows = doc["rows"]
    doc["summary"] = summarize(rows)
    write_atomic(a.out, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    table = markdown(rows, doc["summary"])
    if a.table:
        write_atomic(a.table, table)
    if a.update_docs:
        update_docs(os.path.join(ROOT, "docs/fidelity.md"), table)
    sys.stdout.write(table)
    return 0


def gate_mape(row):
    """What the --max-error gate judges a measured row on: the smaller of its epoch-time
    MAPE against the simulation at the calibration's machine speed and against the
    simulation at the speed probed around its median run (the plain one alone where the
    probes failed). Neither alone is a measurement of the simulator at the 20% level:
    this host's speed moves by a third within minutes (x1.34 between 04:31 and 04:42 on
    11-24, the gate's own probes going 1.03 -> 1.30 over its three runs), a 1-3 s probe
    is a snapshot of it, and fresh-clone gates have been far off on each side (plain
    30.2% with the probed 5.7% at e09b006; probed 28.6% with the plain 7.7% in CI at
    a6bb208, docs/fidelity.md "CI gate"). A simulator that is wrong fails at both speeds."""
    plain, adj = row.get("epoch_mape_pct"), row.get("adj_epoch_mape_pct")
    if plain is None or adj is None:
        return plain
    return min(plain, adj)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-dir", default=os.environ.get("BUILD_DIR", "build"))
    ap.add_argument("--scenarios", nargs="*", default=None, help="scenario files (default bench/fidelity/*.json)")
    ap.add_argument("--strategies", default=STRATEGIES)
    ap.add_argument("--profiles", default=os.path.join(ROOT, "profiles"))
    ap.add_argument("--work", default="/tmp/pac-fidelity", help="plans, reports and run data go here")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/fidelity.json"))
    ap.add_argument("--table", default=os.path.join(ROOT, "bench/results/fidelity.md"))
    ap.add_argument("--plot", default=os.path.join(ROOT, "docs/fidelity.png"))
    ap.add_argument("--trace-dir", default=os.path.join(ROOT, "bench/results"))
    ap.add_argument("--trace", default="", help="SCENARIO/STRATEGY whose trace pair is written "
                    "(default: the first scenario with its own strategy)")
    ap.add_argument("--update-docs", action="store_true", help="put the table into docs/fidelity.md")
    ap.add_argument("--no-run", action="store_true", help="simulate only (measured columns n/a)")
    ap.add_argument("--resummarize", metavar="RESULTS_JSON", default=None,
                    help="run nothing: recompute the summary, the tables (--table, --update-docs) and --out "
                    "from the rows of an earlier results file (after a change to how rows are summarized)")
    ap.add_argument("--refinish", metavar="RESULTS_JSON", default=None,
                    help="run nothing: redo every row's comparison (pac-sim --validate, the speeds) from the plans "
                    "and run reports an earlier suite left in --work, then as --resummarize")
    ap.add_argument("--reprofile", metavar="DEVICES_DIR", default=None,
                    help="with --refinish: compare the runs with their plans given the runtime costs and cache "
                    "figures of the profiles in DEVICES_DIR (plan_reprofiled): an A/B of two calibrations on "
                    "the same measurements")
    ap.add_argument("--host-cores", type=float, default=None, metavar="N",
                    help="simulate the rows' devices on one machine of N cores (cluster.host_cores: the simulator "
                    "shares them among the devices that compute at once, as the testbed's devices share this "
                    "machine); with --refinish, applied to the earlier suite's plans; default: this machine's "
                    "cores (os.cpu_count()), since the testbed's devices are processes on it; 0: not modelled "
                    "(docs/fidelity.md, 'Ninth run')")
    ap.add_argument("--run-mode", choices=["testbed", "local"], default="testbed",
                    help="testbed: pac-run --testbed (quotas, tc); local: pac-run --local on loopback, only for "
                    "scenarios of 1-core devices on >= 1 Gbit/s links")
    model_dir = os.environ.get("PAC_MODEL_DIR", os.path.join(ROOT, "..", "shared", "models"))
    ap.add_argument("--tokenizer", default=os.path.join(model_dir, "stories260K", "tok512.bin"))
    ap.add_argument("--data", default=os.path.join(ROOT, "data/personal/train.txt"),
                    help="paragraphs the run's training set is cut from")
    ap.add_argument("--model-map", action="append", default=[], help="MODEL=PATH: checkpoint pac-run loads for a "
                    "scenario model that is not a preset (llama-d512-l8)")
    ap.add_argument("--run-args", default="", help="extra pac-run arguments (split on spaces)")
    ap.add_argument("--max-error", type=float, default=None, help="exit 3 when a measured row's epoch-time MAPE "
                    "exceeds PCT or a run failed (the CI fidelity gate; rows skipped for a missing capability "
                    "- no root, no namespaces, no tokenizer - do not fail it)")
    ap.add_argument("--calibrate", choices=["auto", "always", "never"], default="auto",
                    help="auto: re-measure (into <work>/profiles) the scenarios' testbed profiles that were not "
                    "calibrated on this CPU with this BLAS kernel; always: all of them; never: use --profiles as is")
    ap.add_argument("--no-probe", dest="probe", action="store_false",
                    help="no machine-speed probe around each run (no 'at machine speed' columns)")
    ap.add_argument("--sentinel-period", type=float, default=0.0,
                    help="seconds between the speed sentinel's timed layers during each run (pac-profile --sentinel "
                    "beside pac-run, e.g. 0.5; docs/fidelity.md, \"Speed during the run\"); 0 (default) = no "
                    "sentinel, probes only: on the seventeenth run it made the comparison worse")
    ap.add_argument("--probe-plan-micro-batch", action="store_true",
                    help="probe (and run the sentinel) at the plan's micro-batch size instead of the scenario's "
                    "(plan_micro_batch; docs/fidelity.md)")
    ap.add_argument("--speed-from", choices=["during", "probes"], default="during",
                    help="the machine speed a row is compared at: the sentinel's during its run (falling back to "
                    "the probes where there is none), or the mean of the probes before and after it")
    ap.add_argument("--calibrate-repeats", type=int, default=5, help="timed repeats per layer when calibrating")
    ap.add_argument("--repeats", type=int, default=1, help="runs of every row, in rounds (every row once, then "
                    "again); a row is compared on its median run by total time (odd counts recommended)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds for pac-plan / pac-sim")
    ap.add_argument("--run-timeout", type=int, default=900, help="seconds for one pac-run")
    a = ap.parse_args()
    if a.repeats < 1:
        print("fidelity: --repeats: expected a count >= 1, got %d" % a.repeats, file=sys.stderr)
        return 2
    if a.reprofile and not a.refinish:
        print("fidelity: --reprofile: only with --refinish (it re-compares an earlier suite's runs)", file=sys.stderr)
        return 2
    if a.reprofile and not os.path.isdir(a.reprofile):
        print("fidelity: --reprofile: %s is not a folder of device profiles" % a.reprofile, file=sys.stderr)
        return 2
    if a.host_cores is not None and a.host_cores < 0:
        print("fidelity: --host-cores: expected a count >= 0, got %g" % a.host_cores, file=sys.stderr)
        return 2
    if a.host_cores is None:
        a.host_cores = float(os.cpu_count() or 0)
    if a.resummarize:
        return resummarize(a)
    if a.refinish:
        a.bin_dir = os.path.join(a.build_dir if os.path.isabs(a.build_dir) else os.path.join(ROOT, a.build_dir), "bin")
        return refinish(a)
    a.bin_dir = os.path.join(a.build_dir if os.path.isabs(a.build_dir) else os.path.join(ROOT, a.build_dir), "bin")
    for tool in ("pac-plan", "pac-sim"):
        if not os.path.exists(os.path.join(a.bin_dir, tool)):
            print("fidelity: %s not built in %s (set BUILD_DIR or --build-dir)" % (tool, a.bin_dir), file=sys.stderr)
            return 2
    raw_map, a.model_map = a.model_map, {}
    for m in raw_map:
        if "=" not in m:
            print("fidelity: --model-map expects MODEL=PATH, got %r" % m, file=sys.stderr)
            return 2
        k, v = m.split("=", 1)
        a.model_map[k] = v
    a.run_args = a.run_args.split() if a.run_args else []
    a.last_probe = None
    files = a.scenarios if a.scenarios else sorted(glob.glob(os.path.join(ROOT, "bench/fidelity/*.json")))
    if not files:
        print("fidelity: no scenarios", file=sys.stderr)
        return 2
    strategies = [s for s in a.strategies.split(",") if s]
    run_reason = "--no-run" if a.no_run else run_capability(a.bin_dir, a.timeout, a.run_mode)
    if not run_reason and not os.path.exists(a.tokenizer):
        run_reason = "tokenizer %s absent (set PAC_MODEL_DIR or --tokenizer)" % a.tokenizer
    a.run_has_trace = False
    if not run_reason:
        rc, out, _ = run_cmd([os.path.join(a.bin_dir, "pac-run"), "--help"], a.timeout)
        a.run_has_trace = "--trace" in out
    if run_reason:
        log("measured columns n/a: " + run_reason)
        a.calibration = {"mode": "not needed (nothing measured)", "profiles_dir": a.profiles, "recalibrated": []}
    else:
        # Measured rows compare the simulator with this machine: its profiles must be this machine's.
        a.profiles = profiles_for_this_host(a, files, host_info(a.bin_dir, a.timeout))

    rows, jobs = [], []
    t0 = time.time()
    for i, f in enumerate(files):
        try:
            scen = json.load(open(f))
        except (OSError, ValueError) as e:
            print("fidelity: %s: %s" % (f, e), file=sys.stderr)
            return 2
        bad = quota_mismatches(f, scen, a.profiles)
        if bad:
            print("fidelity: " + "\n".join(bad), file=sys.stderr)
            return 2
        for s in strategies:
            trace_this = (a.trace == "%s/%s" % (scen["name"], s)) if a.trace else (i == 0 and s == scen.get("strategy"))
            row, job = prepare_row(a, f, scen, s, a.work, run_reason, trace_this)
            rows.append(row)
            jobs.append(job)
    # Rounds: every row once, then every row again, so that a row's repeats are minutes
    # apart and see the host in different states (docs/fidelity.md, "Repeats").
    for k in range(1, a.repeats + 1):
        for row, job in zip(rows, jobs):
            if job is None:
                continue
            run = measure_once(a, job, k)
            job["runs"].append(run)
            log("[round %d/%d] %s / %s: sim %s, measured %s%s" % (
                k, a.repeats, row["scenario"], row["strategy"], fmt_list(row["sim_epoch_s"]),
                fmt_list(run.get("epoch_s")), "" if run["measured"] == "ok" else " (" + run["measured"] + ")"))
    finish_rows(a, rows, jobs)
    return conclude(a, rows, run_reason, t0)


def finish_rows(a, rows, jobs):
    """After the last round: every row's runs, the suite's speeds, then each row's
    comparison (finish_row)."""
    for row, job in zip(rows, jobs):
        if job is not None:
            row["runs"] = [{k: v for k, v in r.items() if k != "report"} for r in job["runs"]]
    a.suite_speed = suite_speeds(rows) if a.probe else {}
    for row, job in zip(rows, jobs):
        if job is not None:
            finish_row(a, row, job)


def refinish(a):
    """--refinish RESULTS_JSON: redo every row's comparison from the runs an earlier suite
    left in --work (its plans and run-<k>.json reports), without running anything: after
    a change to how runs are compared (not to the planner or the simulator, whose plans
    are the ones that ran)."""
    doc = json.load(open(a.refinish))
    rows, jobs = doc["rows"], []
    for row in rows:
        d = os.path.join(a.work, row["scenario"], row["strategy"])
        runs = row.get("runs")
        if not runs:
            jobs.append(None)
            continue
        for r in runs:
            r["report"] = os.path.join(d, "run-%d.json" % r["run"])
        if not row.get("speed_key"):
            row["speed_key"] = speed_key(json.load(open(os.path.join(ROOT, "bench/fidelity", row["scenario"] + ".json"))))
        plan = os.path.join(d, "plan.json")
        if a.reprofile:
            plan_reprofiled(plan, a.reprofile, os.path.join(d, "plan-reprofiled.json"))
            plan = os.path.join(d, "plan-reprofiled.json")
        # Always: 0 must also take a host out of plans that an earlier suite made with one.
        plan_on_host(plan, a.host_cores, os.path.join(d, "plan-on-host.json"))
        plan = os.path.join(d, "plan-on-host.json")
        jobs.append({"dir": d, "plan": plan, "runs": runs, "trace": None})
    a.probe = True
    a.calibration = doc.get("calibration")
    a.repeats = doc.get("repeats", 1)
    finish_rows(a, rows, jobs)
    return conclude(a, rows, doc.get("measured_skip_reason"), time.time() - doc.get("wall_s", 0))


def conclude(a, rows, run_reason, t0):
    """Summary, results file, tables, plot, docs, and the --max-error gate's verdict."""
    summary = summarize(rows)
    measured = [(x, y) for r in rows if r["measured_epoch_s"] for x, y in zip(r["measured_epoch_s"], r["sim_epoch_s"])]
    if measured:
        points, x_label = measured, "MEASURED"
    else:
        points = [(x, y) for r in rows if r["planner_epoch_s"] and r["sim_epoch_s"]
                  for x, y in zip(r["planner_epoch_s"], r["sim_epoch_s"])]
        x_label = "NO MEASUREMENTS YET - X: PLANNER PREDICTED"
    if a.plot:
        plot(points, x_label, a.plot)
    doc = {"format": "pac-fidelity", "format_version": 1, "measured_available": not run_reason,
           "run_mode": a.run_mode, "host_cores": a.host_cores,
           "measured_skip_reason": run_reason or None, "plot_x": x_label.split(" - X: ")[-1].lower(),
           "calibration": a.calibration,
           "repeats": a.repeats, "wall_s": round(time.time() - t0, 1), "summary": summary, "rows": rows}
    write_atomic(a.out, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    table = markdown(rows, summary)
    if a.table:
        write_atomic(a.table, table)
    if a.update_docs:
        update_docs(os.path.join(ROOT, "docs/fidelity.md"), table)
    sys.stdout.write(table)
    log("%d rows in %.1f s -> %s" % (len(rows), time.time() - t0, a.out))
    if a.max_error is not None:
        over = [r for r in rows if gate_mape(r) is not None and gate_mape(r) > a.max_error]
        for r in over:
            print("FAIL: %s / %s: epoch time MAPE %.1f%% (at the probed machine speed %s: %s) exceeds --max-error %g%%" % (
                r["scenario"], r["strategy"], r["epoch_mape_pct"], fmt_list(r.get("machine_speed")),
                "n/a" if r.get("adj_epoch_mape_pct") is None else "%.1f%%" % r["adj_epoch_mape_pct"], a.max_error))
        # A run that broke (not one skipped for a missing capability) is a failure too:
        # otherwise a crashing runtime would pass the gate by measuring nothing.
        # (A strategy the planner or simulator cannot place, e.g. out of memory, has no run:
        # that is a result of the scenario, not a broken run.)
        broken = [r for r in rows if (r["measured"] or "").startswith(("failed", "validate failed"))]
        for r in broken:
            print("FAIL: %s / %s: %s" % (r["scenario"], r["strategy"], r["measured"]))
        if over or broken:
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
