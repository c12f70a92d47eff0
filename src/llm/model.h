// The LLaMA-family decoder in LibTorch: token embedding, per layer RMSNorm ->
// grouped-query attention with rotary embeddings -> residual -> RMSNorm -> SwiGLU
// FFN -> residual, final RMSNorm, tied or untied classifier. fp32 arithmetic follows
// llama2.c's run.c step by step (same RoPE pairing, same norm epsilon placement), so
// greedy decoding of a llama2.c checkpoint reproduces run.c's text.
//
// Internal weight layout is llama2.c / Meta's: q and k rows are in the interleaved
// RoPE order (pairs (2i, 2i+1) rotate together). Hugging Face checkpoints store them
// permuted for rotate_half; checkpoint.h undoes that when loading.
//
// Parameter names are stable (the trainer prunes and saves by name):
//   tok_embeddings.weight, layers.N.attention_norm.weight, layers.N.{wq,wk,wv,wo}.weight,
//   layers.N.{wq,wk,wv}.bias (only when qkv_bias), layers.N.ffn_norm.weight,
//   layers.N.{w1,w2,w3}.weight, norm.weight, output.weight (only when untied).
// Fine-tuning methods add (and method_parameters() returns):
//   layers.N.<linear>.lora_a / lora_b                        (enable_lora)
//   layers.N.{attn_adapter,ffn_adapter}.{down,up}.{weight,bias} (enable_adapters)
//
// Only code under src/llm and llm_* tests may include this header (it pulls LibTorch).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace pac {

struct LlamaConfig {
  int dim = 0;          // model width d
  int hidden_dim = 0;   // SwiGLU inner width
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;   // < n_heads: grouped-query attention
  int vocab_size = 0;
  int max_seq_len = 0;
  float norm_eps = 1e-5f;
  float rope_theta = 10000.f;
  bool tied_classifier = true;
  bool qkv_bias = false;  // Qwen2-style bias on q/k/v projections

  int head_dim() const { return dim / n_heads; }
  int kv_dim() const { return head_dim() * n_kv_heads; }
};

// Throws InputError("<where>: <field>: ...") if shapes are inconsistent
// (dim % n_heads, n_heads % n_kv_heads, odd head_dim, non-positive sizes).
void llama_config_validate(const LlamaConfig& c, const std::string& where);

// Real architecture shapes for random-init speed/memory runs:
//   "stories260K", "tinyllama-1.1b", "llama-3.2-1b", "qwen2.5-0.5b", "llama-d768-l12"
//   (12 layers, d=768, 12 heads, ffn 2048, vocab 32000), "tiny" (2 layers, d=32, tests).
// Unknown name -> InputError listing the known ones.
LlamaConfig llama_config_preset(const std::string& name);
std::vector<std::string> llama_config_preset_names();
int64_t llama_param_count(const LlamaConfig& c);  // backbone parameters
std::string llama_config_describe(const LlamaConfig& c);  // one line for logs

// RoPE cos/sin tables [n_pos, head_dim/2] in fp32, computed exactly as run.c does.
void rope_tables(const LlamaConfig& c, int64_t n_pos, torch::Tensor* cos, torch::Tensor* sin);

// Per-layer key/value cache for incremental decoding, preallocated to max_len.
struct KVCache {
  std::vector<torch::Tensor> k, v;  // per layer [B, max_len, n_kv_heads, head_dim]
  int64_t max_len = 0;
};

// A linear layer y = x W^T (+ b) with an optional LoRA branch (alpha/rank) x A^T B^T.
class LoraLinearImpl : public torch::nn::Module {
 public:
  LoraLinearImpl(int64_t in, int64_t out, bool bias);
  torch::Tensor forward(const torch::Tensor& x);
  void lora_enable(int rank, float alpha, at::Generator gen);  // A: kaiming-uniform from gen, B: zero
  void lora_merge();                        // W += scale * B A, drops the branch
  bool lora_enabled() const { return lora_a.defined(); }

  torch::Tensor weight;  // [out, in]
  torch::Tensor bias;    // [out] or undefined
  torch::Tensor lora_a;  // [rank, in] or undefined
  torch::Tensor lora_b;  // [out, rank] or undefined
  float lora_scale = 0.f;
  int64_t in_features, out_features;
};
TORCH_MODULE(LoraLinear);

// Houlsby bottleneck adapter: x + up(gelu(down(x))), up zero-initialised so the
// adapter is the identity at the start of fine-tuning.
class BottleneckAdapterImpl : public torch::nn::Module {
 public:
  BottleneckAdapterImpl(int64_t dim, int64_t bottleneck);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Linear down{nullptr}, up{nullptr};
};
TORCH_MODULE(BottleneckAdapter);

// RMSNorm as run.c computes it: w * (x / sqrt(mean(x^2) + eps)).
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, float eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  float eps;
};
TORCH_MODULE(RMSNorm);

class LlamaLayerImpl : public torch::nn::Module {
 public:
  explicit LlamaLayerImpl(const LlamaConfig& c);
  RMSNorm attention_norm{nullptr}, ffn_norm{nullptr};
  LoraLinear wq{nullptr}, wk{nullptr}, wv{nullptr}, wo{nullptr};
  LoraLinear w1{nullptr}, w2{nullptr}, w3{nullptr};
  BottleneckAdapter attn_adapter{nullptr}, ffn_adapter{nullptr};  // null unless enabled
};
TORCH_MODULE(LlamaLayer);

// Which parts of the model a process materialises. A pipeline stage holds only its
// layers (issue 5: a worker loads its stage's backbone layers, not the model), the
// embedding on the first stage and the head (final norm + classifier) where the loss is
// computed. Parameter names stay the whole model's ("layers.5.wq.weight"), so weights,
// checkpoints and pruning address them the same way in a part as in the whole.
struct LlamaParts {
  int layer_begin = 0, layer_end = -1;  // backbone layers [begin, end); end -1 = all
  bool embedding = true;                // token embedding (the lookup of the first stage)
  bool head = true;                     // final RMSNorm + classifier (the embedding when tied)

  static LlamaParts all() { return LlamaParts(); }
  static LlamaParts layers(int begin, int end, bool embedding, bool head) {
    LlamaParts p;
    p.layer_begin = begin;
    p.layer_end = end;
    p.embedding = embedding;
    p.head = head;
    return p;
  }
  bool has_layer(const LlamaConfig& c, int l) const {
    return l >= layer_begin && l < (layer_end < 0 ? c.n_layers : layer_end);
  }
  bool has_tok_embeddings(const LlamaConfig& c) const { return embedding || (head && c.tied_classifier); }
  // Whether the backbone weight `name` (model.h naming) belongs to these parts.
  bool has(const LlamaConfig& c, const std::string& name) const;
  std::string describe(const LlamaConfig& c) const;  // "layers 2-4, embedding, head"
};

// Tapped activations for Parallel Adapters and the activation cache.
struct Taps {
  std::vector<torch::Tensor> b;  // b[0] = embedding output, b[i] = output of layer i-1; n_layers+1
  torch::Tensor final_hidden;    // after the final RMSNorm, [B,T,dim]
};

class LlamaImpl : public torch::nn::Module {
 public:
  // Only `parts` are materialised; using a part that is absent (a layer of another
  // stage, the embedding on a middle stage) throws RuntimeError naming it.
  explicit LlamaImpl(const LlamaConfig& c, const LlamaParts& parts = LlamaParts::all());

  const LlamaConfig& config() const { return cfg_; }
  const LlamaParts& parts() const { return parts_; }

  // Full forward: tokens [B,T] int64 at positions start_pos.. -> logits [B,T,V].
  // With a cache, keys/values of these positions are stored and attention also sees
  // positions [0, start_pos) from the cache.
  torch::Tensor forward(const torch::Tensor& tokens, int64_t start_pos = 0, KVCache* cache = nullptr);

  // Pieces, so a pipeline stage or the side network can run a slice.
  torch::Tensor embed(const torch::Tensor& tokens);  // -> b_0 [B,T,dim]
  torch::Tensor layer_forward(int i, const torch::Tensor& x, int64_t start_pos = 0, KVCache* cache = nullptr);
  // Layers [first, last) in order.
  torch::Tensor layers_forward(int first, int last, const torch::Tensor& x, int64_t start_pos = 0,
                               KVCache* cache = nullptr);
  torch::Tensor final_norm(const torch::Tensor& h);
  torch::Tensor classify(const torch::Tensor& h_normed);  // -> logits [B,T,V]
  // The classifier matrix [V, dim] (the embedding when tied).
  torch::Tensor classifier_weight();

  Taps forward_taps(const torch::Tensor& tokens);

  KVCache make_cache(int64_t batch, int64_t max_len) const;

  // Fine-tuning hooks.
  // Method weights draw from a generator per tensor seeded by (seed, name), like
  // init_random: a stage that holds layers 4-7 initialises them exactly as the whole model.
  void enable_lora(int rank, float alpha, bool mlp, uint64_t seed = 0);
  void merge_lora();
  void enable_adapters(int bottleneck, uint64_t seed = 0);
  std::vector<torch::Tensor> backbone_parameters();
  std::vector<torch::Tensor> method_parameters();
  void freeze_backbone(bool freeze = true);
  // True for names added by enable_lora / enable_adapters.
  static bool is_method_parameter(const std::string& name);

  // Normal(0, 0.02) weights, ones for norms, zero biases. Each tensor draws from its own
  // generator seeded by (seed, its name), so a part of the model gets exactly the values
  // the same tensors have in the whole model: stages initialise independently and agree.
  void init_random(uint64_t seed);

  // Named backbone weights in the stable naming above (views of the parameters).
  std::vector<std::pair<std::string, torch::Tensor>> backbone_named_parameters();
  // Copies `w` into the named parameter; InputError naming `source` on unknown name or shape.
  void set_weight(const std::string& name, const torch::Tensor& w, const std::string& source);

  LlamaLayer layer(int i) { return layers_[i]; }  // null when not in parts()

  torch::nn::Embedding tok_embeddings{nullptr};
  RMSNorm norm{nullptr};
  LoraLinear output{nullptr};  // [V, dim] classifier when untied, else null

 private:
  LlamaConfig cfg_;
  LlamaParts parts_;
  std::vector<LlamaLayer> layers_;  // n_layers entries, null outside parts_
  // Holds the present layers under their global index ("layers.5"), which a ModuleList
  // (always numbered from 0) could not do for a stage's slice.
  std::shared_ptr<torch::nn::Module> layer_holder_;
  torch::Tensor rope_cos_, rope_sin_;  // [max_seq_len, head_dim/2], fp32, not parameters
};
TORCH_MODULE(Llama);

}  // namespace pac
