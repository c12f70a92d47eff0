// The LibTorch Llama against independent computations: a plain-loop transcription of
// llama2.c's run.c forward, the full-sequence path vs the KV-cache path, GQA vs MHA with
// repeated kv weights, LoRA/adapter identities and merging, and published parameter counts.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <map>
#include <set>

#include "src/common/error.h"
#include "src/common/fs.h"
#include "src/common/json_in.h"
#include "src/llm/checkpoint.h"
#include "src/llm/model.h"

using namespace pac;

// ---------------------------------------------------------------- run.c in plain loops

// Weights as flat float vectors, read by name from the model.
struct RefWeights {
  std::map<std::string, std::vector<float>> w;
  const float* operator()(const std::string& name) const { return w.at(name).data(); }
};

static RefWeights ref_weights(Llama& m) {
  RefWeights r;
  for (auto& kv : m->named_parameters(true)) {
    torch::Tensor t = kv.value().detach().contiguous().to(torch::kFloat32);
    r.w[kv.key()] = std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
  }
  return r;
}

static void ref_rmsnorm(float* o, const float* x, const float* w, int n, float eps) {
  float ss = 0;
  for (int j = 0; j < n; j++) ss += x[j] * x[j];
  ss = 1.0f / sqrtf(ss / n + eps);
  for (int j = 0; j < n; j++) o[j] = w[j] * (ss * x[j]);
}

// xout[d] = W[d][n] x[n] (+ b)
static void ref_matmul(float* xout, const float* x, const float* w, int n, int d, const float* b = nullptr) {
  for (int i = 0; i < d; i++) {
    float v = 0;
    for (int j = 0; j < n; j++) v += w[(size_t)i * n + j] * x[j];
    xout[i] = v + (b ? b[i] : 0.f);
  }
}

// run.c's forward over a whole sequence, one position at a time; returns logits [T][V].
static std::vector<std::vector<float>> ref_forward(const LlamaConfig& c, const RefWeights& W,
                                                   const std::vector<int>& tokens) {
  const int d = c.dim, hs = c.head_dim(), kvd = c.kv_dim(), hd = c.hidden_dim, V = c.vocab_size;
  const int kv_mul = c.n_heads / c.n_kv_heads, T = (int)tokens.size();
  std::vector<float> kc((size_t)c.n_layers * T * kvd), vc((size_t)c.n_layers * T * kvd);
  std::vector<std::vector<float>> out;
  std::vector<float> x(d), xb(d), xb2(d), q(d), k(kvd), v(kvd), h1(hd), h3(hd), att(T), logits(V);
  for (int pos = 0; pos < T; pos++) {
    const float* emb = W("tok_embeddings.weight") + (size_t)tokens[pos] * d;
    for (int j = 0; j < d; j++) x[j] = emb[j];
    for (int l = 0; l < c.n_layers; l++) {
      std::string p = "layers." + std::to_string(l) + ".";
      ref_rmsnorm(xb.data(), x.data(), W(p + "attention_norm.weight"), d, c.norm_eps);
      const float* bq = c.qkv_bias ? W(p + "wq.bias") : nullptr;
      const float* bk = c.qkv_bias ? W(p + "wk.bias") : nullptr;
      const float* bv = c.qkv_bias ? W(p + "wv.bias") : nullptr;
      ref_matmul(q.data(), xb.data(), W(p + "wq.weight"), d, d, bq);
      ref_matmul(k.data(), xb.data(), W(p + "wk.weight"), d, kvd, bk);
      ref_matmul(v.data(), xb.data(), W(p + "wv.weight"), d, kvd, bv);
      for (int i = 0; i < d; i += 2) {
        int head_dim = i % hs;
        float freq = 1.0f / powf(c.rope_theta, head_dim / (float)hs);
        float val = pos * freq, fcr = cosf(val), fci = sinf(val);
        int rotn = i < kvd ? 2 : 1;
        for (int r = 0; r < rotn; r++) {
          float* vec = r == 0 ? q.data() : k.data();
          float v0 = vec[i], v1 = vec[i + 1];
          vec[i] = v0 * fcr - v1 * fci;
          vec[i + 1] = v0 * fci + v1 * fcr;
        }
      }
      float* kl = kc.data() + (size_t)l * T * kvd;
      float* vl = vc.data() + (size_t)l * T * kvd;
      for (int j = 0; j < kvd; j++) {
        kl[(size_t)pos * kvd + j] = k[j];
        vl[(size_t)pos * kvd + j] = v[j];
      }
      for (int h = 0; h < c.n_heads; h++) {
        const float* qh = q.data() + h * hs;
        for (int t = 0; t <= pos; t++) {
          const float* kt = kl + (size_t)t * kvd + (h / kv_mul) * hs;
          float s = 0;
          for (int i = 0; i < hs; i++) s += qh[i] * kt[i];
          att[t] = s / sqrtf((float)hs);
        }
        float mx = att[0];
        for (int t = 1; t <= pos; t++) mx = std::max(mx, att[t]);
        float sum = 0;
        for (int t = 0; t <= pos; t++) {
          att[t] = expf(att[t] - mx);
          sum += att[t];
        }
        float* o = xb.data() + h * hs;
        for (int i = 0; i < hs; i++) o[i] = 0;
        for (int t = 0; t <= pos; t++) {
          const float* vt = vl + (size_t)t * kvd + (h / kv_mul) * hs;
          for (int i = 0; i < hs; i++) o[i] += att[t] / sum * vt[i];
        }
      }
      ref_matmul(xb2.data(), xb.data(), W(p + "wo.weight"), d, d);
      for (int j = 0; j < d; j++) x[j] += xb2[j];
      ref_rmsnorm(xb.data(), x.data(), W(p + "ffn_norm.weight"), d, c.norm_eps);
      ref_matmul(h1.data(), xb.data(), W(p + "w1.weight"), d, hd);
      ref_matmul(h3.data(), xb.data(), W(p + "w3.weight"), d, hd);
      for (int i = 0; i < hd; i++) h1[i] = h1[i] * (1.0f / (1.0f + expf(-h1[i]))) * h3[i];
      ref_matmul(xb.data(), h1.data(), W(p + "w2.weight"), hd, d);
      for (int j = 0; j < d; j++) x[j] += xb[j];
    }
    ref_rmsnorm(x.data(), x.data(), W("norm.weight"), d, c.norm_eps);
    ref_matmul(logits.data(), x.data(), W(c.tied_classifier ? "tok_embeddings.weight" : "output.weight"), d, V);
    out.push_back(logits);
  }
  return out;
}

static LlamaConfig tiny_config(int layers, int heads, int kv_heads, bool tied) {
  LlamaConfig c = llama_config_preset("tiny");
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.tied_classifier = tied;
  return c;
}

static Llama random_model(const LlamaConfig& c, uint64_t seed) {
  Llama m(c);
  m->init_random(seed);
  // Norm weights away from 1 so a wrong norm placement would show.
  torch::NoGradGuard ng;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed + 1);
  for (auto& kv : m->backbone_named_parameters())
    if (kv.first.find("norm") != std::string::npos) kv.second.uniform_(0.5, 1.5, gen);
  return m;
}

static torch::Tensor tokens_of(const std::vector<int>& ids) {
  return torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kInt64).view({1, -1});
}

static double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

static void expect_matches_reference(Llama& m, const std::vector<int>& ids, double tol) {
  torch::NoGradGuard ng;
  torch::Tensor logits = m->forward(tokens_of(ids));
  auto ref = ref_forward(m->config(), ref_weights(m), ids);
  double worst = 0;
  for (size_t t = 0; t < ids.size(); t++)
    for (int v = 0; v < m->config().vocab_size; v++)
      worst = std::max(worst, (double)std::fabs(logits[0][t][v].item<float>() - ref[t][v]));
  EXPECT_LT(worst, tol);
}

TEST(LlamaModel, MatchesPlainLoopReferenceOneLayer) {
  // 1 layer, 4 heads sharing 2 kv heads, tied classifier: every logit within 1e-5 of run.c's loops.
  Llama m = random_model(tiny_config(1, 4, 2, true), 7);
  expect_matches_reference(m, {1, 5, 9, 33, 2, 17, 63, 0}, 1e-5);
}

TEST(LlamaModel, MatchesPlainLoopReferenceUntiedWithBias) {
  LlamaConfig c = tiny_config(2, 4, 1, false);
  c.qkv_bias = true;
  Llama m = random_model(c, 11);
  torch::NoGradGuard ng;
  for (auto& kv : m->backbone_named_parameters())
    if (kv.first.find(".bias") != std::string::npos) kv.second.normal_(0, 0.1);
  expect_matches_reference(m, {1, 2, 3, 4, 5, 6}, 1e-5);
}

TEST(LlamaModel, MatchesReferenceOnStories260K) {
  std::string path = model_path("stories260K/stories260K.bin");
  if (!file_exists(path)) GTEST_SKIP() << "shared model absent: " << path << " (set PAC_MODEL_DIR)";
  Llama m = llama_load(path);
  // The pretrained weights have larger logits (|logit| ~ 10): 1e-4 absolute.
  expect_matches_reference(m, {1, 403, 407, 261, 378, 265, 317, 426, 13, 320}, 1e-4);
}

TEST(LlamaModel, KVCachePathEqualsFullSequence) {
  torch::NoGradGuard ng;
  Llama m = random_model(tiny_config(2, 4, 2, true), 3);
  std::vector<int> ids = {1, 7, 8, 9, 10, 40, 41, 3, 5, 6};
  torch::Tensor full = m->forward(tokens_of(ids));
  // Prefill 4 positions, then one at a time: each step's logits equal the full pass's row.
  KVCache cache = m->make_cache(1, 16);
  torch::Tensor first = m->forward(tokens_of({ids.begin(), ids.begin() + 4}), 0, &cache);
  EXPECT_LT(max_abs_diff(first[0], full[0].slice(0, 0, 4)), 1e-5);
  for (size_t t = 4; t < ids.size(); t++) {
    torch::Tensor step = m->forward(tokens_of({ids[t]}), t, &cache);
    EXPECT_LT(max_abs_diff(step[0][0], full[0][t]), 1e-5) << "position " << t;
  }
}

TEST(LlamaModel, BatchRowsAreIndependent) {
  torch::NoGradGuard ng;
  Llama m = random_model(tiny_config(1, 4, 2, true), 5);
  torch::Tensor a = tokens_of({1, 2, 3, 4}), b = tokens_of({9, 8, 7, 6});
  torch::Tensor both = m->forward(torch::cat({a, b}, 0));
  EXPECT_LT(max_abs_diff(both[0], m->forward(a)[0]), 1e-5);
  EXPECT_LT(max_abs_diff(both[1], m->forward(b)[0]), 1e-5);
}

TEST(LlamaModel, GroupedQueryEqualsMultiHeadWithRepeatedKV) {
  torch::NoGradGuard ng;
  Llama gqa = random_model(tiny_config(2, 4, 2, true), 13);
  Llama mha(tiny_config(2, 4, 4, true));
  // Same weights, except MHA's k/v head h is GQA's kv head h / 2.
  const int hs = gqa->config().head_dim(), rep = 2;
  for (auto& kv : gqa->backbone_named_parameters()) {
    const std::string& n = kv.first;
    torch::Tensor w = kv.second;
    if (n.find("wk.weight") != std::string::npos || n.find("wv.weight") != std::string::npos) {
      int64_t in = w.size(1);
      w = w.view({-1, 1, hs, in}).expand({-1, rep, hs, in}).reshape({-1, in});
    }
    mha->set_weight(n, w, "test");
  }
  torch::Tensor ids = tokens_of({1, 4, 9, 16, 25, 36, 49});
  EXPECT_LT(max_abs_diff(gqa->forward(ids), mha->forward(ids)), 1e-5);
}

TEST(LlamaModel, TapsMatchForwardPieces) {
  torch::NoGradGuard ng;
  Llama m = random_model(tiny_config(3, 4, 2, false), 17);
  torch::Tensor ids = tokens_of({1, 3, 5, 7});
  Taps taps = m->forward_taps(ids);
  ASSERT_EQ(taps.b.size(), 4u);  // n_layers + 1
  EXPECT_TRUE(torch::equal(taps.b[0], m->embed(ids)));
  EXPECT_TRUE(torch::equal(taps.b[2], m->layer_forward(1, taps.b[1])));
  EXPECT_LT(max_abs_diff(m->classify(taps.final_hidden), m->forward(ids)), 1e-6);
}

TEST(LlamaModel, LoraZeroBIsIdentityAndMergeEqualsUnmerged) {
  torch::NoGradGuard ng;
  Llama m = random_model(tiny_config(2, 4, 2, true), 19);
  torch::Tensor ids = tokens_of({1, 10, 20, 30, 40});
  torch::Tensor base = m->forward(ids);
  m->enable_lora(4, 8.f, /*mlp=*/true);
  // 2 layers x 7 projections x (A, B)
  EXPECT_EQ(m->method_parameters().size(), 28u);
  EXPECT_TRUE(torch::equal(m->forward(ids), base));  // B = 0: exactly unchanged
  for (auto& kv : m->named_parameters(true))
    if (kv.key().find("lora_b") != std::string::npos) kv.value().normal_(0, 0.1);
  torch::Tensor lora = m->forward(ids);
  EXPECT_GT(max_abs_diff(lora, base), 1e-3);
  // The LoRA branch by hand for one projection: scale (alpha/rank = 2) * x A^T B^T.
  LoraLinear wq = m->layer(0)->wq;
  torch::Tensor x = torch::randn({3, 32});
  torch::Tensor by_hand = torch::mm(x, wq->weight.t()) + 2.0 * torch::mm(torch::mm(x, wq->lora_a.t()), wq->lora_b.t());
  EXPECT_LT(max_abs_diff(wq(x), by_hand), 1e-5);
  m->merge_lora();
  EXPECT_EQ(m->method_parameters().size(), 0u);
  EXPECT_LT(max_abs_diff(m->forward(ids), lora), 1e-5);
}

TEST(LlamaModel, AdaptersStartAsIdentity) {
  torch::NoGradGuard ng;
  Llama m = random_model(tiny_config(2, 4, 2, true), 23);
  torch::Tensor ids = tokens_of({1, 2, 4, 8});
  torch::Tensor base = m->forward(ids);
  m->enable_adapters(8);
  // 2 layers x 2 adapters x (down, up) x (weight, bias)
  EXPECT_EQ(m->method_parameters().size(), 16u);
  EXPECT_TRUE(torch::equal(m->forward(ids), base));
  m->layer(1)->ffn_adapter->up->weight.normal_(0, 0.1);
  EXPECT_GT(max_abs_diff(m->forward(ids), base), 1e-4);
}

TEST(LlamaModel, FrozenBackboneGetsNoGradient) {
  Llama m = random_model(tiny_config(2, 4, 2, true), 29);
  m->enable_lora(2, 2.f, false);
  m->freeze_backbone();
  torch::Tensor logits = m->forward(tokens_of({1, 2, 3}));
  logits.sum().backward();
  for (auto& kv : m->named_parameters(true)) {
    bool method = LlamaImpl::is_method_parameter(kv.key());
    EXPECT_EQ(kv.value().grad().defined(), method) << kv.key();
  }
}

TEST(LlamaModel, ParameterNamesAreStable) {
  Llama m(tiny_config(1, 4, 2, false));
  std::set<std::string> names;
  for (auto& kv : m->named_parameters(true)) names.insert(kv.key());
  std::set<std::string> want = {"tok_embeddings.weight", "layers.0.attention_norm.weight", "layers.0.wq.weight",
                                "layers.0.wk.weight",    "layers.0.wv.weight",             "layers.0.wo.weight",
                                "layers.0.ffn_norm.weight", "layers.0.w1.weight",          "layers.0.w2.weight",
                                "layers.0.w3.weight",    "norm.weight",                    "output.weight"};
  EXPECT_EQ(names, want);
}

TEST(LlamaConfig, PresetsHavePublishedParameterCounts) {
  // Published totals: TinyLlama-1.1B 1,100,048,384; Llama-3.2-1B 1,235,814,400;
  // Qwen2.5-0.5B 494,032,768.
  EXPECT_EQ(llama_param_count(llama_config_preset("tinyllama-1.1b")), 1100048384);
  EXPECT_EQ(llama_param_count(llama_config_preset("llama-3.2-1b")), 1235814400);
  EXPECT_EQ(llama_param_count(llama_config_preset("qwen2.5-0.5b")), 494032768);
  // A built model has exactly that many backbone parameters (d768-l12 is small enough to build).
  LlamaConfig c = llama_config_preset("llama-d768-l12");
  Llama m(c);
  int64_t n = 0;
  for (auto& p : m->backbone_parameters()) n += p.numel();
  EXPECT_EQ(n, llama_param_count(c));
}

// The testbed's llama-d512-l8 preset is the shape profiles/models/llama-d512-l8.json
// tells the planner and simulator (a second, independent statement of it).
// Parameters, closed form: 8 x (4 x 512^2 + 3 x 512 x 1376 + 2 x 512) + 512 x 512
// (tied embedding) + 512 (final norm) = 25,567,744.
TEST(LlamaConfig, TestbedPresetMatchesItsProfile) {
  LlamaConfig c = llama_config_preset("llama-d512-l8");
  EXPECT_EQ(llama_param_count(c), 25567744);
  json prof = json::parse(file_read(std::string(PAC_SOURCE_DIR) + "/profiles/models/llama-d512-l8.json"));
  EXPECT_EQ(c.dim, prof["hidden"].get<int>());
  EXPECT_EQ(c.hidden_dim, prof["ffn"].get<int>());
  EXPECT_EQ(c.n_layers, prof["decoder_layers"].get<int>());
  EXPECT_EQ(c.n_heads, prof["heads"].get<int>());
  EXPECT_EQ(c.n_kv_heads, prof["kv_heads"].get<int>());
  EXPECT_EQ(c.vocab_size, prof["vocab"].get<int>());
  EXPECT_EQ(c.max_seq_len, prof["max_seq"].get<int>());
  EXPECT_EQ(c.tied_classifier, prof["tied_embeddings"].get<bool>());
}

TEST(LlamaConfig, RejectsInconsistentShapes) {
  LlamaConfig c = llama_config_preset("tiny");
  c.n_kv_heads = 3;  // 4 heads cannot share 3 kv heads
  try {
    llama_config_validate(c, "cfg.json");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("n_kv_heads"), std::string::npos) << e.what();
  }
  EXPECT_THROW(llama_config_preset("gpt-5"), InputError);
}
