// pac-generate: text from a LLaMA-family checkpoint (llama2.c .bin or a Hugging Face
// folder), greedy or sampled, with optional fine-tuned LoRA / adapter weights.
//   pac-generate --model stories260K.bin --tokenizer tok512.bin --prompt "Once" --steps 64
#include <CLI/CLI.hpp>

#include <cstdio>

#include "src/common/blas.h"
#include "src/common/heap.h"
#include "src/llm/threads.h"
#include "src/common/cli.h"
#include "src/common/error.h"
#include "src/common/fs.h"
#include "src/common/json_in.h"
#include "src/llm/checkpoint.h"
#include "src/llm/generate.h"

using namespace pac;

int main(int argc, char** argv) {
  pac::blas_kernel_fix(argv);
  pac::compute_heap_pin();
  return run_main("pac-generate", [&]() -> int {
    CLI::App app{"Generate text with a LLaMA-family model (greedy, temperature, top-p; KV cache)"};
    std::string model_file, tokenizer_file, adapter_file, prompt;
    GenerateOptions opt;
    int threads = 1;
    bool json_out = false;
    app.add_option("--model", model_file,
                   "checkpoint: llama2.c .bin or a Hugging Face folder (default: stories260K in $PAC_MODEL_DIR)");
    app.add_option("--tokenizer", tokenizer_file,
                   "llama2.c tokenizer.bin or SentencePiece .model (default: tok512.bin next to stories260K)");
    app.add_option("--adapter", adapter_file, "fine-tuned weights (safetensors) to apply: LoRA, Houlsby adapters or full");
    app.add_option("--prompt", prompt, "text to continue (empty: start from BOS)");
    app.add_option("--steps", opt.steps, "positions to run, prompt included, as llama2.c's -n")->check(CLI::PositiveNumber);
    app.add_option("--temperature", opt.temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
    app.add_option("--top-p", opt.top_p, "nucleus sampling threshold, used when temperature > 0")->check(CLI::Range(0.0, 1.0));
    app.add_option("--seed", opt.seed, "sampling seed (same seed, same text)");
    app.add_option("--threads", threads, "LibTorch intra-op threads")->check(CLI::PositiveNumber);
    app.add_flag("--no-stop-at-eos", [&](int64_t) { opt.stop_at_eos = false; }, "keep going after EOS");
    app.add_flag("--json", json_out, "print one JSON object (text, tokens, tok/s) instead of streaming text");
    if (int rc = cli_parse(app, argc, argv); rc >= 0) return rc;
    compute_threads_set(threads);
    if (model_file.empty()) model_file = model_path("stories260K/stories260K.bin");
    if (tokenizer_file.empty()) tokenizer_file = model_path("stories260K/tok512.bin");

    // Load everything before producing any output, so bad input fails cleanly.
    Llama model = llama_load(model_file);
    std::unique_ptr<Tokenizer> tok = tokenizer_load(tokenizer_file);
    if (tok->vocab_size() != model->config().vocab_size)
      throw InputError(tokenizer_file + ": tokenizer has " + std::to_string(tok->vocab_size()) + " tokens, the model " +
                       model_file + " has " + std::to_string(model->config().vocab_size));
    if (!adapter_file.empty()) llama_load_method_weights(model, adapter_file);

    std::vector<int> ids = tok->encode(prompt, /*bos=*/true, /*eos=*/false);
    std::function<void(const std::string&)> stream;
    if (!json_out) stream = [](const std::string& p) {
      std::fwrite(p.data(), 1, p.size(), stdout);
      std::fflush(stdout);
    };
    GenerateResult r = generate(model, *tok, ids, opt, stream);
    int generated = (int)r.tokens.size() - r.n_prompt;
    double tps = r.seconds > 0 ? generated / r.seconds : 0;
    if (json_out) {
      json j = {{"text", r.text}, {"tokens", r.tokens}, {"n_prompt", r.n_prompt}, {"generated", generated},
                {"seconds", r.seconds}, {"tokens_per_s", tps}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("\n");
      std::fprintf(stderr, "achieved tok/s: %.1f (%d generated, %.3f s)\n", tps, generated, r.seconds);
    }
    return 0;
  });
}
