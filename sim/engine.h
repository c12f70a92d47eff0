// The discrete-event simulator: replays a plan's task DAG on simulated devices and
// links and says how long it takes, how busy every device is, how much memory each
// holds at its peak, how many bytes cross each link and how much energy is spent.
//
// Model (docs/simulator.md has the full story):
// - Each device has three engines that run at the same time: a compute engine (Forward,
//   Backward, Optimizer; one task at a time, the ready task with the lowest id first, so
//   the planner's task order is the schedule), a storage engine (CacheWrite/CacheRead,
//   one at a time; on a device of cpu_quota <= 1 core, an emulated testbed device, the
//   storage tasks queue on the compute engine: one core does both) and its NIC (any
//   number of flows, sharing the uplink and downlink).
// - Send = one flow; AllReduce = ring of 2(n-1) steps, AllGather = n-1 steps, each step n
//   concurrent flows of bytes/n (next step when all have arrived). A flow starts after the
//   pair's latency and then moves at the max-min fair rate of sim/network.h.
// - Segments run in order; a segment repeats its graph `repeat` times with a barrier
//   between iterations. Only one iteration's state exists at a time (memory grows with
//   the DAG, not with the number of iterations).
// - Memory: a segment's resident bytes plus live task allocations; going over a device's
//   memory ends the run with an "oom" failure naming device and task.
// - Faults from the scenario: leave/fail end the run ("fault" failure), slowdown scales
//   compute tasks that start afterwards, link_degrade divides bandwidth (flows in flight
//   are slowed at once).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "src/core/plan.h"

namespace pac {

struct SimOptions {
  bool trace = false;                 // record a timeline for --trace
  size_t trace_max_events = 2000000;  // the only thing that grows with iterations: capped
  int64_t trace_iterations = -1;      // record only the first N iterations of each segment (-1: all)
  bool progress = false;              // progress lines on stderr
};

enum class SimTraceKind { Compute, Storage, Send, Collective, Memory };

struct SimTraceEvent {
  SimTraceKind kind;
  int segment;
  int64_t iteration;   // within the segment
  int task;
  int a, b;            // device (compute/storage/memory) or link src -> dst (flows)
  int step;            // collective ring step, -1 otherwise
  double t0, t1;       // Memory: t0 = when, t1 unused
  double value = 0;    // Memory: bytes the device holds from t0 on
};

struct SimDeviceStats {
  bool used = false;          // appears in some task or holds resident state
  double busy_s = 0;          // compute engine running a task
  double storage_s = 0;       // storage engine running cache I/O
  double comm_s = 0;          // at least one flow in or out is moving
  double bubble_s = 0;        // inside an iteration it takes part in, compute engine idle
  double idle_s = 0;          // the rest of the run: makespan - busy - bubble
  double peak_memory_bytes = 0;
  double energy_j = 0;        // busy_s x power_busy + (makespan - busy_s) x power_idle
};

struct SimSegmentStats {
  std::string name;
  bool overlap = false;       // iterations overlapped (no barrier)
  int epoch_first = 1, epoch_last = 1;
  int64_t repeat = 0;
  int64_t iterations_done = 0;
  double start_s = 0, end_s = 0;
};

struct SimFailure {
  std::string kind;           // "oom" | "fault" ("" when the run finished)
  std::string device;         // device id
  std::string task;           // task label (or what held the memory)
  std::string segment;
  int64_t iteration = -1;     // within the segment
  double time_s = 0;
  double need_bytes = 0, have_bytes = 0;  // oom
  std::string message;        // one line a person reads
};

struct SimFaultApplied {
  double time_s = 0;          // < 0: never reached (the run ended before)
  std::string text;           // "nano3 slows down: compute time x2"
};

struct SimResult {
  bool ok = true;
  SimFailure failure;
  double makespan_s = 0;      // end of the run (or time of the failure)
  std::vector<double> epoch_s;            // per epoch (1-based epoch e at [e-1])
  std::vector<SimSegmentStats> segments;
  std::vector<SimDeviceStats> devices;    // scenario order
  std::vector<double> link_bytes;         // n x n, [src * n + dst]
  std::vector<SimFaultApplied> faults;
  int64_t events = 0;         // events processed (heap pops that did something)
  int64_t tasks = 0;          // tasks executed
  std::vector<SimTraceEvent> trace;
  bool trace_truncated = false;
  double wall_s = 0;          // host time spent simulating (not part of reports)
  double energy_j() const;
};

// Checks what the engine relies on (device indices, dependency order, group members,
// resident_bytes size) and throws InputError naming segment and task. `file` goes into
// messages.
void sim_check_plan(const Plan& plan, const std::string& file = "");

// Simulates the whole plan. Never throws for a failure of the simulated run (OOM, a
// fault): those come back in SimResult::failure. Throws InputError for a malformed plan.
SimResult sim_run(const Plan& plan, const SimOptions& opt = SimOptions());

}  // namespace pac
