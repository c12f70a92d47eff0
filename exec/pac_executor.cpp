// The "pac-pipeline" executor (pac_executor.h). The only torch TU of the runtime besides
// collectives.cpp: keep the rest of exec/ free of torch headers.
#include "src/llm/threads.h"
#include "exec/pac_executor.h"

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include <torch/torch.h>

#include "exec/assignment.h"
#include "exec/collectives.h"
#include "src/llm/checkpoint.h"
#include "src/llm/model.h"
#include "src/llm/safetensors.h"
#include "src/llm/side_network.h"
#include "src/llm/trainer.h"

namespace pac {

namespace {

// A received tensor slice is keyed by what it is, which step and micro-batch, and who
// sent it: several upstream devices may each send a part of the same micro-batch.
using InboxKey = std::tuple<int, uint32_t, uint32_t, std::string>;

// One micro-batch's state between its forward and its backward on this device.
struct MicroState {
  RowRange rows;
  torch::Tensor a_in;   // side state received (requires grad), undefined on stage 0
  torch::Tensor a_out;  // side state sent downstream (with graph)
  torch::Tensor loss;   // last stage: this slice's share of the mini-batch loss
};

LlamaConfig config_from_json(const JsonIn& c) {
  c.check_keys({"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len", "norm_eps",
                "rope_theta", "tied_classifier"});
  LlamaConfig m;
  m.dim = static_cast<int>(c.integer("dim", 1, 1 << 16));
  m.hidden_dim = static_cast<int>(c.integer("hidden_dim", 1, 1 << 20));
  m.n_layers = static_cast<int>(c.integer("n_layers", 1, 1 << 12));
  m.n_heads = static_cast<int>(c.integer("n_heads", 1, 1 << 12));
  m.n_kv_heads = static_cast<int>(c.integer_or("n_kv_heads", m.n_heads, 1, 1 << 12));
  m.vocab_size = static_cast<int>(c.integer("vocab_size", 1, 1 << 24));
  m.max_seq_len = static_cast<int>(c.integer("max_seq_len", 1, 1 << 20));
  m.norm_eps = static_cast<float>(c.number_or("norm_eps", 1e-5, 0, 1));
  m.rope_theta = static_cast<float>(c.number_or("rope_theta", 10000, 1, 1e12));
  m.tied_classifier = c.boolean_or("tied_classifier", true);
  llama_config_validate(m, c.file() + ": " + c.path());
  return m;
}

class PacExecutor : public StageExecutor {
 public:
  std::string name() const override { return "pac-pipeline"; }
  json on_assign(const JsonIn& frag, WorkerContext& ctx) override;
  void on_tensor(const PeerName& from, MsgType type, const TensorView& t, uint32_t flags,
                 WorkerContext& ctx) override;
  json run_step(const JsonIn& step, WorkerContext& ctx) override;

 private:
  json train_step(const JsonIn& step, WorkerContext& ctx);
  json save(const JsonIn& step, WorkerContext& ctx);
  void forward(int m, uint32_t step, int n, const torch::Tensor& inputs, const torch::Tensor& targets,
               const torch::Tensor& mask, double n_tokens, WorkerContext& ctx);
  void backward(int m, uint32_t step, int n, WorkerContext& ctx);
  torch::Tensor gather(MsgType type, uint32_t step, int m, const std::vector<PeerRows>& peers);
  void send_rows(WorkerContext& ctx, const PeerRows& to, MsgType type, uint32_t step, int m, const RowRange& mine,
                 const torch::Tensor& t);
  void group_allreduce(uint32_t step);

  // Guards the inbox only; everything else is touched by run_step's thread alone.
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<InboxKey, torch::Tensor> inbox_;
  bool assigned_ = false;

  Assignment a_;
  Llama model_{nullptr};
  SideNetwork side_{nullptr};
  torch::Tensor classifier_;  // frozen [V, d] (last stage)
  torch::Tensor cos_, sin_;   // side RoPE tables
  std::vector<std::pair<std::string, torch::Tensor>> params_;  // what this device trains
  std::unique_ptr<torch::optim::AdamW> optim_;
  std::string store_host_;
  int store_port_ = 0;
  std::unique_ptr<CollectiveGroup> group_;
  std::chrono::milliseconds timeout_{30000};
  std::map<int, MicroState> micro_;
  double loss_part_ = 0;
  // Per step, for the run report: seconds waiting for slices, sending, all-reducing,
  // and bytes sent to each device.
  double wait_s_ = 0, send_s_ = 0, allreduce_s_ = 0;
  std::map<std::string, double> bytes_to_;
};

json PacExecutor::on_assign(const JsonIn& f, WorkerContext& ctx) {
  f.check_keys({"executor", "assignment", "model", "seed", "side_init", "side_seed", "reduction_k", "lr",
                "weight_decay", "threads", "timeout_ms", "group_store"});
  Assignment a = assignment_from_json(f.at("assignment"));
  if (a.device_id != ctx.device_id())
    f.at("assignment").fail_at("device_id", "expected this worker's id " + ctx.device_id());
  uint64_t seed = static_cast<uint64_t>(f.integer("seed", 0));
  JsonIn mj = f.at("model");
  Llama model{nullptr};
  if (mj.is_string()) {
    model = llama_open(mj.as_string(), seed);  // preset name (seeded random init) or checkpoint path
  } else {
    model = Llama(config_from_json(mj));
    model->init_random(seed);
  }
  const LlamaConfig& cfg = model->config();
  if (cfg.n_layers != a.n_layers)
    f.at("assignment").fail_at("n_layers", "the plan has " + std::to_string(a.n_layers) + " layers, the model " +
                                               std::to_string(cfg.n_layers));
  model->freeze_backbone(true);
  int k = static_cast<int>(f.integer("reduction_k", 1, 1 << 10));
  SideNetwork side(side_config_make(cfg, k));
  std::string init = f.choice_or("side_init", "random", {"random", "pruned"});
  if (init == "random") side->init_random(static_cast<uint64_t>(f.integer_or("side_seed", static_cast<int64_t>(seed), 0)));
  else side->init_pruned(model);
  side->set_head(model->norm->weight, model->classifier_weight());

  // The trainable tensors of this stage, under the side network's own names, so that
  // the parts of all stages put together are exactly SideNetwork::state().
  std::vector<std::pair<std::string, torch::Tensor>> params;
  std::vector<torch::Tensor> plist;
  for (auto& kv : side->named_parameters()) {
    const std::string& n = kv.key();
    bool mine = false;
    if (n.rfind("down0.", 0) == 0) mine = a.has_embedding();
    else if (n.rfind("blocks.", 0) == 0) {
      int blk = std::stoi(n.substr(7));  // blocks.<i-1>: side block i consumes layer i-1's output
      mine = blk >= a.layer_begin() && blk < a.layer_end();
    } else mine = a.has_head();  // norm, up, gate
    if (mine) {
      params.emplace_back(n, kv.value());
      plist.push_back(kv.value());
    } else {
      kv.value().set_requires_grad(false);
    }
  }
  double lr = f.number("lr", 0, 10), wd = f.number_or("weight_decay", 0, 0, 10);
  int threads = static_cast<int>(f.integer_or("threads", 0, 0, 1024));
  if (threads > 0) compute_threads_set(threads);
  std::string host;
  int port = 0;
  if (auto g = f.find("group_store")) {
    g->check_keys({"host", "port"});
    host = g->string("host");
    port = static_cast<int>(g->integer("port", 1, 65535));
  } else if (a.group_size() > 1) {
    f.fail_at("group_store", "expected {\"host\", \"port\"}: stage " + std::to_string(a.stage) + " has " +
                                 std::to_string(a.group_size()) + " devices to all-reduce");
  }
  LlamaConfig side_rope;  // rope_tables() on the side's head size (same run.c formula)
  side_rope.dim = side->config().width;
  side_rope.n_heads = side->config().n_heads;
  side_rope.rope_theta = side->config().rope_theta;
  torch::Tensor cos, sin;
  rope_tables(side_rope, cfg.max_seq_len, &cos, &sin);

  std::lock_guard<std::mutex> lk(mu_);
  a_ = a;
  model_ = model;
  side_ = side;
  classifier_ = model->classifier_weight().detach().to(torch::kFloat).clone();
  cos_ = cos;
  sin_ = sin;
  params_ = params;
  optim_ = std::make_unique<torch::optim::AdamW>(plist, torch::optim::AdamWOptions(lr).weight_decay(wd));
  store_host_ = host;
  store_port_ = port;
  group_.reset();
  timeout_ = std::chrono::milliseconds(f.integer_or("timeout_ms", 30000, 1, 86400000));
  inbox_.clear();
  assigned_ = true;
  int64_t n_params = 0;
  for (auto& p : plist) n_params += p.numel();
  return {{"device", ctx.device_id()}, {"executor", name()}, {"stage", a.stage}, {"group_rank", a.group_rank},
          {"layers", {a.layer_begin(), a.layer_end()}}, {"trainable_params", n_params}};
}

void PacExecutor::on_tensor(const PeerName& from, MsgType type, const TensorView& t, uint32_t, WorkerContext&) {
  if (type != MsgType::Activation && type != MsgType::SideState && type != MsgType::Gradient)
    throw InputError(std::string("pac-pipeline executor: unexpected ") + msg_type_name(type) + " from " + from.str());
  if (t.header.dtype != TensorDtype::F32)
    throw InputError(std::string("pac-pipeline executor takes f32 tensors, got ") +
                     tensor_dtype_name(t.header.dtype) + " from " + from.str());
  // Copy out of the frame (its bytes may be unaligned and are reused after we return).
  torch::Tensor x = torch::empty(t.header.dims, torch::kFloat);
  std::memcpy(x.data_ptr<float>(), t.data, static_cast<size_t>(t.header.numel()) * sizeof(float));
  std::lock_guard<std::mutex> lk(mu_);
  if (!assigned_) throw InputError("pac-pipeline executor got a tensor from " + from.str() + " before its assignment");
  inbox_[InboxKey(static_cast<int>(type), t.header.tag, t.header.micro_batch, from.id)] = x;
  cv_.notify_all();
}

// The slices the peers send, concatenated in row order (peers come in stage order,
// which is row order: a stage's devices split a micro-batch in device order).
torch::Tensor PacExecutor::gather(MsgType type, uint32_t step, int m, const std::vector<PeerRows>& peers) {
  std::vector<torch::Tensor> parts;
  auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lk(mu_);
  for (const PeerRows& p : peers) {
    InboxKey key(static_cast<int>(type), step, static_cast<uint32_t>(m), p.id);
    auto deadline = std::chrono::steady_clock::now() + timeout_;
    while (!inbox_.count(key)) {
      if (cv_.wait_until(lk, deadline) == std::cv_status::timeout && !inbox_.count(key))
        throw PeerError("device " + a_.device_id + " timed out after " + std::to_string(timeout_.count()) +
                            " ms waiting for the " + msg_type_name(type) + " of step " + std::to_string(step) +
                            " micro-batch " + std::to_string(m) + " from device " + p.id + " (" + p.address + ")",
                        p.id, true);
    }
    torch::Tensor x = inbox_[key];
    inbox_.erase(key);
    if (x.dim() < 1 || x.size(0) != p.rows.size())
      throw RuntimeError("device " + p.id + " sent " + std::to_string(x.dim() ? x.size(0) : 0) + " rows of the " +
                         msg_type_name(type) + " of micro-batch " + std::to_string(m) + ", expected " +
                         std::to_string(p.rows.size()));
    parts.push_back(x);
  }
  wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return parts.size() == 1 ? parts[0] : torch::cat(parts, 0);
}

void PacExecutor::send_rows(WorkerContext& ctx, const PeerRows& to, MsgType type, uint32_t step, int m,
                            const RowRange& mine, const torch::Tensor& t) {
  torch::Tensor part = t.narrow(0, to.rows.begin - mine.begin, to.rows.size()).contiguous();
  TensorHeader h;
  h.dtype = TensorDtype::F32;
  h.micro_batch = static_cast<uint32_t>(m);
  h.stage = static_cast<uint32_t>(a_.stage);
  h.tag = step;
  h.dims = part.sizes().vec();
  size_t bytes = static_cast<size_t>(part.numel()) * sizeof(float);
  auto t0 = std::chrono::steady_clock::now();
  ctx.peer(to.id, to.address).send_tensor(type, h, part.data_ptr<float>(), bytes);
  send_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  bytes_to_[to.id] += static_cast<double>(bytes);
}

void PacExecutor::forward(int m, uint32_t step, int n, const torch::Tensor& inputs, const torch::Tensor& targets,
                          const torch::Tensor& mask, double n_tokens, WorkerContext& ctx) {
  MicroState st;
  st.rows = assignment_rows(a_, n, m);
  if (st.rows.size() == 0) {
    micro_[m] = st;
    return;
  }
  int64_t T = inputs.size(1);
  torch::Tensor b, a;
  if (a_.has_embedding()) {
    {
      torch::NoGradGuard ng;
      b = model_->embed(inputs.narrow(0, st.rows.begin, st.rows.size()));
    }
    a = side_->down0(b);
  } else {
    std::vector<PeerRows> up = assignment_up_peers(a_, n, m);
    b = gather(MsgType::Activation, step, m, up);
    st.a_in = gather(MsgType::SideState, step, m, up).requires_grad_(true);
    a = st.a_in;
  }
  torch::Tensor cos = cos_.narrow(0, 0, T), sin = sin_.narrow(0, 0, T);
  for (int l = a_.layer_begin(); l < a_.layer_end(); l++) {
    {
      torch::NoGradGuard ng;  // the backbone is frozen: no autograd state for it
      b = model_->layer_forward(l, b);
    }
    SideBlock& blk = side_->blocks[l];  // side block l+1 consumes b_{l+1}
    a = blk->forward(a + blk->down(b), cos, sin);
  }
  if (a_.has_head()) {
    torch::Tensor out = side_->final_hidden(b) + side_->gate * side_->up(side_->norm(a));
    torch::Tensor logits = torch::matmul(out, classifier_.t());
    int64_t V = logits.size(-1);
    torch::Tensor per_token = torch::nn::functional::cross_entropy(
        logits.reshape({-1, V}), targets.narrow(0, st.rows.begin, st.rows.size()).reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
    torch::Tensor mk = mask.narrow(0, st.rows.begin, st.rows.size()).reshape({-1});
    // This slice's part of the mini-batch's masked mean (see pac_executor.h).
    st.loss = (per_token * mk).sum() / std::max(1.0, n_tokens);
  } else {
    st.a_out = a;
    torch::Tensor a_send = a.detach();
    for (const PeerRows& p : assignment_down_peers(a_, n, m)) {
      send_rows(ctx, p, MsgType::Activation, step, m, st.rows, b);
      send_rows(ctx, p, MsgType::SideState, step, m, st.rows, a_send);
    }
  }
  micro_[m] = st;
}

void PacExecutor::backward(int m, uint32_t step, int n, WorkerContext& ctx) {
  MicroState& st = micro_[m];
  if (st.rows.size() == 0) return;
  if (a_.has_head()) {
    st.loss.backward();
    loss_part_ += st.loss.item<double>();
  } else {
    torch::Tensor g = gather(MsgType::Gradient, step, m, assignment_down_peers(a_, n, m));
    st.a_out.backward(g);
  }
  if (st.a_in.defined()) {
    torch::Tensor g = st.a_in.grad();
    if (!g.defined()) g = torch::zeros_like(st.a_in);
    for (const PeerRows& p : assignment_up_peers(a_, n, m)) send_rows(ctx, p, MsgType::Gradient, step, m, st.rows, g);
  }
  micro_.erase(m);
}

void PacExecutor::group_allreduce(uint32_t step) {
  if (a_.group_size() <= 1) return;
  auto t0 = std::chrono::steady_clock::now();
  CollectiveOptions opt;
  opt.timeout = timeout_;
  opt.tag = "side grads step " + std::to_string(step) + " stage " + std::to_string(a_.stage);
  if (!group_) {
    // Joined on the first step, not at assignment: the coordinator assigns devices one
    // after another, and a join blocks until the whole group is there.
    CollectiveStore store = CollectiveStore::tcp(store_host_, static_cast<uint16_t>(store_port_), a_.group_rank == 0,
                                                 a_.group_size(), timeout_);
    group_ = std::make_unique<CollectiveGroup>(store, "stage" + std::to_string(a_.stage), a_.group_rank,
                                               a_.group_size(), opt, store_host_);
  }
  // One flat all-reduce per mini-batch: per-call latency, not bytes, dominates for
  // side-network gradients (docs/runtime.md, measured Gloo all-reduce).
  std::vector<torch::Tensor> grads;
  for (auto& kv : params_) {
    if (!kv.second.grad().defined()) kv.second.mutable_grad() = torch::zeros_like(kv.second);
    grads.push_back(kv.second.grad().reshape({-1}));
  }
  torch::Tensor flat = torch::cat(grads);
  group_->allreduce(flat, ReduceKind::Sum, opt);
  int64_t off = 0;
  for (auto& kv : params_) {
    int64_t k = kv.second.numel();
    kv.second.mutable_grad().copy_(flat.narrow(0, off, k).view_as(kv.second));
    off += k;
  }
  allreduce_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

json PacExecutor::train_step(const JsonIn& s, WorkerContext& ctx) {
  s.check_keys({"op", "step", "lr", "tokens", "mask"});
  uint32_t step = static_cast<uint32_t>(s.integer("step", 0, UINT32_MAX));
  double lr = s.number("lr", 0, 10);
  // Every device gets the whole mini-batch's tokens and mask (tiny next to activations):
  // the first stage embeds its rows, the last computes the loss of its rows, and every
  // device derives N (the loss normaliser) and its rows from the same numbers.
  std::vector<JsonIn> rows = s.at("tokens").items(), mrows = s.at("mask").items();
  int n = static_cast<int>(rows.size());
  if (n < 1 || mrows.size() != rows.size()) s.fail_at("mask", "expected as many mask rows as token rows (>= 1)");
  int64_t T = static_cast<int64_t>(mrows[0].size());
  torch::Tensor inputs = torch::empty({n, T}, torch::kLong), targets = torch::empty({n, T}, torch::kLong);
  torch::Tensor mask = torch::empty({n, T}, torch::kFloat);
  for (int i = 0; i < n; i++) {
    std::vector<JsonIn> tk = rows[i].items(), mk = mrows[i].items();
    if (static_cast<int64_t>(tk.size()) != T + 1 || static_cast<int64_t>(mk.size()) != T)
      rows[i].fail("expected " + std::to_string(T + 1) + " tokens and " + std::to_string(T) + " mask entries");
    for (int64_t t = 0; t < T; t++) {
      inputs[i][t] = tk[t].as_int(0, model_->config().vocab_size - 1);
      targets[i][t] = tk[t + 1].as_int(0, model_->config().vocab_size - 1);
      mask[i][t] = static_cast<float>(mk[t].as_number(0, 1));
    }
  }
  double n_tokens = mask.sum().item<double>();
  for (auto& g : optim_->param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
  optim_->zero_grad();
  loss_part_ = 0;
  wait_s_ = send_s_ = allreduce_s_ = 0;
  bytes_to_.clear();
  micro_.clear();
  auto t0 = std::chrono::steady_clock::now();
  // 1F1B: stage j of S runs min(S-1-j, M) warm-up forwards, then alternates.
  int M = a_.micro_batches, S = static_cast<int>(a_.stages.size());
  int warm = std::min(S - 1 - a_.stage, M), f = 0, b = 0;
  for (; f < warm; f++) forward(f, step, n, inputs, targets, mask, n_tokens, ctx);
  while (b < M) {
    if (f < M) forward(f++, step, n, inputs, targets, mask, n_tokens, ctx);
    backward(b++, step, n, ctx);
  }
  group_allreduce(step);
  optim_->step();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Compute = the step minus its waits, sends and all-reduce (the rest is this
  // device's own forward/backward/optimizer work).
  double compute = std::max(0.0, secs - wait_s_ - send_s_ - allreduce_s_);
  json bytes = json::object();
  for (auto& kv : bytes_to_) bytes[kv.first] = kv.second;
  return {{"device", ctx.device_id()}, {"stage", a_.stage},       {"step", step},
          {"loss_part", loss_part_},   {"loss_tokens", n_tokens}, {"seconds", secs},
          {"compute_s", compute},      {"wait_s", wait_s_},       {"send_s", send_s_},
          {"allreduce_s", allreduce_s_}, {"bytes_to", bytes},     {"rss_peak_bytes", rss_peak_bytes()}};
}

json PacExecutor::save(const JsonIn& s, WorkerContext& ctx) {
  s.check_keys({"op", "path"});
  std::string path = s.string("path");
  std::map<std::string, torch::Tensor> out;
  for (auto& kv : params_) out[kv.first] = kv.second.detach().clone();
  safetensors_write(path, out, {{"device", ctx.device_id()}, {"stage", std::to_string(a_.stage)}});
  json names = json::array();
  for (auto& kv : out) names.push_back(kv.first);
  return {{"device", ctx.device_id()}, {"path", path}, {"tensors", names}};
}

json PacExecutor::run_step(const JsonIn& s, WorkerContext& ctx) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!assigned_) s.fail("pac-pipeline executor: Start before Assign");
  }
  std::string op = s.choice("op", {"train", "save"});
  if (op == "train") return train_step(s, ctx);
  return save(s, ctx);
}

}  // namespace

std::unique_ptr<StageExecutor> pac_executor_create() { return std::make_unique<PacExecutor>(); }

}  // namespace pac
