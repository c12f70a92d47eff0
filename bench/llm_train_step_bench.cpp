// Training-step cost per fine-tuning method (docs/bench-training.md).
//
//   BM_TrainStep/<model>/<method>   one optimizer step at batch 8: wall time per step
//       (the benchmark's own time) and counters forward / backward / update / backbone
//       (ms), peak RSS and peak LibTorch bytes over the timed steps.
//       method "pa_cache" reads the taps from a warm activation cache with the backbone
//       released; "pa" runs the frozen backbone every step (no cache).
//   BM_Epochs/<model>   parallel adapters, two epochs of 32 samples with the cache:
//       epoch1_s (backbone + cache writes) against epoch2_s (cache only).
// Models: "stories260K" (real weights when present, else random init of the same
// shape, seq 128) and "d768" (12 layers, d 768, random init, seq 128).
// Run one benchmark per process for clean peak-memory numbers: bench/llm_train_bench.sh.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <ctime>
#include <filesystem>

#include "src/common/blas.h"
#include "src/common/heap.h"
#include "src/common/fs.h"
#include "src/llm/checkpoint.h"
#include "src/llm/trainer.h"

using namespace pac;

static const int kBatch = 8;
static const int kSeq = 128;

static std::function<Llama()> loader(const std::string& model) {
  return [model] {
    if (model == "stories260K") {
      std::string p = model_path("stories260K/stories260K.bin");
      if (file_exists(p)) return llama_load(p);
    }
    Llama m(llama_config_preset(model == "d768" ? "llama-d768-l12" : "stories260K"));
    m->init_random(1);
    return m;
  };
}

// Random token examples: the cost does not depend on the values.
static std::vector<Example> examples(int n, int vocab, uint64_t seed) {
  std::vector<Example> out;
  uint64_t st = seed;
  for (int i = 0; i < n; i++) {
    Example e;
    e.id = i;
    e.tokens.resize(kSeq + 1);
    for (auto& t : e.tokens) t = static_cast<int32_t>(3 + splitmix64(&st) % static_cast<uint64_t>(vocab - 3));
    e.mask.assign(kSeq, 1);
    out.push_back(e);
  }
  return out;
}

// LibTorch threads: PAC_BENCH_THREADS, default 1 (on a shared busy machine more threads
// mostly spin; CPU-time counters then stay comparable between methods).
static int bench_threads() {
  const char* e = std::getenv("PAC_BENCH_THREADS");
  return e && *e ? std::atoi(e) : 1;
}

static std::string bench_cache_dir(const std::string& tag) {
  std::string d = std::filesystem::temp_directory_path().string() + "/pac-bench-cache-" + tag;
  std::filesystem::remove_all(d);
  return d;
}

static void BM_TrainStep(benchmark::State& state, const std::string& model, const std::string& method) {
  TrainOptions o;
  o.method = (method == "pa" || method == "pa_cache") ? "parallel_adapters" : method;
  o.batch_size = kBatch;
  o.seq_len = kSeq;
  o.epochs = 1;
  o.quiet = true;
  o.threads = bench_threads();
  if (method == "pa_cache") o.cache_dir = bench_cache_dir(model);
  TrainSetup setup;
  setup.load_backbone = loader(model);
  setup.tokenizer_checksum = "bench";
  int vocab = model == "d768" ? 32000 : 512;
  setup.train = examples(kBatch, vocab, 7);
  Trainer t(o, setup);
  std::vector<const Example*> batch;
  for (auto& e : setup.train) batch.push_back(&e);
  // Warm-up step: allocator, optimizer state, and (pa_cache) the cache records.
  t.train_step(batch, 1);
  if (method == "pa_cache") t.release_backbone();
  rss_peak_reset();
  torch_memory_peak_reset();
  double fwd = 0, bwd = 0, upd = 0, bb = 0, cf = 0, cb = 0, cu = 0, cbb = 0;
  int64_t n = 0;
  for (auto _ : state) {
    StepStats s = t.train_step(batch, 1);
    fwd += s.forward_s + s.backbone_s;
    bwd += s.backward_s;
    upd += s.update_s;
    bb += s.backbone_s;
    cf += s.forward_cpu_s + s.backbone_cpu_s;
    cb += s.backward_cpu_s;
    cu += s.update_cpu_s;
    cbb += s.backbone_cpu_s;
    n++;
  }
  // Wall-clock phases, and the same phases in process CPU time (see StepStats).
  state.counters["forward_ms"] = 1e3 * fwd / n;
  state.counters["backbone_ms"] = 1e3 * bb / n;
  state.counters["backward_ms"] = 1e3 * bwd / n;
  state.counters["update_ms"] = 1e3 * upd / n;
  state.counters["forward_cpu_ms"] = 1e3 * cf / n;
  state.counters["backbone_cpu_ms"] = 1e3 * cbb / n;
  state.counters["backward_cpu_ms"] = 1e3 * cb / n;
  state.counters["update_cpu_ms"] = 1e3 * cu / n;
  state.counters["peak_rss_mb"] = rss_peak_bytes() / 1048576.0;
  state.counters["peak_torch_mb"] = torch_memory_peak_bytes() / 1048576.0;
  state.counters["trainable_params"] = static_cast<double>(t.trainable_params());
  state.counters["backbone_resident"] = t.backbone_resident() ? 1 : 0;
}

static double process_cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

static void BM_Epochs(benchmark::State& state, const std::string& model) {
  for (auto _ : state) {
    TrainOptions o;
    o.method = "parallel_adapters";
    o.batch_size = kBatch;
    o.seq_len = kSeq;
    o.epochs = 2;
    o.quiet = true;
    o.cache_dir = bench_cache_dir("epochs-" + model);
    o.cache_dtype = "fp16";
    o.threads = bench_threads();
    TrainSetup setup;
    setup.load_backbone = loader(model);
    setup.tokenizer_checksum = "bench";
    setup.train = examples(32, model == "d768" ? 32000 : 512, 9);
    Trainer t(o, setup);
    rss_peak_reset();
    double c0 = process_cpu_s();
    EpochStats e1 = t.train_epoch(1, nullptr);
    double c1 = process_cpu_s();
    int64_t rss1 = rss_peak_bytes();
    rss_peak_reset();
    torch_memory_peak_reset();
    EpochStats e2 = t.train_epoch(2, nullptr);
    double c2 = process_cpu_s();
    state.counters["epoch1_s"] = e1.seconds;
    state.counters["epoch2_s"] = e2.seconds;
    state.counters["epoch1_cpu_s"] = c1 - c0;
    state.counters["epoch2_cpu_s"] = c2 - c1;
    state.counters["epoch2_over_epoch1_cpu"] = (c2 - c1) / (c1 - c0);
    state.counters["epoch2_over_epoch1"] = e2.seconds / e1.seconds;
    state.counters["epoch1_peak_rss_mb"] = rss1 / 1048576.0;
    state.counters["epoch2_peak_rss_mb"] = rss_peak_bytes() / 1048576.0;
    state.counters["epoch2_peak_torch_mb"] = torch_memory_peak_bytes() / 1048576.0;
    state.counters["cache_mb"] = t.cache()->bytes_written / 1048576.0;
  }
}

static void register_all() {
  for (std::string model : {"stories260K", "d768"}) {
    for (std::string method : {"full", "lora", "adapters", "pa", "pa_cache"})
      benchmark::RegisterBenchmark(("BM_TrainStep/" + model + "/" + method).c_str(),
                                   [model, method](benchmark::State& s) { BM_TrainStep(s, model, method); })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    benchmark::RegisterBenchmark(("BM_Epochs/" + model).c_str(), [model](benchmark::State& s) { BM_Epochs(s, model); })
        ->Unit(benchmark::kSecond)
        ->UseRealTime()
        ->Iterations(1);
  }
}

int main(int argc, char** argv) {
  pac::blas_kernel_fix(argv);
  pac::compute_heap_pin();
  torch_memory_tracking_enable();
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
