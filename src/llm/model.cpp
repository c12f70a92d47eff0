#include "src/llm/model.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cstdlib>
#include <cmath>
#include <sstream>

#include "src/common/error.h"

namespace pac {

// splitmix64's finaliser: spreads (seed, name hash) over all 64 bits.
static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// A generator of its own for the tensor `name`: its values depend on (seed, name) only,
// not on which other tensors this process built or in which order.
static at::Generator name_generator(uint64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a of the name
  for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ull;
  return at::make_generator<at::CPUGeneratorImpl>(mix64(seed ^ mix64(h)));
}

// ---------------------------------------------------------------- config

void llama_config_validate(const LlamaConfig& c, const std::string& where) {
  auto need = [&](bool ok, const char* field, const std::string& what) {
    if (!ok) throw_input(where, field, what);
  };
  need(c.dim > 0, "dim", "expected > 0, got " + std::to_string(c.dim));
  need(c.hidden_dim > 0, "hidden_dim", "expected > 0, got " + std::to_string(c.hidden_dim));
  need(c.n_layers > 0, "n_layers", "expected > 0, got " + std::to_string(c.n_layers));
  need(c.n_heads > 0, "n_heads", "expected > 0, got " + std::to_string(c.n_heads));
  need(c.n_kv_heads > 0 && c.n_kv_heads <= c.n_heads, "n_kv_heads",
       "expected 1..n_heads (" + std::to_string(c.n_heads) + "), got " + std::to_string(c.n_kv_heads));
  need(c.vocab_size > 0, "vocab_size", "expected > 0, got " + std::to_string(c.vocab_size));
  need(c.max_seq_len > 0, "max_seq_len", "expected > 0, got " + std::to_string(c.max_seq_len));
  need(c.dim % c.n_heads == 0, "dim",
       "expected a multiple of n_heads (" + std::to_string(c.n_heads) + "), got " + std::to_string(c.dim));
  need(c.n_heads % c.n_kv_heads == 0, "n_kv_heads",
       "expected a divisor of n_heads (" + std::to_string(c.n_heads) + "), got " + std::to_string(c.n_kv_heads));
  need(c.head_dim() % 2 == 0, "dim", "expected an even head size (dim / n_heads), got " + std::to_string(c.head_dim()));
  need(c.norm_eps > 0, "norm_eps", "expected > 0");
  need(c.rope_theta > 0, "rope_theta", "expected > 0");
}

std::vector<std::string> llama_config_preset_names() {
  return {"stories260K", "tinyllama-1.1b", "llama-3.2-1b", "qwen2.5-0.5b", "llama-d768-l12", "llama-d512-l8", "tiny"};
}

static LlamaConfig config_make(int dim, int hidden, int layers, int heads, int kv, int vocab, int seq,
                               float eps, float theta, bool tied, bool qkv_bias) {
  LlamaConfig c;
  c.dim = dim;
  c.hidden_dim = hidden;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv;
  c.vocab_size = vocab;
  c.max_seq_len = seq;
  c.norm_eps = eps;
  c.rope_theta = theta;
  c.tied_classifier = tied;
  c.qkv_bias = qkv_bias;
  return c;
}

LlamaConfig llama_config_preset(const std::string& name) {
  // Shapes from the models' published config.json files.
  if (name == "stories260K") return config_make(64, 172, 5, 8, 4, 512, 512, 1e-5f, 10000.f, true, false);
  if (name == "tinyllama-1.1b") return config_make(2048, 5632, 22, 32, 4, 32000, 2048, 1e-5f, 10000.f, false, false);
  // Llama 3.2 also uses "llama3" RoPE frequency scaling for long contexts; at the
  // sequence lengths we run (<= 8k) it changes no speed or memory figure.
  if (name == "llama-3.2-1b") return config_make(2048, 8192, 16, 32, 8, 128256, 131072, 1e-5f, 500000.f, true, false);
  if (name == "qwen2.5-0.5b") return config_make(896, 4864, 24, 14, 2, 151936, 32768, 1e-6f, 1000000.f, true, true);
  if (name == "llama-d768-l12") return config_make(768, 2048, 12, 12, 12, 32000, 1024, 1e-5f, 10000.f, true, false);
  // The testbed's shape (profiles/models/llama-d512-l8.json): between stories260K and
  // llama-d768-l12, with the stories260K tokenizer's 512-token vocabulary.
  if (name == "llama-d512-l8") return config_make(512, 1376, 8, 8, 8, 512, 512, 1e-5f, 10000.f, true, false);
  if (name == "tiny") return config_make(32, 64, 2, 4, 2, 64, 64, 1e-5f, 10000.f, true, false);
  std::string known;
  for (auto& n : llama_config_preset_names()) known += (known.empty() ? "" : ", ") + n;
  throw InputError("unknown model preset '" + name + "' (known: " + known + ")");
}

int64_t llama_param_count(const LlamaConfig& c) {
  int64_t d = c.dim, kv = c.kv_dim(), h = c.hidden_dim, v = c.vocab_size;
  int64_t per_layer = 2 * d + d * d * 2 + 2 * d * kv + 3 * d * h;
  if (c.qkv_bias) per_layer += d + 2 * kv;
  int64_t n = v * d + c.n_layers * per_layer + d;
  if (!c.tied_classifier) n += v * d;
  return n;
}

std::string llama_config_describe(const LlamaConfig& c) {
  std::ostringstream s;
  s << "dim " << c.dim << ", hidden " << c.hidden_dim << ", " << c.n_layers << " layers, " << c.n_heads
    << " heads, " << c.n_kv_heads << " kv-heads, vocab " << c.vocab_size << ", seq " << c.max_seq_len
    << (c.tied_classifier ? ", tied" : ", untied") << " classifier" << (c.qkv_bias ? ", qkv bias" : "") << ", "
    << llama_param_count(c) << " parameters";
  return s.str();
}

void rope_tables(const LlamaConfig& c, int64_t n_pos, torch::Tensor* cos, torch::Tensor* sin) {
  // In float like run.c: freq = 1/theta^(2i/hs), angle = pos * freq. Computing them in
  // double would change the last bits of q and k.
  int hs = c.head_dim(), half = hs / 2;
  *cos = torch::empty({n_pos, half});
  *sin = torch::empty({n_pos, half});
  float* pc = cos->data_ptr<float>();
  float* ps = sin->data_ptr<float>();
  for (int64_t pos = 0; pos < n_pos; pos++) {
    for (int i = 0; i < half; i++) {
      float freq = 1.0f / powf(c.rope_theta, (float)(2 * i) / (float)hs);
      float val = (float)pos * freq;
      pc[pos * half + i] = cosf(val);
      ps[pos * half + i] = sinf(val);
    }
  }
}

// ---------------------------------------------------------------- building blocks

LoraLinearImpl::LoraLinearImpl(int64_t in, int64_t out, bool has_bias) : in_features(in), out_features(out) {
  // nn.Linear's default init; checkpoints and init_random overwrite it.
  double bound = 1.0 / std::sqrt((double)in);
  weight = register_parameter("weight", torch::empty({out, in}).uniform_(-bound, bound));
  if (has_bias) bias = register_parameter("bias", torch::zeros({out}));
}

torch::Tensor LoraLinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = bias.defined() ? torch::addmm(bias, x.reshape({-1, in_features}), weight.t())
                                   : torch::mm(x.reshape({-1, in_features}), weight.t());
  if (lora_a.defined()) {
    torch::Tensor low = torch::mm(x.reshape({-1, in_features}), lora_a.t());
    y = y + torch::mm(low, lora_b.t()) * lora_scale;
  }
  auto shape = x.sizes().vec();
  shape.back() = out_features;
  return y.view(shape);
}

void LoraLinearImpl::lora_enable(int rank, float alpha, at::Generator gen) {
  if (rank <= 0) throw InputError("LoRA rank must be > 0, got " + std::to_string(rank));
  if (lora_a.defined()) throw InputError("LoRA is already enabled on this layer");
  auto opts = weight.options().requires_grad(false);
  torch::Tensor a = torch::empty({rank, in_features}, opts);
  // PEFT's init: A kaiming-uniform with a = sqrt(5) (bound 1/sqrt(in)), B zero, so the
  // branch adds nothing until B is trained.
  {
    torch::NoGradGuard ng;
    double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
    a.uniform_(-bound, bound, gen);
  }
  lora_a = register_parameter("lora_a", a);
  lora_b = register_parameter("lora_b", torch::zeros({out_features, rank}, opts));
  lora_scale = alpha / (float)rank;
}

void LoraLinearImpl::lora_merge() {
  if (!lora_a.defined()) return;
  {
    torch::NoGradGuard ng;
    weight.add_(torch::mm(lora_b, lora_a) * lora_scale);
  }
  parameters_.erase("lora_a");
  parameters_.erase("lora_b");
  lora_a = torch::Tensor();
  lora_b = torch::Tensor();
  lora_scale = 0.f;
}

BottleneckAdapterImpl::BottleneckAdapterImpl(int64_t dim, int64_t bottleneck) {
  down = register_module("down", torch::nn::Linear(dim, bottleneck));
  up = register_module("up", torch::nn::Linear(bottleneck, dim));
  torch::NoGradGuard ng;
  up->weight.zero_();
  up->bias.zero_();
}

torch::Tensor BottleneckAdapterImpl::forward(const torch::Tensor& x) {
  return x + up(torch::gelu(down(x)));
}

RMSNormImpl::RMSNormImpl(int64_t dim, float eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  // run.c: ss = sum(x^2)/n + eps; o = w * (x / sqrt(ss)).
  torch::Tensor ss = x.pow(2).mean(-1, /*keepdim=*/true).add(eps);
  return weight * (x * torch::rsqrt(ss));
}

LlamaLayerImpl::LlamaLayerImpl(const LlamaConfig& c) {
  attention_norm = register_module("attention_norm", RMSNorm(c.dim, c.norm_eps));
  wq = register_module("wq", LoraLinear(c.dim, c.dim, c.qkv_bias));
  wk = register_module("wk", LoraLinear(c.dim, c.kv_dim(), c.qkv_bias));
  wv = register_module("wv", LoraLinear(c.dim, c.kv_dim(), c.qkv_bias));
  wo = register_module("wo", LoraLinear(c.dim, c.dim, false));
  ffn_norm = register_module("ffn_norm", RMSNorm(c.dim, c.norm_eps));
  w1 = register_module("w1", LoraLinear(c.dim, c.hidden_dim, false));
  w2 = register_module("w2", LoraLinear(c.hidden_dim, c.dim, false));
  w3 = register_module("w3", LoraLinear(c.dim, c.hidden_dim, false));
}

// ---------------------------------------------------------------- the model

bool LlamaParts::has(const LlamaConfig& c, const std::string& name) const {
  if (name.rfind("layers.", 0) == 0) return has_layer(c, std::atoi(name.c_str() + 7));
  if (name.rfind("tok_embeddings.", 0) == 0) return has_tok_embeddings(c);
  return head;  // norm.weight, output.weight
}

std::string LlamaParts::describe(const LlamaConfig& c) const {
  int end = layer_end < 0 ? c.n_layers : layer_end;
  std::string s = end > layer_begin ? "layers " + std::to_string(layer_begin) + "-" + std::to_string(end - 1) : "no layers";
  if (embedding) s += ", embedding";
  if (head) s += ", head";
  return s;
}

LlamaImpl::LlamaImpl(const LlamaConfig& c, const LlamaParts& parts) : cfg_(c), parts_(parts) {
  llama_config_validate(c, "model config");
  int end = parts.layer_end < 0 ? c.n_layers : parts.layer_end;
  if (parts.layer_begin < 0 || parts.layer_begin > end || end > c.n_layers)
    throw InputError("model parts: layers [" + std::to_string(parts.layer_begin) + ", " + std::to_string(end) +
                     ") outside the model's " + std::to_string(c.n_layers));
  if (parts.has_tok_embeddings(c))
    tok_embeddings = register_module("tok_embeddings", torch::nn::Embedding(c.vocab_size, c.dim));
  layer_holder_ = register_module("layers", std::make_shared<torch::nn::Module>());
  layers_.resize(c.n_layers, LlamaLayer(nullptr));
  for (int i = parts.layer_begin; i < end; i++) {
    layers_[i] = LlamaLayer(c);
    layer_holder_->register_module(std::to_string(i), layers_[i]);
  }
  if (parts.head) {
    norm = register_module("norm", RMSNorm(c.dim, c.norm_eps));
    if (!c.tied_classifier) output = register_module("output", LoraLinear(c.dim, c.vocab_size, false));
  }

  rope_tables(c, c.max_seq_len, &rope_cos_, &rope_sin_);
}

// A part this process did not load: a bug in the caller's stage arithmetic, named.
static void part_missing(const LlamaConfig& c, const LlamaParts& p, const std::string& what) {
  throw RuntimeError("model: " + what + " is not loaded here (this process holds " + p.describe(c) + " of " +
                     std::to_string(c.n_layers) + " layers)");
}

torch::Tensor LlamaImpl::embed(const torch::Tensor& tokens) {
  TORCH_CHECK(tokens.dim() == 2 && tokens.scalar_type() == torch::kInt64, "tokens must be [B,T] int64");
  if (!parts_.embedding) part_missing(cfg_, parts_, "the token embedding");
  return tok_embeddings(tokens);
}

// Rotates pairs (2i, 2i+1) of each head by angle pos * freq_i, as run.c does.
// x: [B,T,heads,hs]
static torch::Tensor rope_apply(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  auto sz = x.sizes();
  torch::Tensor xp = x.reshape({sz[0], sz[1], sz[2], sz[3] / 2, 2});
  torch::Tensor x0 = xp.select(-1, 0), x1 = xp.select(-1, 1);
  torch::Tensor c = cos.view({1, sz[1], 1, sz[3] / 2}), s = sin.view({1, sz[1], 1, sz[3] / 2});
  torch::Tensor o0 = x0 * c - x1 * s;
  torch::Tensor o1 = x0 * s + x1 * c;
  return torch::stack({o0, o1}, -1).reshape(sz);
}

torch::Tensor LlamaImpl::layer_forward(int i, const torch::Tensor& x, int64_t start_pos, KVCache* cache) {
  TORCH_CHECK(i >= 0 && i < cfg_.n_layers, "layer index out of range");
  if (!layers_[i]) part_missing(cfg_, parts_, "layer " + std::to_string(i));
  LlamaLayerImpl& L = *layers_[i];
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t H = cfg_.n_heads, KV = cfg_.n_kv_heads, hs = cfg_.head_dim(), rep = H / KV;
  if (start_pos + T > cfg_.max_seq_len)
    throw InputError("positions " + std::to_string(start_pos) + ".." + std::to_string(start_pos + T - 1) +
                     " exceed the model's max_seq_len " + std::to_string(cfg_.max_seq_len));

  // --- attention
  torch::Tensor h = L.attention_norm(x);
  torch::Tensor q = L.wq(h).view({B, T, H, hs});
  torch::Tensor k = L.wk(h).view({B, T, KV, hs});
  torch::Tensor v = L.wv(h).view({B, T, KV, hs});
  torch::Tensor cos = rope_cos_.slice(0, start_pos, start_pos + T).to(x.device(), x.scalar_type());
  torch::Tensor sin = rope_sin_.slice(0, start_pos, start_pos + T).to(x.device(), x.scalar_type());
  q = rope_apply(q, cos, sin);
  k = rope_apply(k, cos, sin);

  torch::Tensor keys = k, values = v;
  int64_t S = T;  // number of key positions seen
  if (cache) {
    TORCH_CHECK(start_pos + T <= cache->max_len, "KV cache too short");
    cache->k[i].slice(1, start_pos, start_pos + T).copy_(k);
    cache->v[i].slice(1, start_pos, start_pos + T).copy_(v);
    S = start_pos + T;
    keys = cache->k[i].slice(1, 0, S);
    values = cache->v[i].slice(1, 0, S);
  }
  // Grouped-query attention without copying k/v: query head h = g*rep + r uses kv head g
  // (run.c: h / kv_mul), so view queries as [B, KV, rep*T, hs] against keys [B, KV, S, hs].
  torch::Tensor qg = q.permute({0, 2, 1, 3}).reshape({B, KV, rep * T, hs});
  torch::Tensor kg = keys.permute({0, 2, 3, 1});    // [B, KV, hs, S]
  torch::Tensor vg = values.permute({0, 2, 1, 3});  // [B, KV, S, hs]
  torch::Tensor scores = torch::matmul(qg, kg).div(std::sqrt((float)hs));  // [B,KV,rep*T,S]
  if (T > 1) {
    // Query t sits at position key_offset + t and may see keys 0..key_offset + t.
    int64_t key_offset = S - T;
    torch::Tensor mask = torch::ones({T, S}, torch::kBool).triu(key_offset + 1);
    scores = scores.view({B, KV, rep, T, S}).masked_fill(mask, -INFINITY).view({B, KV, rep * T, S});
  }
  torch::Tensor att = torch::softmax(scores, -1);
  torch::Tensor out = torch::matmul(att, vg)  // [B,KV,rep*T,hs]
                          .view({B, H, T, hs})
                          .permute({0, 2, 1, 3})
                          .reshape({B, T, H * hs});
  torch::Tensor attn = L.wo(out);
  if (L.attn_adapter) attn = L.attn_adapter(attn);
  torch::Tensor x2 = x + attn;

  // --- SwiGLU feed-forward
  torch::Tensor h2 = L.ffn_norm(x2);
  torch::Tensor f = L.w2(torch::silu(L.w1(h2)) * L.w3(h2));
  if (L.ffn_adapter) f = L.ffn_adapter(f);
  return x2 + f;
}

torch::Tensor LlamaImpl::layers_forward(int first, int last, const torch::Tensor& x, int64_t start_pos,
                                        KVCache* cache) {
  torch::Tensor h = x;
  for (int i = first; i < last; i++) h = layer_forward(i, h, start_pos, cache);
  return h;
}

torch::Tensor LlamaImpl::final_norm(const torch::Tensor& h) {
  if (!parts_.head) part_missing(cfg_, parts_, "the final norm");
  return norm(h);
}

torch::Tensor LlamaImpl::classifier_weight() {
  if (!parts_.head) part_missing(cfg_, parts_, "the classifier");
  return cfg_.tied_classifier ? tok_embeddings->weight : output->weight;
}

torch::Tensor LlamaImpl::classify(const torch::Tensor& h_normed) {
  if (!parts_.head) part_missing(cfg_, parts_, "the classifier");
  if (!cfg_.tied_classifier) return output(h_normed);
  return torch::matmul(h_normed, tok_embeddings->weight.t());
}

torch::Tensor LlamaImpl::forward(const torch::Tensor& tokens, int64_t start_pos, KVCache* cache) {
  torch::Tensor h = layers_forward(0, cfg_.n_layers, embed(tokens), start_pos, cache);
  return classify(final_norm(h));
}

Taps LlamaImpl::forward_taps(const torch::Tensor& tokens) {
  Taps taps;
  taps.b.reserve(cfg_.n_layers + 1);
  taps.b.push_back(embed(tokens));
  for (int i = 0; i < cfg_.n_layers; i++) taps.b.push_back(layer_forward(i, taps.b.back()));
  taps.final_hidden = final_norm(taps.b.back());
  return taps;
}

KVCache LlamaImpl::make_cache(int64_t batch, int64_t max_len) const {
  KVCache c;
  c.max_len = max_len;
  auto opts = rope_cos_.options().requires_grad(false);
  for (int i = 0; i < cfg_.n_layers; i++) {
    c.k.push_back(torch::zeros({batch, max_len, cfg_.n_kv_heads, cfg_.head_dim()}, opts));
    c.v.push_back(torch::zeros({batch, max_len, cfg_.n_kv_heads, cfg_.head_dim()}, opts));
  }
  return c;
}

// ---------------------------------------------------------------- fine-tuning hooks

void LlamaImpl::enable_lora(int rank, float alpha, bool mlp, uint64_t seed) {
  for (int l = 0; l < cfg_.n_layers; l++) {
    LlamaLayer& L = layers_[l];
    if (!L) continue;  // another stage's layer
    std::string pre = "layers." + std::to_string(l) + ".";
    std::vector<std::pair<const char*, LoraLinear>> targets = {{"wq", L->wq}, {"wk", L->wk}, {"wv", L->wv}, {"wo", L->wo}};
    if (mlp) targets.insert(targets.end(), {{"w1", L->w1}, {"w2", L->w2}, {"w3", L->w3}});
    for (auto& t : targets) t.second->lora_enable(rank, alpha, name_generator(seed, pre + t.first + ".lora_a"));
  }
  // lora_enable creates the tensors without grad so the init is not recorded; the
  // method's weights are always trainable.
  for (auto& p : method_parameters()) p.set_requires_grad(true);
}

void LlamaImpl::merge_lora() {
  for (auto& L : layers_) {
    if (!L) continue;
    LoraLinear all[] = {L->wq, L->wk, L->wv, L->wo, L->w1, L->w2, L->w3};
    for (auto& t : all) t->lora_merge();
  }
}

void LlamaImpl::enable_adapters(int bottleneck, uint64_t seed) {
  if (bottleneck <= 0) throw InputError("adapter bottleneck must be > 0, got " + std::to_string(bottleneck));
  auto w = rope_cos_;  // device and dtype of the model (all parameters share them)
  torch::NoGradGuard ng;
  for (int l = 0; l < cfg_.n_layers; l++) {
    LlamaLayer& L = layers_[l];
    if (!L) continue;
    if (L->attn_adapter) throw InputError("adapters are already enabled");
    L->attn_adapter = L->register_module("attn_adapter", BottleneckAdapter(cfg_.dim, bottleneck));
    L->ffn_adapter = L->register_module("ffn_adapter", BottleneckAdapter(cfg_.dim, bottleneck));
    // nn.Linear's default init of `down` (weight and bias uniform within 1/sqrt(fan_in)),
    // drawn per tensor name; `up` stays zero (identity adapter).
    double bound = 1.0 / std::sqrt(static_cast<double>(cfg_.dim));
    std::string pre = "layers." + std::to_string(l) + ".";
    std::pair<const char*, BottleneckAdapter> adapters[] = {{"attn_adapter", L->attn_adapter},
                                                            {"ffn_adapter", L->ffn_adapter}};
    for (auto& [name, ad] : adapters) {
      ad->down->weight.uniform_(-bound, bound, name_generator(seed, pre + name + ".down.weight"));
      ad->down->bias.uniform_(-bound, bound, name_generator(seed, pre + name + ".down.bias"));
      ad->to(w.device(), w.scalar_type());
    }
  }
}

bool LlamaImpl::is_method_parameter(const std::string& name) {
  return name.find("lora_a") != std::string::npos || name.find("lora_b") != std::string::npos ||
         name.find("attn_adapter.") != std::string::npos || name.find("ffn_adapter.") != std::string::npos;
}

std::vector<std::pair<std::string, torch::Tensor>> LlamaImpl::backbone_named_parameters() {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& kv : named_parameters(true))
    if (!is_method_parameter(kv.key())) out.emplace_back(kv.key(), kv.value());
  return out;
}

std::vector<torch::Tensor> LlamaImpl::backbone_parameters() {
  std::vector<torch::Tensor> out;
  for (auto& kv : named_parameters(true))
    if (!is_method_parameter(kv.key())) out.push_back(kv.value());
  return out;
}

std::vector<torch::Tensor> LlamaImpl::method_parameters() {
  std::vector<torch::Tensor> out;
  for (auto& kv : named_parameters(true))
    if (is_method_parameter(kv.key())) out.push_back(kv.value());
  return out;
}

void LlamaImpl::freeze_backbone(bool freeze) {
  for (auto& p : backbone_parameters()) p.set_requires_grad(!freeze);
}

void LlamaImpl::init_random(uint64_t seed) {
  torch::NoGradGuard ng;
  for (auto& kv : backbone_named_parameters()) {
    const std::string& name = kv.first;
    torch::Tensor p = kv.second;
    bool is_norm = name.find("norm.") != std::string::npos;
    bool is_bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (is_norm) {
      p.fill_(1.0);
    } else if (is_bias) {
      p.zero_();
    } else {
      p.normal_(0.0, 0.02, name_generator(seed, name));
    }
  }
}

void LlamaImpl::set_weight(const std::string& name, const torch::Tensor& w, const std::string& source) {
  auto params = named_parameters(true);  // the dict holds handles sharing the parameters' storage
  torch::Tensor* p = params.find(name);
  if (!p) throw_input(source, name, "the model has no parameter of that name (" + llama_config_describe(cfg_) + ")");
  if (p->sizes() != w.sizes()) {
    std::ostringstream s;
    s << "expected shape " << p->sizes() << ", got " << w.sizes();
    throw_input(source, name, s.str());
  }
  torch::NoGradGuard ng;
  p->copy_(w);
}

}  // namespace pac
