#include "src/llm/side_network.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "src/common/error.h"

namespace pac {

SideConfig side_config_make(const LlamaConfig& c, int k) {
  if (k < 1) throw InputError("parallel adapters: reduction factor k must be >= 1, got " + std::to_string(k));
  if (c.dim % k != 0)
    throw InputError("parallel adapters: model dim " + std::to_string(c.dim) + " is not divisible by k = " +
                     std::to_string(k));
  SideConfig s;
  s.dim = c.dim;
  s.n_layers = c.n_layers;
  s.vocab_size = c.vocab_size;
  s.k = k;
  s.width = c.dim / k;
  if (s.width % 2 != 0)
    throw InputError("parallel adapters: side width dim/k = " + std::to_string(s.width) +
                     " must be even (rotary embeddings rotate pairs)");
  // Fewer heads than the backbone, each head_dim even; fall back towards one head.
  s.n_heads = std::max(1, c.n_heads / k);
  while (s.n_heads > 1 && (s.width % s.n_heads != 0 || (s.width / s.n_heads) % 2 != 0)) s.n_heads--;
  s.head_dim = s.width / s.n_heads;
  s.hidden_dim = std::max(1, c.hidden_dim / k);
  s.max_seq_len = c.max_seq_len;
  s.norm_eps = c.norm_eps;
  s.rope_theta = c.rope_theta;
  return s;
}

static torch::nn::Linear linear_no_bias(int64_t in, int64_t out) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
}

SideBlockImpl::SideBlockImpl(const SideConfig& c) : n_heads(c.n_heads), head_dim(c.head_dim) {
  int64_t r = c.width;
  down = register_module("down", linear_no_bias(c.dim, r));
  attention_norm = register_module("attention_norm", RMSNorm(r, c.norm_eps));
  wq = register_module("wq", linear_no_bias(r, r));
  wk = register_module("wk", linear_no_bias(r, r));
  wv = register_module("wv", linear_no_bias(r, r));
  wo = register_module("wo", linear_no_bias(r, r));
  ffn_norm = register_module("ffn_norm", RMSNorm(r, c.norm_eps));
  w1 = register_module("w1", linear_no_bias(r, c.hidden_dim));
  w2 = register_module("w2", linear_no_bias(c.hidden_dim, r));
  w3 = register_module("w3", linear_no_bias(r, c.hidden_dim));
}

// Rotary embedding in llama2.c's interleaved layout: pair (2j, 2j+1) of each head
// rotates by pos * theta^(-2j/head_dim). x: [B,T,H,hd]; cos/sin: [T, hd/2].
static torch::Tensor rope_apply(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  auto sz = x.sizes();
  int64_t B = sz[0], T = sz[1], H = sz[2], hd = sz[3];
  auto xs = x.reshape({B, T, H, hd / 2, 2});
  auto x0 = xs.select(-1, 0), x1 = xs.select(-1, 1);
  auto c = cos.view({1, T, 1, hd / 2}), s = sin.view({1, T, 1, hd / 2});
  return torch::stack({x0 * c - x1 * s, x0 * s + x1 * c}, -1).reshape({B, T, H, hd});
}

torch::Tensor SideBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  int64_t B = x.size(0), T = x.size(1), r = x.size(2);
  auto h = attention_norm(x);
  auto q = rope_apply(wq(h).view({B, T, n_heads, head_dim}), cos, sin).transpose(1, 2);
  auto k = rope_apply(wk(h).view({B, T, n_heads, head_dim}), cos, sin).transpose(1, 2);
  auto v = wv(h).view({B, T, n_heads, head_dim}).transpose(1, 2);
  auto scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(head_dim));
  auto mask = torch::full({T, T}, -std::numeric_limits<float>::infinity(), x.options()).triu(1);
  auto att = torch::softmax(scores + mask, -1);
  auto o = torch::matmul(att, v).transpose(1, 2).reshape({B, T, r});
  auto y = x + wo(o);
  auto g = ffn_norm(y);
  return y + w2(torch::silu(w1(g)) * w3(g));
}

SideNetworkImpl::SideNetworkImpl(const SideConfig& c) : cfg_(c) {
  if (c.width <= 0 || c.n_layers <= 0 || c.head_dim % 2 != 0)
    throw InputError("parallel adapters: bad side network shape (width " + std::to_string(c.width) + ", layers " +
                     std::to_string(c.n_layers) + ", head_dim " + std::to_string(c.head_dim) + ")");
  down0 = register_module("down0", linear_no_bias(c.dim, c.width));
  block_list_ = register_module("blocks", torch::nn::ModuleList());
  for (int i = 0; i < c.n_layers; i++) {
    blocks.push_back(SideBlock(c));
    block_list_->push_back(blocks.back());
  }
  norm = register_module("norm", RMSNorm(c.width, c.norm_eps));
  up = register_module("up", linear_no_bias(c.width, c.dim));
  gate = register_parameter("gate", torch::zeros({c.dim}));
  // RoPE tables computed as run.c does (float powf of head_dim/head_size).
  int64_t half = c.head_dim / 2;
  rope_cos_ = torch::empty({c.max_seq_len, half});
  rope_sin_ = torch::empty({c.max_seq_len, half});
  auto pc = rope_cos_.accessor<float, 2>();
  auto ps = rope_sin_.accessor<float, 2>();
  for (int64_t p = 0; p < c.max_seq_len; p++)
    for (int64_t j = 0; j < half; j++) {
      float freq = 1.0f / std::pow(c.rope_theta, static_cast<float>(2 * j) / static_cast<float>(c.head_dim));
      float val = static_cast<float>(p) * freq;
      pc[p][j] = std::cos(val);
      ps[p][j] = std::sin(val);
    }
  init_random(0);
}

void SideNetworkImpl::set_head(const torch::Tensor& final_norm_weight, const torch::Tensor& classifier) {
  if (final_norm_weight.dim() != 1 || final_norm_weight.size(0) != cfg_.dim || classifier.dim() != 2 ||
      classifier.size(1) != cfg_.dim)
    throw InputError("parallel adapters: backbone head does not match the side network (dim " +
                     std::to_string(cfg_.dim) + ")");
  torch::NoGradGuard ng;
  head_norm_ = final_norm_weight.detach().to(torch::kFloat).clone();
  head_classifier_ = classifier.detach().to(torch::kFloat).clone();
}

torch::Tensor SideNetworkImpl::side_chain(const torch::Tensor& taps) {
  if (taps.dim() != 4 || taps.size(1) != cfg_.n_layers + 1 || taps.size(3) != cfg_.dim)
    throw RuntimeError("side network: taps must be [B, " + std::to_string(cfg_.n_layers + 1) + ", T, " +
                       std::to_string(cfg_.dim) + "]");
  int64_t T = taps.size(2);
  if (T > cfg_.max_seq_len) throw RuntimeError("side network: sequence longer than max_seq_len");
  auto cos = rope_cos_.narrow(0, 0, T), sin = rope_sin_.narrow(0, 0, T);
  auto a = down0(taps.select(1, 0));
  for (int i = 1; i <= cfg_.n_layers; i++) {
    SideBlock& blk = blocks[i - 1];
    a = blk->forward(a + blk->down(taps.select(1, i)), cos, sin);
  }
  return a;
}

// Same formula as the backbone's RMSNorm (w * x / sqrt(mean(x^2) + eps)).
torch::Tensor SideNetworkImpl::final_hidden(const torch::Tensor& b_last) {
  if (!has_head()) throw RuntimeError("side network: set_head() was not called");
  auto ms = b_last.pow(2).mean(-1, true);
  return head_norm_ * (b_last / torch::sqrt(ms + cfg_.norm_eps));
}

torch::Tensor SideNetworkImpl::forward(const torch::Tensor& taps) {
  auto a = side_chain(taps);
  auto out = final_hidden(taps.select(1, cfg_.n_layers)) + gate * up(norm(a));
  return torch::matmul(out, head_classifier_.t());
}

void SideNetworkImpl::init_random(uint64_t seed) {
  torch::NoGradGuard ng;
  auto gen = at::detail::createCPUGenerator(seed);
  for (auto& kv : named_parameters()) {
    const std::string& name = kv.key();
    torch::Tensor p = kv.value();
    if (name == "gate") p.zero_();
    else if (name.find("norm") != std::string::npos) p.fill_(1.0f);
    else p.normal_(0.0, 0.02, gen);
  }
}

// Indices of the `n` largest entries of `score`, in ascending index order (keeping the
// original order keeps RoPE frequencies and residual layout aligned with the backbone).
static torch::Tensor top_sorted(const torch::Tensor& score, int64_t n) {
  auto idx = std::get<1>(torch::topk(score, n, 0, true, true));
  return std::get<0>(torch::sort(idx));
}

void SideNetworkImpl::init_pruned(Llama& backbone) {
  // The whole model holds every part asked for.
  init_pruned_parts([&](const LlamaParts&) { return backbone; });
}

void SideNetworkImpl::init_pruned_parts(const std::function<Llama(const LlamaParts&)>& open) {
  torch::NoGradGuard ng;
  Llama part = open(LlamaParts::layers(0, 0, true, false));
  const LlamaConfig c = part->config();
  if (c.dim != cfg_.dim || c.n_layers != cfg_.n_layers)
    throw RuntimeError("side network: backbone shape differs from the side config");
  auto W = [&](const std::string& name) -> torch::Tensor {
    for (auto& kv : part->backbone_named_parameters())
      if (kv.first == name) return kv.second.detach().to(torch::kFloat);
    throw RuntimeError("side network pruning: backbone has no weight " + name);
  };
  auto L = [](int l, const char* what) { return "layers." + std::to_string(l) + "." + what + ".weight"; };
  auto layer_part = [&](int l) { return open(LlamaParts::layers(l, l + 1, false, false)); };
  const int64_t r = cfg_.width, d = cfg_.dim, hd = c.head_dim();
  const int group = c.n_heads / c.n_kv_heads;

  // Residual dimensions: L2 norm of every weight column that reads the residual stream
  // and every row that writes it, over all layers and the embedding. One layer at a time:
  // a pipeline worker holds only its own stage.
  torch::Tensor score = W("tok_embeddings.weight").pow(2).sum(0);
  for (int l = 0; l < c.n_layers; l++) {
    part = layer_part(l);
    for (const char* m : {"wq", "wk", "wv", "w1", "w3"}) score += W(L(l, m)).pow(2).sum(0);
    for (const char* m : {"wo", "w2"}) score += W(L(l, m)).pow(2).sum(1);
  }
  torch::Tensor S = top_sorted(score, r);
  auto select = torch::zeros({r, d});
  select.scatter_(1, S.view({r, 1}), 1.0);
  down0->weight.copy_(select);
  up->weight.copy_(select.t());
  part = open(LlamaParts::layers(0, 0, false, true));
  norm->weight.copy_(W("norm.weight").index_select(0, S));
  gate.zero_();

  for (int l = 0; l < c.n_layers; l++) {
    part = layer_part(l);
    SideBlock& blk = blocks[l];
    // Ladder inputs start closed: the pruned chain first runs on its own.
    blk->down->weight.zero_();
    blk->attention_norm->weight.copy_(W(L(l, "attention_norm")).index_select(0, S));
    blk->ffn_norm->weight.copy_(W(L(l, "ffn_norm")).index_select(0, S));

    torch::Tensor wq = W(L(l, "wq")), wk = W(L(l, "wk")), wv = W(L(l, "wv")), wo = W(L(l, "wo"));
    // Per q row: its norm plus the norm of the wo column it feeds; summed per RoPE pair.
    torch::Tensor row_score = wq.pow(2).sum(1) + wo.pow(2).sum(0);  // [n_heads*hd]
    torch::Tensor pair_score = row_score.view({c.n_heads, hd / 2, 2}).sum(-1);  // [H, hd/2]
    torch::Tensor head_score = pair_score.sum(-1);
    auto head_order = std::get<1>(torch::sort(head_score, 0, true));
    std::vector<int64_t> qrows, kvrows;
    int64_t need_pairs = r / 2;
    for (int64_t hi = 0; hi < c.n_heads && need_pairs > 0; hi++) {
      int64_t h = head_order[hi].item<int64_t>();
      int64_t take = std::min<int64_t>(hd / 2, need_pairs);
      torch::Tensor pairs = top_sorted(pair_score[h], take);
      for (int64_t p = 0; p < take; p++) {
        int64_t j = pairs[p].item<int64_t>();
        for (int64_t e = 0; e < 2; e++) {
          qrows.push_back(h * hd + 2 * j + e);
          kvrows.push_back((h / group) * hd + 2 * j + e);
        }
      }
      need_pairs -= take;
    }
    auto qi = torch::tensor(qrows, torch::kLong), ki = torch::tensor(kvrows, torch::kLong);
    blk->wq->weight.copy_(wq.index_select(0, qi).index_select(1, S));
    blk->wk->weight.copy_(wk.index_select(0, ki).index_select(1, S));
    blk->wv->weight.copy_(wv.index_select(0, ki).index_select(1, S));
    blk->wo->weight.copy_(wo.index_select(0, S).index_select(1, qi));

    torch::Tensor w1 = W(L(l, "w1")), w2 = W(L(l, "w2")), w3 = W(L(l, "w3"));
    torch::Tensor unit_score = w1.pow(2).sum(1) + w3.pow(2).sum(1) + w2.pow(2).sum(0);
    torch::Tensor U = top_sorted(unit_score, cfg_.hidden_dim);
    blk->w1->weight.copy_(w1.index_select(0, U).index_select(1, S));
    blk->w3->weight.copy_(w3.index_select(0, U).index_select(1, S));
    blk->w2->weight.copy_(w2.index_select(0, S).index_select(1, U));
  }
}

std::map<std::string, torch::Tensor> SideNetworkImpl::state() {
  std::map<std::string, torch::Tensor> out;
  for (auto& kv : named_parameters()) out[kv.key()] = kv.value().detach();
  return out;
}

void named_tensors_load(const std::vector<std::pair<std::string, torch::Tensor>>& params,
                        const std::map<std::string, torch::Tensor>& tensors, const std::string& source) {
  torch::NoGradGuard ng;
  std::map<std::string, bool> known;
  for (auto& kv : params) {
    known[kv.first] = true;
    auto it = tensors.find(kv.first);
    if (it == tensors.end()) throw_input(source, kv.first, "missing tensor");
    if (it->second.sizes() != kv.second.sizes())
      throw_input(source, kv.first, "shape " + c10::str(it->second.sizes()) + ", expected " +
                                        c10::str(kv.second.sizes()));
    kv.second.copy_(it->second.to(kv.second.scalar_type()));
  }
  for (auto& kv : tensors)
    if (!known.count(kv.first)) throw_input(source, kv.first, "unexpected tensor (not in this model)");
}

void SideNetworkImpl::load_state(const std::map<std::string, torch::Tensor>& tensors, const std::string& source) {
  std::vector<std::pair<std::string, torch::Tensor>> params;
  for (auto& kv : named_parameters()) params.emplace_back(kv.key(), kv.value());
  named_tensors_load(params, tensors, source);
}

// Enough digits that the float reads back exactly.
static std::string float_text(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(v));
  return buf;
}

std::map<std::string, std::string> side_config_metadata(const SideConfig& c) {
  return {{"side.dim", std::to_string(c.dim)},
          {"side.n_layers", std::to_string(c.n_layers)},
          {"side.vocab_size", std::to_string(c.vocab_size)},
          {"side.k", std::to_string(c.k)},
          {"side.width", std::to_string(c.width)},
          {"side.n_heads", std::to_string(c.n_heads)},
          {"side.head_dim", std::to_string(c.head_dim)},
          {"side.hidden_dim", std::to_string(c.hidden_dim)},
          {"side.max_seq_len", std::to_string(c.max_seq_len)},
          {"side.norm_eps", float_text(c.norm_eps)},
          {"side.rope_theta", float_text(c.rope_theta)}};
}

SideConfig side_config_from_metadata(const std::map<std::string, std::string>& m, const std::string& source) {
  auto num = [&](const char* key) -> double {
    auto it = m.find(key);
    if (it == m.end()) throw_input(source, std::string("__metadata__.") + key, "missing");
    try {
      size_t used = 0;
      double v = std::stod(it->second, &used);
      if (used != it->second.size()) throw std::invalid_argument("trailing");
      return v;
    } catch (const std::exception&) {
      throw_input(source, std::string("__metadata__.") + key, "expected a number, got \"" + it->second + "\"");
    }
  };
  SideConfig c;
  c.dim = static_cast<int>(num("side.dim"));
  c.n_layers = static_cast<int>(num("side.n_layers"));
  c.vocab_size = static_cast<int>(num("side.vocab_size"));
  c.k = static_cast<int>(num("side.k"));
  c.width = static_cast<int>(num("side.width"));
  c.n_heads = static_cast<int>(num("side.n_heads"));
  c.head_dim = static_cast<int>(num("side.head_dim"));
  c.hidden_dim = static_cast<int>(num("side.hidden_dim"));
  c.max_seq_len = static_cast<int>(num("side.max_seq_len"));
  c.norm_eps = static_cast<float>(num("side.norm_eps"));
  c.rope_theta = static_cast<float>(num("side.rope_theta"));
  if (c.dim <= 0 || c.width <= 0 || c.n_heads <= 0 || c.width != c.n_heads * c.head_dim || c.n_layers <= 0 ||
      c.hidden_dim <= 0 || c.max_seq_len <= 0)
    throw_input(source, "__metadata__", "inconsistent side-network shape");
  return c;
}

}  // namespace pac
