// The trainer: loss and schedule closed forms, every method on stories260K with the
// shipped personal corpus, save/load of the trained weights, decoding with the side
// network, and pac-train's bad-input behaviour.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "src/common/error.h"
#include "src/common/fs.h"
#include "src/llm/checkpoint.h"
#include "src/llm/safetensors.h"
#include "src/llm/trainer.h"

using namespace pac;
namespace fs = std::filesystem;

static std::string src_path(const std::string& rel) { return std::string(PAC_SOURCE_DIR) + "/" + rel; }
static std::string tmp_path(const std::string& rel) {
  std::string d = std::string(PAC_BINARY_DIR) + "/test-tmp/trainer";
  dir_create(d);
  return d + "/" + rel;
}

TEST(LlmTrainer, MaskedLossClosedForm) {
  // Uniform logits over V = 10: every token costs ln(10); masked tokens do not count.
  auto logits = torch::zeros({2, 3, 10});
  auto targets = torch::zeros({2, 3}, torch::kLong);
  auto mask = torch::tensor({1.f, 1.f, 0.f, 1.f, 0.f, 0.f}).view({2, 3});
  EXPECT_NEAR(masked_lm_loss(logits, targets, mask).item<double>(), std::log(10.0), 1e-6);
  // One confident correct token (logit 100 on the target) among two: (0 + ln 10) / 2.
  logits[0][0][0] = 100.f;
  mask = torch::tensor({1.f, 1.f, 0.f, 0.f, 0.f, 0.f}).view({2, 3});
  EXPECT_NEAR(masked_lm_loss(logits, targets, mask).item<double>(), std::log(10.0) / 2, 1e-5);
}

// The tests below train stories260K: they skip, saying where they looked, when the
// shared model files are not there (a clone away from ../shared, PAC_MODEL_DIR unset).
static bool stories_present() {
  return file_exists(model_path("stories260K/stories260K.bin")) && file_exists(model_path("stories260K/tok512.bin"));
}
#define REQUIRE_STORIES()                                                                    \
  if (!stories_present())                                                                    \
  GTEST_SKIP() << "stories260K not found under " << model_dir() << " (set PAC_MODEL_DIR)"

struct Stories {
  std::unique_ptr<Tokenizer> tok;
  std::vector<Example> train, heldout;
  TrainSetup setup() const {
    TrainSetup s;
    s.load_backbone = [] { return llama_load(model_path("stories260K/stories260K.bin")); };
    s.tokenizer_checksum = tok->checksum();
    s.train = train;
    s.heldout = heldout;
    return s;
  }
};

static const Stories& stories() {
  static Stories s = [] {
    Stories st;
    st.tok = tokenizer_load(model_path("stories260K/tok512.bin"));
    DataOptions d;
    d.seq_len = 96;
    data_prepare(src_path("data/personal/train.txt"), src_path("data/personal/heldout.txt"), 0, *st.tok, d, 1,
                 &st.train, &st.heldout);
    st.train.resize(64);  // a slice keeps the test to seconds
    st.heldout.resize(16);
    return st;
  }();
  return s;
}

static TrainOptions quick(const std::string& method) {
  TrainOptions o;
  o.method = method;
  o.epochs = 2;
  o.batch_size = 8;
  o.seq_len = 96;
  o.lr = method == "full" ? 2e-3 : 1e-2;
  o.quiet = true;
  o.threads = 1;  // more threads only slow tiny matmuls down (and oversubscribe a busy CI box)
  return o;
}

TEST(LlmTrainer, CosineScheduleWithWarmup) {
  REQUIRE_STORIES();
  TrainOptions o = quick("lora");
  o.lr = 1e-2;
  o.lr_schedule = "cosine";
  o.warmup_steps = 2;
  o.epochs = 1;
  o.max_steps = 6;
  Trainer t(o, stories().setup());
  std::vector<StepStats> steps;
  t.train_epoch(1, &steps);
  ASSERT_EQ(steps.size(), 6u);
  // Warmup: lr * (s+1)/2 -> 5e-3, 1e-2. Then 0.5 lr (1 + cos(pi (s-2)/4)) over 4 steps:
  // s=2 -> 1e-2, s=4 -> 5e-3, s=5 -> 0.5e-2 (1 + cos(3pi/4)) = 1.4645e-3.
  EXPECT_NEAR(steps[0].lr, 5e-3, 1e-12);
  EXPECT_NEAR(steps[1].lr, 1e-2, 1e-12);
  EXPECT_NEAR(steps[2].lr, 1e-2, 1e-12);
  EXPECT_NEAR(steps[4].lr, 5e-3, 1e-12);
  EXPECT_NEAR(steps[5].lr, 0.5e-2 * (1 + std::cos(3 * M_PI / 4)), 1e-12);
}

// Each method, two short epochs on the personal corpus: held-out loss must drop, the
// saved file must reproduce the trained model's held-out loss when loaded back.
static void method_learns_and_round_trips(const std::string& method) {
  REQUIRE_STORIES();
  const Stories& st = stories();
  TrainOptions o = quick(method);
  Trainer t(o, st.setup());
  TrainResult r = t.run();
  EXPECT_LT(r.eval_loss_after, r.eval_loss_before - 0.1) << method;
  std::string out = tmp_path(method + ".safetensors");
  t.save(out);
  SafeTensors saved = safetensors_read(out);
  EXPECT_EQ(saved.metadata.at("method"), method);
  int64_t n = 0;
  for (auto& kv : saved.tensors) n += kv.second.numel();
  // Only the trainable weights are stored (the whole model for full fine-tuning).
  EXPECT_EQ(n, r.trainable_params) << method;

  Llama fresh = llama_load(model_path("stories260K/stories260K.bin"));
  SideNetwork side{nullptr};
  EXPECT_EQ(adapter_load(out, fresh, &side), method);
  std::vector<const Example*> batch;
  for (auto& e : st.heldout) batch.push_back(&e);
  torch::Tensor in, tg, mk;
  examples_to_tensors(batch, &in, &tg, &mk);
  torch::NoGradGuard ng;
  torch::Tensor logits;
  if (method == "parallel_adapters") logits = side->forward(torch::stack(fresh->forward_taps(in).b, 1));
  else logits = fresh->forward(in);
  EXPECT_NEAR(masked_lm_loss(logits, tg, mk).item<double>(), r.eval_loss_after, 1e-4) << method;
}

TEST(LlmTrainer, FullLearnsAndRoundTrips) { method_learns_and_round_trips("full"); }
TEST(LlmTrainer, LoraLearnsAndRoundTrips) { method_learns_and_round_trips("lora"); }
TEST(LlmTrainer, AdaptersLearnAndRoundTrip) { method_learns_and_round_trips("adapters"); }
TEST(LlmTrainer, ParallelAdaptersLearnAndRoundTrip) { method_learns_and_round_trips("parallel_adapters"); }

TEST(LlmTrainer, SideDecodingWithZeroGateMatchesPlainGreedy) {
  REQUIRE_STORIES();
  // Untrained side network (gate 0) = the backbone's logits, so greedy decoding through
  // generate_side must give llmcore's generate() tokens exactly.
  Llama m = llama_load(model_path("stories260K/stories260K.bin"));
  SideNetwork side(side_config_make(m->config(), 8));
  side->init_pruned(m);
  side->set_head(m->norm->weight, m->classifier_weight());
  const Tokenizer& tok = *stories().tok;
  GenerateOptions g;
  g.steps = 40;
  auto prompt = tok.encode("Dear notebook,", true, false);
  GenerateResult a = generate(m, tok, prompt, g);
  GenerateResult b = generate_side(m, side, tok, prompt, g);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.text, b.text);
}

TEST(LlmTrainer, BadAdapterFiles) {
  REQUIRE_STORIES();
  Llama m = llama_load(model_path("stories260K/stories260K.bin"));
  SideNetwork side{nullptr};
  std::string p = tmp_path("not-an-adapter.safetensors");
  file_write_atomic(p, std::string("\x05\x00\x00\x00\x00\x00\x00\x00{}", 10));
  EXPECT_THROW(adapter_load(p, m, &side), InputError);
  // A valid safetensors file made for another backbone shape.
  std::string q = tmp_path("wrong-shape.safetensors");
  safetensors_write(q, {{"gate", torch::zeros({8})}},
                    {{"method", "parallel_adapters"}, {"backbone.dim", "8"}, {"backbone.n_layers", "1"},
                     {"backbone.vocab_size", "512"}});
  try {
    adapter_load(q, m, &side);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(q), std::string::npos) << e.what();
  }
}

static int run_tool(const std::string& args) {
  const char* bin = std::getenv("PAC_BIN_DIR");
  std::string dir = bin ? bin : std::string(PAC_BINARY_DIR) + "/bin";
  int rc = std::system((dir + "/pac-train " + args + " >/dev/null 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(LlmTrainer, CliBadInputExits2WithoutOutput) {
  REQUIRE_STORIES();
  std::string model = model_path("stories260K/stories260K.bin"), tok = model_path("stories260K/tok512.bin");
  std::string out = tmp_path("cli-out.safetensors");
  fs::remove(out);
  std::string base = "--model " + model + " --tokenizer " + tok + " --epochs 1 --out " + out;
  EXPECT_EQ(run_tool(base + " --data /nonexistent.txt"), 2);
  std::string bad = tmp_path("bad.jsonl");
  file_write_atomic(bad, std::string("{\"text\": \"ok\"}\n{oops\n"));
  EXPECT_EQ(run_tool(base + " --data " + bad), 2);
  EXPECT_EQ(run_tool(base + " --data " + src_path("data/personal/heldout.txt") + " --method magic"), 2);
  EXPECT_EQ(run_tool(base + " --data " + src_path("data/personal/heldout.txt") + " --adapter " + bad), 2);
  std::string file = tmp_path("cache-is-a-file");
  file_write_atomic(file, std::string("x"));
  EXPECT_EQ(run_tool(base + " --data " + src_path("data/personal/heldout.txt") + " --cache-dir " + file), 2);
  std::string held = " --data " + src_path("data/personal/heldout.txt");
  EXPECT_EQ(run_tool("--model /nonexistent.bin --tokenizer " + tok + " --out " + out + held), 2);
  // Cut at an entry boundary: parses cleanly but lacks the byte tokens (once a crash in encode).
  std::string short_tok = tmp_path("truncated-tok.bin");
  file_write_atomic(short_tok, file_read(tok).substr(0, 100));
  EXPECT_EQ(run_tool("--model " + model + " --tokenizer " + short_tok + " --out " + out + held), 2);
  EXPECT_EQ(run_tool(base + held + " --seq-len 100000"), 2);
  EXPECT_FALSE(fs::exists(out));
  // And a good run writes the file and exits 0.
  EXPECT_EQ(run_tool(base + " --data " + src_path("data/personal/heldout.txt") + " --max-steps 2 --seq-len 64"), 0);
  EXPECT_TRUE(fs::exists(out));
}
