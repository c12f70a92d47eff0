#include "sim/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>

#include "sim/network.h"
#include "src/common/error.h"
#include "src/common/progress.h"
#include "src/core/cost_model.h"
#include "src/core/profile.h"

namespace pac {

static const double kInf = std::numeric_limits<double>::infinity();

double SimResult::energy_j() const {
  double e = 0;
  for (const auto& d : devices) e += d.energy_j;
  return e;
}

// Compute: CPU work on the device's compute engine (its quota, the host's cores): layer
// compute, optimizer steps and the switch's local work.
static bool kind_is_compute(TaskKind k) {
  return k == TaskKind::Forward || k == TaskKind::Backward || k == TaskKind::Optimizer || k == TaskKind::Local;
}
static bool kind_is_storage(TaskKind k) { return k == TaskKind::CacheWrite || k == TaskKind::CacheRead; }
static bool kind_is_collective(TaskKind k) { return k == TaskKind::AllReduce || k == TaskKind::AllGather; }

// Scenario::device_index lives in the planner's core; the engine needs only this.
static int device_find(const Scenario& s, const std::string& id) {
  for (size_t i = 0; i < s.devices.size(); i++)
    if (s.devices[i].id == id) return static_cast<int>(i);
  return -1;
}

static std::string task_name(const Task& t) {
  return t.label.empty() ? "task " + std::to_string(t.id) : t.label;
}

void sim_check_plan(const Plan& plan, const std::string& file) {
  const int n = static_cast<int>(plan.scenario.devices.size());
  if (n == 0) throw_input(file, "$.scenario.devices", "expected at least one device");
  for (size_t si = 0; si < plan.segments.size(); si++) {
    const Segment& seg = plan.segments[si];
    std::string sp = "$.segments[" + std::to_string(si) + "]";
    if (seg.repeat < 0) throw_input(file, sp + ".repeat", "expected an integer >= 0");
    if (!seg.resident_bytes.empty() && static_cast<int>(seg.resident_bytes.size()) != n)
      throw_input(file, sp + ".resident_bytes",
                  "expected one entry per device (" + std::to_string(n) + "), got " +
                      std::to_string(seg.resident_bytes.size()));
    const auto& tasks = seg.graph.tasks;
    for (size_t ti = 0; ti < tasks.size(); ti++) {
      const Task& t = tasks[ti];
      std::string tp = sp + ".graph.tasks[" + std::to_string(ti) + "]";
      auto bad = [&](const std::string& what) { throw_input(file, tp, task_name(t) + ": " + what); };
      if (t.id != static_cast<int>(ti)) bad("expected id " + std::to_string(ti) + ", got " + std::to_string(t.id));
      if (t.device < 0 || t.device >= n) bad("device index " + std::to_string(t.device) + " out of range 0.." + std::to_string(n - 1));
      if (t.kind == TaskKind::Send && (t.peer < 0 || t.peer >= n))
        bad("send peer index " + std::to_string(t.peer) + " out of range 0.." + std::to_string(n - 1));
      if (kind_is_collective(t.kind)) {
        std::vector<char> seen(n, 0);
        for (int g : t.group) {
          if (g < 0 || g >= n) bad("group member " + std::to_string(g) + " out of range 0.." + std::to_string(n - 1));
          if (seen[g]++) bad("group lists device " + std::to_string(g) + " twice");
        }
      }
      for (int d : t.deps)
        if (d < 0 || d >= static_cast<int>(ti))
          bad("dependency " + std::to_string(d) + " must name an earlier task (tasks are topologically ordered)");
      for (int d : t.prev_deps)
        if (d < 0 || d >= static_cast<int>(tasks.size()))
          bad("previous-iteration dependency " + std::to_string(d) + " is not a task of this graph");
      if (t.mem_free_task < -1 || t.mem_free_task >= static_cast<int>(tasks.size()))
        bad("mem_free_task " + std::to_string(t.mem_free_task) + " is not a task of this graph");
      if (!(t.seconds >= 0) || !(t.bytes >= 0) || !(t.mem_alloc_bytes >= 0))
        bad("seconds, bytes and mem_alloc_bytes must be >= 0");
    }
  }
}

namespace {

enum EventType : int { EV_TASK_END = 0, EV_FLOW_START = 1, EV_NET = 2, EV_FAULT = 3, EV_CPU = 4 };

struct Event {
  double t;
  uint64_t seq;  // insertion order: equal times pop first-in first-out (deterministic)
  int type;
  int a, b;
};

struct EventLater {
  bool operator()(const Event& x, const Event& y) const {
    if (x.t != y.t) return x.t > y.t;
    return x.seq > y.seq;
  }
};

// One device's engines and counters.
struct DevState {
  int compute_cur = -1;
  double compute_start = 0;
  std::vector<int> compute_queue;  // min-heap of ready task instances (lowest task id first)
  int storage_cur = -1;
  double storage_start = 0;
  std::vector<int> storage_queue;
  double mem_cur = 0;
  double mem_cap = 0;              // <= 0: unlimited
  double slow = 1;                 // compute time multiplier (slowdown faults)
  int flows_live = 0;              // flows moving in or out (for comm_s)
  double comm_since = 0;
  double busy_seg_start = 0;
  bool computes_in_segment = false;
  bool dispatch_pending = false;
  // One core for everything (a testbed device of cpu_quota <= 1): its cache reads and
  // writes are CPU work (copies, dtype conversion, hashing, page-cache writes) on the same
  // quota as its compute, so they queue on the compute engine instead of overlapping it.
  bool storage_on_cpu = false;
  double storage_seg_start = 0;  // storage_s when the segment began
  // CFS bandwidth control (a testbed device whose profile's rates are sustained under a
  // quota q < 1 core, DeviceProfile::sustained_quota): its work runs at the unthrottled
  // speed (1/q the profile's) while the current period's budget of q x kCfsPeriodS lasts,
  // then waits for the next period. cfs_used: budget spent in period cfs_period.
  double cfs_quota = 0;            // 0: not throttled (rates are what a task gets)
  // Its periods' offset: period k spans [k P + cfs_phase, (k + 1) P + cfs_phase)
  // (Scenario::cfs_phases_aligned; cfs_phase_of).
  double cfs_phase = 0;
  int64_t cfs_period = -1;
  double cfs_used = 0;
  // Shared host (Scenario::host_cores > 0): the CPU work of the task on the compute
  // engine progresses at the cores the host gives this device now (fluid, like a flow).
  int cpu_task = -1;               // the instance whose CPU work runs (-1: none)
  double cpu_left = 0;             // its CPU seconds left at the device's full speed
  double cpu_rate = 0;             // fraction of full speed it runs at now
  double cpu_cores = 1;            // cores it runs on at full speed (its threads)
  double cpu_resume = -1;          // >= 0: quota spent, throttled until then
  // The task's co-run slowdown with the host's other cores all busy (corun_slowdown_at
  // of its micro-batch; 1 for storage work), and the slowdown it has now: in proportion
  // to how busy the other cores are (cpu_reschedule). Its CPU work progresses at
  // cpu_rate / cpu_slow while its quota is spent at cpu_rate.
  double cpu_corun = 1;
  double cpu_slow = 1;
  // Compute jitter: the profile's cv and this device's Weyl step (jitter_of).
  double jitter_cv = 0;
  double jitter_alpha = 0;
};

// The testbed's cgroup period (exec/testbed.cpp; Linux's default cfs_period_us).
constexpr double kCfsPeriodS = 0.1;

// Where device d's CFS periods begin. Each cgroup's period timer starts when its quota
// first holds it, so the testbed's devices throttle at unrelated moments and a barrier
// among them (an all-reduce, a stage hand-over) waits for the one throttled last; aligned
// periods let every device burst and stall together and hid that wait. (On the fidelity
// suite it moved the mean error by 0.2 points: the suite's slow multi-device steps have
// another cause, docs/fidelity.md "Twelfth run".) The offsets are the golden-ratio
// sequence frac(d x 0.618..) of a period: spread evenly for any count, device 0 at 0 (a
// one-device plan is as before), no random seed.
static double cfs_phase_of(int d, bool aligned) {
  if (aligned) return 0;
  double x = d * 0.6180339887498949;
  return kCfsPeriodS * (x - std::floor(x));
}

// When period k of a device whose periods are offset by `phase` begins.
static double cfs_period_start(int64_t k, double phase) { return k * kCfsPeriodS + phase; }

// Compute jitter (DeviceProfile::compute_jitter_cv; docs/simulator.md, "Compute
// jitter"). Device d's compute in run-wide iteration i takes m = 1 + cv sqrt(3) (2u - 1)
// times its time: u uniform on [0, 1), so m has mean 1 and standard deviation cv. The
// expected wait at a barrier of n devices is then closed-form: E[max of n] = 1 +
// cv sqrt(3) (n - 1) / (n + 1) (within 2% of a normal's for n <= 4). u is not random:
// u = frac(i sqrt(p_d) + 1/2), p_d the (d+1)-th prime. Square roots of distinct primes
// are rationally independent, so by Weyl's theorem the devices' u's are equidistributed
// jointly (the barrier's expected wait comes out right) and each device's own mean
// converges as fast as a sequence can (its total over N iterations is within
// O(cv log N) iterations of N: one device's plan keeps its time, which random draws,
// a few per cent off over 30 steps, would not). Reproducible, no seed.
static double jitter_alpha_of(int d) {
  int p = 1;
  for (int found = -1; found < d;) {  // the (d+1)-th prime, by trial division (d is small)
    p++;
    bool prime = true;
    for (int k = 2; k * k <= p; k++) prime = prime && p % k != 0;
    if (prime) found++;
  }
  double x = std::sqrt(static_cast<double>(p));
  return x - std::floor(x);
}

static double jitter_of(double alpha, int64_t i, double cv) {
  if (cv <= 0) return 1;
  double x = static_cast<double>(i) * alpha + 0.5;
  double u = x - std::floor(x);
  return 1 + cv * std::sqrt(3.0) * (2 * u - 1);
}

class Engine {
 public:
  Engine(const Plan& plan, const SimOptions& opt) : plan_(plan), sc_(plan.scenario), opt_(opt) {}
  SimResult run();

 private:
  const Plan& plan_;
  const Scenario& sc_;
  const SimOptions& opt_;
  SimResult res_;
  int n_ = 0;
  std::vector<DevState> dev_;
  FluidNet net_;
  std::vector<double> pair_cap_Bps_;   // per-pair override (<= 0: none)
  std::vector<double> pair_lat_s_;
  std::vector<double> degrade_;        // per-pair bandwidth divisor
  std::vector<Event> heap_;
  uint64_t seq_ = 0;
  uint64_t net_version_ = 0;
  bool net_dirty_ = false;
  double host_cores_ = 0;      // > 0: devices share this many cores (cpu_* below)
  double cpu_last_ = 0;        // when the shared host's CPU progress was last brought up to date
  uint64_t cpu_version_ = 0;
  bool cpu_dirty_ = false;
  std::vector<int> cpu_run_, cpu_done_;   // scratch of cpu_reschedule / cpu_event
  double now_ = 0;
  bool failed_ = false;

  // Current segment. Iterations in flight live in `slots_` slots; a task of iteration j
  // is the instance (j % slots_) * nt_ + task id, and every per-task array below is
  // indexed by instance. Without `overlap` only one iteration is ever in flight.
  int seg_i_ = -1;
  const Segment* seg_ = nullptr;
  const std::vector<Task>* tasks_ = nullptr;
  int nt_ = 0;                  // tasks of one iteration
  int slots_ = 1;               // iterations that may be in flight at once
  int64_t iter_ = 0;            // oldest iteration of the segment not complete yet
  int64_t next_iter_ = 0;       // next iteration to start
  int64_t global_base_ = 0;     // run-wide index of the segment's iteration 0
  double seg_start_ = 0;
  std::vector<int64_t> slot_iter_;            // iteration a slot holds (-1: free)
  std::vector<int> slot_done_;                // tasks finished per slot
  std::vector<int> own_total_;                // per device: its tasks in one iteration
  std::vector<int> psucc_begin_, psucc_list_; // overlap: tasks of the next iteration gated on a task (CSR)
  std::vector<char> inst_done_;               // per instance: finished
  std::vector<int> dev_task_begin_, dev_task_list_;  // tasks of each device (CSR)
  std::vector<int> succ_begin_, succ_list_;   // successors (CSR)
  std::vector<int> free_begin_, free_list_;   // allocations freed when a task ends (CSR)
  std::vector<int> deps_left_;                // per instance; + previous-iteration gates (overlap)
  std::vector<char> alloc_live_;
  std::vector<int> coll_step_, coll_pending_;
  std::vector<int> scratch_flows_;
  std::vector<double> epoch_end_;
  std::vector<char> fault_fired_;
  std::vector<int> dispatch_list_;             // devices whose engines may start work now
  Progress* progress_ = nullptr;

  void push(double t, int type, int a, int b = 0) {
    heap_.push_back(Event{t, seq_++, type, a, b});
    std::push_heap(heap_.begin(), heap_.end(), EventLater());
  }
  const Task& task_of(int inst) const { return (*tasks_)[inst % nt_]; }
  // Engines take the ready instance of the oldest iteration first, then the lowest id.
  struct LaterInstance {
    const Engine* e;
    bool operator()(int a, int b) const {
      int64_t ia = e->slot_iter_[a / e->nt_], ib = e->slot_iter_[b / e->nt_];
      return ia != ib ? ia > ib : a % e->nt_ > b % e->nt_;
    }
  };
  int64_t iter_of(int inst) const { return slot_iter_[inst / nt_]; }
  void segment_prepare(int si);
  void segment_close();
  void compute_engine_charge(int d);
  void iterations_try_start();
  void iteration_begin(int64_t j);
  void iterations_retire();
  void task_ready(int t);
  void task_start(int t);
  double cpu_work_end(int d, double sustained_s);
  double cpu_ready_at(int d) const;
  bool cfs_spent(int d) const;
  double cfs_resume_at(int d) const;
  void cpu_work_begin(int d, int t, double sustained_s);
  void cpu_advance();
  void cpu_period_roll(int d);
  void cpu_reschedule();
  void cpu_event();
  void task_finish(int t);
  void engine_dispatch(int d, bool storage);
  void dispatch_mark(int d);
  void dispatch_run();
  void collective_step_begin(int t);
  void flow_begin(int t, int ring_i);
  void net_event();
  void flow_done(int f);
  void mem_alloc(int d, double bytes, const std::string& what, int64_t iteration);
  void fault_apply(int fi);
  void fail(const std::string& kind, int device, const std::string& task, const std::string& message,
            int64_t iteration);
  void trace_add(SimTraceKind kind, int inst, int a, int b, int step, double t0, double t1);
  void comm_change(int d, int delta);
  void mem_trace(int d) {
    if (!opt_.trace) return;
    trace_add(SimTraceKind::Memory, -1, d, -1, -1, now_, now_);
    if (!res_.trace.empty() && res_.trace.back().kind == SimTraceKind::Memory) res_.trace.back().value = dev_[d].mem_cur;
  }
  double flow_cap(int src, int dst) const {
    double c = pair_cap_Bps_[src * n_ + dst];
    double deg = degrade_[src * n_ + dst];
    if (deg != 1) {
      // A degraded pair without an override is limited to the slower NIC / the medium,
      // divided by the factor.
      if (c <= 0) {
        c = kInf;
        double u = net_.capacity(net_.uplink(src)), w = net_.capacity(net_.downlink(dst));
        if (u > 0) c = std::min(c, u);
        if (w > 0) c = std::min(c, w);
        if (net_.medium() >= 0) c = std::min(c, net_.capacity(net_.medium()));
        if (c == kInf) return 0;
      }
      c /= deg;
    }
    return c;
  }
};

void Engine::fail(const std::string& kind, int device, const std::string& task, const std::string& message,
                  int64_t iteration) {
  if (failed_) return;
  failed_ = true;
  res_.ok = false;
  SimFailure& f = res_.failure;
  f.kind = kind;
  f.device = device >= 0 ? sc_.devices[device].id : "";
  f.task = task;
  f.segment = seg_ ? seg_->name : "";
  f.iteration = iteration;
  f.time_s = now_;
  f.message = message;
}

void Engine::mem_alloc(int d, double bytes, const std::string& what, int64_t iteration) {
  DevState& ds = dev_[d];
  ds.mem_cur += bytes;
  SimDeviceStats& st = res_.devices[d];
  if (ds.mem_cur > st.peak_memory_bytes) st.peak_memory_bytes = ds.mem_cur;
  mem_trace(d);
  if (ds.mem_cap > 0 && ds.mem_cur > ds.mem_cap) {
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "out of memory on %s at t=%.3f s (segment %s, iteration %lld): %s needs %.3f GB, "
                  "the device has %.3f GB",
                  sc_.devices[d].id.c_str(), now_, seg_ ? seg_->name.c_str() : "?",
                  static_cast<long long>(iteration), what.c_str(), ds.mem_cur / 1e9, ds.mem_cap / 1e9);
    fail("oom", d, what, buf, iteration);
    res_.failure.need_bytes = ds.mem_cur;
    res_.failure.have_bytes = ds.mem_cap;
  }
}

void Engine::trace_add(SimTraceKind kind, int inst, int a, int b, int step, double t0, double t1) {
  if (!opt_.trace) return;
  int64_t iteration = inst >= 0 ? iter_of(inst) : iter_;
  if (opt_.trace_iterations >= 0 && iteration >= opt_.trace_iterations) return;
  if (res_.trace.size() >= opt_.trace_max_events) {
    res_.trace_truncated = true;
    return;
  }
  res_.trace.push_back(SimTraceEvent{kind, seg_i_, iteration, inst >= 0 ? inst % nt_ : -1, a, b, step, t0, t1});
}

void Engine::comm_change(int d, int delta) {
  DevState& ds = dev_[d];
  if (ds.flows_live == 0 && delta > 0) ds.comm_since = now_;
  ds.flows_live += delta;
  if (ds.flows_live == 0 && delta < 0) res_.devices[d].comm_s += now_ - ds.comm_since;
}

void Engine::segment_prepare(int si) {
  seg_i_ = si;
  seg_ = &plan_.segments[si];
  tasks_ = &seg_->graph.tasks;
  const auto& tasks = *tasks_;
  const int nt = static_cast<int>(tasks.size());
  nt_ = nt;
  // Successor, free and per-device lists, built once per segment (one iteration's DAG).
  succ_begin_.assign(nt + 1, 0);
  free_begin_.assign(nt + 1, 0);
  dev_task_begin_.assign(n_ + 1, 0);
  for (const Task& t : tasks) {
    for (int d : t.deps) succ_begin_[d + 1]++;
    if (t.mem_free_task >= 0) free_begin_[t.mem_free_task + 1]++;
    dev_task_begin_[t.device + 1]++;
  }
  for (int i = 0; i < nt; i++) {
    succ_begin_[i + 1] += succ_begin_[i];
    free_begin_[i + 1] += free_begin_[i];
  }
  for (int d = 0; d < n_; d++) dev_task_begin_[d + 1] += dev_task_begin_[d];
  succ_list_.assign(succ_begin_[nt], 0);
  free_list_.assign(free_begin_[nt], 0);
  dev_task_list_.assign(nt, 0);
  std::vector<int> fill_s(succ_begin_.begin(), succ_begin_.end() - 1);
  std::vector<int> fill_f(free_begin_.begin(), free_begin_.end() - 1);
  std::vector<int> fill_d(dev_task_begin_.begin(), dev_task_begin_.end() - 1);
  for (const Task& t : tasks) {
    for (int d : t.deps) succ_list_[fill_s[d]++] = t.id;
    if (t.mem_free_task >= 0) free_list_[fill_f[t.mem_free_task]++] = t.id;
    dev_task_list_[fill_d[t.device]++] = t.id;
  }
  // Overlap: task u of iteration j+1 waits for task u and u's prev_deps of iteration j.
  psucc_begin_.assign(nt + 1, 0);
  psucc_list_.clear();
  if (seg_->overlap) {
    std::vector<std::vector<int>> ps(nt);
    for (const Task& t : tasks) {
      ps[t.id].push_back(t.id);
      for (int p : t.prev_deps)
        if (std::find(ps[p].begin(), ps[p].end(), t.id) == ps[p].end()) ps[p].push_back(t.id);
    }
    for (int i = 0; i < nt; i++) {
      psucc_begin_[i + 1] = psucc_begin_[i] + static_cast<int>(ps[i].size());
      psucc_list_.insert(psucc_list_.end(), ps[i].begin(), ps[i].end());
    }
  }
  own_total_.assign(n_, 0);
  for (int d = 0; d < n_; d++) own_total_[d] = dev_task_begin_[d + 1] - dev_task_begin_[d];
  // An overlapping (asynchronous) segment may have several iterations in flight; n + 1
  // bounds how far the first stage can run ahead of the last, as a real pipeline's
  // activation buffers do.
  slots_ = seg_->overlap ? n_ + 1 : 1;
  const size_t ni = static_cast<size_t>(slots_) * nt;
  deps_left_.assign(ni, 0);
  alloc_live_.assign(ni, 0);
  coll_step_.assign(ni, 0);
  coll_pending_.assign(ni, 0);
  slot_iter_.assign(slots_, -1);
  slot_done_.assign(slots_, 0);
  inst_done_.assign(ni, 0);
  iter_ = next_iter_ = 0;
  seg_start_ = now_;
  for (int d = 0; d < n_; d++) {
    dev_[d].computes_in_segment = false;
    dev_[d].busy_seg_start = res_.devices[d].busy_s;
    dev_[d].storage_seg_start = res_.devices[d].storage_s;
    dev_[d].compute_queue.reserve(static_cast<size_t>(slots_) * own_total_[d]);
    dev_[d].storage_queue.reserve(static_cast<size_t>(slots_) * own_total_[d]);
  }
  for (const Task& t : tasks)
    if (kind_is_compute(t.kind)) dev_[t.device].computes_in_segment = true;
  res_.segments[si].start_s = now_;
  // Resident state replaces the previous segment's (weights released, cache loaded...).
  for (int d = 0; d < n_; d++) {
    dev_[d].mem_cur = 0;
    double r = seg_->resident_bytes.empty() ? 0 : seg_->resident_bytes[d];
    if (r > 0) mem_alloc(d, r, "resident state of segment " + seg_->name, 0);
    else mem_trace(d);
    if (failed_) return;
  }
}

// Bubble of the segment: for a device that computes in it, the time its compute engine
// waited. Iterations tile the segment, so this equals the sum over iterations.
// The compute engine's current task ran from compute_start to now: busy time for
// compute, storage time for cache I/O queued there (a one-core device).
void Engine::compute_engine_charge(int d) {
  const DevState& ds = dev_[d];
  SimDeviceStats& st = res_.devices[d];
  (kind_is_storage(task_of(ds.compute_cur).kind) ? st.storage_s : st.busy_s) += now_ - ds.compute_start;
}

void Engine::segment_close() {
  for (int d = 0; d < n_; d++) {
    if (!dev_[d].computes_in_segment) continue;
    // On a one-core device the compute engine also ran the segment's cache I/O.
    const DevState& ds = dev_[d];
    double engine_s = res_.devices[d].busy_s - ds.busy_seg_start;
    if (ds.storage_on_cpu) engine_s += res_.devices[d].storage_s - ds.storage_seg_start;
    // max(0): the terms tile the segment, and their rounding must not make a device that
    // never waited report -2e-16 s.
    res_.devices[d].bubble_s += std::max(0.0, (now_ - seg_start_) - engine_s);
  }
  res_.segments[seg_i_].end_s = now_;
}

// Starts every iteration that may start now. Without overlap: the next one once the
// previous is complete (the barrier). With overlap: any within the in-flight limit; its
// tasks are gated on the previous iteration's (see iteration_begin).
void Engine::iterations_try_start() {
  while (!failed_ && next_iter_ < seg_->repeat && next_iter_ - iter_ < slots_) {
    int64_t j = next_iter_;
    if (j > iter_ && !seg_->overlap) return;
    iteration_begin(j);
  }
}

void Engine::iteration_begin(int64_t j) {
  // Faults bound to an iteration fire as it starts.
  for (size_t fi = 0; fi < sc_.faults.size(); fi++)
    if (sc_.faults[fi].at_iteration == global_base_ + j && sc_.faults[fi].at_time_s < 0)
      fault_apply(static_cast<int>(fi));
  if (failed_) return;
  next_iter_ = j + 1;
  const int k = static_cast<int>(j % slots_);
  slot_iter_[k] = j;
  slot_done_[k] = 0;
  // With overlap, a task also waits for itself and its prev_deps in the previous
  // iteration, if that one is still running (one extra dependency per unfinished one).
  const bool gated = seg_->overlap && j > iter_;
  const int basep = gated ? static_cast<int>((j - 1) % slots_) * nt_ : 0;
  const auto& tasks = *tasks_;
  const int base = k * nt_;
  for (int i = 0; i < nt_; i++) {
    deps_left_[base + i] = static_cast<int>(tasks[i].deps.size());
    alloc_live_[base + i] = 0;
    inst_done_[base + i] = 0;
  }
  if (gated) {
    for (int p = 0; p < nt_; p++) {
      if (inst_done_[basep + p]) continue;
      for (int f = psucc_begin_[p]; f < psucc_begin_[p + 1]; f++) deps_left_[base + psucc_list_[f]]++;
    }
  }
  for (int i = 0; i < nt_ && !failed_; i++)
    if (deps_left_[base + i] == 0) task_ready(base + i);
}

// Retires complete iterations in order: epoch bookkeeping, progress, free slots.
void Engine::iterations_retire() {
  while (iter_ < next_iter_ && slot_done_[iter_ % slots_] == nt_) {
    const int64_t j = iter_;
    // Which epoch this iteration belongs to: the segment's iterations are spread evenly
    // over its epochs.
    int nep = seg_->epoch_last - seg_->epoch_first + 1;
    int e = seg_->epoch_first + static_cast<int>((j * nep) / std::max<int64_t>(1, seg_->repeat));
    if (e >= 1 && e <= static_cast<int>(epoch_end_.size())) epoch_end_[e - 1] = std::max(epoch_end_[e - 1], now_);
    res_.segments[seg_i_].iterations_done = j + 1;
    slot_iter_[j % slots_] = -1;
    iter_++;
    if (opt_.progress) progress_->update(static_cast<long>(global_base_ + iter_), "t=" + format_duration(now_));
  }
}

void Engine::task_ready(int t) {
  const Task& task = task_of(t);
  if (kind_is_compute(task.kind)) {
    auto& q = dev_[task.device].compute_queue;
    q.push_back(t);
    std::push_heap(q.begin(), q.end(), LaterInstance{this});
    dispatch_mark(task.device);
  } else if (kind_is_storage(task.kind)) {
    DevState& ds = dev_[task.device];
    auto& q = ds.storage_on_cpu ? ds.compute_queue : ds.storage_queue;
    q.push_back(t);
    std::push_heap(q.begin(), q.end(), LaterInstance{this});
    dispatch_mark(task.device);
  } else {
    task_start(t);  // the NIC takes any number of flows at once
  }
}

void Engine::engine_dispatch(int d, bool storage) {
  DevState& ds = dev_[d];
  auto& q = storage ? ds.storage_queue : ds.compute_queue;
  if (q.empty()) return;
  std::pop_heap(q.begin(), q.end(), LaterInstance{this});
  int t = q.back();
  q.pop_back();
  if (storage) {
    ds.storage_cur = t;
    ds.storage_start = now_;
  } else {
    ds.compute_cur = t;
    ds.compute_start = now_;
  }
  task_start(t);
}

// When CPU work that takes `sustained_s` at the device's profile rates, starting now,
// ends. Without a quota: now + sustained_s. Under a CFS quota q the work is sustained_s
// x q CPU seconds at full speed, served while the period's budget q x P lasts: a device
// that computes in bursts between waits (a pipeline stage that is not the bottleneck)
// runs them up to 1/q faster than its sustained rate, and one that computes all the time
// averages exactly q (the sustained rate). Example, q = 0.5, P = 100 ms, from t = 0: a
// 60 ms task (30 ms CPU) ends at 30 ms; a second one right after has 20 ms of budget
// left, runs to 50 ms, waits for the period at 100 ms and ends at 110 ms. A device that
// waited for a period resumes throttle_delay_s after it begins (fitted: what the
// kernel and the hypervisor take to run a throttled group again): 120 ms with 10 ms.
double Engine::cpu_work_end(int d, double sustained_s) {
  DevState& ds = dev_[d];
  if (ds.cfs_quota <= 0) return now_ + sustained_s;
  const double budget = ds.cfs_quota * kCfsPeriodS;
  double work = sustained_s * ds.cfs_quota;
  double t = now_;
  // (Never an earlier period than the last one served: a time rounded just below a
  // period boundary must not reopen the period before it.)
  int64_t k = std::max(ds.cfs_period, static_cast<int64_t>(std::floor((t - ds.cfs_phase) / kCfsPeriodS)));
  if (k != ds.cfs_period) {
    ds.cfs_period = k;
    ds.cfs_used = 0;
  }
  const double delay = sc_.devices[d].profile.throttle_delay_s;
  for (;;) {
    double left = budget - ds.cfs_used, to_end = cfs_period_start(k + 1, ds.cfs_phase) - t;
    double avail = std::min(left, to_end);
    if (work <= avail) {
      ds.cfs_used += work;
      return t + work;
    }
    if (avail > 0) {
      work -= avail;
      ds.cfs_used += avail;
    }
    k++;  // budget spent or period over: on at the next period, with a fresh budget
    t = cfs_period_start(k, ds.cfs_phase) + (left <= to_end ? delay : 0);  // throttled: resumes `delay` late
    ds.cfs_period = k;
    ds.cfs_used = 0;
  }
}

// When device `d` can next run a moment of CPU work (a ring step's receive, reduce and
// send): now, unless its quota's budget for the current period is spent, in which case
// the kernel holds it until the next period (+ the profile's throttle delay, as in
// cpu_work_end). Work booked into a later period (a running task) does not hold it: the
// step's CPU is negligible next to a period.
double Engine::cpu_ready_at(int d) const {
  const DevState& ds = dev_[d];
  if (ds.cpu_resume >= 0) return std::max(now_, ds.cpu_resume);  // shared host: throttled
  if (ds.cfs_quota <= 0) return now_;
  const int64_t k = static_cast<int64_t>(std::floor((now_ - ds.cfs_phase) / kCfsPeriodS));
  if (ds.cfs_period != k || !cfs_spent(d)) return now_;
  return cfs_resume_at(d);
}

// Whether device d has spent the CFS budget of its current period (cfs_period).
bool Engine::cfs_spent(int d) const {
  const DevState& ds = dev_[d];
  return ds.cfs_used >= ds.cfs_quota * kCfsPeriodS * (1 - 1e-12);
}

// When device d, throttled in its current period, runs again: the next period's start
// + the profile's throttle delay.
double Engine::cfs_resume_at(int d) const {
  return cfs_period_start(dev_[d].cfs_period + 1, dev_[d].cfs_phase) + sc_.devices[d].profile.throttle_delay_s;
}

// ---- Shared host (Scenario::host_cores > 0; docs/simulator.md, "Shared host").
// The testbed runs every device as a process on one machine. A device computes on up to
// cpu_cores cores; when the devices that compute at once want more cores than the host
// has, each gets a max-min fair share (what Linux's CFS gives equal-weight cgroups), and
// its CPU work progresses at that share of its full speed. Under a quota the work is
// also held by the CFS budget, as in cpu_work_end but with the rate varying: the budget
// is spent at the cores the device gets, and a device that spent it waits for the next
// period (+ throttle_delay_s). Task ends, budget ends and period boundaries are EV_CPU
// events; each change of who computes re-shares the host (cpu_reschedule). With cores
// to spare this gives exactly cpu_work_end's times, unless the profiles carry a co-run
// slowdown (DeviceProfile::corun_slowdown): then a device computes that much slower
// while the host's other cores are busy, in proportion to how busy they are.

// The CFS period holding time `t` for periods offset by `phase` (a boundary computed as
// k x P + phase may round to just below it; it belongs to period k).
static int64_t cfs_period_of(double t, double phase) {
  return static_cast<int64_t>(std::floor((t - phase) / kCfsPeriodS + 1e-9));
}

// Starts instance t's CPU work of `sustained_s` (at the profile's rates) on device d.
void Engine::cpu_work_begin(int d, int t, double sustained_s) {
  cpu_advance();
  DevState& ds = dev_[d];
  ds.cpu_task = t;
  ds.cpu_left = sustained_s * (ds.cfs_quota > 0 ? ds.cfs_quota : 1);
  const Task& task = task_of(t);
  ds.cpu_corun = kind_is_compute(task.kind) ? corun_slowdown_at(sc_.devices[d].profile, task.samples) : 1;
  ds.cpu_slow = 1;
  if (ds.cfs_quota > 0 && ds.cpu_left > 0) {
    cpu_period_roll(d);
    // The budget already spent in this period (a task that ended exactly as it ran out):
    // held until the next period, as cpu_work_end does.
    if (ds.cpu_resume < 0 && cfs_spent(d)) ds.cpu_resume = cfs_resume_at(d);
  }
  cpu_dirty_ = true;
}

// Brings every running device's CPU work and budget up to now at the rates set by the
// last cpu_reschedule (constant since: every change reschedules at once).
void Engine::cpu_advance() {
  double dt = now_ - cpu_last_;
  cpu_last_ = now_;
  if (dt <= 0) return;
  for (int d = 0; d < n_; d++) {
    DevState& ds = dev_[d];
    if (ds.cpu_task < 0 || ds.cpu_rate <= 0) continue;
    ds.cpu_left -= ds.cpu_rate / ds.cpu_slow * dt;
    if (ds.cfs_quota > 0) ds.cfs_used += ds.cpu_rate * dt;
  }
}

// A new period gives a quota device a fresh budget (never an earlier period than the
// last one served).
void Engine::cpu_period_roll(int d) {
  DevState& ds = dev_[d];
  int64_t k = std::max(ds.cfs_period, cfs_period_of(now_, ds.cfs_phase));
  if (k != ds.cfs_period) {
    ds.cfs_period = k;
    ds.cfs_used = 0;
  }
}

// Shares the host among the devices that compute now and schedules the next EV_CPU: the
// first task end, budget end, period boundary (a quota device computing) or end of a
// throttle.
void Engine::cpu_reschedule() {
  // Max-min fair share of host_cores_ among the computing devices, each capped at its
  // cpu_cores: the devices wanting less than an equal share get all they want.
  std::vector<int>& run = cpu_run_;
  run.clear();
  for (int d = 0; d < n_; d++) {
    DevState& ds = dev_[d];
    ds.cpu_rate = 0;
    if (ds.cpu_task >= 0 && ds.cpu_resume < 0) run.push_back(d);
  }
  std::sort(run.begin(), run.end(), [&](int a, int b) {
    return dev_[a].cpu_cores != dev_[b].cpu_cores ? dev_[a].cpu_cores < dev_[b].cpu_cores : a < b;
  });
  double cores = host_cores_;
  for (size_t i = 0; i < run.size(); i++) {
    DevState& ds = dev_[run[i]];
    double give = std::min(ds.cpu_cores, cores / static_cast<double>(run.size() - i));
    ds.cpu_rate = give / ds.cpu_cores;
    cores -= give;
  }
  // Co-run slowdown (DeviceProfile::corun_slowdown, measured with every other core
  // busy): a device computes at 1 + (f - 1) x the busy fraction of the host's other
  // cores, i.e. the cores the others are given over the cores left besides its own.
  // A device alone on the host, or on a one-core host, runs at its profile's rate.
  const double used = host_cores_ - cores;
  for (int d : run) {
    DevState& ds = dev_[d];
    double own = ds.cpu_rate * ds.cpu_cores;
    double others = host_cores_ > 1 ? std::min(1.0, std::max(0.0, used - own) / (host_cores_ - 1)) : 0;
    ds.cpu_slow = 1 + (ds.cpu_corun - 1) * others;
  }
  double next = kInf;
  for (int d = 0; d < n_; d++) {
    const DevState& ds = dev_[d];
    if (ds.cpu_resume >= 0) next = std::min(next, ds.cpu_resume);
    if (ds.cpu_task < 0 || ds.cpu_rate <= 0) continue;
    next = std::min(next, now_ + std::max(0.0, ds.cpu_left) * ds.cpu_slow / ds.cpu_rate);
    if (ds.cfs_quota > 0) {
      next = std::min(next, now_ + std::max(0.0, ds.cfs_quota * kCfsPeriodS - ds.cfs_used) / ds.cpu_rate);
      next = std::min(next, cfs_period_start(ds.cfs_period + 1, ds.cfs_phase));
    }
  }
  ++cpu_version_;
  if (next < kInf) push(std::max(now_, next), EV_CPU, static_cast<int>(static_cast<uint32_t>(cpu_version_)));
}

// Within the clock's resolution of now: `left` CPU seconds at `rate` (what is left after
// rounding must not schedule an event at now again and again).
static bool cpu_spent(double now, double left, double rate) {
  return left <= 1e-12 || rate <= 0 || now + left / rate <= now;
}

void Engine::cpu_event() {
  cpu_advance();
  std::vector<int>& done = cpu_done_;
  done.clear();
  for (int d = 0; d < n_; d++) {
    DevState& ds = dev_[d];
    if (ds.cpu_resume >= 0 && now_ >= ds.cpu_resume - 1e-12) ds.cpu_resume = -1;
    if (ds.cpu_task < 0) continue;
    if (ds.cpu_rate > 0 && cpu_spent(now_, ds.cpu_left, ds.cpu_rate / ds.cpu_slow)) {
      done.push_back(d);
      continue;
    }
    if (ds.cfs_quota <= 0 || ds.cpu_resume >= 0) continue;
    // Budget spent before the period ends: throttled until the next one (+ the delay).
    // One spent exactly at the boundary runs on with the new period's budget.
    if (ds.cpu_rate > 0 && cpu_spent(now_, ds.cfs_quota * kCfsPeriodS - ds.cfs_used, ds.cpu_rate) &&
        cfs_period_of(now_, ds.cfs_phase) == ds.cfs_period)
      ds.cpu_resume = cfs_resume_at(d);
    else
      cpu_period_roll(d);
  }
  cpu_dirty_ = true;
  for (size_t i = 0; i < done.size(); i++) {
    const int d = done[i];
    DevState& ds = dev_[d];
    int t = ds.cpu_task;
    ds.cpu_task = -1;
    ds.cpu_rate = 0;
    trace_add(kind_is_storage(task_of(t).kind) ? SimTraceKind::Storage : SimTraceKind::Compute, t, d, -1, -1,
              ds.compute_start, now_);
    if (failed_) return;
    task_finish(t);
  }
}

// `t` here and below is a task instance (slot * nt_ + task id).
void Engine::task_start(int t) {
  const Task& task = task_of(t);
  if (task.mem_alloc_bytes > 0) {
    alloc_live_[t] = 1;
    mem_alloc(task.device, task.mem_alloc_bytes, task_name(task), iter_of(t));
    if (failed_) return;
  }
  if (kind_is_compute(task.kind)) {
    // A phase's first use (Task::first_extra_s) in the segment's first iteration only.
    double secs = task.seconds + (iter_of(t) == 0 ? task.first_extra_s : 0);
    const DevState& dj = dev_[task.device];
    secs *= jitter_of(dj.jitter_alpha, global_base_ + iter_of(t), dj.jitter_cv);
    if (host_cores_ > 0) {
      cpu_work_begin(task.device, t, secs * dev_[task.device].slow);
      return;
    }
    double end = cpu_work_end(task.device, secs * dev_[task.device].slow);
    trace_add(SimTraceKind::Compute, t, task.device, -1, -1, now_, end);
    push(end, EV_TASK_END, t);
  } else if (kind_is_storage(task.kind)) {
    // The device's own storage figures (the simulator models the disk): a fixed cost
    // per record (one per sample) and the bytes at the rate; the task's seconds when it
    // moves no bytes.
    const DeviceProfile& p = sc_.devices[task.device].profile;
    double dur = task.bytes > 0 ? cache_io_s(p, task.kind == TaskKind::CacheWrite, task.samples, task.bytes) : task.seconds;
    // On a one-core device cache I/O is CPU work on the same quota as compute.
    if (dev_[task.device].storage_on_cpu && host_cores_ > 0) {
      cpu_work_begin(task.device, t, dur);
      return;
    }
    double end = dev_[task.device].storage_on_cpu ? cpu_work_end(task.device, dur) : now_ + dur;
    trace_add(SimTraceKind::Storage, t, task.device, -1, -1, now_, end);
    push(end, EV_TASK_END, t);
  } else if (task.kind == TaskKind::Send) {
    if (task.bytes <= 0 || task.peer == task.device) {
      push(now_, EV_TASK_END, t);
    } else {
      push(now_ + pair_lat_s_[task.device * n_ + task.peer], EV_FLOW_START, t, -1);
    }
  } else {  // collective
    if (task.group.size() <= 1 || task.bytes <= 0) {
      push(now_, EV_TASK_END, t);
    } else {
      coll_step_[t] = 0;
      collective_step_begin(t);
    }
  }
}

// One ring step: member i sends bytes/n to member i+1, all at once.
void Engine::collective_step_begin(int t) {
  const Task& task = task_of(t);
  const int g = static_cast<int>(task.group.size());
  coll_pending_[t] = g;
  // Every member handles every step (receive, reduce, send on): a member its CPU quota
  // has throttled holds the whole ring until its next period.
  if (host_cores_ > 0) cpu_advance();  // the members' budgets as of now
  double start = now_;
  for (int d : task.group) start = std::max(start, cpu_ready_at(d));
  for (int i = 0; i < g; i++) {
    int src = task.group[i], dst = task.group[(i + 1) % g];
    push(start + pair_lat_s_[src * n_ + dst], EV_FLOW_START, t, i);
  }
}

void Engine::flow_begin(int t, int ring_i) {
  const Task& task = task_of(t);
  int src, dst;
  double bytes;
  if (ring_i < 0) {
    src = task.device;
    dst = task.peer;
    bytes = task.bytes;
  } else {
    const int g = static_cast<int>(task.group.size());
    src = task.group[ring_i];
    dst = task.group[(ring_i + 1) % g];
    bytes = task.bytes / g;
  }
  net_.flow_start(now_, src, dst, bytes, flow_cap(src, dst), t, ring_i);
  comm_change(src, +1);
  comm_change(dst, +1);
  net_dirty_ = true;
}

void Engine::flow_done(int f) {
  const NetFlow fl = net_.flow(f);  // copy: flow_end frees the slot
  net_.flow_end(now_, f);
  net_dirty_ = true;
  comm_change(fl.src, -1);
  comm_change(fl.dst, -1);
  res_.link_bytes[fl.src * n_ + fl.dst] += fl.bytes;
  const int t = fl.owner;
  const Task& task = task_of(t);
  if (fl.tag < 0) {
    trace_add(SimTraceKind::Send, t, fl.src, fl.dst, -1, fl.t_begin, now_);
    task_finish(t);
    return;
  }
  trace_add(SimTraceKind::Collective, t, fl.src, fl.dst, coll_step_[t], fl.t_begin, now_);
  if (--coll_pending_[t] > 0) return;
  // The step is over when every member's piece has arrived; all-reduce is a
  // reduce-scatter then an all-gather (2(n-1) steps), all-gather alone is n-1.
  const int g = static_cast<int>(task.group.size());
  int steps = task.kind == TaskKind::AllReduce ? 2 * (g - 1) : g - 1;
  if (++coll_step_[t] < steps) collective_step_begin(t);
  else task_finish(t);
}

void Engine::net_event() {
  net_.advance(now_);
  // Every flow that is done now (the earliest one, and any that finish within rounding
  // of it) ends in this event.
  int first = -1;
  net_.next_completion(&first);
  scratch_flows_.clear();
  for (int i = 0; i < net_.flow_capacity(); i++) {
    const NetFlow& f = net_.flow(i);
    if (!f.active) continue;
    if (i == first || f.remaining <= 1e-9 * f.bytes + 1e-6) scratch_flows_.push_back(i);
  }
  for (int f : scratch_flows_) {
    if (failed_) return;
    flow_done(f);
  }
}

void Engine::task_finish(int t) {
  const Task& task = task_of(t);
  const int d = task.device;
  const int k = t / nt_;
  const int base = k * nt_;
  res_.tasks++;
  // Free what this task's end releases: its own allocation, and others' that named it.
  if (task.mem_free_task < 0 && alloc_live_[t]) {
    dev_[d].mem_cur -= task.mem_alloc_bytes;
    alloc_live_[t] = 0;
    mem_trace(d);
  }
  for (int f = free_begin_[task.id]; f < free_begin_[task.id + 1]; f++) {
    int a = base + free_list_[f];
    if (alloc_live_[a]) {
      const Task& ta = task_of(a);
      dev_[ta.device].mem_cur -= ta.mem_alloc_bytes;
      alloc_live_[a] = 0;
      mem_trace(ta.device);
    }
  }
  if (dev_[d].compute_cur == t) {  // compute, or cache I/O on a one-core device's compute engine
    compute_engine_charge(d);
    dev_[d].compute_cur = -1;
  } else if (kind_is_storage(task.kind)) {
    DevState& ds = dev_[d];
    res_.devices[d].storage_s += now_ - ds.storage_start;
    ds.storage_cur = -1;
  }
  for (int f = succ_begin_[task.id]; f < succ_begin_[task.id + 1] && !failed_; f++) {
    int s = base + succ_list_[f];
    if (--deps_left_[s] == 0) task_ready(s);
  }
  if (failed_) return;
  if (kind_is_compute(task.kind) || kind_is_storage(task.kind)) dispatch_mark(d);
  slot_done_[k]++;
  inst_done_[t] = 1;
  if (seg_->overlap) {
    // Tasks of the next iteration gated on this one (if it has started; otherwise
    // iteration_begin sees this one done).
    const int64_t j = slot_iter_[k];
    if (j + 1 < next_iter_) {
      const int base2 = static_cast<int>((j + 1) % slots_) * nt_;
      for (int f = psucc_begin_[task.id]; f < psucc_begin_[task.id + 1] && !failed_; f++) {
        int s = base2 + psucc_list_[f];
        if (--deps_left_[s] == 0) task_ready(s);
      }
    }
  }
  if (failed_) return;
  if (slot_done_[k] == nt_) {
    iterations_retire();
    iterations_try_start();
  }
}

// An engine picks its next task only once every event of the current instant has been
// handled, so among tasks that become ready at the same time the lowest id wins
// regardless of the order the simultaneous events were processed in.
void Engine::dispatch_mark(int d) {
  if (dev_[d].dispatch_pending) return;
  dev_[d].dispatch_pending = true;
  dispatch_list_.push_back(d);
}

void Engine::dispatch_run() {
  // Devices in index order: deterministic whatever order they were marked in.
  std::sort(dispatch_list_.begin(), dispatch_list_.end());
  for (size_t i = 0; i < dispatch_list_.size() && !failed_; i++) {
    int d = dispatch_list_[i];
    dev_[d].dispatch_pending = false;
    if (dev_[d].compute_cur < 0) engine_dispatch(d, false);
    if (!failed_ && dev_[d].storage_cur < 0) engine_dispatch(d, true);
  }
  dispatch_list_.clear();
}

void Engine::fault_apply(int fi) {
  const FaultSpec& f = sc_.faults[fi];
  fault_fired_[fi] = 1;
  int d = device_find(sc_, f.device);
  if (d < 0) return;  // sim_run checked the names
  char buf[256];
  if (f.kind == "leave" || f.kind == "fail") {
    std::snprintf(buf, sizeof buf, "device %s %s at t=%.3f s (segment %s, iteration %lld); the run stops here",
                  f.device.c_str(), f.kind == "leave" ? "left" : "failed", now_, seg_ ? seg_->name.c_str() : "?",
                  static_cast<long long>(iter_));
    fail("fault", d, "", buf, iter_);
    return;
  }
  if (f.kind == "slowdown") {
    dev_[d].slow *= f.factor;
    std::snprintf(buf, sizeof buf, "%s slows down: compute time x%g", f.device.c_str(), f.factor);
  } else if (f.kind == "link_degrade") {
    int p = f.peer.empty() ? -1 : device_find(sc_, f.peer);
    for (int o = 0; o < n_; o++) {
      if (o == d || (p >= 0 && o != p)) continue;
      degrade_[d * n_ + o] *= f.factor;
      degrade_[o * n_ + d] *= f.factor;
    }
    // Flows in flight slow down at once.
    for (int i = 0; i < net_.flow_capacity(); i++) {
      const NetFlow& fl = net_.flow(i);
      if (fl.active) net_.flow_set_cap(now_, i, flow_cap(fl.src, fl.dst));
    }
    net_dirty_ = true;
    std::snprintf(buf, sizeof buf, "link %s-%s degrades: bandwidth / %g", f.device.c_str(),
                  f.peer.empty() ? "*" : f.peer.c_str(), f.factor);
  } else {
    return;
  }
  res_.faults.push_back(SimFaultApplied{now_, buf});
}

SimResult Engine::run() {
  auto wall0 = std::chrono::steady_clock::now();
  n_ = static_cast<int>(sc_.devices.size());
  dev_.assign(n_, DevState());
  res_.devices.assign(n_, SimDeviceStats());
  res_.link_bytes.assign(static_cast<size_t>(n_) * n_, 0);
  fault_fired_.assign(sc_.faults.size(), 0);
  for (const FaultSpec& f : sc_.faults) {
    if (device_find(sc_, f.device) < 0)
      throw_input(sc_.file, "$.faults", "fault names unknown device \"" + f.device + "\"");
    if (!f.peer.empty() && device_find(sc_, f.peer) < 0)
      throw_input(sc_.file, "$.faults", "fault names unknown peer \"" + f.peer + "\"");
  }

  // Network: NIC limits (switched: min of the network's per-port rate and the device's
  // own NIC; shared: the device's NIC only, the medium is one more resource).
  const NetworkSpec& ns = sc_.network;
  bool shared = ns.kind == "shared";
  std::vector<double> up(n_), down(n_);
  for (int d = 0; d < n_; d++) {
    double nic = sc_.devices[d].profile.nic_bandwidth_bps;
    double c = shared ? nic : (nic > 0 ? std::min(nic, ns.bandwidth_bps) : ns.bandwidth_bps);
    up[d] = down[d] = c > 0 ? c / 8 : 0;
    dev_[d].mem_cap = sc_.devices[d].profile.memory_bytes;
    dev_[d].storage_on_cpu = sc_.devices[d].cpu_quota > 0 && sc_.devices[d].cpu_quota <= 1.0;
    double q = sc_.devices[d].profile.sustained_quota;
    dev_[d].cfs_quota = q > 0 && q < 1 ? q : 0;
    dev_[d].cfs_phase = cfs_phase_of(d, sc_.cfs_phases_aligned);
    dev_[d].jitter_cv = sc_.devices[d].profile.compute_jitter_cv;
    dev_[d].jitter_alpha = jitter_alpha_of(d);
    // On a shared host a device computes on up to its quota's cores when that is more
    // than one (its threads), else on one.
    dev_[d].cpu_cores = std::max(1.0, sc_.devices[d].cpu_quota);
  }
  host_cores_ = sc_.host_cores;
  net_.init(up, down, shared ? ns.bandwidth_bps / 8 : 0);
  pair_cap_Bps_.assign(static_cast<size_t>(n_) * n_, 0);
  pair_lat_s_.assign(static_cast<size_t>(n_) * n_, 0);
  degrade_.assign(static_cast<size_t>(n_) * n_, 1);
  // Latency as the cost model sees it (network + the slower NIC, or a link override).
  for (int a = 0; a < n_; a++)
    for (int b = 0; b < n_; b++)
      if (a != b) pair_lat_s_[a * n_ + b] = link_latency_s(sc_, a, b);
  for (const LinkSpec& l : ns.links) {
    int a = device_find(sc_, l.a), b = device_find(sc_, l.b);
    if (a < 0 || b < 0 || l.bandwidth_bps <= 0) continue;
    pair_cap_Bps_[a * n_ + b] = pair_cap_Bps_[b * n_ + a] = l.bandwidth_bps / 8;
  }

  // Which devices take part at all (for energy and the report).
  int max_epoch = 0;
  int64_t total_iters = 0;
  for (const Segment& s : plan_.segments) {
    max_epoch = std::max(max_epoch, s.epoch_last);
    total_iters += s.repeat;
    for (int d = 0; d < n_ && d < static_cast<int>(s.resident_bytes.size()); d++)
      if (s.resident_bytes[d] > 0) res_.devices[d].used = true;
    for (const Task& t : s.graph.tasks) {
      res_.devices[t.device].used = true;
      if (t.kind == TaskKind::Send) res_.devices[t.peer].used = true;
      if (kind_is_collective(t.kind))
        for (int g : t.group) res_.devices[g].used = true;
    }
  }
  epoch_end_.assign(max_epoch, 0);
  res_.segments.resize(plan_.segments.size());
  for (size_t i = 0; i < plan_.segments.size(); i++) {
    const Segment& s = plan_.segments[i];
    res_.segments[i].name = s.name;
    res_.segments[i].epoch_first = s.epoch_first;
    res_.segments[i].epoch_last = s.epoch_last;
    res_.segments[i].repeat = s.repeat;
    res_.segments[i].overlap = s.overlap;
  }
  for (size_t fi = 0; fi < sc_.faults.size(); fi++)
    if (sc_.faults[fi].at_time_s >= 0) push(sc_.faults[fi].at_time_s, EV_FAULT, static_cast<int>(fi));

  Progress progress("simulating iteration", static_cast<long>(total_iters));
  progress.set_quiet(!opt_.progress);
  progress_ = &progress;
  heap_.reserve(1024);
  dispatch_list_.reserve(n_);

  for (size_t si = 0; si < plan_.segments.size() && !failed_; si++) {
    segment_prepare(static_cast<int>(si));
    if (failed_) break;
    if (nt_ == 0) {
      // Nothing to do: every iteration completes at once (faults by iteration still fire).
      for (int64_t j = 0; j < seg_->repeat && !failed_; j++) {
        for (size_t fi = 0; fi < sc_.faults.size(); fi++)
          if (sc_.faults[fi].at_iteration == global_base_ + j && sc_.faults[fi].at_time_s < 0)
            fault_apply(static_cast<int>(fi));
        if (!failed_) res_.segments[si].iterations_done = j + 1;
      }
      if (!failed_) segment_close();
      global_base_ += seg_->repeat;
      continue;
    }
    iterations_try_start();
    while (!failed_ && iter_ < seg_->repeat) {
      if (!dispatch_list_.empty() && (heap_.empty() || heap_.front().t > now_)) {
        dispatch_run();  // the instant is over: idle engines take their next task
        continue;
      }
      if (net_dirty_) {
        net_dirty_ = false;
        int f;
        double t = net_.next_completion(&f);
        if (f >= 0) push(t, EV_NET, static_cast<int>(static_cast<uint32_t>(++net_version_)));
        else ++net_version_;
      }
      if (cpu_dirty_) {
        cpu_dirty_ = false;
        cpu_reschedule();
      }
      if (heap_.empty()) {
        for (size_t i = 0; i < deps_left_.size(); i++)
          if (slot_iter_[i / nt_] >= 0 && deps_left_[i] > 0)
            throw RuntimeError("simulator deadlock in segment " + seg_->name + ": task " +
                               task_name(task_of(static_cast<int>(i))) + " never became ready");
        throw RuntimeError("simulator deadlock in segment " + seg_->name);
      }
      std::pop_heap(heap_.begin(), heap_.end(), EventLater());
      Event e = heap_.back();
      heap_.pop_back();
      // A network event is stale once the flows changed after it was scheduled.
      if (e.type == EV_NET && static_cast<uint32_t>(e.a) != static_cast<uint32_t>(net_version_)) continue;
      if (e.type == EV_CPU && static_cast<uint32_t>(e.a) != static_cast<uint32_t>(cpu_version_)) continue;
      now_ = e.t;
      res_.events++;
      switch (e.type) {
        case EV_TASK_END: task_finish(e.a); break;
        case EV_FLOW_START: flow_begin(e.a, e.b); break;
        case EV_NET: net_event(); break;
        case EV_FAULT: fault_apply(e.a); break;
        case EV_CPU: cpu_event(); break;
      }
    }
    if (failed_) break;
    segment_close();
    global_base_ += seg_->repeat;
  }

  // Close the books: partial work of a failed run counts up to the failure.
  res_.makespan_s = now_;
  for (int d = 0; d < n_; d++) {
    DevState& ds = dev_[d];
    SimDeviceStats& st = res_.devices[d];
    if (ds.compute_cur >= 0) compute_engine_charge(d);
    if (ds.storage_cur >= 0) st.storage_s += now_ - ds.storage_start;
    if (ds.flows_live > 0) st.comm_s += now_ - ds.comm_since;
  }
  if (failed_ && seg_i_ >= 0) {
    segment_close();
    // The epoch the failure interrupted ends at the failure; later ones never started.
    int nep = seg_->epoch_last - seg_->epoch_first + 1;
    int e = seg_->epoch_first + static_cast<int>((iter_ * nep) / std::max<int64_t>(1, seg_->repeat));
    e = std::min(e, seg_->epoch_last);
    if (e >= 1 && e <= max_epoch) {
      epoch_end_[e - 1] = now_;
      max_epoch = e;
    }
  }
  for (int d = 0; d < n_; d++) {
    SimDeviceStats& st = res_.devices[d];
    if (!st.used) continue;
    st.idle_s = std::max(0.0, now_ - st.busy_s - st.bubble_s);
    const DeviceProfile& p = sc_.devices[d].profile;
    st.energy_j = st.busy_s * p.power_busy_w + (now_ - st.busy_s) * p.power_idle_w;
  }
  // Faults the run never reached are listed too, so a typo in a time is visible.
  for (size_t fi = 0; fi < sc_.faults.size(); fi++) {
    const FaultSpec& f = sc_.faults[fi];
    if (fault_fired_[fi]) continue;
    char buf[200];
    if (f.at_time_s >= 0)
      std::snprintf(buf, sizeof buf, "%s of %s at t=%.3f s not reached", f.kind.c_str(), f.device.c_str(), f.at_time_s);
    else
      std::snprintf(buf, sizeof buf, "%s of %s at iteration %lld not reached", f.kind.c_str(), f.device.c_str(),
                    static_cast<long long>(f.at_iteration));
    res_.faults.push_back(SimFaultApplied{-1, buf});
  }
  double prev = 0;
  for (int e = 0; e < max_epoch; e++) {
    double end = std::max(prev, epoch_end_[e]);
    res_.epoch_s.push_back(end - prev);
    prev = end;
  }
  res_.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  return res_;
}

}  // namespace

SimResult sim_run(const Plan& plan, const SimOptions& opt) {
  sim_check_plan(plan, plan.scenario.file);
  Engine e(plan, opt);
  return e.run();
}

}  // namespace pac
