// The single-device trainer: one data pipeline, one optimizer (AdamW) and one loop for
// the four fine-tuning methods (docs/training.md):
//   full               every backbone weight trains
//   lora               LoRA branches on q/k/v/o (and the MLP with lora_mlp)
//   adapters           Houlsby bottleneck adapters inside each layer
//   parallel_adapters  frozen backbone + side network (side_network.h), optionally fed
//                      from the activation cache (act_cache.h) after epoch 1, with the
//                      backbone released from memory while it is not needed.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "src/llm/act_cache.h"
#include "src/llm/dataset.h"
#include "src/llm/generate.h"
#include "src/llm/memory.h"
#include "src/llm/model.h"
#include "src/llm/side_network.h"
#include "src/llm/tokenizer.h"

namespace pac {

struct TrainOptions {
  std::string method = "parallel_adapters";  // full | lora | adapters | parallel_adapters
  int epochs = 3;
  int batch_size = 8;
  int seq_len = 64;
  double lr = 1e-3;
  std::string lr_schedule = "constant";  // constant | cosine (both with linear warmup)
  int warmup_steps = 0;
  double weight_decay = 0.0;
  uint64_t seed = 42;
  int threads = 0;                       // 0 keeps LibTorch's setting
  int max_steps = 0;                     // stop after this many steps in total (0 = all)
  // parallel adapters
  int reduction_k = 8;
  bool side_random_init = false;         // default: structured pruning of the backbone
  std::string cache_dir;                 // empty = no activation cache
  std::string cache_dtype = "fp32";
  bool release_backbone = true;          // drop backbone weights once everything is cached
  // lora / adapters
  int lora_rank = 8;
  double lora_alpha = 16;
  bool lora_mlp = false;
  int adapter_bottleneck = 16;
  bool quiet = false;                    // no progress lines
};

// Checks ranges and names; InputError naming the option.
void train_options_validate(const TrainOptions& o);

// The learning rate of global step `step` (0-based): linear warmup over `warmup_steps`,
// then constant or cosine decay to 0 at `total_steps`. pac-run uses it too, so a
// distributed run follows the trainer's schedule step for step.
double lr_schedule_at(double lr, const std::string& schedule, int warmup_steps, int64_t total_steps, int64_t step);

struct StepStats {
  int epoch = 0;
  int64_t step = 0;       // global, from 0
  double loss = 0;
  double lr = 0;
  int64_t tokens = 0;     // loss tokens in the batch
  double backbone_s = 0;  // parallel adapters: backbone forward or cache read for the batch
  double forward_s = 0;   // trainable forward + loss (excludes backbone_s)
  double backward_s = 0;
  double update_s = 0;
  // The same phases in process CPU time: on a shared, busy machine wall time mostly
  // measures the neighbours; with one LibTorch thread CPU time measures our work.
  double backbone_cpu_s = 0, forward_cpu_s = 0, backward_cpu_s = 0, update_cpu_s = 0;
};

struct EpochStats {
  int epoch = 0;
  double seconds = 0;
  double mean_loss = 0;
  int64_t cache_hits = 0, cache_misses = 0, cache_corrupt = 0;
  int backbone_loads = 0;  // times the backbone had to be (re)loaded during the epoch
};

struct TrainResult {
  std::vector<StepStats> steps;
  std::vector<EpochStats> epochs;
  double eval_loss_before = 0, eval_loss_after = 0;  // mean per-token loss on held-out data
  int64_t eval_tokens = 0;
  int64_t trainable_params = 0;
  int64_t backbone_params = 0;
  std::string cache_stale_reason;  // non-empty when an old cache was rebuilt
  int64_t cache_bytes_written = 0, cache_bytes_read = 0;
};

// Everything the trainer trains on. load_backbone returns a fresh backbone each call
// (from disk, or a seeded random init): parallel adapters call it again when the
// backbone was released and a cache record turns out to be corrupt.
struct TrainSetup {
  std::function<Llama()> load_backbone;
  std::string tokenizer_checksum;
  std::vector<Example> train, heldout;
};

class Trainer {
 public:
  Trainer(const TrainOptions& opt, TrainSetup setup);

  // Mean per-token loss over the held-out examples (no update).
  double evaluate(int64_t* tokens = nullptr);
  // One epoch (1-based) over the training examples in the seeded order, or in `order`
  // (indices into the training examples) when given: pac-run's data-parallel epochs
  // visit samples by owner (epoch_order_by_owner), and the equivalence tests replay that.
  EpochStats train_epoch(int epoch, std::vector<StepStats>* steps, const std::vector<int64_t>* order = nullptr);
  // One optimizer step on `batch` (used by train_epoch and the benchmarks).
  StepStats train_step(const std::vector<const Example*>& batch, int epoch);
  // evaluate, all epochs, evaluate.
  TrainResult run();

  // Trainable weights + metadata, written atomically (safetensors).
  void save(const std::string& path);
  // Drops the backbone (parallel adapters with a cache only); reloaded on demand.
  void release_backbone();
  // The backbone with the method applied (reloaded if it was released).
  Llama& backbone();
  SideNetwork side() { return side_; }
  bool backbone_resident() const { return !model_.is_empty(); }
  const std::string& method() const { return opt_.method; }
  int64_t trainable_params();
  ActCache* cache() { return cache_.get(); }

 private:
  torch::Tensor batch_logits(const std::vector<const Example*>& batch, const std::string& split, StepStats* st);
  torch::Tensor batch_taps(const std::vector<const Example*>& batch, const std::string& split);
  void ensure_backbone();
  double lr_at(int64_t step) const;

  TrainOptions opt_;
  TrainSetup setup_;
  Llama model_{nullptr};
  SideNetwork side_{nullptr};
  std::unique_ptr<ActCache> cache_;
  CacheDtype cache_dtype_ = CacheDtype::F32;
  std::unique_ptr<torch::optim::AdamW> optim_;
  std::vector<torch::Tensor> params_;
  int64_t global_step_ = 0;
  int64_t total_steps_ = 0;
  int backbone_loads_ = 0;
  LlamaConfig cfg_;
};

// Reads `data` (plain text or JSONL) and `eval_data` (or, when empty, holds out
// `eval_fraction` of `data` after a seeded shuffle) and tokenizes both with `tok`.
void data_prepare(const std::string& data, const std::string& eval_data, double eval_fraction, const Tokenizer& tok,
                  const DataOptions& dopt, uint64_t seed, std::vector<Example>* train, std::vector<Example>* heldout);

// Masked mean cross-entropy: logits [B,T,V], targets [B,T] int64, mask [B,T] float.
torch::Tensor masked_lm_loss(const torch::Tensor& logits, const torch::Tensor& targets, const torch::Tensor& mask);
// sum(ce * mask) / max(1, n_tokens): some rows' part of a mini-batch's masked mean whose
// mask holds n_tokens tokens in all (each runtime device computes its own rows' part;
// the parts add up to masked_lm_loss of the whole mini-batch).
torch::Tensor masked_lm_loss_part(const torch::Tensor& logits, const torch::Tensor& targets, const torch::Tensor& mask,
                                  double n_tokens);
// Inputs/targets/mask tensors of a batch of examples.
void examples_to_tensors(const std::vector<const Example*>& batch, torch::Tensor* inputs, torch::Tensor* targets,
                         torch::Tensor* mask);

// A saved fine-tuning result applied to a backbone: LoRA/adapters/full weights are
// copied into `model`; parallel adapters come back as a side network (in *side).
// Bad file -> InputError naming it and the tensor or metadata field.
std::string adapter_load(const std::string& path, Llama& model, SideNetwork* side);

// Decoding with the side network in the loop: every step runs the backbone's taps
// and the side network over the whole prefix (no KV cache), then samples with the
// same Sampler as generate(). Quadratic in length; fine for short personal replies.
GenerateResult generate_side(Llama& model, SideNetwork& side, const Tokenizer& tok, const std::vector<int>& prompt,
                             const GenerateOptions& opt);


}  // namespace pac
