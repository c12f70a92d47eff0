// The planner's baselines run for real on the "pipeline-train" executor: per strategy
// (standalone, eddl, ecofl, asteroid on up to 4 in-process workers) and method (full,
// lora, adapters), the wall time of a training step and the workers' own split of it.
//
//   cd build-base && bench/exec_baselines_bench    # writes bench/results/exec_baselines.json
//
// Workers are threads of this process on loopback and share its cores (here 2), so the
// step time measures the executor's total work and overheads, not a testbed's parallel
// speedup (that is the emulated testbed's job); bytes per step are exact. Counters:
//   compute_s / wait_s / comm_s   summed over the devices, per step
//   bytes_per_step                tensor bytes sent worker to worker (activations and
//                                 gradients; all-reduces excluded), per step
//   trainable_params / held_params   summed over the stages (first device of each)
// Model: d 256, 8 layers, 8 heads / 4 kv heads, ffn 688, vocab 512, tied; mini-batch 8
// x 64 tokens, 4 micro-batches, one LibTorch thread per worker.
#include <benchmark/benchmark.h>

#include <map>

#include "bench/exec_bench_main.h"
#include "exec/pac_driver.h"
#include "exec/train_driver.h"
#include "tests/exec_runtime_util.h"

using namespace pac;

static const int kBatch = 8, kSeq = 64, kMicro = 4;

static LlamaConfig bench_config() {
  LlamaConfig c;
  c.dim = 256;
  c.hidden_dim = 688;
  c.n_layers = 8;
  c.n_heads = 8;
  c.n_kv_heads = 4;
  c.vocab_size = 512;
  c.max_seq_len = kSeq;
  return c;
}

struct Strategy {
  const char* name;
  int workers;
  std::vector<StagePlan> stages;
};

static std::vector<Strategy> strategies() {
  return {
      {"standalone", 1, {runtime_stage(0, 8, {0}, {1.0})}},
      {"eddl", 4, {runtime_stage(0, 8, {0, 1, 2, 3}, {0.25, 0.25, 0.25, 0.25})}},
      {"ecofl", 4,
       {runtime_stage(0, 2, {0}, {1.0}), runtime_stage(2, 4, {1}, {1.0}), runtime_stage(4, 6, {2}, {1.0}),
        runtime_stage(6, 8, {3}, {1.0})}},
      {"asteroid", 4, {runtime_stage(0, 4, {0, 1}, {0.5, 0.5}), runtime_stage(4, 8, {2, 3}, {0.5, 0.5})}},
  };
}

static void BM_Baseline(benchmark::State& state, Strategy st, std::string method) {
  at::set_num_threads(1);
  LlamaConfig cfg = bench_config();
  std::vector<Assignment> as = assignments_make(runtime_plan(cfg.n_layers, st.workers, kMicro, st.stages), 0);
  InProcCluster cluster(st.workers);
  MethodSpec m;
  m.kind = method;
  json settings = {{"model", runtime_config_json(cfg)}, {"seed", 1}, {"lr", 1e-4}, {"threads", 1},
                   {"timeout_ms", 120000}};
  settings.update(train_settings(m, *cluster.coord, as));
  std::vector<json> acks = pac_assign_phase(*cluster.coord, as, settings);
  double trainable = 0, held = 0;
  for (const json& a : acks)
    if (a["group_rank"] == 0) {
      trainable += a["trainable_params"].get<double>();
      held += a["held_params"].get<double>();
    }
  int64_t iters = state.max_iterations + 1;  // + one warm-up step
  std::vector<Example> ex = runtime_examples(static_cast<int>(iters) * kBatch, kSeq, cfg.vocab_size, 3);
  auto batch_of = [&](int s) {
    std::vector<const Example*> b;
    for (int i = 0; i < kBatch; i++) b.push_back(&ex[s * kBatch + i]);
    return b;
  };
  pac_train_step(*cluster.coord, as, 0, 1e-4, batch_of(0), Millis(120000));  // warm-up: Gloo joins, allocations
  int step = 1;
  double compute = 0, wait = 0, comm = 0, bytes = 0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    PacStepResult r = pac_train_step(*cluster.coord, as, step, 1e-4, batch_of(step), Millis(120000));
    state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    for (const json& j : r.results) {
      compute += j.value("compute_s", 0.0);
      wait += j.value("wait_s", 0.0);
      comm += j.value("send_s", 0.0) + j.value("allreduce_s", 0.0);
      for (auto& kv : j["bytes_to"].items()) bytes += kv.value().get<double>();
    }
    step++;
  }
  cluster.coord->shutdown(false);
  double n = static_cast<double>(state.iterations());
  state.counters["compute_s"] = compute / n;
  state.counters["wait_s"] = wait / n;
  state.counters["comm_s"] = comm / n;
  state.counters["bytes_per_step"] = bytes / n;
  state.counters["trainable_params"] = trainable;
  state.counters["held_params"] = held;
}

static void register_all() {
  for (const std::string method : {"full", "lora", "adapters"})
    for (const Strategy& st : strategies())
      benchmark::RegisterBenchmark(("baseline/" + method + "/" + st.name).c_str(), BM_Baseline, st, method)
          ->Iterations(3)
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
}

int main(int argc, char** argv) { return exec_bench_main(argc, argv, "exec_baselines.json", register_all); }
