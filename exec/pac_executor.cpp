// The "pac-pipeline" executor (pac_executor.h). The only torch TU of the runtime besides
// collectives.cpp: keep the rest of exec/ free of torch headers.
#include "src/llm/threads.h"
#include "exec/pac_executor.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <unistd.h>
#include <filesystem>
#include <malloc.h>
#include <set>
#include <thread>

#include <torch/torch.h>

#include "exec/assignment.h"
#include "exec/collectives.h"
#include "exec/run_trace.h"
#include "exec/stage_io.h"
#include "src/common/hash.h"
#include "src/llm/act_cache.h"
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

class PacExecutor : public StageExecutor {
 public:
  std::string name() const override { return "pac-pipeline"; }
  json on_assign(const JsonIn& frag, WorkerContext& ctx) override;
  void on_tensor(const PeerName& from, MsgType type, const TensorView& t, uint32_t flags,
                 WorkerContext& ctx) override;
  json run_step(const JsonIn& step, WorkerContext& ctx) override;

 private:
  json train_step(const JsonIn& step, WorkerContext& ctx);
  // Phase 2 on the rows of ids_ this device owns.
  json dp_train_step(uint32_t step, const torch::Tensor& targets, const torch::Tensor& mask, double n_tokens);
  json switch_phase(const JsonIn& step, WorkerContext& ctx);
  json save(const JsonIn& step, WorkerContext& ctx);
  void cache_open(int T);
  torch::Tensor p1_read(int64_t id, uint64_t hash, const std::string& device) const;
  torch::Tensor side_input(const torch::Tensor& b) const;
  void send_tensor_to(WorkerContext& ctx, const std::string& id, const std::string& address, MsgType type,
                      const TensorHeader& h, const torch::Tensor& t, uint32_t flags);
  void forward(int m, uint32_t step, int n, const torch::Tensor& inputs, const torch::Tensor& targets,
               const torch::Tensor& mask, double n_tokens, WorkerContext& ctx);
  void backward(int m, uint32_t step, int n, WorkerContext& ctx);
  torch::Tensor gather(MsgType type, uint32_t step, int m, const std::vector<PeerRows>& peers);
  void send_rows(WorkerContext& ctx, const PeerRows& to, MsgType type, uint32_t step, int m, const RowRange& mine,
                 const torch::Tensor& t);
  void group_join();
  void dp_group_join(const std::string& host, int port, int rank, int size, const std::string& tag);
  void group_allreduce(uint32_t step);
  void grads_allreduce(CollectiveGroup& g, const CollectiveOptions& opt, const std::vector<std::string>& ring_ids, int rank);

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
  std::string bind_host_ = "127.0.0.1";  // this device's address for Gloo's pairs
  int dim_ = 0;                          // backbone width
  std::unique_ptr<CollectiveGroup> group_;
  std::chrono::milliseconds timeout_{30000};
  std::map<int, MicroState> micro_;
  double loss_part_ = 0;
  // The mini-batch being run: sample ids and token hashes of its rows (cache records).
  std::vector<int64_t> ids_;
  std::vector<uint64_t> hashes_;

  // Activation cache (docs/runtime.md, "Activation cache and switch"). Phase 1 writes
  // this device's taps of its rows (p1/); the switch moves them to their owners, which
  // write whole records (dp/); phase 2 reads those.
  bool cache_on_ = false;
  CacheDtype cache_dtype_ = CacheDtype::F32;
  std::string cache_root_;
  bool cache_root_owned_ = false;  // a temporary folder of ours: removed with the executor
  std::string model_desc_;         // what the backbone is (cache key)
  int tap_begin_ = 0, tap_end_ = 0;
  int cache_T_ = 0;                  // sequence length of the records  // this stage's taps [begin, end) of 0..L
  std::unique_ptr<ActCache> cache_p1_, cache_dp_;
  std::map<int64_t, uint64_t> cached_;  // sample id -> tokens hash of the records in p1/
  std::vector<int64_t> new_cached_;     // written during this step (reported to the coordinator)

  // Phase 2 (after the switch): the whole side network, data parallel from dp/.
  bool dp_ = false;
  int dp_rank_ = -1, dp_size_ = 0;
  std::vector<std::string> dp_ids_;  // the data-parallel ring in rank order
  std::map<int64_t, int> owner_;  // sample id -> DP rank that holds its record
  std::string dp_store_host_;
  int dp_store_port_ = 0;
  std::unique_ptr<CollectiveGroup> dp_group_;
  int dp_joined_rank_ = -1, dp_joined_size_ = 0;  // dp_group_'s rank and size (dp_group_join)
  // Phase 2 reads: this device's rows of one mini-batch from dp/, as one
  // [rows, L+1, T, dim] batch, with when it was read (wall clock, for the trace).
  struct RowsRead {
    std::vector<int64_t> ids;
    std::vector<uint64_t> hashes;
    torch::Tensor taps;
    double seconds = 0, w0_us = 0, w1_us = 0;
    std::exception_ptr error;  // a prefetch's failure, raised by the step that needs its rows
  };
  RowsRead dp_read_rows(const std::vector<int64_t>& ids, const std::vector<uint64_t>& hashes);
  // Prefetch (docs/runtime.md, "Prefetch"): the step names the next mini-batch's samples
  // ("next"), and this device reads its rows of it on a thread of its own while this
  // step all-reduces and steps, as the plan's cached segment assumes (the next
  // iteration's read overlaps this one). The next step takes the rows when they are the
  // ones it needs and reads them itself otherwise. Only that thread touches cache_dp_
  // while it runs; every other use of the cache joins it first (prefetch_join).
  std::vector<int64_t> next_ids_;
  std::vector<uint64_t> next_hashes_;
  std::thread prefetch_thread_;
  RowsRead prefetch_;
  void prefetch_join() {
    if (prefetch_thread_.joinable()) prefetch_thread_.join();
  }
  // Switch inbox (guarded by mu_): record pieces (sample, first tap) and side tensors
  // (parameter index -> AdamW step, [3, numel] = value, exp_avg, exp_avg_sq).
  std::map<std::pair<int64_t, int>, torch::Tensor> sw_taps_;
  std::map<int, std::pair<int64_t, torch::Tensor>> sw_params_;

 public:
  ~PacExecutor() override {
    prefetch_join();
    std::error_code ec;
    if (cache_root_owned_ && !cache_root_.empty()) std::filesystem::remove_all(cache_root_, ec);
  }

 private:
  // Trace events of the current step when the coordinator asked for them (Start
  // "trace": true): {"cat", "name", "ts", "dur", "peer"}, wall-clock microseconds.
  bool trace_ = false;
  json events_ = json::array();
  void trace_add(const char* cat, const std::string& name, double t0_us, double t1_us, const std::string& peer = "");
  // Per step, for the run report: seconds waiting for slices, sending, all-reducing,
  // and bytes sent to each device.
  double wait_s_ = 0, allreduce_s_ = 0;
  LinkStats links_;  // seconds sending and bytes to each device (sends and ring volume)
};

json PacExecutor::on_assign(const JsonIn& f, WorkerContext& ctx) {
  f.check_keys({"executor", "assignment", "model", "seed", "side_init", "side_seed", "reduction_k", "lr",
                "weight_decay", "threads", "timeout_ms", "group_store", "cache", "cache_dtype", "cache_dir", "bind_host"});
  memory_peaks_reset();  // this run's peaks, from the idle worker up
  Assignment a = assignment_from_json(f.at("assignment"));
  if (a.device_id != ctx.device_id())
    f.at("assignment").fail_at("device_id", "expected this worker's id " + ctx.device_id());
  uint64_t seed = static_cast<uint64_t>(f.integer("seed", 0));
  JsonIn mj = f.at("model");
  // This stage's layers, the embedding on the first stage, and the frozen head everywhere
  // (phase 2 computes the loss on every device).
  LlamaParts parts = LlamaParts::layers(a.layer_begin(), a.layer_end(), a.has_embedding(), true);
  Llama model = stage_model_make(mj, seed, parts);
  const LlamaConfig& cfg = model->config();
  if (cfg.n_layers != a.n_layers)
    f.at("assignment").fail_at("n_layers", "the plan has " + std::to_string(a.n_layers) + " layers, the model " +
                                               std::to_string(cfg.n_layers));
  model->freeze_backbone(true);
  int k = static_cast<int>(f.integer("reduction_k", 1, 1 << 10));
  SideNetwork side(side_config_make(cfg, k));
  std::string init = f.choice_or("side_init", "random", {"random", "pruned"});
  if (init == "random") side->init_random(static_cast<uint64_t>(f.integer_or("side_seed", static_cast<int64_t>(seed), 0)));
  else side->init_pruned_parts([&](const LlamaParts& p) {
    // Pruning scores every layer: the other stages' layers are read (or drawn from the
    // seed) one at a time and dropped again.
    bool held = p.layer_begin >= a.layer_begin() && p.layer_end <= a.layer_end() && (!p.embedding || parts.embedding);
    return held ? model : stage_model_make(mj, seed, p);
  });
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
  bool cache_on = f.boolean_or("cache", false);
  CacheDtype cache_dtype = CacheDtype::F32;
  if (auto cd = f.find("cache_dtype")) {
    std::string name = cd->as_string();
    if (name != "fp32" && name != "fp16" && name != "bf16") f.fail_at("cache_dtype", "expected fp32, fp16 or bf16");
    cache_dtype = cache_dtype_parse(name);
  }
  // One folder per device below "cache_dir" (local workers may share a disk).
  std::string cache_root = f.string_or("cache_dir", "");
  if (!cache_root.empty()) cache_root += "/" + ctx.device_id();
  std::string bind_host = f.string_or("bind_host", "127.0.0.1");
  bool cache_owned = false;
  if (cache_on && cache_root.empty()) {
    // No folder given: a private one under the temp dir, removed with the executor.
    cache_root = (std::filesystem::temp_directory_path() /
                  ("pac-cache-" + ctx.device_id() + "-" + std::to_string(::getpid())))
                     .string();
    cache_owned = true;
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
  bind_host_ = bind_host;
  dim_ = cfg.dim;
  group_.reset();
  timeout_ = std::chrono::milliseconds(f.integer_or("timeout_ms", 30000, 1, 86400000));
  inbox_.clear();
  sw_taps_.clear();
  sw_params_.clear();
  cache_on_ = cache_on;
  cache_dtype_ = cache_dtype;
  if (cache_root_owned_ && cache_root_ != cache_root) {
    std::error_code ec;
    std::filesystem::remove_all(cache_root_, ec);
  }
  cache_root_ = cache_root;
  cache_root_owned_ = cache_owned;
  model_desc_ = (mj.is_string() ? mj.as_string() : mj.raw().dump()) + " seed " + std::to_string(seed);
  tap_begin_ = a.layer_begin() == 0 ? 0 : a.layer_begin() + 1;
  tap_end_ = a.layer_end() + 1;
  prefetch_join();
  prefetch_ = RowsRead();
  cache_p1_.reset();
  cache_dp_.reset();
  cached_.clear();
  dp_ = false;
  dp_group_.reset();
  dp_joined_rank_ = -1;
  dp_joined_size_ = 0;
  owner_.clear();
  assigned_ = true;
  int64_t n_params = 0;
  for (auto& p : plist) n_params += p.numel();
  return {{"device", ctx.device_id()}, {"executor", name()}, {"stage", a.stage}, {"group_rank", a.group_rank},
          {"layers", {a.layer_begin(), a.layer_end()}}, {"trainable_params", n_params}};
}

void PacExecutor::on_tensor(const PeerName& from, MsgType type, const TensorView& t, uint32_t flags, WorkerContext&) {
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
  if (flags & kFlagRedistribute) {
    if (type == MsgType::Activation) sw_taps_[{static_cast<int64_t>(t.header.tag), static_cast<int>(t.header.stage)}] = x;
    else if (type == MsgType::SideState) sw_params_[static_cast<int>(t.header.tag)] = {t.header.micro_batch, x};
    else throw InputError("pac-pipeline executor: a redistributed " + std::string(msg_type_name(type)) + " from " +
                          from.str());
  } else {
    inbox_[InboxKey(static_cast<int>(type), t.header.tag, t.header.micro_batch, from.id)] = x;
  }
  cv_.notify_all();
}

// The slices the peers send, concatenated in row order (peers come in stage order,
// which is row order: a stage's devices split a micro-batch in device order).
torch::Tensor PacExecutor::gather(MsgType type, uint32_t step, int m, const std::vector<PeerRows>& peers) {
  std::vector<torch::Tensor> parts;
  auto t0 = std::chrono::steady_clock::now();
  double w0 = wall_clock_us();
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
  lk.unlock();
  trace_add("wait", std::string("wait ") + msg_type_name(type) + " mb" + std::to_string(m), w0, wall_clock_us());
  return parts.size() == 1 ? parts[0] : torch::cat(parts, 0);
}

void PacExecutor::send_rows(WorkerContext& ctx, const PeerRows& to, MsgType type, uint32_t step, int m,
                            const RowRange& mine, const torch::Tensor& t) {
  double w0 = wall_clock_us();
  stage_send_rows(ctx, to, type, step, m, a_.stage, mine, t, &links_);
  trace_add("send", std::string(msg_type_name(type)) + " mb" + std::to_string(m), w0, wall_clock_us(), to.id);
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
  // Taps of this stage for the cache, only the first time a sample comes by (epoch 1).
  bool record = cache_on_ && !dp_;
  if (record) {
    record = false;
    for (int r = st.rows.begin; r < st.rows.end; r++) record = record || !cached_.count(ids_[r]);
  }
  std::vector<torch::Tensor> taps;
  torch::Tensor b, a;
  double c0 = wall_clock_us();
  if (a_.has_embedding()) {
    {
      torch::NoGradGuard ng;
      b = model_->embed(inputs.narrow(0, st.rows.begin, st.rows.size()));
    }
    if (record) taps.push_back(b);
    a = side_->down0(side_input(b));
  } else {
    std::vector<PeerRows> up = assignment_up_peers(a_, n, m);
    b = gather(MsgType::Activation, step, m, up);
    st.a_in = gather(MsgType::SideState, step, m, up).requires_grad_(true);
    a = st.a_in;
    c0 = wall_clock_us();
  }
  torch::Tensor cos = cos_.narrow(0, 0, T), sin = sin_.narrow(0, 0, T);
  for (int l = a_.layer_begin(); l < a_.layer_end(); l++) {
    {
      torch::NoGradGuard ng;  // the backbone is frozen: no autograd state for it
      b = model_->layer_forward(l, b);
    }
    if (record) taps.push_back(b);
    SideBlock& blk = side_->blocks[l];  // side block l+1 consumes b_{l+1}
    a = blk->forward(a + blk->down(side_input(b)), cos, sin);
  }
  if (a_.has_head()) {
    torch::Tensor out = side_->final_hidden(side_input(b)) + side_->gate * side_->up(side_->norm(a));
    torch::Tensor logits = torch::matmul(out, classifier_.t());
    // This slice's part of the mini-batch's masked mean (see pac_executor.h).
    st.loss = masked_lm_loss_part(logits, targets.narrow(0, st.rows.begin, st.rows.size()),
                                  mask.narrow(0, st.rows.begin, st.rows.size()), n_tokens);
  } else {
    st.a_out = a;
  }
  trace_add("compute", "F mb" + std::to_string(m), c0, wall_clock_us());
  if (!a_.has_head()) {
    torch::Tensor a_send = a.detach();
    for (const PeerRows& p : assignment_down_peers(a_, n, m)) {
      send_rows(ctx, p, MsgType::Activation, step, m, st.rows, b);
      send_rows(ctx, p, MsgType::SideState, step, m, st.rows, a_send);
    }
  }
  // The cache write comes after the sends, off the pipeline's critical path.
  double s0 = wall_clock_us();
  if (record) {
    // One record per new sample: this stage's taps [tap_begin_, tap_end_) of that row.
    torch::Tensor all = torch::stack(taps, 1);  // [rows, n_taps, T, d]
    for (int r = st.rows.begin; r < st.rows.end; r++) {
      if (cached_.count(ids_[r])) continue;
      cache_p1_->cache_write_sample("p1", ids_[r], hashes_[r], all[r - st.rows.begin]);
      cached_[ids_[r]] = hashes_[r];
      new_cached_.push_back(ids_[r]);
    }
    trace_add("storage", "cache write mb" + std::to_string(m), s0, wall_clock_us());
  }
  micro_[m] = st;
}

void PacExecutor::backward(int m, uint32_t step, int n, WorkerContext& ctx) {
  MicroState& st = micro_[m];
  if (st.rows.size() == 0) return;
  double c0 = wall_clock_us();
  if (a_.has_head()) {
    st.loss.backward();
    loss_part_ += st.loss.item<double>();
  } else {
    torch::Tensor g = gather(MsgType::Gradient, step, m, assignment_down_peers(a_, n, m));
    c0 = wall_clock_us();
    st.a_out.backward(g);
  }
  trace_add("compute", "B mb" + std::to_string(m), c0, wall_clock_us());
  if (st.a_in.defined()) {
    torch::Tensor g = st.a_in.grad();
    if (!g.defined()) g = torch::zeros_like(st.a_in);
    for (const PeerRows& p : assignment_up_peers(a_, n, m)) send_rows(ctx, p, MsgType::Gradient, step, m, st.rows, g);
  }
  micro_.erase(m);
}

// Sums the trainable tensors' gradients over `g` in place (one flat all-reduce) and
// counts the ring's bytes to this rank's successor in `ring_ids` (rank order).
void PacExecutor::grads_allreduce(CollectiveGroup& g, const CollectiveOptions& opt,
                                  const std::vector<std::string>& ring_ids, int rank) {
  std::vector<torch::Tensor> ps;
  for (auto& kv : params_) ps.push_back(kv.second);
  links_.add_allreduce(ring_ids, rank, grads_allreduce_sum(g, ps, opt));
}

// The stage group's Gloo context. Not at assignment: the coordinator assigns devices one
// after another, and a join blocks until the whole group is there. pac-run sends "join"
// to every device once all are assigned (so the ~1 s of store connects and pair setup is
// not timed as training); a coordinator that does not joins on the first all-reduce.
void PacExecutor::group_join() {
  if (group_ || a_.group_size() <= 1) return;
  CollectiveOptions opt;
  opt.timeout = timeout_;
  opt.tag = "stage " + std::to_string(a_.stage) + " group join";
  CollectiveStore store = CollectiveStore::tcp(store_host_, static_cast<uint16_t>(store_port_), a_.group_rank == 0,
                                               a_.group_size(), timeout_);
  group_ = std::make_unique<CollectiveGroup>(store, "stage" + std::to_string(a_.stage), a_.group_rank,
                                             a_.group_size(), opt, bind_host_);
}

// The data-parallel group of the cached phase: joined before training when pac-run's
// "join" names it, else at the switch (both block until the whole group is there).
void PacExecutor::dp_group_join(const std::string& host, int port, int rank, int size, const std::string& tag) {
  CollectiveOptions opt;
  opt.timeout = timeout_;
  opt.tag = tag;
  CollectiveStore store = CollectiveStore::tcp(host, static_cast<uint16_t>(port), rank == 0, size, timeout_);
  dp_group_ = std::make_unique<CollectiveGroup>(store, "dp", rank, size, opt, bind_host_);
  dp_joined_rank_ = rank;
  dp_joined_size_ = size;
}

void PacExecutor::group_allreduce(uint32_t step) {
  if (a_.group_size() <= 1) return;
  auto t0 = std::chrono::steady_clock::now();
  CollectiveOptions opt;
  opt.timeout = timeout_;
  opt.tag = "side grads step " + std::to_string(step) + " stage " + std::to_string(a_.stage);
  if (!group_) group_join();
  double w0 = wall_clock_us();
  grads_allreduce(*group_, opt, a_.my_stage().device_ids, a_.group_rank);
  allreduce_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  trace_add("collective", "allreduce stage " + std::to_string(a_.stage), w0, wall_clock_us());
}

json PacExecutor::train_step(const JsonIn& s, WorkerContext& ctx) {
  s.check_keys({"op", "step", "lr", "tokens", "mask", "samples", "next", "trace"});
  trace_ = s.boolean_or("trace", false);
  events_ = json::array();
  uint32_t step = static_cast<uint32_t>(s.integer("step", 0, UINT32_MAX));
  double lr = s.number("lr", 0, 10);
  // Every device gets the whole mini-batch's tokens and mask (tiny next to activations):
  // the first stage embeds its rows, the last computes the loss of its rows, and every
  // device derives N (the loss normaliser) and its rows from the same numbers.
  StepBatch mb = step_batch_parse(s, side_->config().vocab_size);
  const int n = mb.n;
  const int64_t T = mb.inputs.size(1);
  const torch::Tensor &inputs = mb.inputs, &targets = mb.targets, &mask = mb.mask;
  ids_.assign(n, -1);
  hashes_.assign(n, 0);
  if (auto sm = s.find("samples")) {
    std::vector<JsonIn> sid = sm->items();
    if (static_cast<int>(sid.size()) != n) s.fail_at("samples", "expected one sample id per token row");
    for (int i = 0; i < n; i++) ids_[i] = sid[i].as_int(0, INT32_MAX);
  }
  if (cache_on_) {
    if (!s.find("samples")) s.fail_at("samples", "expected the rows' sample ids (the activation cache is on)");
    // The record of a sample is tied to its T + 1 token ids (inputs, then the last target).
    auto pi = inputs.accessor<int64_t, 2>();
    auto pt = targets.accessor<int64_t, 2>();
    std::vector<int32_t> toks(T + 1);
    for (int i = 0; i < n; i++) {
      for (int64_t t = 0; t < T; t++) toks[t] = static_cast<int32_t>(pi[i][t]);
      toks[T] = static_cast<int32_t>(pt[i][T - 1]);
      hashes_[i] = tokens_hash(toks);
    }
  }
  const double n_tokens = mb.n_tokens;
  if (cache_on_) cache_open(static_cast<int>(T));
  if (!dp_ && !model_) s.fail("device " + ctx.device_id() + " is not in the data-parallel phase after the switch");
  for (auto& g : optim_->param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
  // The next mini-batch's samples (phase 2 only): this device's rows of it are
  // prefetched during this step.
  next_ids_.clear();
  next_hashes_.clear();
  if (auto nx = s.find("next")) {
    nx->check_keys({"samples", "hashes"});
    std::vector<JsonIn> sj = nx->at("samples").items(), hj = nx->at("hashes").items();
    if (hj.size() != sj.size()) nx->fail_at("hashes", "expected one hash per sample");
    for (size_t i = 0; i < sj.size(); i++) {
      int64_t id = sj[i].as_int(0, INT32_MAX);
      uint64_t h = 0;
      if (!hash_parse(hj[i].as_string(), &h)) hj[i].fail("expected 16 hex digits");
      auto it = owner_.find(id);
      if (dp_ && it != owner_.end() && it->second == dp_rank_) {
        next_ids_.push_back(id);
        next_hashes_.push_back(h);
      }
    }
  }
  if (dp_) return dp_train_step(step, targets, mask, n_tokens);
  optim_->zero_grad();
  loss_part_ = 0;
  wait_s_ = allreduce_s_ = 0;
  links_.clear();
  micro_.clear();
  new_cached_.clear();
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
  double o0 = wall_clock_us();
  optim_->step();
  trace_add("compute", "opt", o0, wall_clock_us());
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Compute = the step minus its waits, sends and all-reduce (the rest is this
  // device's own forward/backward/optimizer work).
  double compute = std::max(0.0, secs - wait_s_ - links_.send_s - allreduce_s_);
  json bytes = json::object();
  for (auto& kv : links_.bytes_to) bytes[kv.first] = kv.second;
  return {{"device", ctx.device_id()}, {"stage", a_.stage},       {"step", step},
          {"loss_part", loss_part_},   {"loss_tokens", n_tokens}, {"seconds", secs},
          {"compute_s", compute},      {"wait_s", wait_s_},       {"send_s", links_.send_s},
          {"allreduce_s", allreduce_s_}, {"bytes_to", bytes},     {"rss_peak_bytes", rss_peak_bytes()}, {"tensor_peak_bytes", torch_memory_peak_bytes()},
          {"cached", new_cached_}, {"events", events_}};
}

void PacExecutor::trace_add(const char* cat, const std::string& name, double t0_us, double t1_us,
                            const std::string& peer) {
  if (!trace_) return;
  json e = {{"cat", cat}, {"name", name}, {"ts", t0_us}, {"dur", std::max(0.0, t1_us - t0_us)}};
  if (!peer.empty()) e["peer"] = peer;
  events_.push_back(std::move(e));
}

torch::Tensor PacExecutor::side_input(const torch::Tensor& b) const {
  // With a cache the side network trains on the taps as the cache stores them, in epoch
  // 1 as well (Trainer does the same), so every epoch sees the same values.
  return cache_on_ ? cache_round_trip(b, cache_dtype_) : b;
}

void PacExecutor::cache_open(int T) {
  if (dp_ || cache_p1_) return;
  cache_T_ = T;
  // The folder is private to this run of this device; the key still ties the records
  // to the backbone, the layer range and the shapes, so a reused --cache-dir never
  // hands out another run's taps.
  CacheKey k;
  k.weights_sha256 = model_desc_ + " taps " + std::to_string(tap_begin_) + "-" + std::to_string(tap_end_);
  k.tokenizer_sha256 = "coordinator token ids";
  k.seq_len = T;
  k.dtype = cache_dtype_;
  k.dim = dim_;
  k.n_taps = tap_end_ - tap_begin_;
  cache_p1_ = std::make_unique<ActCache>(cache_root_ + "/p1", k);
}

void PacExecutor::send_tensor_to(WorkerContext& ctx, const std::string& id, const std::string& address, MsgType type,
                                 const TensorHeader& h0, const torch::Tensor& t, uint32_t flags) {
  torch::Tensor c = t.contiguous().to(torch::kFloat);
  TensorHeader h = h0;
  h.dtype = TensorDtype::F32;
  h.dims = c.sizes().vec();
  size_t bytes = static_cast<size_t>(c.numel()) * sizeof(float);
  auto t0 = std::chrono::steady_clock::now();
  double w0 = wall_clock_us();
  ctx.peer(id, address).send_tensor(type, h, c.data_ptr<float>(), bytes, flags);
  links_.send_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  links_.bytes_to[id] += static_cast<double>(bytes);
  trace_add("send", std::string("switch ") + msg_type_name(type), w0, wall_clock_us(), id);
}

// This stage's cached taps of one sample from the p1 cache ([taps, T, dim]).
torch::Tensor PacExecutor::p1_read(int64_t id, uint64_t hash, const std::string& device) const {
  CacheRead rd = cache_p1_->cache_read_sample("p1", id, hash);
  if (rd.status != CacheStatus::Hit)
    throw RuntimeError("device " + device + ": cached taps of sample " + std::to_string(id) + " are " +
                       (rd.status == CacheStatus::Corrupt ? "corrupt (" + rd.problem + ")" : std::string("missing")) +
                       "; recomputing them needs the backbone the switch has dropped");
  return rd.taps;
}

// The switch (docs/runtime.md, "Activation cache and switch"): every device ships its
// cached taps to each sample's owner and the first device of every stage ships its side
// tensors with their AdamW moments to every data-parallel device outside the stage's
// group (the group's members hold them already); the data-parallel
// devices assemble whole records into their own cache and the whole side network with
// its optimizer state; everyone drops the backbone.
json PacExecutor::switch_phase(const JsonIn& s, WorkerContext& ctx) {
  s.check_keys({"op", "samples", "hashes", "owners", "dp_devices", "dp_rank", "dp_store", "trace"});
  trace_ = s.boolean_or("trace", false);
  events_ = json::array();
  auto t0 = std::chrono::steady_clock::now();
  wait_s_ = allreduce_s_ = 0;
  links_.clear();
  std::vector<JsonIn> sj = s.at("samples").items(), hj = s.at("hashes").items(), oj = s.at("owners").items();
  if (hj.size() != sj.size() || oj.size() != sj.size()) s.fail_at("owners", "expected one hash and one owner per sample");
  std::vector<std::pair<std::string, std::string>> dps;  // id, address
  for (const JsonIn& d : s.at("dp_devices").items()) {
    d.check_keys({"id", "address"});
    dps.emplace_back(d.string("id"), d.string("address"));
  }
  if (dps.empty()) s.fail_at("dp_devices", "expected at least one data-parallel device");
  int rank = static_cast<int>(s.integer("dp_rank", -1, static_cast<int64_t>(dps.size()) - 1));
  std::map<int64_t, uint64_t> hash_of;
  owner_.clear();
  for (size_t i = 0; i < sj.size(); i++) {
    int64_t id = sj[i].as_int(0, INT32_MAX);
    uint64_t h = 0;
    if (!hash_parse(hj[i].as_string(), &h)) hj[i].fail("expected 16 hex digits");
    hash_of[id] = h;
    owner_[id] = static_cast<int>(oj[i].as_int(0, static_cast<int64_t>(dps.size()) - 1));
  }
  if (rank >= 0 && dps[rank].first != ctx.device_id())
    s.at("dp_devices").fail("entry " + std::to_string(rank) + " is " + dps[rank].first + ", expected this device " +
                            ctx.device_id());
  const int L = a_.n_layers;
  const auto named = side_->named_parameters();
  int n_records_sent = 0, n_params_sent = 0;
  // 0. The backbone is not needed any more (its taps are in the p1 cache, its head lives
  //    on in the side network): drop it first, so its memory holds the records that
  //    arrive instead of adding to them (the switch was every worker's memory peak).
  double tr = wall_clock_us();  // the switch's parts, as trace events (pac-run --trace)
  auto part_done = [&](const char* what) {
    double now = wall_clock_us();
    trace_add("compute", std::string("switch: ") + what, tr, now);
    tr = now;
  };
  model_ = nullptr;
  micro_.clear();
  malloc_trim(0);
  part_done("drop backbone");

  // 1. My cached taps to their owners. My own samples' pieces stay in the p1 cache
  //    until their record is complete (read then, step 3): read now, a device would
  //    hold its whole share of the cache while it waits for the other stages.
  std::set<int64_t> own_pieces;
  for (auto& kv : cached_) {
    auto it = owner_.find(kv.first);
    if (it == owner_.end())
      throw RuntimeError("device " + ctx.device_id() + " holds cached taps of sample " + std::to_string(kv.first) +
                         ", which the switch does not list");
    if (it->second == rank) {
      own_pieces.insert(kv.first);
      continue;
    }
    torch::Tensor taps = p1_read(kv.first, kv.second, ctx.device_id());
    TensorHeader h;
    h.tag = static_cast<uint32_t>(kv.first);
    h.stage = static_cast<uint32_t>(tap_begin_);
    send_tensor_to(ctx, dps[it->second].first, dps[it->second].second, MsgType::Activation, h, taps,
                   kFlagRedistribute);
    n_records_sent++;
  }
  if (n_records_sent > 0) part_done("send taps");
  // 2. The stage's side tensors and AdamW moments, from its first device to every DP
  //    device outside the stage's group. The group's members hold the same tensors and
  //    moments already (one all-reduced gradient, one AdamW step, on every member each
  //    step): a data-parallel member keeps its own, so a phase 1 that was already data
  //    parallel ([4] -> [4]) moves no side state at all.
  const std::vector<std::string>& group_ids = a_.my_stage().device_ids;
  auto in_my_group = [&](const std::string& id) {
    return std::find(group_ids.begin(), group_ids.end(), id) != group_ids.end();
  };
  if (a_.group_rank == 0 || rank >= 0) {
    std::map<std::string, int> index;
    for (size_t i = 0; i < named.size(); i++) index[named[i].key()] = static_cast<int>(i);
    auto& states = optim_->state();
    for (auto& kv : params_) {
      torch::Tensor p = kv.second.detach();
      torch::Tensor m1 = torch::zeros_like(p), m2 = torch::zeros_like(p);
      int64_t step = 0;
      auto st = states.find(c10::guts::to_string(kv.second.unsafeGetTensorImpl()));
      if (st != states.end()) {
        auto& as = static_cast<torch::optim::AdamWParamState&>(*st->second);
        step = as.step();
        m1 = as.exp_avg();
        m2 = as.exp_avg_sq();
      }
      torch::Tensor pack = torch::stack({p.reshape({-1}), m1.reshape({-1}), m2.reshape({-1})});
      if (rank >= 0) {
        std::lock_guard<std::mutex> lk(mu_);
        sw_params_[index[kv.first]] = {step, pack};
      }
      if (a_.group_rank != 0) continue;
      for (int g = 0; g < static_cast<int>(dps.size()); g++) {
        if (g == rank || in_my_group(dps[g].first)) continue;
        TensorHeader h;
        h.tag = static_cast<uint32_t>(index[kv.first]);
        h.micro_batch = static_cast<uint32_t>(step);
        send_tensor_to(ctx, dps[g].first, dps[g].second, MsgType::SideState, h, pack, kFlagRedistribute);
        n_params_sent++;
      }
    }
    part_done("side state out");
  }
  int n_records = 0;
  if (rank >= 0) {
    // 3. Whole records of my samples into my phase-2 cache, as their pieces arrive.
    std::set<int64_t> todo;
    for (auto& kv : owner_)
      if (kv.second == rank) todo.insert(kv.first);
    CacheKey k;
    k.weights_sha256 = model_desc_ + " taps 0-" + std::to_string(L + 1);
    k.tokenizer_sha256 = "coordinator token ids";
    k.seq_len = cache_T_;
    k.dtype = cache_dtype_;
    k.dim = dim_;
    k.n_taps = L + 1;
    cache_dp_ = std::make_unique<ActCache>(cache_root_ + "/dp", k);
    auto w0 = std::chrono::steady_clock::now();
    auto deadline = w0 + timeout_;
    while (!todo.empty() || static_cast<int>(sw_params_.size()) < static_cast<int>(named.size())) {
      std::vector<std::pair<int64_t, std::vector<torch::Tensor>>> ready;
      {
        std::unique_lock<std::mutex> lk(mu_);
        for (auto it = todo.begin(); it != todo.end();) {
          // Pieces are keyed (sample, first tap): in tap order; complete when they tile 0..L.
          // An undefined part is my own piece, still in the p1 cache.
          std::vector<torch::Tensor> parts;
          int next = 0;
          for (;;) {
            if (next == tap_begin_ && own_pieces.count(*it)) {
              parts.emplace_back();
              next = tap_end_;
              continue;
            }
            auto p = sw_taps_.find({*it, next});
            if (p == sw_taps_.end()) break;
            next += static_cast<int>(p->second.size(0));
            parts.push_back(p->second);
          }
          if (next == L + 1) {
            sw_taps_.erase(sw_taps_.lower_bound({*it, 0}), sw_taps_.lower_bound({*it + 1, 0}));
            ready.emplace_back(*it, parts);
            it = todo.erase(it);
          } else {
            ++it;
          }
        }
        if (ready.empty() && (!todo.empty() || static_cast<int>(sw_params_.size()) < static_cast<int>(named.size()))) {
          if (cv_.wait_until(lk, deadline) == std::cv_status::timeout) {
            std::string what;
            if (!todo.empty()) {
              int64_t id = *todo.begin();
              int have = own_pieces.count(id) ? tap_end_ - tap_begin_ : 0;
              for (auto p = sw_taps_.lower_bound({id, 0}); p != sw_taps_.end() && p->first.first == id; ++p)
                have += static_cast<int>(p->second.size(0));
              what = std::to_string(todo.size()) + " samples' cached taps (sample " + std::to_string(id) + ": " +
                     std::to_string(have) + " of " + std::to_string(L + 1) + " taps)";
            } else {
              what = std::to_string(named.size() - sw_params_.size()) + " side-network tensors";
            }
            std::string from;
            for (const StageInfo& st : a_.stages) from += (from.empty() ? "" : ", ") + st.device_ids[0];
            throw PeerError("device " + ctx.device_id() + " timed out after " + std::to_string(timeout_.count()) +
                                " ms at the switch waiting for " + what + " (senders: " + from + ")",
                            a_.stages[0].device_ids[0], true);
          }
        }
      }
      for (auto& r : ready) {
        // My own record of all taps (a stage that is the whole model): the p1 record is
        // already the phase-2 record (same key, same bytes), so it moves, not copies;
        // the plan prices samples a device keeps as free.
        if (r.second.size() == 1 && !r.second[0].defined() &&
            cache_p1_->key().hash() == cache_dp_->key().hash()) {
          std::filesystem::rename(cache_p1_->sample_path("p1", r.first), cache_dp_->sample_path("dp", r.first));
          n_records++;
          continue;
        }
        for (torch::Tensor& part : r.second)
          if (!part.defined()) part = p1_read(r.first, cached_.at(r.first), ctx.device_id());
        torch::Tensor taps = torch::cat(r.second, 0);
        cache_dp_->cache_write_sample("dp", r.first, hash_of[r.first], taps);
        n_records++;
      }
    }
    wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
    part_done("records and side state in");
    // 4. The whole side network with its optimizer state.
    std::vector<torch::Tensor> all;
    params_.clear();
    auto opts = static_cast<torch::optim::AdamWOptions&>(optim_->param_groups()[0].options());
    {
      torch::NoGradGuard ng;
      for (size_t i = 0; i < named.size(); i++) {
        torch::Tensor p = named[i].value();
        p.copy_(sw_params_[static_cast<int>(i)].second[0].view_as(p));
        p.set_requires_grad(true);
        params_.emplace_back(named[i].key(), p);
        all.push_back(p);
      }
    }
    auto optim = std::make_unique<torch::optim::AdamW>(all, opts);
    for (size_t i = 0; i < named.size(); i++) {
      auto& in = sw_params_[static_cast<int>(i)];
      if (in.first == 0) continue;  // never stepped: AdamW creates the state itself
      auto st = std::make_unique<torch::optim::AdamWParamState>();
      st->step(in.first);
      st->exp_avg(in.second[1].view_as(all[i]).clone());
      st->exp_avg_sq(in.second[2].view_as(all[i]).clone());
      optim->state()[c10::guts::to_string(all[i].unsafeGetTensorImpl())] = std::move(st);
    }
    optim_ = std::move(optim);
    sw_params_.clear();
    part_done("load side network");
    if (auto g = s.find("dp_store")) {
      g->check_keys({"host", "port"});
      dp_store_host_ = g->string("host");
      dp_store_port_ = static_cast<int>(g->integer("port", 1, 65535));
    } else if (dps.size() > 1) {
      s.fail_at("dp_store", "expected {\"host\", \"port\"}: " + std::to_string(dps.size()) + " data-parallel devices");
    }
  }
  // 5. Phase 1's stage group and cache go.
  group_.reset();
  cache_p1_.reset();
  std::error_code ec;
  std::filesystem::remove_all(cache_root_ + "/p1", ec);
  cached_.clear();
  dp_ = rank >= 0;
  dp_rank_ = rank;
  dp_size_ = static_cast<int>(dps.size());
  dp_ids_.clear();
  for (auto& d : dps) dp_ids_.push_back(d.first);
  // A data-parallel group joined before training (pac-run's "join") is kept when it is
  // this one; otherwise the devices join below.
  if (!(dp_ && dp_group_ && dp_joined_rank_ == dp_rank_ && dp_joined_size_ == dp_size_)) dp_group_.reset();
  // Give the backbone's and the switch's freed heap back to the system: glibc keeps
  // freed chunks in its arenas, and phase 2 would otherwise carry phase 1's peak.
  malloc_trim(0);
  // This step's result carries the peaks up to here (phase 1 and the switch); the
  // cached epochs' steps report their own (pac-run keeps both).
  json peaks = {{"rss_peak_bytes", rss_peak_bytes()}, {"tensor_peak_bytes", torch_memory_peak_bytes()}};
  memory_peaks_reset();
  part_done("free phase 1");
  // 6. Join the data-parallel group now, as part of the switch that prepares phase 2
  //    (every data-parallel device is here at the same time), instead of in the first
  //    phase-2 step, where the store connect and Gloo's pair setup (~1 s on the testbed)
  //    would look like a slow training step.
  if (dp_ && dp_size_ > 1 && !dp_group_) {
    dp_group_join(dp_store_host_, dp_store_port_, dp_rank_, dp_size_, "data-parallel group join at the switch");
    part_done("join group");
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  json bytes = json::object();
  for (auto& kv : links_.bytes_to) bytes[kv.first] = kv.second;
  return {{"device", ctx.device_id()}, {"dp_rank", rank},           {"seconds", secs},
          {"wait_s", wait_s_},         {"send_s", links_.send_s},         {"records_sent", n_records_sent},
          {"tensors_sent", n_params_sent}, {"records_written", n_records}, {"bytes_to", bytes},
          {"rss_peak_bytes", peaks["rss_peak_bytes"]}, {"tensor_peak_bytes", peaks["tensor_peak_bytes"]}, {"events", events_}};
}

// This device's rows `ids` (token hashes `hashes`) from its phase-2 cache, copied into
// one [rows, L+1, T, dim] batch as they are read, so the read holds the batch plus one
// record, not the batch twice (a list, then its stack).
PacExecutor::RowsRead PacExecutor::dp_read_rows(const std::vector<int64_t>& ids, const std::vector<uint64_t>& hashes) {
  RowsRead r;
  r.ids = ids;
  r.hashes = hashes;
  auto t0 = std::chrono::steady_clock::now();
  r.w0_us = wall_clock_us();
  for (size_t j = 0; j < ids.size(); j++) {
    CacheRead rd = cache_dp_->cache_read_sample("dp", ids[j], hashes[j]);
    if (rd.status != CacheStatus::Hit)
      throw RuntimeError("device " + a_.device_id + ": cached taps of sample " + std::to_string(ids[j]) + " are " +
                         (rd.status == CacheStatus::Corrupt ? "corrupt (" + rd.problem + ")" : std::string("missing")) +
                         " and the backbone is not loaded in phase 2");
    if (!r.taps.defined()) {
      std::vector<int64_t> shape = rd.taps.sizes().vec();
      shape.insert(shape.begin(), static_cast<int64_t>(ids.size()));
      r.taps = torch::empty(shape, rd.taps.options());
    }
    r.taps[static_cast<int64_t>(j)].copy_(rd.taps);
  }
  r.w1_us = wall_clock_us();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

// Phase 2: this device's rows of the mini-batch (the samples it owns) from its cache,
// the whole side network, gradients summed over the data-parallel group.
json PacExecutor::dp_train_step(uint32_t step, const torch::Tensor& targets, const torch::Tensor& mask,
                                double n_tokens) {
  optim_->zero_grad();
  loss_part_ = 0;
  wait_s_ = allreduce_s_ = 0;
  links_.clear();
  auto t0 = std::chrono::steady_clock::now();
  std::vector<int64_t> rows, row_ids;
  std::vector<uint64_t> row_hashes;
  for (int64_t i = 0; i < static_cast<int64_t>(ids_.size()); i++) {
    auto it = owner_.find(ids_[i]);
    if (it == owner_.end())
      throw RuntimeError("device " + a_.device_id + ": sample " + std::to_string(ids_[i]) +
                         " was not in the switch's sample list, so no device has its cached taps");
    if (it->second != dp_rank_) continue;
    rows.push_back(i);
    row_ids.push_back(ids_[i]);
    row_hashes.push_back(hashes_[i]);
  }
  // The rows: from the prefetch when it read these (it may still be reading: the wait
  // is this step's), else read now.
  RowsRead rd;
  bool prefetched = false;
  double read_wait_s = 0;
  if (prefetch_thread_.joinable()) {
    auto j0 = std::chrono::steady_clock::now();
    prefetch_join();
    read_wait_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - j0).count();
    if (prefetch_.ids == row_ids && prefetch_.hashes == row_hashes) {
      if (prefetch_.error) std::rethrow_exception(prefetch_.error);
      rd = std::move(prefetch_);
      prefetched = true;
    }
    prefetch_ = RowsRead();
  }
  if (!prefetched && !rows.empty()) {
    rd = dp_read_rows(row_ids, row_hashes);
    read_wait_s = rd.seconds;
  }
  const double read_s = rd.seconds;
  if (!rows.empty()) {
    trace_add("storage", "cache read " + std::to_string(rows.size()) + " rows" + (prefetched ? " (prefetched)" : ""),
              rd.w0_us, rd.w1_us);
    double c0 = wall_clock_us();
    torch::Tensor idx = torch::tensor(rows, torch::kLong);
    torch::Tensor logits = side_->forward(rd.taps);
    torch::Tensor loss =
        masked_lm_loss_part(logits, targets.index_select(0, idx), mask.index_select(0, idx), n_tokens);
    loss.backward();
    loss_part_ = loss.item<double>();
    trace_add("compute", "F+B " + std::to_string(rows.size()) + " rows", c0, wall_clock_us());
  }
  rd = RowsRead();  // the autograd graph is gone: this buffer is free for the prefetch
  // The next step's rows, read while this step all-reduces and steps. Started after
  // the backward rather than after the forward (which the plan would allow): every
  // testbed device has one core or less, and there pac-sim queues the read behind the
  // backward on the same engine too; the all-reduce leaves that core waiting on the
  // network, which is where the read fits.
  if (!next_ids_.empty()) {
    prefetch_thread_ = std::thread([this, ids = next_ids_, hashes = next_hashes_] {
      try {
        prefetch_ = dp_read_rows(ids, hashes);
      } catch (...) {
        prefetch_ = RowsRead();
        prefetch_.ids = ids;
        prefetch_.hashes = hashes;
        prefetch_.error = std::current_exception();
      }
    });
  }
  if (dp_size_ > 1) {
    auto a0 = std::chrono::steady_clock::now();
    CollectiveOptions opt;
    opt.timeout = timeout_;
    opt.tag = "side grads step " + std::to_string(step) + " data parallel";
    // The switch joined the group (or kept the one joined before training).
    if (!dp_group_) throw RuntimeError("device " + a_.device_id + ": data-parallel step without a group");
    double w0 = wall_clock_us();
    grads_allreduce(*dp_group_, opt, dp_ids_, dp_rank_);
    trace_add("collective", "allreduce dp", w0, wall_clock_us());
    allreduce_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - a0).count();
  }
  double o0 = wall_clock_us();
  optim_->step();
  trace_add("compute", "opt", o0, wall_clock_us());
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // busy = compute + cache_read_s (the read's own time, wherever it ran); the step's
  // wall time holds only the part it waited for (cache_wait_s).
  double compute = std::max(0.0, secs - allreduce_s_ - read_wait_s);
  return {{"device", a_.device_id}, {"stage", 0},          {"step", step},        {"phase", "data_parallel"},
          {"loss_part", loss_part_}, {"loss_tokens", n_tokens}, {"seconds", secs},  {"rows", rows.size()},
          {"compute_s", compute},   {"wait_s", 0.0},       {"send_s", 0.0},       {"cache_read_s", read_s},
          {"cache_wait_s", read_wait_s}, {"prefetched", prefetched},
          {"allreduce_s", allreduce_s_}, {"bytes_to", links_.bytes_to}, {"rss_peak_bytes", rss_peak_bytes()}, {"tensor_peak_bytes", torch_memory_peak_bytes()},
          {"events", events_}};
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
  std::string op = s.choice("op", {"train", "switch", "save", "join"});
  // Only a phase-2 step may find a prefetch running; anything else waits for it first.
  if (op != "train") prefetch_join();
  if (op == "join") {
    s.check_keys({"op", "dp_store", "dp_rank", "dp_size"});
    group_join();
    // The data-parallel group of the phase after the switch, joined now too (the switch
    // keeps it when its rank and size are these).
    if (auto g = s.find("dp_store")) {
      g->check_keys({"host", "port"});
      int size = static_cast<int>(s.integer("dp_size", 2, 1 << 20));
      int rank = static_cast<int>(s.integer("dp_rank", 0, size - 1));
      dp_group_join(g->string("host"), static_cast<int>(g->integer("port", 1, 65535)), rank, size,
                    "data-parallel group join before training");
    }
    return {{"device", ctx.device_id()}, {"joined", a_.group_size() > 1 || dp_group_ != nullptr}};
  }
  if (op == "train") return train_step(s, ctx);
  if (op == "switch") return switch_phase(s, ctx);
  return save(s, ctx);
}

}  // namespace

std::unique_ptr<StageExecutor> pac_executor_create() { return std::make_unique<PacExecutor>(); }

}  // namespace pac
