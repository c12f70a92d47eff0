// The plan: the one interface between planner, simulator and runtime (design.md).
// A plan is self-contained: it embeds the resolved scenario, the phases (stages,
// groups, micro-batch shares), the task DAG of one iteration per segment with a
// repetition count, and the planner's own predictions. docs/plan-format.md documents
// the JSON form.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "src/core/scenario.h"

namespace pac {

enum class TaskKind {
  Forward,      // backbone (+ side) forward of layers [layer_begin, layer_end) on a micro-batch share
  Backward,     // backward of the same (side network only for parallel adapters)
  Optimizer,    // AdamW step on the trainable parameters the device holds
  Send,         // point-to-point: `device` sends `bytes` to `peer` (activations, side states, grads)
  AllReduce,    // ring all-reduce of `bytes` over `group`
  AllGather,    // all-gather, `bytes` = total gathered size (phase switch)
  CacheWrite,   // write `bytes` of tapped activations to local storage
  CacheRead,    // read them back (epochs 2+)
  Local,        // CPU work on `device` that is neither a layer's compute nor I/O: the
                // switch's dropping of phase 1 and loading of the side network
};

const char* task_kind_name(TaskKind k);
TaskKind task_kind_parse(const std::string& s);  // throws InputError on unknown

struct Task {
  int id = 0;                       // index in TaskGraph::tasks
  TaskKind kind = TaskKind::Forward;
  int device = -1;                  // executing device (Send: the sender)
  int peer = -1;                    // Send: the receiver
  std::vector<int> group;           // AllReduce / AllGather participants
  int stage = -1;
  int micro_batch = -1;
  int layer_begin = -1, layer_end = -1;  // [begin, end) in the model's global layer order
  double samples = 0;               // samples of the micro-batch this task processes
  double flops = 0;                 // compute work
  double seconds = 0;               // cost model's predicted duration on `device`
  // Added to `seconds` in the segment's first iteration only: the first use of a phase
  // (activation memory touched for the first time: the device's first compute task of
  // the phase, its mem_alloc_bytes / the profile's first_step_bytes_per_s or
  // cached_first_step_bytes_per_s).
  double first_extra_s = 0;
  double bytes = 0;                 // Send / collectives / cache I/O
  double mem_alloc_bytes = 0;       // held from this task's start ...
  int mem_free_task = -1;           // ... until that task ends (-1: until the task itself ends)
  std::vector<int> deps;            // task ids that must finish first
  // Overlapped segments only: task ids of the PREVIOUS iteration that must finish
  // first (besides this same task of the previous iteration, which always must). The
  // asynchronous pipeline uses it to bound the micro-batches a stage holds (1F1B across
  // mini-batches: forward g waits for backward g-w-1 even when that one belongs to the
  // previous mini-batch).
  std::vector<int> prev_deps;
  std::string label;                // "F s1 mb3", for traces
};

struct TaskGraph {
  std::vector<Task> tasks;          // topologically ordered (deps have smaller ids)
};

// A stretch of training that repeats one iteration's DAG `repeat` times. Iterations
// are separated by a barrier (the optimizer step ends a mini-batch everywhere).
struct Segment {
  std::string name;                 // "pipeline", "switch", "data_parallel"
  int epoch_first = 1, epoch_last = 1;  // 1-based, inclusive; repeat counts all of them
  int64_t repeat = 1;               // iterations in the segment
  std::vector<double> resident_bytes;   // per device: weights, grads, optimizer state, cache buffers
  // true: no barrier between iterations (asynchronous PipeDream-style pipeline, Eco-FL).
  // Task t of iteration i+1 may start once its deps of iteration i+1 are done, task t
  // of iteration i is done (per-task order) and its prev_deps of iteration i are done;
  // at most n+1 iterations are in flight. Engines take ready tasks oldest iteration
  // first, then lowest id.
  bool overlap = false;
  TaskGraph graph;
};

struct StagePlan {
  int layer_begin = 0, layer_end = 0;   // [begin, end)
  std::vector<int> devices;             // the group (device indices into scenario.devices)
  std::vector<double> shares;           // fraction of each micro-batch per device, sums to 1
};

struct Phase {
  std::string kind;                 // "pipeline" | "data_parallel"
  int epoch_first = 1, epoch_last = 1;
  std::vector<StagePlan> stages;    // data_parallel: one stage over all layers
  int micro_batches = 1;
};

struct PlanPrediction {
  std::vector<double> epoch_s;      // per epoch, 1-based epoch e at [e-1]
  double switch_s = 0;
  double total_s = 0;
  std::vector<double> peak_memory_bytes;  // per device
  std::vector<double> energy_j;           // per device
  double planning_s = 0;                  // how long the planner took
};

struct Plan {
  int format_version = 1;
  std::string strategy;             // "pac", "pac-opt", "standalone", "eddl", "ecofl", "asteroid"
  Scenario scenario;                // resolved
  std::vector<int> device_order;    // the order stages were cut along
  std::vector<Phase> phases;
  std::vector<Segment> segments;
  PlanPrediction predicted;
};

json plan_to_json(const Plan& p);
Plan plan_from_json(const JsonIn& doc);
Plan plan_load(const std::string& file);
void plan_save(const Plan& p, const std::string& file);  // atomic
// True when some task of the plan writes the activation cache (pac and pac-opt with a
// cached phase); a baseline's plan has none even on a scenario whose method caches.
bool plan_writes_cache(const Plan& p);

// The plan as the runtime executes it: pac-run runs an overlapped pipeline segment
// (Eco-FL's asynchronous 1F1B, `overlap: true`, name "pipeline") synchronously, with a
// flush per mini-batch (docs/baselines-runtime.md), so those segments become barrier
// segments (overlap off, prev_deps dropped: within an iteration the 1F1B order and its
// deps stay). Overlapped data-parallel segments (the cached epochs' prefetch) are run
// overlapped and stay. Returns how many segments changed.
int plan_flush_pipelines(Plan& p);

// Checks a plan: every graph acyclic with deps pointing backwards, every layer placed
// exactly once per phase, every device index valid, shares summing to 1, no device
// over its memory budget. Throws InputError naming the task or device.
void plan_validate(const Plan& p, const std::string& file = "");

}  // namespace pac
