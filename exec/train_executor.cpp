// The "pipeline-train" executor (train_executor.h): full / LoRA / adapters fine-tuning
// over any pipeline-with-groups shape, i.e. every baseline strategy of the planner.
#include "src/llm/threads.h"
#include "exec/train_executor.h"

#include <chrono>
#include <map>
#include <mutex>

#include <torch/torch.h>

#include "exec/assignment.h"
#include "exec/collectives.h"
#include "exec/run_trace.h"
#include "exec/stage_io.h"
#include "exec/train_driver.h"
#include "src/common/error.h"
#include "src/llm/model.h"
#include "src/llm/safetensors.h"
#include "src/llm/trainer.h"

namespace pac {

namespace {

// One micro-batch's state between its forward and its backward on this device.
struct MicroState {
  RowRange rows;
  torch::Tensor h_in;   // hidden state received (requires grad); undefined on stage 0
  torch::Tensor h_out;  // hidden state sent downstream (with graph)
  torch::Tensor loss;   // last stage: this slice's share of the mini-batch loss
};

class TrainExecutor : public StageExecutor {
 public:
  std::string name() const override { return "pipeline-train"; }
  json on_assign(const JsonIn& frag, WorkerContext& ctx) override;
  void on_tensor(const PeerName& from, MsgType type, const TensorView& t, uint32_t flags,
                 WorkerContext& ctx) override;
  json run_step(const JsonIn& step, WorkerContext& ctx) override;

 private:
  json train_step(const JsonIn& step, WorkerContext& ctx);
  json save(const JsonIn& step, WorkerContext& ctx);
  void forward(int m, uint32_t step, const StepBatch& batch, WorkerContext& ctx);
  void backward(int m, uint32_t step, int n, WorkerContext& ctx);
  void groups_join();
  void allreduce(uint32_t step);

  TensorInbox inbox_;
  std::mutex mu_;  // guards assigned_ (run_step may race a re-assignment)
  bool assigned_ = false;

  Assignment a_;
  Llama model_{nullptr};
  std::string method_;
  std::map<std::string, std::string> meta_;  // the Trainer's save metadata for this method
  std::vector<std::pair<std::string, torch::Tensor>> params_;  // what this device trains
  torch::Tensor tied_;  // tok_embeddings.weight when its grads are summed over the tie group
  std::unique_ptr<torch::optim::AdamW> optim_;
  std::string my_host_;
  json group_store_, tie_store_;
  std::unique_ptr<CollectiveGroup> group_, tie_;
  std::chrono::milliseconds timeout_{30000};
  std::map<int, MicroState> micro_;
  double loss_part_ = 0;
  double wait_s_ = 0, allreduce_s_ = 0;
  LinkStats links_;
};

json TrainExecutor::on_assign(const JsonIn& f, WorkerContext& ctx) {
  // The pac-pipeline keys (reduction_k, side_init, side_seed, cache*) are accepted and
  // unused so that one settings object can drive either executor (baselines never use
  // the activation cache).
  f.check_keys({"executor", "assignment", "model", "seed", "method", "lora_rank", "lora_alpha", "lora_mlp",
                "adapter_bottleneck", "lr", "weight_decay", "threads", "timeout_ms", "group_store", "tie_store",
                "bind_host", "reduction_k", "side_init", "side_seed", "cache", "cache_dtype", "cache_dir"});
  memory_peaks_reset();  // this run's peaks, from the idle worker up
  Assignment a = assignment_from_json(f.at("assignment"));
  if (a.device_id != ctx.device_id())
    f.at("assignment").fail_at("device_id", "expected this worker's id " + ctx.device_id());
  uint64_t seed = static_cast<uint64_t>(f.integer("seed", 0));
  std::string method = f.choice("method", {"full", "lora", "adapters"});
  // Defaults = TrainOptions' (src/llm/trainer.h), so a run is comparable to pac-train's.
  int lora_rank = static_cast<int>(f.integer_or("lora_rank", 8, 1, 1 << 16));
  double lora_alpha = f.number_or("lora_alpha", 16, 1e-9, 1e9);
  bool lora_mlp = f.boolean_or("lora_mlp", false);
  int bottleneck = static_cast<int>(f.integer_or("adapter_bottleneck", 16, 1, 1 << 20));
  double lr = f.number("lr", 0, 10), wd = f.number_or("weight_decay", 0, 0, 10);
  int threads = static_cast<int>(f.integer_or("threads", 0, 0, 1024));
  if (threads > 0) compute_threads_set(threads);

  // What this device computes with: its layers, the embedding on the first stage, the
  // head on the last (the embedding too when the classifier is tied). Nothing else is
  // built or read: a real device holds only its stage. Every tensor, method weights
  // included, is initialised from (seed, its name), so the parts equal the Trainer's.
  bool first = a.has_embedding(), last = a.has_head();
  Llama model = stage_model_make(f.at("model"), seed, LlamaParts::layers(a.layer_begin(), a.layer_end(), first, last));
  if (method == "lora") {
    model->enable_lora(lora_rank, static_cast<float>(lora_alpha), lora_mlp, seed);
    model->freeze_backbone(true);
  } else if (method == "adapters") {
    model->enable_adapters(bottleneck, seed);
    model->freeze_backbone(true);
  } else {
    model->freeze_backbone(false);
  }
  const LlamaConfig& cfg = model->config();
  if (cfg.n_layers != a.n_layers)
    f.at("assignment").fail_at("n_layers", "the plan has " + std::to_string(a.n_layers) + " layers, the model " +
                                               std::to_string(cfg.n_layers));

  // Of what it holds, what it trains.
  std::vector<std::pair<std::string, torch::Tensor>> params;
  std::vector<torch::Tensor> plist;
  torch::Tensor tied;
  int64_t n_params = 0, n_held = 0;
  for (auto& kv : model->named_parameters(true)) {
    const std::string& n = kv.key();
    torch::Tensor p = kv.value();
    bool trains = method == "full" || LlamaImpl::is_method_parameter(n);
    if (!trains) p.set_requires_grad(false);
    n_held += p.numel();
    if (!trains) continue;
    plist.push_back(p);
    n_params += p.numel();
    if (method == "full" && cfg.tied_classifier && a.stages.size() > 1 && n == "tok_embeddings.weight") {
      tied = p;  // summed over the tie group, not the stage group
      if (!first) continue;  // the last stage's copy is not saved (the first stage's is)
    }
    params.emplace_back(n, p);
  }

  std::map<std::string, std::string> meta{{"format", "pac-finetune"},
                                          {"method", method},
                                          {"backbone.dim", std::to_string(cfg.dim)},
                                          {"backbone.n_layers", std::to_string(cfg.n_layers)},
                                          {"backbone.vocab_size", std::to_string(cfg.vocab_size)}};
  if (method == "lora") {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.9g", lora_alpha);  // as Trainer::save writes it
    meta["lora_rank"] = std::to_string(lora_rank);
    meta["lora_alpha"] = buf;
    meta["lora_mlp"] = lora_mlp ? "1" : "0";
  } else if (method == "adapters") {
    meta["adapter_bottleneck"] = std::to_string(bottleneck);
  }

  json group_store, tie_store;
  if (auto g = f.find("group_store")) {
    g->check_keys({"host", "port"});
    group_store = {{"host", g->string("host")}, {"port", g->integer("port", 1, 65535)}};
  } else if (a.group_size() > 1) {
    f.fail_at("group_store", "expected {\"host\", \"port\"}: stage " + std::to_string(a.stage) + " has " +
                                 std::to_string(a.group_size()) + " devices to all-reduce");
  }
  if (auto g = f.find("tie_store")) {
    g->check_keys({"host", "port"});
    tie_store = {{"host", g->string("host")}, {"port", g->integer("port", 1, 65535)}};
  } else if (tied.defined()) {
    f.fail_at("tie_store", "expected {\"host\", \"port\"}: full fine-tuning of a tied classifier over " +
                               std::to_string(a.stages.size()) +
                               " stages sums the embedding's gradients over the first and last stage");
  }
  std::string my_address = a.my_stage().addresses.size() > static_cast<size_t>(a.group_rank)
                               ? a.my_stage().addresses[a.group_rank]
                               : "";
  // Gloo binds its pairs to this device's own address: the coordinator's "bind_host",
  // else the host of the address the plan gives this device.
  std::string my_host = f.string_or("bind_host", my_address.empty() ? "127.0.0.1" : address_host(my_address));

  std::lock_guard<std::mutex> lk(mu_);
  a_ = a;
  model_ = model;
  method_ = method;
  meta_ = meta;
  params_ = params;
  tied_ = tied;
  optim_ = std::make_unique<torch::optim::AdamW>(plist, torch::optim::AdamWOptions(lr).weight_decay(wd));
  my_host_ = my_host;
  group_store_ = group_store;
  tie_store_ = tie_store;
  group_.reset();
  tie_.reset();
  timeout_ = std::chrono::milliseconds(f.integer_or("timeout_ms", 30000, 1, 86400000));
  inbox_.reset(true);
  assigned_ = true;
  return {{"device", ctx.device_id()}, {"executor", name()},        {"method", method},
          {"stage", a.stage},          {"group_rank", a.group_rank}, {"layers", {a.layer_begin(), a.layer_end()}},
          {"trainable_params", n_params}, {"held_params", n_held}};
}

void TrainExecutor::on_tensor(const PeerName& from, MsgType type, const TensorView& t, uint32_t, WorkerContext&) {
  if (type != MsgType::Activation && type != MsgType::Gradient)
    throw InputError(std::string("pipeline-train executor: unexpected ") + msg_type_name(type) + " from " + from.str());
  inbox_.put(from, type, t, "pipeline-train");
}

void TrainExecutor::forward(int m, uint32_t step, const StepBatch& batch, WorkerContext& ctx) {
  MicroState st;
  st.rows = assignment_rows(a_, batch.n, m);
  if (st.rows.size() == 0) {
    micro_[m] = st;
    return;
  }
  torch::Tensor h;
  if (a_.has_embedding()) {
    h = model_->embed(batch.inputs.narrow(0, st.rows.begin, st.rows.size()));
  } else {
    st.h_in = inbox_.gather(MsgType::Activation, step, m, assignment_up_peers(a_, batch.n, m), a_.device_id, timeout_,
                            &wait_s_);
    st.h_in.requires_grad_(true);
    h = st.h_in;
  }
  h = model_->layers_forward(a_.layer_begin(), a_.layer_end(), h);
  if (a_.has_head()) {
    torch::Tensor logits = model_->classify(model_->final_norm(h));
    // This slice's part of the mini-batch's masked mean (train_executor.h).
    st.loss = masked_lm_loss_part(logits, batch.targets.narrow(0, st.rows.begin, st.rows.size()),
                                  batch.mask.narrow(0, st.rows.begin, st.rows.size()), batch.n_tokens);
  } else {
    st.h_out = h;
    torch::Tensor h_send = h.detach();
    for (const PeerRows& p : assignment_down_peers(a_, batch.n, m))
      stage_send_rows(ctx, p, MsgType::Activation, step, m, a_.stage, st.rows, h_send, &links_);
  }
  micro_[m] = st;
}

void TrainExecutor::backward(int m, uint32_t step, int n, WorkerContext& ctx) {
  MicroState& st = micro_[m];
  if (st.rows.size() == 0) return;
  if (a_.has_head()) {
    st.loss.backward();
    loss_part_ += st.loss.item<double>();
  } else {
    torch::Tensor g = inbox_.gather(MsgType::Gradient, step, m, assignment_down_peers(a_, n, m), a_.device_id,
                                    timeout_, &wait_s_);
    // A stage with nothing trainable upstream of its output (no graph) has nothing to do.
    if (st.h_out.requires_grad()) st.h_out.backward(g);
  }
  if (st.h_in.defined()) {
    torch::Tensor g = st.h_in.grad();
    if (!g.defined()) g = torch::zeros_like(st.h_in);
    for (const PeerRows& p : assignment_up_peers(a_, n, m))
      stage_send_rows(ctx, p, MsgType::Gradient, step, m, a_.stage, st.rows, g, &links_);
  }
  micro_.erase(m);
}

// Stage group first (its own devices only), then the tie group (first + last stage):
// every device reaches its calls in the same order, so neither can wait on the other.
// Groups are joined by pac-run's "join" once every device is assigned (not at
// assignment: the coordinator assigns devices one after another, and a join blocks
// until the whole group is there), or else on the first all-reduce.
void TrainExecutor::groups_join() {
  CollectiveOptions opt;
  opt.timeout = timeout_;
  if (a_.group_size() > 1 && !group_) {
    opt.tag = "stage " + std::to_string(a_.stage) + " group join";
    std::string host = group_store_["host"];
    CollectiveStore store = CollectiveStore::tcp(host, static_cast<uint16_t>(group_store_["port"].get<int>()),
                                                 a_.group_rank == 0, a_.group_size(), timeout_);
    group_ = std::make_unique<CollectiveGroup>(store, "train-stage" + std::to_string(a_.stage), a_.group_rank,
                                               a_.group_size(), opt, my_host_);
  }
  if (tied_.defined() && !tie_) {
    opt.tag = "tied embedding group join";
    int first_size = static_cast<int>(a_.stages.front().devices.size());
    int size = first_size + static_cast<int>(a_.stages.back().devices.size());
    int rank = a_.has_embedding() ? a_.group_rank : first_size + a_.group_rank;
    std::string host = tie_store_["host"];
    CollectiveStore store = CollectiveStore::tcp(host, static_cast<uint16_t>(tie_store_["port"].get<int>()),
                                                 rank == 0, size, timeout_);
    tie_ = std::make_unique<CollectiveGroup>(store, "train-tie", rank, size, opt, my_host_);
  }
}

void TrainExecutor::allreduce(uint32_t step) {
  auto t0 = std::chrono::steady_clock::now();
  CollectiveOptions opt;
  opt.timeout = timeout_;
  if (a_.group_size() > 1) {
    opt.tag = "grads step " + std::to_string(step) + " stage " + std::to_string(a_.stage);
    groups_join();
    std::vector<torch::Tensor> grads;
    for (auto& kv : params_)
      if (!kv.second.is_same(tied_)) grads.push_back(kv.second);
    links_.add_allreduce(a_.my_stage().device_ids, a_.group_rank, grads_allreduce_sum(*group_, grads, opt));
  }
  if (tied_.defined()) {
    opt.tag = "tied embedding grads step " + std::to_string(step);
    int first_size = static_cast<int>(a_.stages.front().devices.size());
    int rank = a_.has_embedding() ? a_.group_rank : first_size + a_.group_rank;
    groups_join();
    // Tie ranks: the first stage's devices, then the last stage's (as `rank` above).
    std::vector<std::string> ring = a_.stages.front().device_ids;
    for (const std::string& id : a_.stages.back().device_ids) ring.push_back(id);
    links_.add_allreduce(ring, rank, grads_allreduce_sum(*tie_, {tied_}, opt));
  }
  allreduce_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

json TrainExecutor::train_step(const JsonIn& s, WorkerContext& ctx) {
  s.check_keys({"op", "step", "lr", "tokens", "mask", "samples", "trace"});  // samples: pac-pipeline's, unused
  // Trace (pac-run --trace): coarser than pac-pipeline's so far — the 1F1B span as one
  // event (its waits and sends included), then the all-reduce and the optimizer step.
  bool trace = s.boolean_or("trace", false);
  json events = json::array();
  auto event = [&](const char* cat, const std::string& name, double t0, double t1) {
    if (trace) events.push_back({{"cat", cat}, {"name", name}, {"ts", t0}, {"dur", std::max(0.0, t1 - t0)}});
  };
  uint32_t step = static_cast<uint32_t>(s.integer("step", 0, UINT32_MAX));
  double lr = s.number("lr", 0, 10);
  StepBatch batch = step_batch_parse(s, model_->config().vocab_size);
  for (auto& g : optim_->param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
  optim_->zero_grad();
  loss_part_ = 0;
  wait_s_ = allreduce_s_ = 0;
  links_.clear();
  micro_.clear();
  auto t0 = std::chrono::steady_clock::now();
  // 1F1B: stage j of S runs min(S-1-j, M) warm-up forwards, then alternates.
  int M = a_.micro_batches, S = static_cast<int>(a_.stages.size());
  int warm = std::min(S - 1 - a_.stage, M), f = 0, b = 0;
  double w0 = wall_clock_us();
  for (; f < warm; f++) forward(f, step, batch, ctx);
  while (b < M) {
    if (f < M) forward(f++, step, batch, ctx);
    backward(b++, step, batch.n, ctx);
  }
  double w1 = wall_clock_us();
  event("compute", "1F1B x" + std::to_string(M) + " (incl. waits, sends)", w0, w1);
  allreduce(step);
  double w2 = wall_clock_us();
  if (allreduce_s_ > 0) event("collective", "allreduce", w1, w2);
  optim_->step();
  event("compute", "opt", w2, wall_clock_us());
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Compute = the step minus its waits, sends and all-reduces.
  double compute = std::max(0.0, secs - wait_s_ - links_.send_s - allreduce_s_);
  json bytes = json::object();
  for (auto& kv : links_.bytes_to) bytes[kv.first] = kv.second;
  return {{"device", ctx.device_id()},   {"stage", a_.stage},             {"step", step},
          {"loss_part", loss_part_},     {"loss_tokens", batch.n_tokens}, {"seconds", secs},
          {"compute_s", compute},        {"wait_s", wait_s_},             {"send_s", links_.send_s},
          {"allreduce_s", allreduce_s_}, {"bytes_to", bytes},             {"rss_peak_bytes", rss_peak_bytes()}, {"tensor_peak_bytes", torch_memory_peak_bytes()},
          {"events", events}};
}

json TrainExecutor::save(const JsonIn& s, WorkerContext& ctx) {
  s.check_keys({"op", "path"});
  std::string path = s.string("path");
  std::map<std::string, torch::Tensor> out;
  for (auto& kv : params_) out[kv.first] = kv.second.detach().clone();
  std::map<std::string, std::string> meta = meta_;
  meta["part.device"] = ctx.device_id();
  meta["part.stage"] = std::to_string(a_.stage);
  safetensors_write(path, out, meta);
  json names = json::array();
  for (auto& kv : out) names.push_back(kv.first);
  return {{"device", ctx.device_id()}, {"path", path}, {"tensors", names}};
}

json TrainExecutor::run_step(const JsonIn& s, WorkerContext& ctx) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!assigned_) s.fail("pipeline-train executor: Start before Assign");
  }
  std::string op = s.choice("op", {"train", "save", "join"});
  if (op == "join") {
    groups_join();
    return {{"device", ctx.device_id()}, {"joined", group_ != nullptr || tie_ != nullptr}};
  }
  if (op == "train") return train_step(s, ctx);
  return save(s, ctx);
}

}  // namespace

std::unique_ptr<StageExecutor> train_executor_create() { return std::make_unique<TrainExecutor>(); }

void train_parts_merge(const std::vector<std::string>& parts, const std::string& out) {
  if (parts.empty()) throw InputError("merging pipeline-train parts into " + out + ": no parts");
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, std::string> meta;
  for (const std::string& p : parts) {
    SafeTensors st = safetensors_read(p);
    auto fmt = st.metadata.find("format");
    auto method = st.metadata.find("method");
    if (fmt == st.metadata.end() || fmt->second != "pac-finetune" || method == st.metadata.end() ||
        !st.metadata.count("part.stage"))
      throw_input(p, "__metadata__", "not a pipeline-train part (format pac-finetune, method, part.stage)");
    if (meta.empty()) {
      meta = st.metadata;
      meta.erase("part.device");
      meta.erase("part.stage");
    } else if (meta["method"] != method->second) {
      throw_input(p, "__metadata__.method", "\"" + method->second + "\", but " + parts[0] + " has \"" +
                                                meta["method"] + "\"");
    }
    for (auto& kv : st.tensors) {
      if (tensors.count(kv.first)) throw_input(p, kv.first, "also saved by another part");
      tensors[kv.first] = kv.second;
    }
  }
  safetensors_write(out, tensors, meta);
}

}  // namespace pac
