// Shared pieces of the LLM pipeline executors (stage_io.h).
#include "exec/stage_io.h"

#include <cstring>

#include "src/common/error.h"
#include "src/llm/checkpoint.h"

namespace pac {

LlamaConfig llama_config_from_json(const JsonIn& c) {
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

Llama stage_model_make(const JsonIn& mj, uint64_t seed, const LlamaParts& parts) {
  if (mj.is_string()) return llama_open(mj.as_string(), seed, parts);
  Llama model(llama_config_from_json(mj), parts);
  model->init_random(seed);
  return model;
}

StepBatch step_batch_parse(const JsonIn& s, int vocab_size) {
  std::vector<JsonIn> rows = s.at("tokens").items(), mrows = s.at("mask").items();
  StepBatch b;
  b.n = static_cast<int>(rows.size());
  if (b.n < 1 || mrows.size() != rows.size()) s.fail_at("mask", "expected as many mask rows as token rows (>= 1)");
  int64_t T = static_cast<int64_t>(mrows[0].size());
  b.inputs = torch::empty({b.n, T}, torch::kLong);
  b.targets = torch::empty({b.n, T}, torch::kLong);
  b.mask = torch::empty({b.n, T}, torch::kFloat);
  auto pi = b.inputs.accessor<int64_t, 2>();
  auto pt = b.targets.accessor<int64_t, 2>();
  auto pm = b.mask.accessor<float, 2>();
  for (int i = 0; i < b.n; i++) {
    std::vector<JsonIn> tk = rows[i].items(), mk = mrows[i].items();
    if (static_cast<int64_t>(tk.size()) != T + 1 || static_cast<int64_t>(mk.size()) != T)
      rows[i].fail("expected " + std::to_string(T + 1) + " tokens and " + std::to_string(T) + " mask entries");
    for (int64_t t = 0; t < T; t++) {
      pi[i][t] = tk[t].as_int(0, vocab_size - 1);
      pt[i][t] = tk[t + 1].as_int(0, vocab_size - 1);
      pm[i][t] = static_cast<float>(mk[t].as_number(0, 1));
    }
  }
  b.n_tokens = b.mask.sum().item<double>();
  return b;
}

void TensorInbox::put(const PeerName& from, MsgType type, const TensorView& t, const std::string& executor) {
  if (t.header.dtype != TensorDtype::F32)
    throw InputError(executor + " executor takes f32 tensors, got " + tensor_dtype_name(t.header.dtype) + " from " +
                     from.str());
  torch::Tensor x = torch::empty(t.header.dims, torch::kFloat);
  if (static_cast<size_t>(x.numel()) * sizeof(float) != t.bytes)
    throw InputError(executor + " executor: tensor from " + from.str() + " has " + std::to_string(t.bytes) +
                     " bytes for " + std::to_string(x.numel()) + " floats");
  // Copied out of the frame: its bytes may be unaligned and are reused after we return.
  std::memcpy(x.data_ptr<float>(), t.data, t.bytes);
  std::lock_guard<std::mutex> lk(mu_);
  if (!open_) throw InputError(executor + " executor got a tensor from " + from.str() + " before its assignment");
  slots_[Key(static_cast<int>(type), t.header.tag, t.header.micro_batch, from.id)] = x;
  cv_.notify_all();
}

torch::Tensor TensorInbox::gather(MsgType type, uint32_t step, int m, const std::vector<PeerRows>& peers,
                                  const std::string& me, std::chrono::milliseconds timeout, double* wait_s) {
  std::vector<torch::Tensor> parts;
  auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lk(mu_);
  for (const PeerRows& p : peers) {
    Key key(static_cast<int>(type), step, static_cast<uint32_t>(m), p.id);
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!slots_.count(key)) {
      if (cv_.wait_until(lk, deadline) == std::cv_status::timeout && !slots_.count(key))
        throw PeerError("device " + me + " timed out after " + std::to_string(timeout.count()) +
                            " ms waiting for the " + msg_type_name(type) + " of step " + std::to_string(step) +
                            " micro-batch " + std::to_string(m) + " from device " + p.id + " (" + p.address + ")",
                        p.id, true);
    }
    torch::Tensor x = slots_[key];
    slots_.erase(key);
    if (x.dim() < 1 || x.size(0) != p.rows.size())
      throw RuntimeError("device " + p.id + " sent " + std::to_string(x.dim() ? x.size(0) : 0) + " rows of the " +
                         msg_type_name(type) + " of micro-batch " + std::to_string(m) + ", expected " +
                         std::to_string(p.rows.size()));
    parts.push_back(x);
  }
  *wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return parts.size() == 1 ? parts[0] : torch::cat(parts, 0);
}

void TensorInbox::reset(bool open) {
  std::lock_guard<std::mutex> lk(mu_);
  slots_.clear();
  open_ = open;
}

void stage_send_rows(WorkerContext& ctx, const PeerRows& to, MsgType type, uint32_t step, int m, int stage,
                     const RowRange& mine, const torch::Tensor& t, LinkStats* stats) {
  torch::Tensor part = t.narrow(0, to.rows.begin - mine.begin, to.rows.size()).contiguous();
  TensorHeader h;
  h.dtype = TensorDtype::F32;
  h.micro_batch = static_cast<uint32_t>(m);
  h.stage = static_cast<uint32_t>(stage);
  h.tag = step;
  h.dims = part.sizes().vec();
  size_t bytes = static_cast<size_t>(part.numel()) * sizeof(float);
  auto t0 = std::chrono::steady_clock::now();
  ctx.peer(to.id, to.address).send_tensor(type, h, part.data_ptr<float>(), bytes);
  stats->send_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  stats->bytes_to[to.id] += static_cast<double>(bytes);
}

void LinkStats::add_allreduce(const std::vector<std::string>& ring_ids, int rank, double bytes) {
  int size = static_cast<int>(ring_ids.size());
  double sent = allreduce_ring_bytes_sent(size, bytes);
  if (sent > 0) bytes_to[ring_ids[(rank + 1) % size]] += sent;
}

double grads_allreduce_sum(CollectiveGroup& group, const std::vector<torch::Tensor>& params,
                           const CollectiveOptions& opt) {
  if (params.empty()) return 0;
  std::vector<torch::Tensor> grads;
  for (torch::Tensor p : params) {
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    grads.push_back(p.grad().reshape({-1}));
  }
  torch::Tensor flat = torch::cat(grads);
  group.allreduce(flat, ReduceKind::Sum, opt);
  int64_t off = 0;
  for (torch::Tensor p : params) {
    int64_t k = p.numel();
    p.mutable_grad().copy_(flat.narrow(0, off, k).view_as(p));
    off += k;
  }
  return static_cast<double>(flat.nbytes());
}

}  // namespace pac
