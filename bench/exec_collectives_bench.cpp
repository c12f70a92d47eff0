// All-reduce throughput of CollectiveGroup (c10d ProcessGroupGloo) over loopback, 4
// ranks as threads of one process (Gloo's own test style).
//
//   build-exec/bench/exec_collectives_bench     # writes bench/results/exec_collectives.json
//
// Rank 0 is the benchmark thread; ranks 1..3 run the same fixed number of all-reduces
// on helper threads. Reported: bytes_per_second = tensor bytes / time, and the
// "bus bandwidth" counter = 2 (n-1)/n x bytes / time, the bytes each rank moves in a
// ring all-reduce (comparable with a link's rate).
#include <benchmark/benchmark.h>

#include <thread>
#include <vector>

#include "exec/collectives.h"
#include "bench/exec_bench_main.h"

using namespace pac;

static void BM_AllReduceGloo(benchmark::State& state) {
  const int n = 4;
  const int64_t bytes = state.range(0);
  const int iters = int(state.max_iterations);
  CollectiveStore store = CollectiveStore::in_process();
  CollectiveOptions o;
  o.tag = "bench";
  o.timeout = std::chrono::milliseconds(60000);
  std::vector<std::thread> helpers;
  for (int r = 1; r < n; r++)
    helpers.emplace_back([&, r] {
      CollectiveGroup g(store, "bench", r, n, o);
      std::vector<float> v(static_cast<size_t>(bytes / 4), 1.0f);
      for (int i = 0; i < iters; i++) g.allreduce(v, ReduceKind::Sum, o);
    });
  CollectiveGroup g(store, "bench", 0, n, o);
  std::vector<float> v(static_cast<size_t>(bytes / 4), 1.0f);
  for (auto _ : state) g.allreduce(v, ReduceKind::Sum, o);
  for (auto& t : helpers) t.join();
  state.SetBytesProcessed(state.iterations() * bytes);
  state.counters["bus_bytes_per_second"] =
      benchmark::Counter(double(state.iterations()) * bytes * 2.0 * (n - 1) / n, benchmark::Counter::kIsRate);
}

static void register_all() {
  for (int64_t bytes : {int64_t(256) << 10, int64_t(4) << 20, int64_t(32) << 20}) {
    int iters = int(std::max<int64_t>(8, (int64_t(256) << 20) / bytes));
    benchmark::RegisterBenchmark("BM_AllReduceGloo", BM_AllReduceGloo)
        ->Arg(bytes)->Iterations(iters)->UseRealTime()->Unit(benchmark::kMillisecond);
  }
}

int main(int argc, char** argv) { return exec_bench_main(argc, argv, "exec_collectives.json", register_all); }
