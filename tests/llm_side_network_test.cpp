// Parallel Adapters: shape rules, structured pruning (checked against the backbone
// itself with k = 1), the zero gate, and gradient isolation from the frozen backbone.
#include <gtest/gtest.h>

#include "src/common/error.h"
#include "src/llm/side_network.h"
#include "src/llm/trainer.h"

using namespace pac;

static Llama tiny_model(uint64_t seed) {
  Llama m(llama_config_preset("tiny"));
  m->init_random(seed);
  return m;
}

static torch::Tensor tiny_tokens() {
  return torch::arange(0, 24, torch::kLong).remainder(60).view({2, 12}) + 3;
}

static torch::Tensor taps_of(Llama& m, const torch::Tensor& tokens) {
  torch::NoGradGuard ng;
  return torch::stack(m->forward_taps(tokens).b, 1);
}

TEST(LlmSideNetwork, ConfigShapes) {
  // stories260K: d 64, 8 heads, hidden 172, k 8 -> r 8, 1 head of 8, FFN 172/8 = 21.
  SideConfig s = side_config_make(llama_config_preset("stories260K"), 8);
  EXPECT_EQ(s.width, 8);
  EXPECT_EQ(s.n_heads, 1);
  EXPECT_EQ(s.head_dim, 8);
  EXPECT_EQ(s.hidden_dim, 21);
  // d 768, 12 heads, k 8 -> r 96, 12/8 = 1 head of 96.
  SideConfig b = side_config_make(llama_config_preset("llama-d768-l12"), 8);
  EXPECT_EQ(b.width, 96);
  EXPECT_EQ(b.n_heads * b.head_dim, 96);
  // k 4 on d 768 -> r 192, 3 heads of 64.
  SideConfig c = side_config_make(llama_config_preset("llama-d768-l12"), 4);
  EXPECT_EQ(c.n_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_THROW(side_config_make(llama_config_preset("stories260K"), 7), InputError);
}

TEST(LlmSideNetwork, PruningWithK1ReproducesTheBackbone) {
  // With k = 1 pruning keeps every dimension, head and FFN unit in order, and the
  // ladder inputs start at zero, so a_i = layer_i(a_{i-1}) with a_0 = b_0: a_L == b_L,
  // and norm(a_L) == the backbone's final hidden state.
  Llama m = tiny_model(1);
  SideNetwork side(side_config_make(m->config(), 1));
  side->init_pruned(m);
  auto tok = tiny_tokens();
  auto taps = taps_of(m, tok);
  torch::NoGradGuard ng;
  auto a = side->side_chain(taps);
  auto b_last = taps.select(1, m->config().n_layers);
  EXPECT_LT((a - b_last).abs().max().item<double>(), 1e-4);
  auto fh = m->forward_taps(tok).final_hidden;
  EXPECT_LT((side->norm(a) - fh).abs().max().item<double>(), 1e-4);
}

TEST(LlmSideNetwork, PruningKeepsLargestResidualDims) {
  Llama m = tiny_model(2);
  {
    torch::NoGradGuard ng;
    // Scale 4 residual dimensions up 10x in the embedding: they dominate the scores.
    for (int j : {3, 10, 17, 29}) m->tok_embeddings->weight.select(1, j).mul_(10.0);
  }
  SideNetwork side(side_config_make(m->config(), 8));  // r = 32/8 = 4
  side->init_pruned(m);
  // down0 is the selection matrix: row j has a single 1 at column S[j], S ascending.
  auto w = side->down0->weight;
  ASSERT_EQ(w.size(0), 4);
  std::vector<int64_t> cols;
  for (int r = 0; r < 4; r++) cols.push_back(w[r].argmax().item<int64_t>());
  EXPECT_EQ(cols, (std::vector<int64_t>{3, 10, 17, 29}));
  EXPECT_DOUBLE_EQ(w.sum().item<double>(), 4.0);
}

TEST(LlmSideNetwork, ZeroGateGivesBackboneLogits) {
  Llama m = tiny_model(3);
  SideNetwork side(side_config_make(m->config(), 4));
  side->init_pruned(m);
  side->set_head(m->norm->weight, m->classifier_weight());
  auto tok = tiny_tokens();
  torch::NoGradGuard ng;
  auto want = m->forward(tok);
  auto got = side->forward(taps_of(m, tok));
  // gate = 0: logits = classifier(final_norm(b_L)) = the backbone's own logits.
  EXPECT_LT((got - want).abs().max().item<double>(), 1e-5);
}

TEST(LlmSideNetwork, BackwardTouchesOnlyTheSideNetwork) {
  Llama m = tiny_model(4);
  // The backbone's parameters still require grad here: NoGradGuard alone must keep
  // the backbone out of the autograd graph.
  for (auto& p : m->parameters()) ASSERT_TRUE(p.requires_grad());
  SideNetwork side(side_config_make(m->config(), 4));
  side->init_random(5);
  side->set_head(m->norm->weight, m->classifier_weight());
  {
    torch::NoGradGuard ng;
    side->gate.fill_(0.5);  // open gate: every side parameter is on the loss path
  }
  auto tok = tiny_tokens();
  auto taps = taps_of(m, tok);
  EXPECT_FALSE(taps.requires_grad());
  EXPECT_FALSE(taps.grad_fn());
  auto logits = side->forward(taps);
  auto targets = tok.roll(-1, 1);
  auto loss = masked_lm_loss(logits, targets, torch::ones(tok.sizes()));
  loss.backward();
  for (auto& kv : m->named_parameters()) EXPECT_FALSE(kv.value().grad().defined()) << kv.key();
  for (auto& kv : side->named_parameters()) {
    ASSERT_TRUE(kv.value().grad().defined()) << kv.key();
    EXPECT_GT(kv.value().grad().abs().sum().item<double>(), 0.0) << kv.key();
  }
}

TEST(LlmSideNetwork, StateRoundTripAndBadShapes) {
  Llama m = tiny_model(6);
  SideConfig c = side_config_make(m->config(), 4);
  SideNetwork a(c), b(c);
  a->init_random(7);
  b->init_random(8);
  b->load_state(a->state(), "mem");
  for (auto& kv : a->state()) EXPECT_TRUE(torch::equal(kv.second, b->state()[kv.first])) << kv.first;
  SideConfig back = side_config_from_metadata(side_config_metadata(c), "mem");
  EXPECT_EQ(back.width, c.width);
  EXPECT_EQ(back.hidden_dim, c.hidden_dim);
  EXPECT_FLOAT_EQ(back.norm_eps, c.norm_eps);
  auto st = a->state();
  st["up.weight"] = torch::zeros({3, 3});
  try {
    b->load_state(st, "x.safetensors");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("x.safetensors: up.weight"), std::string::npos) << e.what();
  }
}
