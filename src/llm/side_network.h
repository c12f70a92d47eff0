// Parallel Adapters (PAC, pac-brief.md section 1): a trainable side network that runs
// beside a frozen LLaMA backbone and never sends a gradient into it.
//
//   a_0 = Down_0(b_0)                                  b_0 = embedding output
//   a_i = f_i(b_i, a_{i-1}),  i = 1..L                 b_i = output of backbone layer i
//   f_i: x = a_{i-1} + Down_i(b_i)                     (the ladder connection, as in LST)
//        h = x + Attn(RMSNorm(x));  a_i = h + SwiGLU(RMSNorm(h))
//   out = final_hidden + gate * Up(RMSNorm(a_L))       final_hidden = final_norm(b_L)
//   logits = classifier(out)                           (frozen backbone classifier)
//
// Width r = dim / k (k = 8 by default). The side block is a narrow copy of a backbone
// layer: n_heads/k heads (at least 1; plain multi-head, no GQA), FFN width
// hidden_dim/k, the same interleaved RoPE. `gate` is zero-initialised, so before any
// update the logits are exactly the backbone's own.
//
// Initialisation by structured pruning (LST): keep the r residual dimensions, the
// attention rows (whole heads first, by L2 norm, in RoPE pairs) and the FFN units with
// the largest L2 norms of the backbone's weights, and copy those sub-matrices. With
// k = 1 this keeps everything and the side chain reproduces the backbone exactly
// (a_i == b_i), which the tests use as a check of the pruning code.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "src/llm/model.h"

namespace pac {

struct SideConfig {
  int dim = 0;         // backbone width d
  int n_layers = 0;    // backbone layers L (side blocks 1..L)
  int vocab_size = 0;
  int k = 8;           // reduction factor
  int width = 0;       // r = dim / k
  int n_heads = 0;     // side attention heads
  int head_dim = 0;    // width / n_heads (even, for RoPE)
  int hidden_dim = 0;  // side SwiGLU width
  int max_seq_len = 0;
  float norm_eps = 1e-5f;
  float rope_theta = 10000.f;
};

// Derives the side shape from the backbone; InputError when dim % k != 0 or k < 1.
SideConfig side_config_make(const LlamaConfig& c, int k);

class SideBlockImpl : public torch::nn::Module {
 public:
  explicit SideBlockImpl(const SideConfig& c);
  // x: side state after the ladder input, [B,T,r]
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

  torch::nn::Linear down{nullptr};  // d -> r, the ladder connection from b_i
  RMSNorm attention_norm{nullptr}, ffn_norm{nullptr};
  torch::nn::Linear wq{nullptr}, wk{nullptr}, wv{nullptr}, wo{nullptr};
  torch::nn::Linear w1{nullptr}, w2{nullptr}, w3{nullptr};
  int n_heads, head_dim;
};
TORCH_MODULE(SideBlock);

class SideNetworkImpl : public torch::nn::Module {
 public:
  explicit SideNetworkImpl(const SideConfig& c);
  const SideConfig& config() const { return cfg_; }

  // The frozen pieces of the backbone the side network needs at the top: the final
  // RMSNorm weight [d] and the classifier [V, d]. Cloned: the backbone may then be
  // released from memory. Not parameters (never trained, never saved).
  void set_head(const torch::Tensor& final_norm_weight, const torch::Tensor& classifier);
  bool has_head() const { return head_norm_.defined(); }

  // taps: [B, L+1, T, d] (b_0..b_L), no grad required. Returns a_L [B,T,r].
  torch::Tensor side_chain(const torch::Tensor& taps);
  // final_norm(b_L) with the kept norm weight: the backbone's final hidden state.
  torch::Tensor final_hidden(const torch::Tensor& b_last);
  // Full side forward -> logits [B,T,V].
  torch::Tensor forward(const torch::Tensor& taps);

  void init_random(uint64_t seed);
  // Structured pruning of the backbone's weights (see the file comment).
  void init_pruned(Llama& backbone);
  // The same from a backbone a process does not hold whole: `open(parts)` returns a model
  // holding at least those parts (a pipeline worker reads them from the checkpoint or
  // the seed one layer at a time), so memory holds one layer beyond the caller's own.
  // The result is identical to init_pruned on the whole model.
  void init_pruned_parts(const std::function<Llama(const LlamaParts&)>& open);

  // Trainable tensors under stable names ("down0.weight", "blocks.3.wq.weight",
  // "gate", ...), for saving; load_state copies them back (InputError naming `source`
  // on a missing name or a wrong shape).
  std::map<std::string, torch::Tensor> state();
  void load_state(const std::map<std::string, torch::Tensor>& tensors, const std::string& source);

  torch::nn::Linear down0{nullptr};
  std::vector<SideBlock> blocks;
  RMSNorm norm{nullptr};
  torch::nn::Linear up{nullptr};
  torch::Tensor gate;  // [d], zero-initialised

 private:
  SideConfig cfg_;
  torch::nn::ModuleList block_list_{nullptr};
  torch::Tensor rope_cos_, rope_sin_;  // [max_seq_len, head_dim/2]
  torch::Tensor head_norm_, head_classifier_;
};
TORCH_MODULE(SideNetwork);

// Copies `tensors` into `params` by name (shape-checked, converted to the parameter's
// dtype); a missing, extra or misshapen tensor -> InputError naming `source` and it.
void named_tensors_load(const std::vector<std::pair<std::string, torch::Tensor>>& params,
                        const std::map<std::string, torch::Tensor>& tensors, const std::string& source);

// Metadata stored with a saved side network, and the config rebuilt from it.
std::map<std::string, std::string> side_config_metadata(const SideConfig& c);
SideConfig side_config_from_metadata(const std::map<std::string, std::string>& m, const std::string& source);

}  // namespace pac
