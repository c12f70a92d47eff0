// Inference speed of the LLM core (docs/model.md, "Measured").
//
//   BM_Decode/<model>/threads   greedy decoding with the KV cache, 128 positions from BOS
//       (generate(), as pac-generate runs it): counter tok_per_s.
//   BM_Prefill/<model>/threads  one forward over 128 tokens (batch 1): counter tok_per_s.
// Models: "stories260K" (the shipped weights; random init of its shape when absent) and
// "d768" (12 layers, d 768, 12 heads, ffn 2048, vocab 32000; random init).
//   build/bench/llm_generate_bench --benchmark_out=bench/results/llm_generate.json
#include <benchmark/benchmark.h>

#include "src/llm/threads.h"
#include "src/common/fs.h"
#include "src/llm/checkpoint.h"
#include "src/llm/generate.h"

using namespace pac;

static Llama bench_model(const std::string& name) {
  return llama_open(name == "d768" ? "llama-d768-l12" : name);
}

static void BM_Decode(benchmark::State& state, const std::string& name) {
  compute_threads_set((int)state.range(0));
  Llama m = bench_model(name);
  std::string tok_path = model_path("stories260K/tok512.bin");
  if (!file_exists(tok_path)) {
    state.SkipWithError(("tokenizer absent: " + tok_path).c_str());
    return;
  }
  auto tok = tokenizer_load(tok_path);  // only BOS/EOS ids and piece text are used
  GenerateOptions opt;
  opt.steps = 128;
  opt.stop_at_eos = false;
  int64_t tokens = 0;
  double seconds = 0;
  for (auto _ : state) {
    GenerateResult r = generate(m, *tok, {1}, opt);
    tokens += (int64_t)r.tokens.size() - 1;
    seconds += r.seconds;
  }
  state.counters["tok_per_s"] = tokens / seconds;
}

static void BM_Prefill(benchmark::State& state, const std::string& name) {
  compute_threads_set((int)state.range(0));
  Llama m = bench_model(name);
  torch::NoGradGuard ng;
  torch::Tensor ids = torch::randint(3, m->config().vocab_size, {1, 128}, torch::kInt64);
  for (auto _ : state) benchmark::DoNotOptimize(m->forward(ids));
  state.counters["tok_per_s"] = benchmark::Counter(128.0 * state.iterations(), benchmark::Counter::kIsRate);
}

BENCHMARK_CAPTURE(BM_Decode, stories260K, std::string("stories260K"))->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Decode, d768, std::string("d768"))->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->Iterations(2);
BENCHMARK_CAPTURE(BM_Prefill, stories260K, std::string("stories260K"))->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Prefill, d768, std::string("d768"))->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
