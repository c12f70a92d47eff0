// Internals shared by the planner's files (not part of the planner's interface; tests
// use them to compare the dynamic programs against exhaustive search).
#pragma once
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "src/core/cost_model.h"
#include "src/core/plan.h"

namespace pac {

constexpr double kInf = std::numeric_limits<double>::infinity();

// What every strategy plans against: the scenario and its cost model.
struct PlanCtx {
  const Scenario* s = nullptr;
  ModelCost mc;
  int n = 0;                 // devices
  int L = 0;                 // layers
  int M = 1;                 // micro-batches per mini-batch (pipeline)
  int inflight_cap = 1;      // most micro-batches a stage holds: M under 1F1B with a flush, S when asynchronous
  double batch = 16;         // samples per iteration (global mini-batch)
  bool shared_medium = false;
  std::vector<double> dev_bw_bps;  // per device: min(NIC, network) — what one device can push
  std::vector<double> dev_lat_s;   // per device: network latency + its NIC's
  std::vector<double> rate_layer;  // per device: FLOP/s for backbone work at one micro-batch
  std::vector<double> rate_side;   // per device: FLOP/s for side-network work
  std::vector<double> rate_layer_bwd, rate_side_bwd;  // the same for backward work
  // per device: FLOP/s of the AdamW step (12 FLOPs per parameter) when the profile times it
  // ("optimizer", pac-profile); 0 = not calibrated, then each caller's compute rate.
  std::vector<double> rate_opt;
  std::vector<double> mem;         // per device: usable bytes
  double medium_bps = 0;           // shared medium capacity (shared networks)
  // Per layer range [x, y): costs that do not depend on the device order, filled on
  // first use (planner_dp.cpp). Not thread-safe: one PlanCtx per planning thread.
  mutable std::vector<std::shared_ptr<void>> range_cache;
};

PlanCtx plan_ctx_make(const Scenario& s, const MethodSpec& method);

// How a strategy arranges the work; plan_assemble turns it into a complete Plan.
struct Layout {
  std::vector<int> order;           // device order stages were cut along
  std::vector<StagePlan> stages;    // the pipeline (or data parallel as one stage)
  int micro_batches = 1;
  double batch = 16;                // samples per iteration
  bool cached = false;              // epoch 1 pipeline, switch, epochs 2+ data parallel from the cache
  std::vector<double> dp_shares;    // cached phase: per device share of each mini-batch
  bool async = false;               // PipeDream-style: mini-batches flow without a flush (Eco-FL)
};

// The stage-cost flavours the dynamic program can use.
enum class StageCostKind {
  Paper,    // PAC paper: compute of the slowest device, even shares, memory a hard limit
  Network,  // pac-opt / Asteroid: shares by speed, max(compute, cache writes, messages in and out)
};

// Cost of stage [x, y) on devices order[i0..i1) when it is the k-th stage from the end
// (1F1B: k micro-batches in flight, capped at M). kInf when over memory.
double stage_cost(const PlanCtx& c, StageCostKind kind, const std::vector<int>& order, int x, int y, int i0, int i1,
                  int k, std::vector<double>* shares_out = nullptr);

// For one device order: best[s] = the least bottleneck over all partitions into s
// stages (contiguous layers x contiguous device slices), kInf when none fits; parts[s]
// = that partition as (layer_end, device_end) per stage. `single_device_stages` forces
// groups of one device (Eco-FL). `use_all` requires all devices to be used.
struct DpResult {
  std::vector<double> best;                          // index s = stage count (0 unused)
  std::vector<std::vector<std::pair<int, int>>> parts;
};
DpResult dp_partition(const PlanCtx& c, StageCostKind kind, const std::vector<int>& order, int max_stages,
                      bool single_device_stages, bool use_all);

// Runs dp_partition over device orders (the given one, or all distinct arrangements
// of interchangeable devices while that stays small, else seeded swaps) and keeps
// the layout with the least `score`. `bottleneck_by_s[s]`: the least DP bottleneck
// with s stages over the orders tried. False when nothing fits.
bool search_layout(const PlanCtx& c, StageCostKind kind, bool single, bool search_orders,
                   const std::function<double(Layout&)>& score, Layout* out,
                   std::vector<double>* bottleneck_by_s = nullptr);

// Turns a partition into stages with shares.
std::vector<StagePlan> partition_stages(const PlanCtx& c, StageCostKind kind, const std::vector<int>& order,
                                        const std::vector<std::pair<int, int>>& part);

// Predicted time of one pipeline iteration: warm-up + M x bottleneck + tail.
// `paper_model` leaves bandwidth out of the steady state (the paper's stage-count
// choice); otherwise messages, cache writes and a shared medium count.
double pipeline_iter_s(const PlanCtx& c, const Layout& lay, bool paper_model);
// Whole rows (src/core/rows.h): the rows each device of stage `st` computes in each
// micro-batch of a `batch`-row mini-batch, rows[m][k], as the runtime deals them.
std::vector<std::vector<int>> stage_rows(const Layout& lay, const StagePlan& st);
// A stage's mean forward / backward / cache-write time per micro-batch over those
// rows: each micro-batch waits for the slowest of its parts.
StageTime stage_time_whole_rows(const PlanCtx& c, const Layout& lay, const StagePlan& st);

struct PipelineTimes {
  double warm = 0, steady = 0, drain = 0, tail = 0;  // tail: all-reduces and optimizer step
};
PipelineTimes pipeline_times(const PlanCtx& c, const Layout& lay, bool paper_model);

// Full predictions and the plan with its task graphs.
struct LayoutTimes {
  double iter_s = 0, dp_iter_s = 0, switch_s = 0;
  int64_t iters = 0;
  std::vector<double> epoch_s;
  double total_s = 0;
  std::vector<double> peak_memory;   // per device
  std::vector<double> busy_s;        // per device, whole run
};
LayoutTimes layout_predict(const PlanCtx& c, const Layout& lay);
Plan plan_assemble(const PlanCtx& c, const Layout& lay, const std::string& strategy);

// The optimizer step's rate on device d: the profile's calibrated "optimizer" rate (the
// AdamW step, mostly per-tensor dispatch) when it has one, else `fallback` (the compute
// rate the caller used before profiles timed it).
inline double optimizer_rate(const PlanCtx& c, int d, double fallback) {
  return c.rate_opt[d] > 0 ? c.rate_opt[d] : fallback;
}

// Seconds of the AdamW step over `trainable` parameters on device d (~12 FLOP per
// parameter), a compute task like any other: plus the profile's task_overhead_s, and its
// step_overhead_s, the runtime's cost per training step (the step's command and result
// through the coordinator), which falls between this task and the device's next step.
inline double optimizer_s(const PlanCtx& c, int d, double trainable, double fallback) {
  const DeviceProfile& p = c.s->devices[d].profile;
  return 12 * trainable / optimizer_rate(c, d, fallback) + p.task_overhead_s + p.step_overhead_s;
}

// Ring all-reduce of `bytes` over `group` (Patarasuk & Yuan: 2(g-1)/g of the data per
// device, 2(g-1) latency steps).
double allreduce_s(const PlanCtx& c, const std::vector<int>& group, double bytes);

}  // namespace pac
