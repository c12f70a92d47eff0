// Simulator speed: events per second on hand-built hybrid-pipeline plans, and the
// end-to-end time to plan + simulate the paper's BART-Large MRPC run (3 epochs, 8 Jetson
// Nanos) when scenarios/ has it. Targets (issue 4): >= 1 M events/s, < 1 s end to end.
//
//   build-sim/bench/sim_bench --benchmark_out=bench/results/sim_bench.json --benchmark_out_format=json
#include <benchmark/benchmark.h>

#include <sys/resource.h>

#include "planner/planner.h"
#include "sim/engine.h"
#include "src/common/fs.h"
#include "tests/sim_plans.h"

using namespace pac;

// Hybrid pipeline like the planner's [4-4] BART-Large plan (tests/sim_plans.h).
static Plan hybrid_plan(int groups, int per_group, int M, int64_t iters, const std::string& net) {
  SimPlanBuilder pb(groups * per_group, 1e9, 0.0002, net);
  pb.seg("pipeline", 1, 3, iters);
  hybrid_build(pb, groups, per_group, M, 0.05, 0.03, 2e6, 8e6);
  return pb.plan;
}

static void run_bench(benchmark::State& state, const Plan& plan) {
  int64_t events = 0;
  for (auto _ : state) {
    SimResult r = sim_run(plan);
    events += r.events;
    benchmark::DoNotOptimize(r.makespan_s);
  }
  state.counters["events"] = benchmark::Counter(static_cast<double>(events) / state.iterations());
  state.counters["events_per_s"] = benchmark::Counter(static_cast<double>(events), benchmark::Counter::kIsRate);
  state.counters["tasks_per_iteration"] = static_cast<double>(plan.segments[0].graph.tasks.size());
}

// 690 iterations = BART-Large MRPC (3668 samples / 16 = 230 per epoch, 3 epochs).
static void BM_HybridSwitched(benchmark::State& state) {
  Plan plan = hybrid_plan(2, 4, 4, state.range(0), "switched");
  run_bench(state, plan);
}
BENCHMARK(BM_HybridSwitched)->Arg(690)->Arg(6900)->Unit(benchmark::kMillisecond);

// A shared medium makes every flow contend with every other: more rate recomputation.
static void BM_HybridShared(benchmark::State& state) {
  Plan plan = hybrid_plan(2, 4, 4, state.range(0), "shared");
  run_bench(state, plan);
}
BENCHMARK(BM_HybridShared)->Arg(690)->Unit(benchmark::kMillisecond);

// Deeper pipeline, more micro-batches: 8 stages of 2, 16 micro-batches.
static void BM_Deep(benchmark::State& state) {
  Plan plan = hybrid_plan(8, 2, 16, state.range(0), "switched");
  run_bench(state, plan);
}
BENCHMARK(BM_Deep)->Arg(200)->Unit(benchmark::kMillisecond);

// Memory grows with one iteration's DAG, not with iterations: peak RSS after simulating
// 100x more iterations of the same plan must not move (reported, checked by eye in docs).
static void BM_MemoryFlat(benchmark::State& state) {
  Plan plan = hybrid_plan(2, 4, 4, state.range(0), "switched");
  for (auto _ : state) {
    SimResult r = sim_run(plan);
    benchmark::DoNotOptimize(r.makespan_s);
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  state.counters["max_rss_kb"] = static_cast<double>(ru.ru_maxrss);
}
BENCHMARK(BM_MemoryFlat)->Arg(100)->Arg(10000)->Iterations(1)->Unit(benchmark::kMillisecond);

// The paper's BART-Large MRPC run: plan with `pac` and simulate, end to end.
static void BM_PaperBartLargeMrpc(benchmark::State& state) {
  std::string file = "scenarios/paper-bart-large-mrpc.json";
  if (!file_exists(file)) {
    state.SkipWithError("scenarios/paper-bart-large-mrpc.json not found (run from the repository root)");
    return;
  }
  Scenario sc = scenario_load(file);
  int64_t events = 0;
  for (auto _ : state) {
    Plan plan = plan_make(sc, "pac");
    SimResult r = sim_run(plan);
    events += r.events;
    benchmark::DoNotOptimize(r.makespan_s);
  }
  state.counters["events"] = benchmark::Counter(static_cast<double>(events) / state.iterations());
}
BENCHMARK(BM_PaperBartLargeMrpc)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
