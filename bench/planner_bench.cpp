// Planning time: 16 devices x 80 layers (a Llama-2-70B-shaped model), target well
// under 1 s per plan. Run from the repository root:
//   build-x/bench/planner_bench            (writes bench/results/planner_bench.json)
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "planner/planner.h"
#include "src/core/profile.h"

using namespace pac;

static std::string profiles_dir() {
  const char* env = std::getenv("PAC_PROFILES_DIR");
  return env && *env ? env : "profiles";
}

// 16 devices of `kinds` (4 each unless one kind), 80 layers, Wi-Fi or switched.
static Scenario bench_scenario(const std::vector<std::string>& kinds, bool shared) {
  json doc = {
      {"name", "bench-16x80"},
      {"model", {{"name", "llama-80l"}, {"family", "llama"}, {"decoder_layers", 80}, {"hidden", 8192},
                 {"heads", 64}, {"kv_heads", 8}, {"ffn", 28672}, {"vocab", 32000}, {"max_seq", 4096},
                 {"tied_embeddings", false}}},
      {"method", {{"kind", "parallel_adapters"}, {"dtype", "fp16"}, {"cache_dtype", "fp16"}}},
      {"data", {{"samples", 2000}, {"seq_len", 256}, {"mini_batch", 32}, {"micro_batches", 8}}},
      {"epochs", 3},
      {"network", {{"kind", shared ? "shared" : "switched"}, {"bandwidth_mbps", shared ? 300 : 1000}}}};
  json devs = json::array();
  int per = 16 / (int)kinds.size();
  for (const std::string& k : kinds) devs.push_back({{"id", k + "-"}, {"profile", k}, {"count", per}});
  doc["cluster"] = {{"devices", devs}};
  return scenario_from_json(JsonIn::from(doc, "bench"), profiles_dir());
}

static const std::vector<std::string> kMixed = {"jetson-agx-orin-32gb", "jetson-orin-nano-8gb", "jetson-xavier-nx",
                                                "laptop-i7-1360p"};

static void plan_bench(benchmark::State& state, const std::vector<std::string>& kinds, bool shared,
                       const char* strategy) {
  Scenario s = bench_scenario(kinds, shared);
  double total = 0;
  for (auto _ : state) {
    try {
      Plan p = plan_make(s, strategy);
      total = p.predicted.total_s;
    } catch (const std::exception& e) {
      state.SkipWithError(e.what());
      break;
    }
    benchmark::DoNotOptimize(total);
  }
  state.counters["predicted_h"] = total / 3600;
}

static void BM_Pac_16x80_Mixed(benchmark::State& st) { plan_bench(st, kMixed, false, "pac"); }
static void BM_PacOpt_16x80_Mixed(benchmark::State& st) { plan_bench(st, kMixed, false, "pac-opt"); }
static void BM_PacOpt_16x80_MixedWifi(benchmark::State& st) { plan_bench(st, kMixed, true, "pac-opt"); }
static void BM_PacOpt_16x80_Orin(benchmark::State& st) { plan_bench(st, {"jetson-agx-orin-32gb"}, false, "pac-opt"); }
static void BM_Asteroid_16x80_Mixed(benchmark::State& st) { plan_bench(st, kMixed, false, "asteroid"); }
BENCHMARK(BM_Pac_16x80_Mixed)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PacOpt_16x80_Mixed)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PacOpt_16x80_MixedWifi)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PacOpt_16x80_Orin)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Asteroid_16x80_Mixed)->Unit(benchmark::kMillisecond);

// Writes bench/results/planner_bench.json unless --benchmark_out is given.
int main(int argc, char** argv) {
  std::vector<char*> args(argv, argv + argc);
  std::string out = "--benchmark_out=bench/results/planner_bench.json";
  std::string fmt = "--benchmark_out_format=json";
  bool has_out = false;
  for (int i = 1; i < argc; i++) has_out |= std::string(argv[i]).rfind("--benchmark_out=", 0) == 0;
  if (!has_out) {
    args.push_back(out.data());
    args.push_back(fmt.data());
  }
  int n = (int)args.size();
  benchmark::Initialize(&n, args.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
