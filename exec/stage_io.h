// What every LLM pipeline executor does around its own compute (docs/baselines-runtime.md):
// build the model a fragment names, parse a step's mini-batch, collect the row slices
// upstream/downstream devices send, send this device's slices, and sum a list of
// gradients over a Gloo group in one flat call.
//
// Used by the "pipeline-train" executor (train_executor.cpp); the "pac-pipeline"
// executor has its own copies of the same logic and can switch to these.
//
// This header includes torch: include it only from exec/ torch translation units.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include <torch/torch.h>

#include "exec/assignment.h"
#include "exec/collectives.h"
#include "exec/stage_executor.h"
#include "src/common/json_in.h"
#include "src/llm/model.h"

namespace pac {

// The fragment's "model" object ({"dim", "hidden_dim", "n_layers", ...}); InputError
// naming the field.
LlamaConfig llama_config_from_json(const JsonIn& c);
// The fragment's "model": a preset name or checkpoint path (llama_open), or a config
// object (random init from `seed`, as the tests' and pac-train's load_backbone do).
// Only `parts` are built and read: a stage's worker never holds the other stages' layers.
Llama stage_model_make(const JsonIn& model, uint64_t seed, const LlamaParts& parts = LlamaParts::all());

// A Start{"op": "train"} mini-batch: every device gets the whole mini-batch's tokens and
// mask (tiny next to activations), so all derive rows and N the same way.
struct StepBatch {
  torch::Tensor inputs, targets;  // [n, T] int64
  torch::Tensor mask;             // [n, T] float
  int n = 0;
  double n_tokens = 0;            // the loss normaliser N (mask sum of the whole mini-batch)
};
// Reads s["tokens"] (n rows of T+1 ids in [0, vocab)) and s["mask"] (n rows of T).
StepBatch step_batch_parse(const JsonIn& s, int vocab_size);

// Tensor slices received from other workers, keyed by (type, step, micro-batch, sender).
// put() runs on the connection threads, gather() on the executor's step thread.
class TensorInbox {
 public:
  // Copies the frame's f32 payload out (the frame's bytes are reused after return).
  // InputError for another dtype or when the inbox is closed (no assignment yet).
  void put(const PeerName& from, MsgType type, const TensorView& t, const std::string& executor);
  // The slices `peers` send for (type, step, m), concatenated in peer order (= row
  // order). Waits at most `timeout` per peer: PeerError naming the peer and what was
  // awaited. Adds the waiting time to *wait_s.
  torch::Tensor gather(MsgType type, uint32_t step, int m, const std::vector<PeerRows>& peers,
                       const std::string& me, std::chrono::milliseconds timeout, double* wait_s);
  // Opens (after an assignment) and empties the inbox.
  void reset(bool open);

 private:
  using Key = std::tuple<int, uint32_t, uint32_t, std::string>;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<Key, torch::Tensor> slots_;
  bool open_ = false;
};

// Time spent sending and tensor bytes per receiving device, for the step's Result.
struct LinkStats {
  double send_s = 0;
  std::map<std::string, double> bytes_to;
  void clear() {
    send_s = 0;
    bytes_to.clear();
  }
  // An all-reduce of `bytes` per rank over the group whose ranks are `ring_ids` (rank
  // order), seen from rank `rank`: allreduce_ring_bytes_sent to its ring successor.
  void add_allreduce(const std::vector<std::string>& ring_ids, int rank, double bytes);
};

// Sends rows `to.rows` of `t` (which holds rows `mine` of the mini-batch) to `to`.
void stage_send_rows(WorkerContext& ctx, const PeerRows& to, MsgType type, uint32_t step, int m, int stage,
                     const RowRange& mine, const torch::Tensor& t, LinkStats* stats);

// Sums the gradients of `params` over `group` in ONE flat all-reduce (per-call latency,
// not bytes, dominates small gradients) and writes the sums back; an undefined grad
// counts as zeros. Returns the flat tensor's bytes (0 when there was nothing to sum).
double grads_allreduce_sum(CollectiveGroup& group, const std::vector<torch::Tensor>& params,
                         const CollectiveOptions& opt);

}  // namespace pac
