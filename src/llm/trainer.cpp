#include "src/llm/threads.h"
#include "src/llm/trainer.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>

#include "src/common/error.h"
#include "src/common/fs.h"
#include "src/common/progress.h"
#include "src/llm/safetensors.h"

namespace pac {

static double cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

static double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void train_options_validate(const TrainOptions& o) {
  if (o.method != "full" && o.method != "lora" && o.method != "adapters" && o.method != "parallel_adapters")
    throw InputError("--method: expected full, lora, adapters or parallel_adapters, got \"" + o.method + "\"");
  if (o.epochs < 0) throw InputError("--epochs: expected >= 0, got " + std::to_string(o.epochs));
  if (o.batch_size < 1) throw InputError("--batch-size: expected >= 1, got " + std::to_string(o.batch_size));
  if (o.seq_len < 2) throw InputError("--seq-len: expected >= 2, got " + std::to_string(o.seq_len));
  if (!(o.lr > 0)) throw InputError("--lr: expected > 0, got " + std::to_string(o.lr));
  if (o.lr_schedule != "constant" && o.lr_schedule != "cosine")
    throw InputError("--lr-schedule: expected constant or cosine, got \"" + o.lr_schedule + "\"");
  if (o.warmup_steps < 0) throw InputError("--warmup: expected >= 0");
  if (o.weight_decay < 0) throw InputError("--weight-decay: expected >= 0");
  if (o.threads < 0) throw InputError("--threads: expected >= 0");
  if (o.max_steps < 0) throw InputError("--max-steps: expected >= 0");
  if (o.reduction_k < 1) throw InputError("--k: expected >= 1, got " + std::to_string(o.reduction_k));
  cache_dtype_parse(o.cache_dtype);
  if (o.lora_rank < 1) throw InputError("--lora-rank: expected >= 1");
  if (!(o.lora_alpha > 0)) throw InputError("--lora-alpha: expected > 0");
  if (o.adapter_bottleneck < 1) throw InputError("--adapter-bottleneck: expected >= 1");
}

// Summed masked cross-entropy of the rows.
static torch::Tensor masked_lm_loss_sum(const torch::Tensor& logits, const torch::Tensor& targets,
                                        const torch::Tensor& mask) {
  int64_t V = logits.size(-1);
  auto per_token = torch::nn::functional::cross_entropy(
      logits.reshape({-1, V}), targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  return (per_token * mask.reshape({-1})).sum();
}

torch::Tensor masked_lm_loss(const torch::Tensor& logits, const torch::Tensor& targets, const torch::Tensor& mask) {
  return masked_lm_loss_sum(logits, targets, mask) / mask.sum().clamp_min(1.0);
}

torch::Tensor masked_lm_loss_part(const torch::Tensor& logits, const torch::Tensor& targets, const torch::Tensor& mask,
                                  double n_tokens) {
  return masked_lm_loss_sum(logits, targets, mask) / std::max(1.0, n_tokens);
}

void examples_to_tensors(const std::vector<const Example*>& batch, torch::Tensor* inputs, torch::Tensor* targets,
                         torch::Tensor* mask) {
  int64_t B = static_cast<int64_t>(batch.size());
  int64_t T = static_cast<int64_t>(batch[0]->mask.size());
  *inputs = torch::empty({B, T}, torch::kLong);
  *targets = torch::empty({B, T}, torch::kLong);
  *mask = torch::empty({B, T}, torch::kFloat);
  auto pi = inputs->accessor<int64_t, 2>();
  auto pt = targets->accessor<int64_t, 2>();
  auto pm = mask->accessor<float, 2>();
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++) {
      pi[b][t] = batch[b]->tokens[t];
      pt[b][t] = batch[b]->tokens[t + 1];
      pm[b][t] = batch[b]->mask[t];
    }
}

void data_prepare(const std::string& data, const std::string& eval_data, double eval_fraction, const Tokenizer& tok,
                  const DataOptions& dopt, uint64_t seed, std::vector<Example>* train, std::vector<Example>* heldout) {
  EncodeFn encode = [&tok](const std::string& s) { return tok.encode(s, false, false); };
  std::vector<TextSample> tr = dataset_read(data), ho;
  if (!eval_data.empty()) {
    ho = dataset_read(eval_data);
  } else if (eval_fraction > 0) {
    std::vector<TextSample> all = tr;
    dataset_split(all, eval_fraction, seed, &tr, &ho);
  }
  *train = dataset_tokenize(tr, encode, dopt, data);
  heldout->clear();
  if (!ho.empty()) *heldout = dataset_tokenize(ho, encode, dopt, eval_data.empty() ? data : eval_data);
}

static int64_t numel_sum(const std::vector<torch::Tensor>& ts) {
  int64_t n = 0;
  for (auto& t : ts) n += t.numel();
  return n;
}

// --- Trainer ---------------------------------------------------------------

Trainer::Trainer(const TrainOptions& opt, TrainSetup setup) : opt_(opt), setup_(std::move(setup)) {
  train_options_validate(opt_);
  if (opt_.threads > 0) compute_threads_set(opt_.threads);
  // Method weights draw from per-tensor generators of opt_.seed (model.h); the global
  // generator is seeded too, for anything else that draws from it (dropout-free today).
  torch::manual_seed(opt_.seed);
  ensure_backbone();
  cfg_ = model_->config();
  if (opt_.seq_len > cfg_.max_seq_len)
    throw InputError("--seq-len " + std::to_string(opt_.seq_len) + " exceeds the model's max_seq_len " +
                     std::to_string(cfg_.max_seq_len));
  for (auto* set : {&setup_.train, &setup_.heldout})
    for (const Example& e : *set)
      if (static_cast<int>(e.mask.size()) != opt_.seq_len)
        throw RuntimeError("trainer: example built for seq_len " + std::to_string(e.mask.size()) + ", expected " +
                           std::to_string(opt_.seq_len));

  if (opt_.method == "parallel_adapters") {
    side_ = SideNetwork(side_config_make(cfg_, opt_.reduction_k));
    if (opt_.side_random_init) side_->init_random(opt_.seed);
    else side_->init_pruned(model_);
    side_->set_head(model_->norm->weight, model_->classifier_weight());
    params_ = side_->parameters();
    cache_dtype_ = cache_dtype_parse(opt_.cache_dtype);
    if (!opt_.cache_dir.empty()) {
      CacheKey key;
      key.weights_sha256 = backbone_checksum(model_);
      key.tokenizer_sha256 = setup_.tokenizer_checksum;
      key.seq_len = opt_.seq_len;
      key.dtype = cache_dtype_;
      key.dim = cfg_.dim;
      key.n_taps = cfg_.n_layers + 1;
      cache_ = std::make_unique<ActCache>(opt_.cache_dir, key);
      if (cache_->was_stale() && !opt_.quiet)
        std::fprintf(stderr, "activation cache %s is stale (%s): rebuilding it\n", opt_.cache_dir.c_str(),
                     cache_->stale_reason().c_str());
    }
  } else if (opt_.method == "full") {
    model_->freeze_backbone(false);
    params_ = model_->backbone_parameters();
  } else if (opt_.method == "lora") {
    model_->enable_lora(opt_.lora_rank, static_cast<float>(opt_.lora_alpha), opt_.lora_mlp, opt_.seed);
    model_->freeze_backbone(true);
    params_ = model_->method_parameters();
  } else {
    model_->enable_adapters(opt_.adapter_bottleneck, opt_.seed);
    model_->freeze_backbone(true);
    params_ = model_->method_parameters();
  }
  optim_ = std::make_unique<torch::optim::AdamW>(
      params_, torch::optim::AdamWOptions(opt_.lr).weight_decay(opt_.weight_decay));
  int64_t per_epoch = (static_cast<int64_t>(setup_.train.size()) + opt_.batch_size - 1) / opt_.batch_size;
  total_steps_ = per_epoch * opt_.epochs;
  if (opt_.max_steps > 0) total_steps_ = std::min<int64_t>(total_steps_, opt_.max_steps);
}

void Trainer::ensure_backbone() {
  if (!model_.is_empty()) return;
  model_ = setup_.load_backbone();
  backbone_loads_++;
  if (backbone_loads_ > 1) {
    const LlamaConfig& c = model_->config();
    if (c.dim != cfg_.dim || c.n_layers != cfg_.n_layers || c.vocab_size != cfg_.vocab_size)
      throw RuntimeError("trainer: reloaded backbone has another shape");
  }
  // Parallel adapters never train the backbone: no autograd state for it at all.
  if (opt_.method == "parallel_adapters") model_->freeze_backbone(true);
}

void Trainer::release_backbone() {
  // Only parallel adapters can drop it: the side network keeps its own copies of the
  // final norm and classifier (set_head), and the taps come from the cache.
  if (opt_.method != "parallel_adapters" || !cache_ || !opt_.release_backbone) return;
  model_ = Llama(nullptr);
}

Llama& Trainer::backbone() {
  ensure_backbone();
  return model_;
}

int64_t Trainer::trainable_params() { return numel_sum(params_); }

double lr_schedule_at(double lr, const std::string& schedule, int warmup_steps, int64_t total_steps, int64_t step) {
  if (warmup_steps > 0 && step < warmup_steps) return lr * static_cast<double>(step + 1) / warmup_steps;
  if (schedule == "constant") return lr;
  int64_t span = std::max<int64_t>(1, total_steps - warmup_steps);
  double progress = std::min(1.0, static_cast<double>(step - warmup_steps) / static_cast<double>(span));
  return lr * 0.5 * (1.0 + std::cos(M_PI * progress));
}

double Trainer::lr_at(int64_t step) const {
  return lr_schedule_at(opt_.lr, opt_.lr_schedule, opt_.warmup_steps, total_steps_, step);
}

torch::Tensor Trainer::batch_taps(const std::vector<const Example*>& batch, const std::string& split) {
  size_t B = batch.size();
  std::vector<torch::Tensor> rows(B);
  std::vector<uint64_t> hashes(B);
  std::vector<size_t> missing;
  for (size_t i = 0; i < B; i++) {
    if (!cache_) {
      missing.push_back(i);
      continue;
    }
    hashes[i] = tokens_hash(batch[i]->tokens);
    CacheRead r = cache_->cache_read_sample(split, batch[i]->id, hashes[i]);
    if (r.status == CacheStatus::Hit) {
      rows[i] = r.taps;
      continue;
    }
    if (r.status == CacheStatus::Corrupt)
      std::fprintf(stderr, "warning: %s: sample %lld: %s; recomputing it through the backbone\n",
                   cache_->sample_path(split, batch[i]->id).c_str(), static_cast<long long>(batch[i]->id),
                   r.problem.c_str());
    missing.push_back(i);
  }
  if (!missing.empty()) {
    ensure_backbone();
    torch::NoGradGuard ng;
    int64_t T = opt_.seq_len;
    auto inputs = torch::empty({static_cast<int64_t>(missing.size()), T}, torch::kLong);
    auto pi = inputs.accessor<int64_t, 2>();
    for (size_t j = 0; j < missing.size(); j++)
      for (int64_t t = 0; t < T; t++) pi[j][t] = batch[missing[j]]->tokens[t];
    Taps tp = model_->forward_taps(inputs);
    torch::Tensor st = torch::stack(tp.b, 1);  // [m, L+1, T, d]
    if (cache_) st = cache_round_trip(st, cache_dtype_);
    for (size_t j = 0; j < missing.size(); j++) {
      size_t i = missing[j];
      rows[i] = st[j];
      if (cache_) cache_->cache_write_sample(split, batch[i]->id, hashes[i], st[j]);
    }
  }
  return torch::stack(rows, 0);
}

torch::Tensor Trainer::batch_logits(const std::vector<const Example*>& batch, const std::string& split,
                                    StepStats* st) {
  if (opt_.method == "parallel_adapters") {
    double t0 = now_s(), c0 = cpu_s();
    torch::Tensor taps = batch_taps(batch, split);
    if (st) {
      st->backbone_s = now_s() - t0;
      st->backbone_cpu_s = cpu_s() - c0;
    }
    return side_->forward(taps);
  }
  torch::Tensor inputs, targets, mask;
  examples_to_tensors(batch, &inputs, &targets, &mask);
  return model_->forward(inputs);
}

double Trainer::evaluate(int64_t* tokens) {
  torch::NoGradGuard ng;
  double sum = 0;
  int64_t count = 0;
  const auto& ex = setup_.heldout;
  for (size_t start = 0; start < ex.size(); start += opt_.batch_size) {
    std::vector<const Example*> batch;
    for (size_t i = start; i < std::min(ex.size(), start + opt_.batch_size); i++) batch.push_back(&ex[i]);
    torch::Tensor inputs, targets, mask;
    examples_to_tensors(batch, &inputs, &targets, &mask);
    torch::Tensor logits = batch_logits(batch, "eval", nullptr);
    double n = mask.sum().item<double>();
    sum += masked_lm_loss(logits, targets, mask).item<double>() * n;
    count += static_cast<int64_t>(n);
  }
  if (tokens) *tokens = count;
  return count > 0 ? sum / static_cast<double>(count) : 0.0;
}

StepStats Trainer::train_step(const std::vector<const Example*>& batch, int epoch) {
  StepStats s;
  s.epoch = epoch;
  s.step = global_step_;
  s.lr = lr_at(global_step_);
  for (auto& g : optim_->param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(s.lr);
  torch::Tensor inputs, targets, mask;
  examples_to_tensors(batch, &inputs, &targets, &mask);
  double t0 = now_s(), c0 = cpu_s();
  torch::Tensor logits = batch_logits(batch, "train", &s);
  torch::Tensor loss = masked_lm_loss(logits, targets, mask);
  double t1 = now_s(), c1 = cpu_s();
  optim_->zero_grad();
  loss.backward();
  double t2 = now_s(), c2 = cpu_s();
  optim_->step();
  double t3 = now_s(), c3 = cpu_s();
  s.forward_s = t1 - t0 - s.backbone_s;
  s.backward_s = t2 - t1;
  s.update_s = t3 - t2;
  s.forward_cpu_s = c1 - c0 - s.backbone_cpu_s;
  s.backward_cpu_s = c2 - c1;
  s.update_cpu_s = c3 - c2;
  s.loss = loss.item<double>();
  s.tokens = static_cast<int64_t>(mask.sum().item<double>());
  global_step_++;
  return s;
}

EpochStats Trainer::train_epoch(int epoch, std::vector<StepStats>* steps, const std::vector<int64_t>* given) {
  EpochStats es;
  es.epoch = epoch;
  int64_t hits0 = cache_ ? cache_->hits : 0, miss0 = cache_ ? cache_->misses : 0,
          bad0 = cache_ ? cache_->corrupt : 0;
  int loads0 = backbone_loads_;
  const auto& ex = setup_.train;
  int64_t n = static_cast<int64_t>(ex.size());
  std::vector<int64_t> order = given ? *given : epoch_order(n, opt_.seed, epoch);
  if (static_cast<int64_t>(order.size()) != n)
    throw InputError("train_epoch: an order of " + std::to_string(order.size()) + " samples for " + std::to_string(n));
  for (int64_t i : order)
    if (i < 0 || i >= n) throw InputError("train_epoch: sample index " + std::to_string(i) + " out of range");
  int64_t nb = (n + opt_.batch_size - 1) / opt_.batch_size;
  Progress prog("epoch " + std::to_string(epoch) + "/" + std::to_string(opt_.epochs) + " step", nb);
  prog.set_quiet(opt_.quiet);
  double t_epoch = now_s();
  double loss_sum = 0;
  int64_t done = 0, tok_seen = 0;
  for (int64_t b = 0; b < nb; b++) {
    if (opt_.max_steps > 0 && global_step_ >= opt_.max_steps) break;
    std::vector<const Example*> batch;
    for (int64_t i = b * opt_.batch_size; i < std::min(n, (b + 1) * opt_.batch_size); i++)
      batch.push_back(&ex[order[i]]);
    StepStats s = train_step(batch, epoch);
    tok_seen += static_cast<int64_t>(batch.size()) * opt_.seq_len;
    loss_sum += s.loss;
    done++;
    if (steps) steps->push_back(s);
    char extra[128];
    std::snprintf(extra, sizeof extra, "loss %.4f lr %.2e %.0f tok/s", s.loss, s.lr,
                  static_cast<double>(tok_seen) / std::max(1e-9, now_s() - t_epoch));
    prog.update(b + 1, extra);
  }
  es.seconds = now_s() - t_epoch;
  es.mean_loss = done > 0 ? loss_sum / static_cast<double>(done) : 0;
  if (cache_) {
    es.cache_hits = cache_->hits - hits0;
    es.cache_misses = cache_->misses - miss0;
    es.cache_corrupt = cache_->corrupt - bad0;
  }
  es.backbone_loads = backbone_loads_ - loads0;
  // Every training sample is in the cache now: the backbone is dead weight.
  release_backbone();
  return es;
}

TrainResult Trainer::run() {
  TrainResult r;
  r.trainable_params = trainable_params();
  r.backbone_params = llama_param_count(cfg_);
  if (cache_) r.cache_stale_reason = cache_->stale_reason();
  if (!setup_.heldout.empty()) r.eval_loss_before = evaluate(&r.eval_tokens);
  for (int e = 1; e <= opt_.epochs; e++) {
    if (opt_.max_steps > 0 && global_step_ >= opt_.max_steps) break;
    r.epochs.push_back(train_epoch(e, &r.steps));
  }
  if (!setup_.heldout.empty()) r.eval_loss_after = evaluate();
  if (cache_) {
    r.cache_bytes_written = cache_->bytes_written;
    r.cache_bytes_read = cache_->bytes_read;
  }
  return r;
}

void Trainer::save(const std::string& path) {
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, std::string> meta{{"format", "pac-finetune"},
                                          {"method", opt_.method},
                                          {"backbone.dim", std::to_string(cfg_.dim)},
                                          {"backbone.n_layers", std::to_string(cfg_.n_layers)},
                                          {"backbone.vocab_size", std::to_string(cfg_.vocab_size)}};
  if (opt_.method == "parallel_adapters") {
    tensors = side_->state();
    for (auto& kv : side_config_metadata(side_->config())) meta[kv.first] = kv.second;
    meta["k"] = std::to_string(opt_.reduction_k);
    meta["init"] = opt_.side_random_init ? "random" : "pruned";
  } else if (opt_.method == "full") {
    for (auto& kv : backbone()->backbone_named_parameters()) tensors[kv.first] = kv.second.detach();
  } else {
    for (auto& kv : model_->named_parameters())
      if (LlamaImpl::is_method_parameter(kv.key())) tensors[kv.key()] = kv.value().detach();
    if (opt_.method == "lora") {
      meta["lora_rank"] = std::to_string(opt_.lora_rank);
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.9g", opt_.lora_alpha);
      meta["lora_alpha"] = buf;
      meta["lora_mlp"] = opt_.lora_mlp ? "1" : "0";
    } else {
      meta["adapter_bottleneck"] = std::to_string(opt_.adapter_bottleneck);
    }
  }
  safetensors_write(path, tensors, meta);
}

// --- loading a saved result ------------------------------------------------

static std::string meta_get(const SafeTensors& st, const std::string& key, const std::string& path) {
  auto it = st.metadata.find(key);
  if (it == st.metadata.end()) throw_input(path, "__metadata__." + key, "missing (not a pac-train output?)");
  return it->second;
}

static long meta_int(const SafeTensors& st, const std::string& key, const std::string& path) {
  std::string v = meta_get(st, key, path);
  try {
    size_t used = 0;
    long x = std::stol(v, &used);
    if (used == v.size()) return x;
  } catch (const std::exception&) {
  }
  throw_input(path, "__metadata__." + key, "expected an integer, got \"" + v + "\"");
}

std::string adapter_load(const std::string& path, Llama& model, SideNetwork* side) {
  SafeTensors st = safetensors_read(path);
  std::string method = meta_get(st, "method", path);
  const LlamaConfig& c = model->config();
  if (meta_int(st, "backbone.dim", path) != c.dim || meta_int(st, "backbone.n_layers", path) != c.n_layers ||
      meta_int(st, "backbone.vocab_size", path) != c.vocab_size)
    throw_input(path, "__metadata__", "made for another backbone shape than " + llama_config_describe(c));
  if (method == "parallel_adapters") {
    SideConfig sc = side_config_from_metadata(st.metadata, path);
    if (sc.dim != c.dim || sc.n_layers != c.n_layers)
      throw_input(path, "__metadata__.side.dim", "side network does not fit the backbone");
    *side = SideNetwork(sc);
    (*side)->load_state(st.tensors, path);
    (*side)->set_head(model->norm->weight, model->classifier_weight());
    return method;
  }
  std::vector<std::pair<std::string, torch::Tensor>> params;
  if (method == "full") {
    for (auto& kv : st.tensors) model->set_weight(kv.first, kv.second, path);
    return method;
  } else if (method == "lora") {
    std::string alpha = meta_get(st, "lora_alpha", path);
    model->enable_lora(static_cast<int>(meta_int(st, "lora_rank", path)), std::stof(alpha),
                       meta_int(st, "lora_mlp", path) != 0);
  } else if (method == "adapters") {
    model->enable_adapters(static_cast<int>(meta_int(st, "adapter_bottleneck", path)));
  } else {
    throw_input(path, "__metadata__.method", "unknown method \"" + method + "\"");
  }
  for (auto& kv : model->named_parameters())
    if (LlamaImpl::is_method_parameter(kv.key())) params.emplace_back(kv.key(), kv.value());
  named_tensors_load(params, st.tensors, path);
  return method;
}

GenerateResult generate_side(Llama& model, SideNetwork& side, const Tokenizer& tok, const std::vector<int>& prompt,
                             const GenerateOptions& opt) {
  torch::NoGradGuard ng;
  GenerateResult res;
  res.tokens = prompt;
  res.n_prompt = static_cast<int>(prompt.size());
  if (prompt.empty()) throw InputError("generate: empty prompt");
  Sampler sampler(model->config().vocab_size, opt.temperature, opt.top_p, opt.seed);
  int steps = std::min(std::max(opt.steps, static_cast<int>(prompt.size())), model->config().max_seq_len);
  double t0 = now_s();
  // run.c semantics: positions 0..steps-1 each produce one token, so the sequence ends
  // with steps + 1 tokens (prompt included).
  while (static_cast<int>(res.tokens.size()) <= steps) {
    auto in = torch::tensor(std::vector<int64_t>(res.tokens.begin(), res.tokens.end()), torch::kLong).view({1, -1});
    Taps tp = model->forward_taps(in);
    torch::Tensor logits = side->forward(torch::stack(tp.b, 1)).select(1, -1).reshape({-1}).contiguous();
    std::vector<float> l(logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel());
    int next = sampler.sample(l.data());
    // Same stop rule as generate(): BOS delimits sequences, EOS ends the text when asked.
    if (next == tok.bos_id() || (opt.stop_at_eos && next == tok.eos_id())) break;
    res.tokens.push_back(next);
  }
  res.seconds = now_s() - t0;
  for (size_t i = 1; i < res.tokens.size(); i++) res.text += tok.decode_piece(res.tokens[i - 1], res.tokens[i]);
  return res;
}

// --- memory accounting -----------------------------------------------------

// Every block carries a 64-byte header holding its size (64 keeps LibTorch's
// alignment); data and context are the same pointer so raw_allocate works too.
static std::atomic<int64_t> g_live{0}, g_peak{0};

static void counting_delete(void* p) {
  if (!p) return;
  char* base = static_cast<char*>(p) - 64;
  int64_t n;
  std::memcpy(&n, base, sizeof n);
  g_live -= n;
  c10::free_cpu(base);
}

struct CountingAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) const override {
    char* base = static_cast<char*>(c10::alloc_cpu(n + 64));
    int64_t nn = static_cast<int64_t>(n);
    std::memcpy(base, &nn, sizeof nn);
    int64_t live = (g_live += nn);
    int64_t peak = g_peak.load();
    while (live > peak && !g_peak.compare_exchange_weak(peak, live)) {
    }
    void* p = base + 64;
    return {p, p, &counting_delete, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &counting_delete; }
};

static CountingAllocator g_counting;

void torch_memory_tracking_enable() {
  static bool done = false;
  if (done) return;
  done = true;
  c10::SetCPUAllocator(&g_counting, /*priority=*/100);
}
int64_t torch_memory_live_bytes() { return g_live.load(); }
int64_t torch_memory_peak_bytes() { return g_peak.load(); }
void torch_memory_peak_reset() { g_peak.store(g_live.load()); }

int64_t rss_peak_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return -1;
}

void rss_peak_reset() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
}

void memory_peaks_reset() {
  torch_memory_peak_reset();
  rss_peak_reset();
}

}  // namespace pac
