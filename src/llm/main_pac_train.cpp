// pac-train: fine-tune a LLaMA-family model on one device with full / LoRA / adapters /
// parallel adapters, report held-out perplexity before and after, save the trainable
// weights, and optionally show generations (docs/training.md).
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "src/common/blas.h"
#include "src/common/heap.h"
#include "src/llm/threads.h"
#include "src/common/cli.h"
#include "src/common/error.h"
#include "src/common/fs.h"
#include "src/common/json_in.h"
#include "src/llm/checkpoint.h"
#include "src/llm/trainer.h"

using namespace pac;

struct CliArgs {
  std::string model, model_preset, tokenizer, data, eval_data, out, json_path, adapter, generate_prompt;
  std::string side_init = "pruned";
  double eval_fraction = 0.1;
  bool no_cache = false, pack = false;
  uint64_t init_seed = 1;
  int gen_steps = 128;
  float temperature = 0.f;
};

static std::string default_cache_dir(const CliArgs& a, const TrainOptions& o) {
  const char* env = std::getenv("PAC_CACHE_DIR");
  std::string base;
  if (env && *env) base = env;
  else if (const char* home = std::getenv("HOME")) base = std::string(home) + "/.cache/pac/activations";
  else base = "pac-cache";
  std::string stem = a.model.empty() ? "preset-" + a.model_preset : std::filesystem::path(a.model).stem().string();
  return path_join(base, stem + "-seq" + std::to_string(o.seq_len) + "-" + o.cache_dtype);
}

static double ppl(double loss) { return std::exp(loss); }

static json generation_json(const std::string& when, const GenerateResult& g) {
  return {{"when", when}, {"text", g.text}, {"tokens", g.tokens.size()}, {"seconds", g.seconds}};
}

static GenerateResult generate_now(Trainer* t, Llama& plain, const Tokenizer& tok, const CliArgs& a,
                                   const TrainOptions& o) {
  GenerateOptions g;
  g.steps = a.gen_steps;
  g.temperature = a.temperature;
  g.seed = o.seed;
  auto prompt = tok.encode(a.generate_prompt, true, false);
  if (t && t->method() == "parallel_adapters") {
    SideNetwork side = t->side();
    return generate_side(t->backbone(), side, tok, prompt, g);
  }
  return generate(t ? t->backbone() : plain, tok, prompt, g);
}

static int body(int argc, char** argv) {
  CLI::App app{"pac-train: single-device fine-tuning (full, lora, adapters, parallel_adapters)"};
  CliArgs a;
  TrainOptions o;
  app.add_option("--method", o.method, "full | lora | adapters | parallel_adapters")->capture_default_str();
  app.add_option("--model", a.model, "checkpoint: llama2.c .bin or Hugging Face folder");
  app.add_option("--model-preset", a.model_preset, "random-init architecture instead of --model (benchmarks)");
  app.add_option("--init-seed", a.init_seed, "seed of the random init for --model-preset");
  app.add_option("--tokenizer", a.tokenizer, "tokenizer.bin (llama2.c) or SentencePiece .model");
  app.add_option("--data", a.data, "training data: text (one sample per paragraph) or .jsonl");
  app.add_option("--eval-data", a.eval_data, "held-out data (default: --eval-fraction of --data)");
  app.add_option("--eval-fraction", a.eval_fraction, "held-out share of --data when no --eval-data")
      ->capture_default_str();
  app.add_option("--epochs", o.epochs)->capture_default_str();
  app.add_option("--batch-size", o.batch_size)->capture_default_str();
  app.add_option("--seq-len", o.seq_len)->capture_default_str();
  app.add_flag("--pack", a.pack, "concatenate samples instead of padding each");
  app.add_option("--lr", o.lr)->capture_default_str();
  app.add_option("--lr-schedule", o.lr_schedule, "constant | cosine")->capture_default_str();
  app.add_option("--warmup", o.warmup_steps, "linear warmup steps")->capture_default_str();
  app.add_option("--weight-decay", o.weight_decay)->capture_default_str();
  app.add_option("--seed", o.seed)->capture_default_str();
  app.add_option("--threads", o.threads, "LibTorch threads (0 = default)")->capture_default_str();
  app.add_option("--max-steps", o.max_steps, "stop after this many steps (0 = all)")->capture_default_str();
  app.add_option("--k", o.reduction_k, "parallel adapters: reduction factor (width dim/k)")->capture_default_str();
  app.add_option("--side-init", a.side_init, "parallel adapters: pruned | random")->capture_default_str();
  app.add_option("--cache-dir", o.cache_dir, "activation cache folder (default ~/.cache/pac/activations/...)");
  app.add_option("--cache-dtype", o.cache_dtype, "fp32 | fp16 | bf16")->capture_default_str();
  app.add_flag("--no-cache", a.no_cache, "parallel adapters: run the backbone every epoch");
  app.add_option("--lora-rank", o.lora_rank)->capture_default_str();
  app.add_option("--lora-alpha", o.lora_alpha)->capture_default_str();
  app.add_flag("--lora-mlp", o.lora_mlp, "LoRA on the MLP too");
  app.add_option("--adapter-bottleneck", o.adapter_bottleneck)->capture_default_str();
  app.add_option("--out", a.out, "write the trainable weights here (.safetensors)");
  app.add_option("--json", a.json_path, "write a JSON summary here ('-' = stdout)");
  app.add_option("--adapter", a.adapter, "load a pac-train result (no training) for --generate");
  app.add_option("--generate", a.generate_prompt, "prompt to generate from before and after training");
  app.add_option("--gen-steps", a.gen_steps, "generation length in tokens incl. prompt")->capture_default_str();
  app.add_option("--temperature", a.temperature, "0 = greedy")->capture_default_str();
  app.add_flag("--quiet", o.quiet, "no progress lines");
  if (int rc = cli_parse(app, argc, argv); rc >= 0) return rc;

  if (a.model.empty() == a.model_preset.empty()) throw InputError("give exactly one of --model and --model-preset");
  if (a.side_init != "pruned" && a.side_init != "random")
    throw InputError("--side-init: expected pruned or random, got \"" + a.side_init + "\"");
  o.side_random_init = a.side_init == "random";
  train_options_validate(o);
  if (!a.adapter.empty() && !a.data.empty())
    throw InputError("--adapter loads a saved result for generation; it cannot be combined with --data");
  if (a.adapter.empty() && a.data.empty()) throw InputError("--data is required (or --adapter to only generate)");
  if (a.tokenizer.empty()) throw InputError("--tokenizer is required");
  if (o.threads > 0) compute_threads_set(o.threads);
  torch_memory_tracking_enable();

  auto tok = tokenizer_load(a.tokenizer);
  std::function<Llama()> load = [&a]() {
    if (!a.model.empty()) return llama_load(a.model);
    Llama m(llama_config_preset(a.model_preset));
    m->init_random(a.init_seed);
    return m;
  };
  json summary = {{"tool", "pac-train"}, {"method", o.method}};

  if (!a.adapter.empty()) {
    // Generation only, from a saved result.
    Llama m = load();
    SideNetwork side{nullptr};
    std::string method = adapter_load(a.adapter, m, &side);
    summary["method"] = method;
    if (!a.generate_prompt.empty()) {
      GenerateOptions g;
      g.steps = a.gen_steps;
      g.temperature = a.temperature;
      g.seed = o.seed;
      auto prompt = tok->encode(a.generate_prompt, true, false);
      GenerateResult r = method == "parallel_adapters" ? generate_side(m, side, *tok, prompt, g)
                                                        : generate(m, *tok, prompt, g);
      std::printf("%s\n", r.text.c_str());
      summary["generations"] = json::array({generation_json("loaded", r)});
    }
    if (!a.json_path.empty()) {
      std::string text = summary.dump(2) + "\n";
      if (a.json_path == "-") std::fputs(text.c_str(), stdout);
      else file_write_atomic(a.json_path, text);
    }
    return 0;
  }

  DataOptions d;
  d.seq_len = o.seq_len;
  d.pack = a.pack;
  d.bos_id = tok->bos_id();
  d.eos_id = tok->eos_id();
  TrainSetup setup;
  setup.load_backbone = load;
  setup.tokenizer_checksum = tok->checksum();
  data_prepare(a.data, a.eval_data, a.eval_fraction, *tok, d, o.seed, &setup.train, &setup.heldout);
  if (o.method == "parallel_adapters" && !a.no_cache && o.cache_dir.empty()) o.cache_dir = default_cache_dir(a, o);
  if (a.no_cache) o.cache_dir.clear();
  std::fprintf(stderr, "pac-train: %s, %zu train / %zu held-out examples of %d tokens\n", o.method.c_str(),
               setup.train.size(), setup.heldout.size(), o.seq_len);

  Trainer trainer(o, setup);
  json gens = json::array();
  Llama none{nullptr};
  if (!a.generate_prompt.empty()) {
    GenerateResult g = generate_now(&trainer, none, *tok, a, o);
    std::printf("--- before fine-tuning ---\n%s\n", g.text.c_str());
    std::fflush(stdout);
    gens.push_back(generation_json("before", g));
  }
  rss_peak_reset();
  torch_memory_peak_reset();
  TrainResult r = trainer.run();
  int64_t rss_peak = rss_peak_bytes(), torch_peak = torch_memory_peak_bytes();
  std::fprintf(stderr, "held-out loss %.4f -> %.4f, perplexity %.2f -> %.2f (%lld tokens)\n", r.eval_loss_before,
               r.eval_loss_after, ppl(r.eval_loss_before), ppl(r.eval_loss_after),
               static_cast<long long>(r.eval_tokens));
  if (!a.out.empty()) {
    trainer.save(a.out);
    std::fprintf(stderr, "saved %s (%lld trainable parameters)\n", a.out.c_str(),
                 static_cast<long long>(r.trainable_params));
  }
  if (!a.generate_prompt.empty()) {
    GenerateResult g = generate_now(&trainer, none, *tok, a, o);
    std::printf("--- after fine-tuning (%s) ---\n%s\n", o.method.c_str(), g.text.c_str());
    gens.push_back(generation_json("after", g));
  }

  json epochs = json::array();
  for (auto& e : r.epochs)
    epochs.push_back({{"epoch", e.epoch}, {"seconds", e.seconds}, {"mean_loss", e.mean_loss},
                      {"cache_hits", e.cache_hits}, {"cache_misses", e.cache_misses},
                      {"cache_corrupt", e.cache_corrupt}, {"backbone_loads", e.backbone_loads}});
  json losses = json::array();
  for (auto& s : r.steps) losses.push_back(s.loss);
  summary["model"] = a.model.empty() ? "preset:" + a.model_preset : a.model;
  summary["data"] = a.data;
  summary["options"] = {{"epochs", o.epochs}, {"batch_size", o.batch_size}, {"seq_len", o.seq_len}, {"lr", o.lr},
                        {"lr_schedule", o.lr_schedule}, {"seed", o.seed}, {"k", o.reduction_k},
                        {"side_init", a.side_init}, {"cache_dir", o.cache_dir}, {"cache_dtype", o.cache_dtype}};
  summary["trainable_params"] = r.trainable_params;
  summary["backbone_params"] = r.backbone_params;
  summary["eval"] = {{"loss_before", r.eval_loss_before}, {"loss_after", r.eval_loss_after},
                     {"ppl_before", ppl(r.eval_loss_before)}, {"ppl_after", ppl(r.eval_loss_after)},
                     {"tokens", r.eval_tokens}};
  summary["epochs"] = epochs;
  summary["step_losses"] = losses;
  summary["peak_rss_bytes"] = rss_peak;
  summary["peak_torch_bytes"] = torch_peak;
  summary["cache"] = {{"stale_rebuilt", r.cache_stale_reason}, {"bytes_written", r.cache_bytes_written},
                      {"bytes_read", r.cache_bytes_read}};
  summary["generations"] = gens;
  if (!a.out.empty()) summary["out"] = a.out;
  if (!a.json_path.empty()) {
    std::string text = summary.dump(2) + "\n";
    if (a.json_path == "-") std::fputs(text.c_str(), stdout);
    else file_write_atomic(a.json_path, text);
  }
  return 0;
}

int main(int argc, char** argv) {
  pac::blas_kernel_fix(argv);
  pac::compute_heap_pin();
  return run_main("pac-train", [&] { return body(argc, argv); });
}
