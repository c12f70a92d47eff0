// Generation: THE reference test (greedy stories260K reproduces llama2.c's run.c text),
// the KV-cache decode loop against recomputing the whole sequence each step, and the
// sampler's determinism, distribution and top-p limit.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>

#include "src/common/fs.h"
#include "src/common/json_in.h"
#include "src/llm/checkpoint.h"
#include "src/llm/generate.h"

using namespace pac;

static std::string stories_dir() { return model_path("stories260K"); }

#define REQUIRE_STORIES()                                                                                   \
  if (!file_exists(path_join(stories_dir(), "stories260K.bin")) || !file_exists(path_join(stories_dir(), "tok512.bin"))) \
  GTEST_SKIP() << "shared model files absent in " << stories_dir() << " (set PAC_MODEL_DIR)"

// ../shared/models/README.md: the beginning of run.c's greedy output from BOS, 256 steps.
static const char* kReference =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a "
    "big, red ball. She wanted to play with it, but it was too high.";

// Greedy decoding the slow way: the whole sequence through forward() at every step, no cache.
static std::vector<int> greedy_without_cache(Llama& m, int steps) {
  torch::NoGradGuard ng;
  std::vector<int64_t> seq = {1};
  while ((int)seq.size() <= steps) {  // positions 0..steps-1 each predict one token
    torch::Tensor logits = m->forward(torch::tensor(seq, torch::kInt64).view({1, -1}));
    int next = (int)logits[0][(int64_t)seq.size() - 1].argmax().item<int64_t>();
    if (next == 1) break;
    seq.push_back(next);
  }
  return std::vector<int>(seq.begin(), seq.end());
}

TEST(Generate, GreedyStories260KReproducesLlama2cText) {
  REQUIRE_STORIES();
  at::set_num_threads(1);
  Llama m = llama_load(path_join(stories_dir(), "stories260K.bin"));
  auto tok = tokenizer_load(path_join(stories_dir(), "tok512.bin"));
  GenerateOptions opt;
  opt.steps = 256;
  opt.temperature = 0;
  opt.stop_at_eos = false;  // run.c stops only at BOS
  GenerateResult r = generate(m, *tok, {1}, opt);
  EXPECT_EQ(r.text.substr(0, std::string(kReference).size()), kReference) << r.text;
  // run.c with -n 256 from BOS runs 256 positions and prints 256 tokens.
  EXPECT_EQ(r.tokens.size(), 257u);
  // Independent path: recomputing the full sequence at every step (no KV cache, no
  // prefill) gives the same tokens; 128 positions keep the test quick.
  EXPECT_EQ(greedy_without_cache(m, 128), std::vector<int>(r.tokens.begin(), r.tokens.begin() + 129));
}

TEST(Generate, PromptIsContinuedAndStreamed) {
  REQUIRE_STORIES();
  Llama m = llama_load(path_join(stories_dir(), "stories260K.bin"));
  auto tok = tokenizer_load(path_join(stories_dir(), "tok512.bin"));
  std::vector<int> prompt = tok->encode("Once upon a time, there was a little girl named Lily.", true, false);
  GenerateOptions opt;
  opt.steps = 40;
  std::string streamed;
  GenerateResult r = generate(m, *tok, prompt, opt, [&](const std::string& p) { streamed += p; });
  // The prompt's greedy continuation is the reference's continuation (same positions).
  EXPECT_EQ(r.text.substr(0, 80), std::string(kReference).substr(0, 80));
  EXPECT_EQ(streamed, r.text);
  EXPECT_EQ((int)r.tokens.size(), 40 + 1);  // 40 positions run, the last one's token kept
  EXPECT_EQ(std::vector<int>(r.tokens.begin(), r.tokens.begin() + prompt.size()), prompt);
}

TEST(Sampler, SameSeedSameTokensOtherSeedOtherTokens) {
  REQUIRE_STORIES();
  Llama m = llama_load(path_join(stories_dir(), "stories260K.bin"));
  auto tok = tokenizer_load(path_join(stories_dir(), "tok512.bin"));
  GenerateOptions opt;
  opt.steps = 64;
  opt.temperature = 1.0f;
  opt.top_p = 0.9f;
  opt.seed = 1234;
  GenerateResult a = generate(m, *tok, {1}, opt), b = generate(m, *tok, {1}, opt);
  EXPECT_EQ(a.tokens, b.tokens);
  opt.seed = 99;
  EXPECT_NE(generate(m, *tok, {1}, opt).tokens, a.tokens);
  // A nucleus smaller than the top token's probability keeps only the top token: greedy.
  opt.top_p = 1e-6f;
  opt.stop_at_eos = false;
  GenerateOptions greedy = opt;
  greedy.temperature = 0;
  EXPECT_EQ(generate(m, *tok, {1}, opt).tokens, generate(m, *tok, {1}, greedy).tokens);
}

TEST(Sampler, DrawsTheSoftmaxDistribution) {
  // logits log(0.5), log(0.3), log(0.2) at temperature 1: frequencies 0.5 / 0.3 / 0.2 within
  // 3 standard deviations (sqrt(p(1-p)/n) <= 0.0035 for n = 20000).
  Sampler s(3, 1.0f, 1.0f, 42);
  int counts[3] = {0, 0, 0};
  const int n = 20000;
  for (int i = 0; i < n; i++) {
    float logits[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    counts[s.sample(logits)]++;
  }
  EXPECT_NEAR(counts[0] / (double)n, 0.5, 0.0106);
  EXPECT_NEAR(counts[1] / (double)n, 0.3, 0.0098);
  EXPECT_NEAR(counts[2] / (double)n, 0.2, 0.0085);
  // top-p 0.6: the nucleus is {0, 1} (0.5 < 0.6 <= 0.8), renormalised to 0.625 / 0.375.
  Sampler t(3, 1.0f, 0.6f, 7);
  int c2[3] = {0, 0, 0};
  for (int i = 0; i < n; i++) {
    float logits[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    c2[t.sample(logits)]++;
  }
  EXPECT_EQ(c2[2], 0);
  EXPECT_NEAR(c2[0] / (double)n, 0.625, 0.0103);
}

TEST(Sampler, RandomStreamIsXorshiftStar) {
  // xorshift* from state 1, by hand: state ^= state>>12 (1); ^= state<<25 (1 + 2^25 = 33554433);
  // ^= state>>27 (33554433 ^ 0 = 33554433); output = (33554433 * 0x2545F4914F6CDD1D) >> 32.
  Sampler s(2, 1.0f, 1.0f, 1);
  uint64_t st = 33554433ull;
  EXPECT_EQ(s.random_u32(), (uint32_t)((st * 0x2545F4914F6CDD1Dull) >> 32));
}

static std::string bin_dir() {
  const char* d = std::getenv("PAC_BIN_DIR");
  return d ? d : std::string(PAC_BINARY_DIR) + "/bin";
}

TEST(GenerateCli, JsonOutputAndBadInput) {
  REQUIRE_STORIES();
  std::string tool = path_join(bin_dir(), "pac-generate");
  if (!file_exists(tool)) GTEST_SKIP() << "pac-generate not built: " << tool;
  std::string common = " --model " + path_join(stories_dir(), "stories260K.bin") + " --tokenizer " +
                       path_join(stories_dir(), "tok512.bin");
  FILE* p = popen((tool + common + " --steps 60 --json 2>/dev/null").c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  EXPECT_EQ(WEXITSTATUS(pclose(p)), 0);
  JsonIn j = JsonIn::from(json::parse(out), "pac-generate --json");
  EXPECT_EQ(j.string("text").substr(0, 60), std::string(kReference).substr(0, 60));
  EXPECT_EQ(j.integer("generated"), 60);
  int rc = std::system((tool + " --model /nonexistent/model.bin --tokenizer " + path_join(stories_dir(), "tok512.bin") +
                        " 2>/dev/null >/dev/null").c_str());
  EXPECT_EQ(WEXITSTATUS(rc), 2);
  rc = std::system((tool + common + " --temperature -1 2>/dev/null >/dev/null").c_str());
  EXPECT_EQ(WEXITSTATUS(rc), 2);
}
