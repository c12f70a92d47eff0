#!/usr/bin/env python3
"""The runtime's own costs, measured and fitted for testbed device profiles (issue 6,
docs/profiling.md "Runtime overhead"): CPU per unit of work, per task, per step.

pac-profile times the kernels of a layer. A real run also pays the executor's dispatch,
autograd set-up and tensor bookkeeping per task, framing, copies and the receive
thread's hand-over per message, and, under a cgroup CPU quota, more CPU for the same
work (1.1-1.3x measured; the wall time is then exactly that CPU / q). This script
measures them the way SimGrid calibrates a platform: it runs two small calibration
plans on the emulated testbed (pac-run --testbed; not scenarios of the fidelity suite)
and finds the profile values with which pac-sim reproduces the measured time:

  1. task:    the profile's model on ONE device at the profile's quota, no cache, one
              epoch of 128 samples (mini-batch 16, 4 micro-batches): the device computes
              all the time (more samples where 128 ask under MIN_TASK_WORK_S of CPU).
              First its CPU per unit of work is measured, not fitted: the worker's CPU
              seconds in its steady steps (pac-run's devices[].step_cpu_s, without the
              first step, whose first use is priced apart) over the plan's work at the
              rates -> cpu_work_factor (cpu_factor). The rest of the plan's time is recorded,
              not fitted: task_overhead_s stays 0 (--fit-task-cost fits it as earlier
              versions did). The factor comes from the worker's CPU seconds, which
              already hold every CPU cost of a task (dispatch, autograd set-up), and one
              plan cannot tell a cost per task from a loss in proportion to the time:
              fitted, the residual of a 0.25-core device (4-10%) became 5.7-26 ms per
              task and made a pipeline of many small tasks simulate 40-95% slow (its
              0.25-core device spent 1.3 ms of CPU per task in all where the fit alone
              put 1.4; docs/profiling.md, "Runtime overhead"). (Earlier versions also
              fitted throttle_delay_s under a quota: a per-period loss that stood in for
              the extra CPU, and that a host shared by several devices, which then never
              throttle, did not have.)
  2. check:   TWO such devices as a 2-stage pipeline, the same data, with (1) in the
              profile: simulated and measured, nothing fitted (--no-check skips it).
              message_overhead_s stays 0: earlier versions fitted it here, and since
              most messages hide behind compute, a few per cent of the plan's time
              fitted 23-64 ms per message end (the runtime's framing and copy cost
              0.2-0.4 ms, exec_transport_bench) and made every pipeline of that profile
              simulate 25-200% slow, the CI gate's among them (11-24). What both stages
              spend in CPU beyond their work, per message end, is recorded
              (pipeline_extra_cpu) but not applied: it is not per message.
  3. sync:    FOUR such devices on this host, data parallel (one stage group: a ring
              all-reduce every step), 256 samples, every run traced (--no-sync skips
              it, --sync-only runs only it). What a barrier among devices costs, which
              a one-device plan cannot show: the spread of the devices' compute in a
              step -> compute_jitter_cv, and the all-reduce's time after the last
              device arrives -> message_overhead_s, each beyond what the simulation of
              the same plan already has (sync_measure, sync_values). Measured on this
              plan, not fitted to the fidelity suite; docs/profiling.md, item 4.

Before the fits, the cost per training step (step_overhead_s: the step's command and
result through the coordinator, in which no plan task runs) is measured, not fitted:
pac-run reports it (epochs[].step_gap_s); the one-device plan is run at one full core
for it (step_measure), and the fits then simulate with it.

Each plan runs --repeats times and its median run by total time is fitted, with the
machine's speed probed around every run (bench/fidelity.py's probe): the trial plans are
simulated at that speed (fid.plan_at_speed), because this host's speed moves by a
quarter within minutes and a fit at the calibrated speed would store the host's mood
as runtime cost. The fit is a bisection on pac-plan + pac-sim with the candidate value
written into a copy of the profile (the simulated time grows monotonically with either
value, in steps of up to one CFS period where a quota throttles); the plan's structure
is checked to be the measured one. A value the measurement puts below 0 (the kernels
alone already simulate slower than the run) is stored as 0 and the residual is kept in
the profile's calibration.overhead block, with every run's time and probes.

    python3 bench/calibrate_overhead.py                           # every testbed-q*.json
    python3 bench/calibrate_overhead.py --only testbed-q050-d512,testbed-q100-d512
    python3 bench/calibrate_overhead.py --devices /tmp/p/devices --only testbed-q050-d512
    python3 bench/calibrate_overhead.py --refit --work /tmp/pac-overhead   # fit again, run nothing
    python3 bench/calibrate_overhead.py --step-only --work /tmp/pac-step   # only the cost per step
    python3 bench/calibrate_overhead.py --factor-only --only testbed-q050-s260k   # only cpu_work_factor
    python3 bench/calibrate_overhead.py --sync-only --only testbed-q050-s260k     # only the sync plan's two values

Needs root and network namespaces (pac-run --testbed) and the stories260K tokenizer
(PAC_MODEL_DIR); exits 0 with a message, changing nothing, where those are missing.
Profiles are rewritten in place, each through a temp file and a rename.
"""
import argparse
import glob
import json
import math
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fidelity as fid  # noqa: E402  (the suite's run machinery: prepare_row, measure_once, median_run)

ROOT = fid.ROOT
FIELDS = ("task_overhead_s", "message_overhead_s")


# The calibration plans: seq 128, mini-batch 16, 4 micro-batches (the stories260K
# suite's shape; the llama ones use 8) on 128 samples, so that a run takes 1-40 s.
SAMPLES = 128
# The one-device plan that measures cpu_work_factor asks at least this much CPU work at
# the rates: more samples where 128 ask less. stories260K's 128 ask 0.55 s, in which
# one slow step moved the factor by a third (1.41 stored where 928-sample plans measured
# 0.83-1.02: docs/fidelity.md, "Twelfth run").
MIN_TASK_WORK_S = 4.0
# The first-use plan (cached: one device, the activation cache, two epochs) on half that:
# 4 steps per epoch, the first against the median of the other three.
SAMPLES_CACHED = 64
# The profile fields first_use_measure sets, and the per-run seconds it records (in
# calibration.overhead.first_use) to derive them from.
FIRST_USE_FIELDS = ("first_step_bytes_per_s", "cached_first_step_bytes_per_s", "switch_local_s")
FIRST_USE_RECORDED = ("first_step_s", "cached_first_step_s", "switch_local_s")
# The sync plan (sync_measure): SYNC_DEVICES devices at the profile's quota, one stage
# group (data parallel: a ring all-reduce every step), one epoch of SAMPLES_SYNC samples
# (16 steps; the first is left out of the statistics: it pays the phase's first use).
SYNC_DEVICES = 4
SAMPLES_SYNC = 256


def below_spread(residual, totals):
    """Whether a fit's residual (the median run's time less the simulation without the
    value) is within half the range of the runs' times, i.e. not resolved by them."""
    return len(totals) > 1 and abs(residual) <= (max(totals) - min(totals)) / 2


def profile_quota(profile):
    """The cores a profile's device computes on: its sustained quota q below one core,
    else 1 (a sustained second of its tasks is q CPU seconds)."""
    q = profile.get("sustained_quota", 0)
    return q if 0 < q < 1 else 1.0


def plan_device_work_s(plan_file, profile):
    """Per device of the plan (a dict by device index): the CPU seconds at full speed that
    its compute asks at the profile's rates: every forward, backward and optimizer task's
    seconds (less the optimizer's step_overhead_s, the coordinator's part, in which the
    worker waits) x the iterations, x the sustained quota q (a task's seconds are
    sustained ones: q of them in CPU, docs/profiling.md)."""
    q = profile_quota(profile)
    step = profile.get("step_overhead_s", 0)
    work = {}
    for seg in json.load(open(plan_file))["segments"]:
        for t in seg["tasks"]:
            if t["kind"] in ("forward", "backward", "optimizer"):
                s = seg.get("repeat", 1) * (t["seconds"] - (step if t["kind"] == "optimizer" else 0))
                work[t.get("device", 0)] = work.get(t.get("device", 0), 0.0) + s * q
    return work


def plan_cpu_work_s(plan_file, profile):
    """The one-device plan's CPU work (plan_device_work_s summed over its devices)."""
    return sum(plan_device_work_s(plan_file, profile).values())


def plan_message_ends(plan_file):
    """Per device of the plan: the message ends it handles in one run of it (every send
    task is one end at its device and one at its peer), x the iterations."""
    ends = {}
    for seg in json.load(open(plan_file))["segments"]:
        for t in seg["tasks"]:
            if t["kind"] == "send":
                for d in (t.get("device", 0), t["peer"]):
                    ends[d] = ends.get(d, 0) + seg.get("repeat", 1)
    return ends


def run_speed(run):
    """The machine's speed around one run (mean of the probes before and after), None
    when it was not probed."""
    ms = run.get("machine_speed")
    return sum(ms) / len(ms) if ms else None


def run_device_cpu_s(run):
    """Each device's CPU seconds in one run (a dict by device index: the report's
    devices[].cpu_s, in the scenario's device order; a test may give run["cpu_s"] as
    that list), {} when the report has none."""
    cpu = run.get("cpu_s")
    if cpu is None and run.get("report") and os.path.exists(run["report"]):
        rep = json.load(open(run["report"]))
        cpu = [dv.get("cpu_s") if dv.get("used", True) else None for dv in rep.get("devices", [])]
    return {d: c for d, c in enumerate(cpu or []) if c is not None}


def run_cpu_s(run):
    """The worker's CPU seconds in one run of the one-device plan, None when the report
    has none."""
    return run_device_cpu_s(run).get(0)


def steady_cpu_s(run):
    """The worker's CPU seconds in one run of the one-device plan as if every step were a
    steady one: the mean of its steps after the first (pac-run's devices[].step_cpu_s)
    x the steps. The first step pays the first use of the phase's buffers, which the
    profile prices apart (first_step_bytes_per_s); counted here too, it was paid twice.
    The whole run's CPU (run_cpu_s) for a report without step_cpu_s or under 3 steps."""
    steps = run.get("step_cpu_s")
    if steps is None and run.get("report") and os.path.exists(run["report"]):
        devs = json.load(open(run["report"])).get("devices", [])
        steps = devs[0].get("step_cpu_s") if devs else None
    if not steps or len(steps) < 3:
        return run_cpu_s(run)
    return sum(steps[1:]) / (len(steps) - 1) * len(steps)


def cpu_factor(plan_file, runs, profile):
    """cpu_work_factor, measured: over the runs of the one-device plan, the median of the
    worker's CPU seconds in its steady steps (steady_cpu_s) at the machine's speed probed
    around each run (x the speed: a slower host takes more CPU for the same work; the
    median over the runs because one 1-3 s probe is a snapshot), over the plan's CPU work
    at the profile's rates (plan_cpu_work_s of the plan that ran, made with no factor and
    no runtime costs). Under a cgroup quota the same work took 1.04-1.2x the CPU (the wall
    time was exactly CPU / q: the kernel enforces the quota precisely); at one full core
    1.00-1.05. Stored >= 1 (below is the host's speed, not the runtime). Every step of
    the plan asks the same work (its samples are whole mini-batches). Returns (value,
    record)."""
    cpus = [(steady_cpu_s(r), run_cpu_s(r), run_speed(r) or 1.0) for r in runs]
    cpus = [(c, t, v) for c, t, v in cpus if c is not None]
    if not cpus:
        return 1.0, None
    work = plan_cpu_work_s(plan_file, profile)
    at_speed = statistics.median(c * v for c, _, v in cpus)
    raw = at_speed / work if work > 0 else 1.0
    return max(1.0, raw), {"worker_cpu_s": [round(t, 4) for _, t, _ in cpus],
                           "steady_cpu_s": [round(c, 4) for c, _, _ in cpus], "at_speed": [round(v, 4) for _, _, v in cpus],
                           "plan_cpu_work_s": round(work, 4), "measured": round(raw, 4), "value": round(max(1.0, raw), 4)}


def pipeline_extra_cpu(plan_file, runs, profile):
    """The 2-stage check's diagnostic: the CPU that its devices spend beyond their
    compute, per message end. Per run and device: its CPU seconds x the machine's speed
    probed around the run (as cpu_factor), less its compute's CPU at the profile's rates
    with the factor and task cost just measured in (plan_device_work_s of the plan that
    ran), over the message ends it handled (plan_message_ends); the smaller of the two
    stages (both handle as many ends, so that bounds a cost per end), the median over the
    runs, in sustained seconds (/ q: under a quota of q a CPU second takes 1/q). Recorded,
    not applied: at 0.5 core (d512, 11-24) it came out at 11.7 ms at 10:00 and -3.6 ms at
    10:40, the probe's error on a few seconds of work, where the runtime's framing and
    copy of such a tensor costs 0.2-0.4 ms (exec_transport_bench). Returns (value, record)."""
    q = profile_quota(profile)
    work = plan_device_work_s(plan_file, profile)
    ends = plan_message_ends(plan_file)
    per_run = []
    for r in runs:
        cpu = run_device_cpu_s(r)
        v = run_speed(r) or 1.0
        per_dev = [(cpu[d] * v - work.get(d, 0.0)) / ends[d] for d in sorted(ends) if d in cpu and ends[d] > 0]
        if per_dev:
            per_run.append(min(per_dev))
    if not per_run:
        return 0.0, None
    value = statistics.median(per_run) / q
    return value, {"per_end_cpu_s": [round(x, 6) for x in per_run], "work_cpu_s": {str(d): round(w, 4) for d, w in work.items()},
                   "message_ends": {str(d): n for d, n in ends.items()}, "per_end_sustained_s": round(value, 7)}


def log(msg):
    print("calibrate_overhead: " + msg, file=sys.stderr, flush=True)


def fit_increasing(f, target, hi=1e-3, tol=1e-6, cap=1.0):
    """The x >= 0 with f(x) = target for a non-decreasing f, to within tol (absolute):
    0 when f(0) already reaches the target, `cap` when f(cap) does not. Returns
    (x, f(0)) so that the caller can report the residual of a value clamped at 0."""
    f0 = f(0.0)
    if f0 >= target:
        return 0.0, f0
    lo = 0.0
    while f(hi) < target:
        if hi >= cap:
            return cap, f0
        lo, hi = hi, min(cap, 2 * hi)
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi), f0


def calibration_scenario(kind, profile_name, cal):
    """The calibration plan's scenario (see the module docstring)."""
    # The step plan runs without the quota's throttling: the step's CPU at full speed
    # (step_measure scales it to the quota as the rates are).
    quota = 1.0 if kind == "step" else cal["cpu_quota"]
    two = kind == "message"
    sync = kind == "sync"
    cached = kind == "cached"
    count = 2 if two else SYNC_DEVICES if sync else 1
    devices = [{"id": "w%d" % i, "profile": profile_name, "cpu_quota": quota} for i in range(count)]
    scen = {"name": "overhead-%s-%s" % (kind, profile_name),
            "description": "bench/calibrate_overhead.py: %s cost of %s" % (kind, profile_name),
            "model": cal["model"],
            "method": {"kind": "parallel_adapters", "reduction_k": int(cal.get("reduction_k", 8)),
                       "cache": cached, "cache_dtype": "fp32", "dtype": "fp32"},
            "data": {"task": "personal", "samples": SAMPLES_CACHED if cached else SAMPLES_SYNC if sync else SAMPLES,
                     "seq_len": int(cal.get("seq_len", 128)), "mini_batch": 16, "micro_batches": 4},
            "epochs": 2 if cached else 1,
            "cluster": {"devices": devices},
            "network": {"kind": "switched", "bandwidth_mbps": 1000, "latency_ms": 0.1},
            "strategy": "pac"}
    if two:
        scen["stages"] = 2
    if sync:
        scen["stages"] = 1  # one group of every device: data parallel
    return scen


def profile_with(profile, values):
    """The profile with the overhead fields set to `values` (a dict)."""
    p = {k: v for k, v in profile.items() if k not in FIELDS}
    for k, v in values.items():
        if v > 0:
            p[k] = v
    return p


class Trial:
    """pac-plan + pac-sim of one calibration scenario with candidate overhead values,
    from a profiles folder of its own (<work>/profiles: the candidate profile and a
    link to the models). `phases`: the measured plan's layout, which every trial plan
    must repeat (None: not checked). `speed`: the machine's speed probed around the
    measured runs; the trial plans are simulated at it, so that what the fit finds is
    the runtime's cost, not the host being faster or slower than at calibration."""

    def __init__(self, a, scen_file, name, profile, phases, work):
        self.a, self.scen_file, self.name, self.profile = a, scen_file, name, profile
        self.phases = phases
        self.speed = None  # the machine's probed speed: compute tasks take 1/speed (fid.plan_at_speed)
        self.dir = work
        self.profiles = os.path.join(work, "profiles")
        os.makedirs(os.path.join(self.profiles, "devices"), exist_ok=True)
        models = os.path.join(self.profiles, "models")
        if not os.path.exists(models):
            os.symlink(a.models_dir, models)
        self.calls = 0

    def write(self, values):
        fid.write_atomic(os.path.join(self.profiles, "devices", self.name + ".json"),
                         json.dumps(profile_with(self.profile, values), indent=1) + "\n")

    def plan(self, values):
        """pac-plan of the scenario with the profile at `values`: the plan file."""
        self.write(values)
        plan = os.path.join(self.dir, "trial-plan.json")
        rc, out, err = fid.run_cmd([os.path.join(self.a.bin_dir, "pac-plan"), self.scen_file, "--strategy", "pac",
                                    "--profiles", self.profiles, "-o", plan], self.a.timeout)
        if rc != 0:
            raise SystemExit("calibrate_overhead: pac-plan failed: " + fid.last_line(err or out))
        return plan

    def total_s(self, values):
        self.calls += 1
        plan = self.plan(values)
        sim = os.path.join(self.dir, "trial-sim.json")
        if self.phases is not None and json.load(open(plan))["phases"] != self.phases:
            raise SystemExit("calibrate_overhead: %s: with %s the planner chose another layout than the measured "
                             "plan's; the fit would compare different plans" % (self.scen_file, values))
        if self.speed:
            fid.plan_at_speed(plan, self.speed, plan)
        rc, out, err = fid.run_cmd([os.path.join(self.a.bin_dir, "pac-sim"), self.scen_file, "--plan", plan,
                                    "--profiles", self.profiles, "--json", sim, "--quiet"], self.a.timeout)
        if rc not in (0, 1) or not os.path.exists(sim):
            raise SystemExit("calibrate_overhead: pac-sim failed: " + fid.last_line(err or out))
        rep = json.load(open(sim))
        if rep.get("status") != "ok":
            raise SystemExit("calibrate_overhead: pac-sim: %s %s" % (rep.get("status"), rep.get("failure")))
        return rep["total_s"]


def scenario_write(work, kind, name, profile):
    """The `kind` calibration scenario of profile `name`, written to <work>/scenario.json."""
    scen = calibration_scenario(kind, name, profile["calibration"])
    scen_file = os.path.join(work, "scenario.json")
    fid.write_atomic(scen_file, json.dumps(scen, indent=1) + "\n")
    return scen, scen_file


def task_samples(work_s, samples=SAMPLES, batch=16):
    """The samples of the one-device plan whose `samples` ask `work_s` CPU seconds at the
    rates: enough whole mini-batches for MIN_TASK_WORK_S, never fewer than `samples`."""
    if work_s <= 0 or work_s >= MIN_TASK_WORK_S:
        return samples
    return int(math.ceil(samples * MIN_TASK_WORK_S / work_s / batch)) * batch


def measure(a, kind, name, profile, known, trace=False):
    """Runs the `kind` calibration plan of profile `name` (with the overhead values
    `known` already in it) a.repeats times (with `trace`, each run also writes
    run-<k>.trace.json beside its report). Returns (trial for the fit, median run, runs)."""
    work = os.path.join(a.work, name, kind)
    scen, scen_file = scenario_write(work, kind, name, profile)
    # The measured plan is made from the profile as the fit starts it: `known` values in.
    trial = Trial(a, scen_file, name, profile, None, os.path.join(work, "trial"))
    trial.write(known)
    if kind == "task":
        # Enough work that one step's noise does not make the factor (MIN_TASK_WORK_S).
        n = task_samples(plan_cpu_work_s(trial.plan(known), profile_with(profile, known)), scen["data"]["samples"],
                         scen["data"]["mini_batch"])
        if n != scen["data"]["samples"]:
            log("%s: the one-device plan on %d samples (%d ask under %.0f s of CPU work)" % (
                name, n, scen["data"]["samples"], MIN_TASK_WORK_S))
            scen["data"]["samples"] = n
            fid.write_atomic(scen_file, json.dumps(scen, indent=1) + "\n")
    a.profiles = trial.profiles
    row, job = fid.prepare_row(a, scen_file, scen, "pac", os.path.join(work, "runs"), "", False)
    if job is None:
        raise SystemExit("calibrate_overhead: %s: %s" % (scen["name"], row.get("measured") or row["status"]))
    if trace:  # measure_once then writes run-<k>.trace.json (the row's own trace pair is not needed)
        job["trace"] = os.path.join(job["dir"], "run.trace.json")
    for k in range(1, a.repeats + 1):
        run = fid.measure_once(a, job, k)
        job["runs"].append(run)
        if run["measured"] != "ok":
            raise SystemExit("calibrate_overhead: %s run %d: %s" % (scen["name"], k, run["measured"]))
    trial.phases = json.load(open(job["plan"]))["phases"]
    return trial, fid.median_run(job["runs"]), job["runs"]


def step_gap_s(run):
    """pac-run's wall time per step beyond the step's slowest worker (the command, the
    results, the coordinator between steps: epochs[].step_gap_s over the steps), None
    for a report without it."""
    rep = json.load(open(run["report"]))
    gaps = [e.get("step_gap_s") for e in rep.get("epochs", [])]
    if not gaps or None in gaps or not rep.get("tasks"):
        return None
    return sum(gaps) / rep["tasks"]


def step_measure(a, name, profile):
    """step_overhead_s of profile `name`: the median per-step gap of the one-device plan
    run at one full core (measured, not fitted: pac-run reports it), / the profile's
    sustained quota q. Under a throttling quota the gap also holds the wait for the next
    CFS period, at random (11-31 ms per step measured at 0.25 core), which the simulator
    models itself: the profile keeps the step's work as the rates are kept, sustained
    seconds that take q of them in CPU at full speed (cpu_work_end). Returns (value,
    record)."""
    _, _, runs = measure(a, "step", name, profile, {})
    gaps = [g for g in (step_gap_s(r) for r in runs) if g is not None]
    if not gaps:
        raise SystemExit("calibrate_overhead: %s: pac-run reported no step_gap_s (rebuild pac-run)" % name)
    q = profile_quota(profile)
    gap = statistics.median(gaps)
    value = gap / q
    log("%s: step_overhead_s = %.3f ms (median of %s ms per step at one core, / %.2f)" % (
        name, 1e3 * value, ", ".join("%.2f" % (1e3 * g) for g in gaps), q))
    return value, {"plan": "step (the task plan at one core)", "step_gap_s": [round(g, 7) for g in gaps],
                   "median_gap_s": round(gap, 7), "sustained_quota": q, "value": round(value, 7),
                   "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def first_step_excess_s(steps):
    """A phase's first step beyond its steady steps: the first of `steps` (each step's
    slowest compute, pac-run's epochs[].step_compute_s) less the median of the others;
    None with fewer than 2 steps."""
    if not steps or len(steps) < 2:
        return None
    return max(0.0, steps[0] - statistics.median(steps[1:]))


def first_forward_bytes(plan_file):
    """The activation bytes (mem_alloc_bytes) of the first forward of the plan's first
    segment and of its last (the cached one's), on device 0: what the first step of each
    phase touches first."""
    segs = json.load(open(plan_file))["segments"]

    def first(seg):
        for t in seg["tasks"]:
            if t["kind"] == "forward" and t.get("device", 0) == 0:
                return t.get("mem_alloc_bytes", 0.0)
        return 0.0
    return first(segs[0]), first(segs[-1])


def first_use_measure(a, name, profile):
    """The first use of each phase and the switch's local work of profile `name`,
    measured (not fitted) on the cached plan: ONE device at the profile's quota, the
    activation cache on, two epochs of SAMPLES_CACHED samples (4 steps each). From
    pac-run's report, per run: the first step's compute (epochs[].step_compute_s:
    forward, backward and the optimizer step, without the cache read it waits for and
    without communication) less the median of the epoch's other steps, in the backbone
    epoch and in the cached one, and the switch's time (switch_s: one device sends
    nothing, so it is all local work: drop the backbone, pack and load the side network
    with its AdamW state, free phase 1). The medians over the runs; the first uses become
    rates over the activation bytes of the phase's first forward in the plan that ran
    (first_step_bytes_per_s, cached_first_step_bytes_per_s: the planner charges a device
    its own first forward's bytes at that rate). Returns (values, record)."""
    for f in FIRST_USE_FIELDS:
        profile.pop(f, None)
    _, _, runs = measure(a, "cached", name, profile, {})
    per = {f: [] for f in FIRST_USE_RECORDED}
    for r in runs:
        rep = json.load(open(r["report"]))
        ep = rep.get("epochs", [])
        if len(ep) != 2 or "step_compute_s" not in ep[0]:
            raise SystemExit("calibrate_overhead: %s: pac-run's report has no epochs[].step_compute_s for the cached "
                             "plan (rebuild pac-run)" % name)
        for f, v in (("first_step_s", first_step_excess_s(ep[0]["step_compute_s"])),
                     ("cached_first_step_s", first_step_excess_s(ep[1]["step_compute_s"])),
                     ("switch_local_s", rep.get("switch_s", -1))):
            if v is not None and v >= 0:
                per[f].append(v)
    values, rec = first_use_values(name, per, os.path.join(os.path.dirname(runs[0]["report"]), "plan.json"))
    rec.update({"measured_total_s": [r["total_s"] for r in runs], "machine_speed": [r.get("machine_speed") for r in runs]})
    return values, rec


def first_use_values(name, per, plan_file):
    """The profile values from the per-run first uses and switch times `per` (lists of
    seconds) and the cached plan that ran (`plan_file`: its first forwards' bytes).
    Returns (values, record)."""
    med = {f: statistics.median(v) if v else 0.0 for f, v in per.items()}
    bytes1, bytes2 = first_forward_bytes(plan_file)
    values = {"first_step_bytes_per_s": bytes1 / med["first_step_s"] if med["first_step_s"] > 0 else 0.0,
              "cached_first_step_bytes_per_s": bytes2 / med["cached_first_step_s"] if med["cached_first_step_s"] > 0 else 0.0,
              "switch_local_s": med["switch_local_s"]}
    log("%s: first step +%.1f ms (%.0f MB first touched: %.0f MB/s), first cached step +%.1f ms (%.0f MB: %.0f MB/s), "
        "switch_local_s %.1f ms (medians of %d runs)" % (
            name, 1e3 * med["first_step_s"], bytes1 / 1e6, values["first_step_bytes_per_s"] / 1e6,
            1e3 * med["cached_first_step_s"], bytes2 / 1e6, values["cached_first_step_bytes_per_s"] / 1e6,
            1e3 * med["switch_local_s"], len(per["switch_local_s"])))
    rec = {"plan": "cached (one device, the activation cache, 2 epochs of %d samples)" % SAMPLES_CACHED,
           "first_forward_bytes": [bytes1, bytes2],
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for f, v in per.items():
        rec[f] = [round(x, 6) for x in v]
        rec["median_" + f] = round(med[f], 6)
    for f in FIRST_USE_FIELDS:
        rec["value_" + f] = round(values[f], 6)
    return values, rec


def trace_sync_stats(trace_file):
    """What a data-parallel plan's timeline says about the barrier, from a pac-run --trace
    or a pac-sim --trace of it (Chrome trace JSON: per device a track named by its id,
    compute tasks "F ..." and "B ...", the all-reduce "allreduce ..." on the device's
    track (run) or on its links' tracks "a -> b" (simulation); the step in args.step
    (run) or args.iteration (simulation)). Per step after the first (it pays the phase's
    first use), over the devices: each device's compute before the all-reduce (its
    forwards' and backwards' wall time) and the step's all-reduce tail (the all-reduce's
    end less the last device's compute end: the all-reduce as its last arrival sees it,
    waiting for no one). Returns (cv, tail_s, steps): cv is the root mean square over the
    steps of the devices' sample standard deviation over their mean (the compute's
    step-to-step spread between devices, which compute_jitter_cv models); tail_s the
    median tail; None, None, 0 without such steps."""
    doc = json.load(open(trace_file))
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    names = {(e.get("pid"), e.get("tid")): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
    compute, comp_end, ar_end = {}, {}, {}
    for e in events:
        if e.get("ph") != "X":
            continue
        args = e.get("args") or {}
        step = args.get("step", args.get("iteration"))
        track = names.get((e.get("pid"), e.get("tid")), "")
        if step is None or not track:
            continue
        end = (e["ts"] + e.get("dur", 0)) / 1e6
        if e["name"].startswith(("F ", "B ")) and " -> " not in track:
            per = compute.setdefault(step, {})
            per[track] = per.get(track, 0.0) + e.get("dur", 0) / 1e6
            comp_end[step] = max(comp_end.get(step, 0.0), end)
        elif e["name"].startswith("allreduce"):
            ar_end[step] = max(ar_end.get(step, 0.0), end)
    rel, tails = [], []
    for step in sorted(compute)[1:]:
        c = list(compute[step].values())
        if len(c) >= 2 and statistics.mean(c) > 0:
            rel.append((statistics.stdev(c) / statistics.mean(c)) ** 2)
        if step in ar_end:
            tails.append(ar_end[step] - comp_end[step])
    if not rel or not tails:
        return None, None, 0
    return math.sqrt(statistics.mean(rel)), statistics.median(tails), len(rel)


def sync_values(run_stats, sim_stats, devices):
    """compute_jitter_cv and message_overhead_s from the sync plan's runs' trace_sync_stats
    (a list of (cv, tail_s)) and its simulation's (cv, tail_s: jitter and message cost 0).
    cv: the median of the runs' beyond the simulation's own spread (the CFS periods'
    offsets already make the devices' compute differ), in quadrature. The tail: a ring
    all-reduce of n devices is 2(n-1) steps, each waiting for its pair's latency, which
    holds both ends' message_overhead_s; so the median run's tail beyond the simulated one
    over 2(n-1) steps x 2 ends. Both clamped at 0 (cv also at 0.5, the profile's limit).
    Returns (values, record)."""
    cvs = [c for c, _ in run_stats if c is not None]
    tails = [t for _, t in run_stats if t is not None]
    cv_sim, tail_sim = sim_stats
    if not cvs or not tails or cv_sim is None:
        return {"compute_jitter_cv": 0.0, "message_overhead_s": 0.0}, None
    cv_run, tail_run = statistics.median(cvs), statistics.median(tails)
    cv = min(0.5, math.sqrt(max(0.0, cv_run ** 2 - cv_sim ** 2)))
    msg = max(0.0, tail_run - tail_sim) / (2 * (devices - 1)) / 2
    return ({"compute_jitter_cv": cv, "message_overhead_s": msg},
            {"run_cv": [round(c, 4) for c in cvs], "sim_cv": round(cv_sim, 4),
             "run_tail_s": [round(t, 6) for t in tails], "sim_tail_s": round(tail_sim, 6),
             "value_compute_jitter_cv": round(cv, 4), "value_message_overhead_s": round(msg, 7)})


def sync_measure(a, name, profile, known):
    """compute_jitter_cv and message_overhead_s of profile `name`, measured on the sync
    plan: SYNC_DEVICES devices at the profile's quota on this host, data parallel (the
    planner's one stage group), SAMPLES_SYNC samples, every run traced. The simulation of
    the plan that ran (at the median run's probed speed, on this host's cores, with the
    profile as calibrated so far and neither value) gives what the model already has;
    what the runs show beyond it is the two values (sync_values). Returns (values, record)."""
    prof = dict(profile)
    prof.pop("compute_jitter_cv", None)
    _, med, runs = measure(a, "sync", name, prof, dict(known, message_overhead_s=0.0), trace=True)
    run_dir = os.path.dirname(med["report"])
    run_stats = []
    for r in runs:
        cv, tail, _ = trace_sync_stats(os.path.join(run_dir, "run-%d.trace.json" % r["run"]))
        run_stats.append((cv, tail))
    plan = os.path.join(run_dir, "plan.json")
    at = os.path.join(run_dir, "plan-sync-at-speed.json")
    speed = run_speed(med) if a.probe else None
    if speed:
        fid.plan_at_speed(plan, speed, at)
    else:
        shutil.copyfile(plan, at)
    trace = os.path.join(run_dir, "sim-at-speed.trace.json")
    # The scenario the run's row was simulated with: on this host's cores (scenario_on_host).
    scen_file = os.path.join(run_dir, "scenario.json")
    if not os.path.exists(scen_file):
        scen_file = os.path.join(a.work, name, "sync", "scenario.json")
    rc, out, err = fid.run_cmd([os.path.join(a.bin_dir, "pac-sim"), scen_file, "--plan", at,
                                "--profiles", a.profiles, "--json", os.path.join(run_dir, "sim-at-speed.json"), "--quiet",
                                "--trace", trace], a.timeout)
    if rc not in (0, 1):
        raise SystemExit("calibrate_overhead: %s: pac-sim of the sync plan failed: %s" % (name, fid.last_line(err or out)))
    cv_sim, tail_sim, _ = trace_sync_stats(trace)
    values, rec = sync_values(run_stats, (cv_sim, tail_sim), SYNC_DEVICES)
    if rec is None:
        raise SystemExit("calibrate_overhead: %s: the sync plan's traces have no data-parallel steps" % name)
    rec.update({"plan": "sync (%d devices, data parallel, %d samples)" % (SYNC_DEVICES, SAMPLES_SYNC),
                "measured_total_s": [r["total_s"] for r in runs], "machine_speed": [r.get("machine_speed") for r in runs],
                "simulated_at_speed": speed, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    log("%s: sync plan: compute spread between devices %s (simulated %.3f) -> compute_jitter_cv %.3f; all-reduce "
        "tail %s ms (simulated %.2f ms) -> message_overhead_s %.3f ms" % (
            name, rec["run_cv"], cv_sim, values["compute_jitter_cv"], [round(1e3 * t, 2) for t in rec["run_tail_s"]],
            1e3 * tail_sim, 1e3 * values["message_overhead_s"]))
    return values, rec


def first_use_set(profile, values):
    """The profile with the first-use fields set to `values` (absent when 0)."""
    for f in FIRST_USE_FIELDS:
        profile.pop(f, None)
        if values.get(f, 0) > 0:
            profile[f] = round(values[f], 6)


def calibrate_profile(a, path):
    """Measures (or with a.refit, takes the runs recorded in the profile and left in
    a.work) the calibration plans of one profile, measures its cpu_work_factor, records
    (or with --fit-task-cost fits) its task_overhead_s, runs the 2-stage check (unless
    --no-check), and rewrites the profile with the values and the record."""
    name = os.path.basename(path)[:-5]
    profile = json.load(open(path))
    cal = profile.get("calibration") or {}
    if not cal.get("model") or not cal.get("cpu_quota"):
        log("%s: no calibration.model / cpu_quota (not a testbed profile): skipped" % name)
        return None
    old = cal.get("overhead") if a.refit else None
    if a.refit and not old:
        log("%s: --refit: no calibration.overhead record: skipped" % name)
        return None
    t0 = time.time()
    record = {"date": old["date"] if old else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "samples": SAMPLES, "repeats": old["repeats"] if old else a.repeats, "plans": {}}
    values = {f: 0.0 for f in FIELDS}
    # The factor is measured on the one-device plan below; the plans are made without it
    # (and without the throttle delay earlier fits stored).
    profile.pop("cpu_work_factor", None)
    profile.pop("throttle_delay_s", None)
    if not old:  # measured last (first_use_measure); the plans before it run without them
        for f in FIRST_USE_FIELDS:
            profile.pop(f, None)
    # The cost per step is measured (pac-run's step_gap_s on the one-device plan) before
    # the fits, which then simulate with it; --refit keeps the recorded one.
    if old:
        record["step"] = old.get("step")
    else:
        profile.pop("step_overhead_s", None)
        step, record["step"] = step_measure(a, name, profile)
        profile["step_overhead_s"] = step
    kinds = [("task", "task_overhead_s")] + ([("message", "message_overhead_s")] if a.check else [])
    for kind, field in kinds:
        if old and kind not in old["plans"]:
            continue  # calibrated with --no-check: no 2-stage runs to fit again
        if old:
            work = os.path.join(a.work, name, kind)
            trial = Trial(a, os.path.join(work, "scenario.json"), name, profile, None, os.path.join(work, "trial"))
            plan = glob.glob(os.path.join(work, "runs", "*", "pac", "plan.json"))
            if not plan:
                raise SystemExit("calibrate_overhead: --refit: no measured plan under %s" % work)
            trial.phases = json.load(open(plan[0]))["phases"]
            rec = old["plans"][kind]
            reports = os.path.dirname(plan[0])
            runs = [{"run": k + 1, "total_s": t, "machine_speed": ms, "report": os.path.join(reports, "run-%d.json" % (k + 1))}
                    for k, (t, ms) in enumerate(zip(rec["measured_total_s"], rec["machine_speed"]))]
            med = fid.median_run([dict(r, measured="ok") for r in runs])
        else:
            trial, med, runs = measure(a, kind, name, profile, values)
        # The plan that ran sits beside its reports, in both modes.
        ran = os.path.join(os.path.dirname(med["report"]), "plan.json")
        if kind == "task":
            # First what the runtime's work costs in CPU (the rates / it), then per task.
            factor, record["cpu_work_factor"] = cpu_factor(ran, runs, profile)
            if factor > 1:
                profile["cpu_work_factor"] = round(factor, 4)
            log("%s: cpu_work_factor = %.3f (%s)" % (name, factor, record["cpu_work_factor"]))
        trial.speed = run_speed(med) if a.probe else None

        def sim(x):
            v = dict(values)
            v[field] = x
            return trial.total_s(v)

        check = kind == "message" or not a.fit_task_cost
        if kind == "message":
            # A check, not a fit (module docstring): the value stays 0; what the devices
            # spent beyond their compute per message end is recorded beside it.
            _, record["pipeline_extra_cpu"] = pipeline_extra_cpu(ran, runs, profile_with(profile, values))
        if check:
            x, sim0 = 0.0, sim(0.0)
            spread = False
        else:
            x, sim0 = fit_increasing(sim, med["total_s"])
            # A residual within the runs' own spread is not a cost the measurement resolved.
            spread = below_spread(med["total_s"] - sim0, [r["total_s"] for r in runs])
            if spread:
                x = 0.0
        values[field] = x
        sim_x = sim0 if x == 0 else sim(x)  # each call is a pac-plan + pac-sim
        record["plans"][kind] = {
            "scenario": json.load(open(trial.scen_file))["name"],
            "samples": json.load(open(trial.scen_file))["data"]["samples"],
            "field": field,
            "devices": 2 if kind == "message" else 1,
            "measured_total_s": [r["total_s"] for r in runs],
            "median_total_s": med["total_s"],
            "machine_speed": [r.get("machine_speed") for r in runs],
            "fitted_at_speed": trial.speed,
            "sim_total_s_without": round(sim0, 6),
            "sim_total_s_fitted": round(sim_x, 6),
            "fitted": round(x, 7),
            # Negative: the kernels alone already simulate slower than the run (the value is clamped at 0).
            "residual_s": round(med["total_s"] - sim0, 6),
            # fit: the value was fitted on this plan; check: it was only measured and simulated.
            "role": "check" if check else "fit",
            # Set when the residual was within half the runs' range: the value is then 0.
            "within_runs_spread": spread,
            "sim_calls": trial.calls}
        at = ", at the probed speed x%.3f" % trial.speed if trial.speed else ""
        if kind == "message":
            extra = record["pipeline_extra_cpu"]
            log("%s: 2-stage check: measured %.3f s, simulated %.3f s (%+.1f%%%s); CPU beyond the work per message "
                "end %s (recorded, not applied)" % (
                    name, med["total_s"], sim0, 100 * (sim0 - med["total_s"]) / med["total_s"], at,
                    "%.2f ms" % (1e3 * extra["per_end_sustained_s"]) if extra else "not reported"))
        elif check:
            log("%s: one device: measured %.3f s, simulated %.3f s (%+.1f%%%s); %s not fitted (recorded)" % (
                name, med["total_s"], sim0, 100 * (sim0 - med["total_s"]) / med["total_s"], at, field))
        else:
            log("%s: %s = %.3f ms (measured %.3f s, simulated %.3f s without, %.3f s with it%s%s)" % (
                name, field, 1e3 * x, med["total_s"], sim0, record["plans"][kind]["sim_total_s_fitted"], at,
                "; the residual is within the runs' spread %s: 0" % [round(r["total_s"], 3) for r in runs] if spread else ""))
    # The first use of each phase and the switch's local work: measured on the cached
    # plan (--refit keeps the recorded values, which the profile still holds).
    if not old:
        first, record["first_use"] = first_use_measure(a, name, profile)
        first_use_set(profile, first)
    # The barrier's costs: measured on the sync plan (--refit keeps the recorded ones).
    profile.pop("compute_jitter_cv", None)
    sync = old.get("sync") if old else None
    if not old and a.sync:
        sync_vals, sync = sync_measure(a, name, profile, values)
    elif sync:
        sync_vals = {"compute_jitter_cv": sync["value_compute_jitter_cv"],
                     "message_overhead_s": sync["value_message_overhead_s"]}
    if sync:
        record["sync"] = sync
        values["message_overhead_s"] = sync_vals["message_overhead_s"]
        if sync_vals["compute_jitter_cv"] > 0:
            profile["compute_jitter_cv"] = round(sync_vals["compute_jitter_cv"], 4)
    record["wall_s"] = old["wall_s"] if old else round(time.time() - t0, 1)
    out = dict(profile)
    for f in FIELDS:
        out.pop(f, None)
        if values[f] > 0:
            out[f] = round(values[f], 7)
    out["calibration"] = dict(cal)
    out["calibration"]["overhead"] = record
    fid.write_atomic(path, json.dumps(out, indent=2, sort_keys=True) + "\n")
    return record


def testbed_profile(path):
    """(name, profile) of a testbed profile file; None (with a message) for another kind."""
    name = os.path.basename(path)[:-5]
    profile = json.load(open(path))
    cal = profile.get("calibration") or {}
    if not cal.get("model") or not cal.get("cpu_quota"):
        log("%s: no calibration.model / cpu_quota (not a testbed profile): skipped" % name)
        return None
    return name, profile


def step_only(a, path):
    """--step-only: measures step_overhead_s of one profile and records it in its
    calibration.overhead, leaving the fitted values as they are (--refit fits them again
    with it)."""
    found = testbed_profile(path)
    if not found:
        return
    name, profile = found
    profile.pop("step_overhead_s", None)
    value, rec = step_measure(a, name, profile)
    profile["step_overhead_s"] = round(value, 7)
    profile["calibration"].setdefault("overhead", {})["step"] = rec
    fid.write_atomic(path, json.dumps(profile, indent=2, sort_keys=True) + "\n")


def factor_only(a, path):
    """--factor-only: measures cpu_work_factor of one profile (the one-device plan,
    a.repeats runs, its steady steps) and records it in its calibration.overhead, leaving
    the other values as they are."""
    found = testbed_profile(path)
    if not found:
        return
    name, profile = found
    plain = dict(profile)
    # The plan's work is taken at the bare rates (the factor divides them).
    plain.pop("cpu_work_factor", None)
    _, med, runs = measure(a, "task", name, plain, {})
    ran = os.path.join(os.path.dirname(med["report"]), "plan.json")
    factor, rec = cpu_factor(ran, runs, plain)
    profile.pop("cpu_work_factor", None)
    if factor > 1:
        profile["cpu_work_factor"] = round(factor, 4)
    if rec:
        rec.update({"samples": json.load(open(ran))["scenario"]["data"]["samples"],
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    log("%s: cpu_work_factor = %.3f (%s)" % (name, factor, rec))
    profile["calibration"].setdefault("overhead", {})["cpu_work_factor"] = rec
    fid.write_atomic(path, json.dumps(profile, indent=2, sort_keys=True) + "\n")


def sync_only(a, path):
    """--sync-only: measures compute_jitter_cv and message_overhead_s of one profile (the
    sync plan, --repeats traced runs) and records them in its calibration.overhead,
    leaving the other values as they are."""
    found = testbed_profile(path)
    if not found:
        return
    name, profile = found
    known = {"task_overhead_s": profile.get("task_overhead_s", 0.0)}
    values, rec = sync_measure(a, name, {k: v for k, v in profile.items() if k not in FIELDS}, known)
    profile.pop("compute_jitter_cv", None)
    profile.pop("message_overhead_s", None)
    if values["compute_jitter_cv"] > 0:
        profile["compute_jitter_cv"] = round(values["compute_jitter_cv"], 4)
    if values["message_overhead_s"] > 0:
        profile["message_overhead_s"] = round(values["message_overhead_s"], 7)
    profile["calibration"].setdefault("overhead", {})["sync"] = rec
    fid.write_atomic(path, json.dumps(profile, indent=2, sort_keys=True) + "\n")


def first_only(a, path):
    """--first-only: measures first_step_bytes_per_s, cached_first_step_bytes_per_s and
    switch_local_s of one profile (the cached plan) and records them in its
    calibration.overhead, leaving the other values as they are; with --refit, derives
    them again from that record without running anything."""
    found = testbed_profile(path)
    if not found:
        return
    name, profile = found
    old = (profile["calibration"].get("overhead") or {}).get("first_use")
    if a.refit:
        # Run nothing: the per-run seconds recorded, the bytes from the cached plan made
        # again (the cost model's activation bytes do not depend on the rates).
        if not old:
            log("%s: --refit: no calibration.overhead.first_use record: skipped" % name)
            return
        work = os.path.join(a.work, name, "cached")
        os.makedirs(work, exist_ok=True)
        _, scen_file = scenario_write(work, "cached", name, profile)
        plan = Trial(a, scen_file, name, profile, None, os.path.join(work, "trial")).plan({})
        values, rec = first_use_values(name, {f: old.get(f, []) for f in FIRST_USE_RECORDED}, plan)
        rec.update({k: old[k] for k in ("measured_total_s", "machine_speed", "date") if k in old})
    else:
        values, rec = first_use_measure(a, name, dict(profile))
    first_use_set(profile, values)
    profile["calibration"].setdefault("overhead", {})["first_use"] = rec
    fid.write_atomic(path, json.dumps(profile, indent=2, sort_keys=True) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-dir", default=os.environ.get("BUILD_DIR", "build"))
    ap.add_argument("--devices", default=os.path.join(ROOT, "profiles", "devices"),
                    help="folder of the testbed profiles to calibrate (rewritten in place)")
    ap.add_argument("--models-dir", default=os.path.join(ROOT, "profiles", "models"))
    ap.add_argument("--only", default="", help="comma-separated profile names (default: every testbed-q*.json)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each calibration plan (median by total time)")
    ap.add_argument("--work", default="/tmp/pac-overhead")
    ap.add_argument("--no-probe", dest="probe", action="store_false", help="no machine-speed probe around runs "
                    "(the fit then compares with the simulation at the calibrated speed)")
    ap.add_argument("--step-only", action="store_true", help="measure only step_overhead_s (the one-device plan, "
                    "--repeats runs) and record it; the fitted values stay (--refit fits them again with it)")
    ap.add_argument("--first-only", action="store_true", help="measure only first_step_bytes_per_s, "
                    "cached_first_step_bytes_per_s and switch_local_s (the cached one-device plan, --repeats runs) and "
                    "record them; the rest stays (with --refit: derive them again from the recorded runs)")
    ap.add_argument("--factor-only", action="store_true", help="measure only cpu_work_factor (the one-device plan, "
                    "--repeats runs, its steady steps) and record it; the rest stays")
    ap.add_argument("--sync-only", action="store_true", help="measure only compute_jitter_cv and message_overhead_s "
                    "(the 4-device data-parallel plan, --repeats traced runs) and record them; the rest stays")
    ap.add_argument("--no-sync", dest="sync", action="store_false", help="skip the 4-device data-parallel plan: "
                    "compute_jitter_cv and message_overhead_s stay 0")
    ap.add_argument("--no-check", dest="check", action="store_false", help="skip the 2-stage pipeline check "
                    "(it sets nothing; bench/fidelity.py --calibrate skips it)")
    ap.add_argument("--fit-task-cost", action="store_true", help="fit task_overhead_s on the one-device plan "
                    "(earlier versions' default; it is recorded and left 0 otherwise: module docstring)")
    ap.add_argument("--refit", action="store_true", help="run nothing: fit again from the runs recorded in each "
                    "profile's calibration.overhead and the plans left in --work")
    model_dir = os.environ.get("PAC_MODEL_DIR", os.path.join(ROOT, "..", "shared", "models"))
    ap.add_argument("--tokenizer", default=os.path.join(model_dir, "stories260K", "tok512.bin"))
    ap.add_argument("--data", default=os.path.join(ROOT, "data/personal/train.txt"))
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--run-timeout", type=int, default=600)
    a = ap.parse_args()
    if a.repeats < 1:
        print("calibrate_overhead: --repeats: expected a count >= 1, got %d" % a.repeats, file=sys.stderr)
        return 2
    a.bin_dir = os.path.join(a.build_dir if os.path.isabs(a.build_dir) else os.path.join(ROOT, a.build_dir), "bin")
    a.models_dir = os.path.abspath(a.models_dir)
    for tool in ("pac-plan", "pac-sim", "pac-run"):
        if not os.path.exists(os.path.join(a.bin_dir, tool)):
            print("calibrate_overhead: %s not built in %s" % (tool, a.bin_dir), file=sys.stderr)
            return 2
    if a.only:
        paths = [os.path.join(a.devices, n + ".json") for n in a.only.split(",") if n]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            print("calibrate_overhead: --only: no profile %s" % ", ".join(missing), file=sys.stderr)
            return 2
    else:
        paths = sorted(glob.glob(os.path.join(a.devices, "testbed-q*.json")))
    if a.refit:
        for p in paths:
            if a.first_only:
                first_only(a, p)
            else:
                calibrate_profile(a, p)
        return 0
    why = fid.run_capability(a.bin_dir, a.timeout, "testbed")
    if not why and not os.path.exists(a.tokenizer):
        why = "tokenizer %s absent (set PAC_MODEL_DIR)" % a.tokenizer
    if not why and os.geteuid() != 0:
        why = "pac-run --testbed needs root"
    if why:
        log("not measured, profiles unchanged: " + why)
        return 0
    # What fid.prepare_row / measure_once read from their options.
    a.run_mode, a.model_map, a.run_args, a.run_has_trace, a.trace_dir = "testbed", {}, [], False, a.work
    a.last_probe = None
    # The calibration's runs are compared at their probes' speed, probed at the
    # scenario's micro-batch as its fits were made; no speed sentinel beside them.
    a.sentinel_period, a.probe_plan_micro_batch = 0, False
    # The sync plan's devices share this machine, as the suite's do (scenario_on_host).
    a.host_cores = os.cpu_count() or 0
    os.makedirs(a.work, exist_ok=True)
    for p in paths:
        if a.step_only:
            step_only(a, p)
        elif a.sync_only:
            sync_only(a, p)
        elif a.factor_only:
            factor_only(a, p)
        elif a.first_only:
            first_only(a, p)
        else:
            calibrate_profile(a, p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
