// Data pipeline: paragraph / JSONL parsing, loss masks, windows, packing, shuffles.
#include <gtest/gtest.h>

#include "tests/test_util.h"

#include <cmath>
#include <set>

#include "src/common/error.h"
#include "src/llm/dataset.h"

using namespace pac;

// One token per character: makes every expected token list readable by hand.
static std::vector<int> char_encode(const std::string& s) {
  std::vector<int> out;
  for (unsigned char c : s) out.push_back(c);
  return out;
}


TEST(LlmDataset, TextParagraphsSplitAtBlankLines) {
  auto s = dataset_read_text("first line\nsecond line\n\n  \nthird\r\n", "t.txt");
  // Two paragraphs; the first keeps its line break, the CR is dropped. Lines 3 and 4
  // are blank (spaces only count as blank), so "third" starts on line 5.
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].response, "first line\nsecond line");
  EXPECT_EQ(s[0].line, 1);
  EXPECT_EQ(s[1].response, "third");
  EXPECT_EQ(s[1].line, 5);
  EXPECT_TRUE(s[0].prompt.empty());
}

TEST(LlmDataset, JsonlTextAndInstruction) {
  auto s = dataset_read_jsonl(
      "{\"text\": \"hello\"}\n\n{\"instruction\": \"Say hi\", \"input\": \"to Pip\", \"output\": \"Hi Pip\"}\n"
      "{\"instruction\": \"Count\", \"output\": \"1 2 3\"}\n",
      "d.jsonl");
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0].response, "hello");
  EXPECT_EQ(s[1].prompt, "Instruction: Say hi\nInput: to Pip\nResponse: ");
  EXPECT_EQ(s[1].response, "Hi Pip");
  EXPECT_EQ(s[1].line, 3);
  EXPECT_EQ(s[2].prompt, "Instruction: Count\nResponse: ");
}

TEST(LlmDataset, BadJsonlNamesFileAndLine) {
  std::string e = input_error([] { dataset_read_jsonl("{\"text\": \"ok\"}\n{\"text\": \"no end\n", "bad.jsonl"); });
  EXPECT_NE(e.find("bad.jsonl"), std::string::npos) << e;
  EXPECT_NE(e.find("line 2"), std::string::npos) << e;
  e = input_error([] { dataset_read_jsonl("{\"txt\": \"typo\"}\n", "k.jsonl"); });
  EXPECT_NE(e.find("k.jsonl: line 1"), std::string::npos) << e;
  e = input_error([] { dataset_read_jsonl("{\"text\": 5}\n", "n.jsonl"); });
  EXPECT_NE(e.find("line 1: $.text"), std::string::npos) << e;
  e = input_error([] { dataset_read_text(std::string("ab\0cd", 5), "bin.txt"); });
  EXPECT_NE(e.find("binary"), std::string::npos) << e;
  e = input_error([] { dataset_read("/nonexistent/x.txt"); });
  EXPECT_NE(e.find("/nonexistent/x.txt"), std::string::npos) << e;
  e = input_error([] { dataset_read_text("\n\n  \n", "empty.txt"); });
  EXPECT_NE(e.find("empty.txt"), std::string::npos) << e;
}

TEST(LlmDataset, PaddedExampleAndMask) {
  DataOptions o;
  o.seq_len = 8;
  TextSample s;
  s.response = "abc";
  auto ex = dataset_tokenize({s}, char_encode, o, "x");
  ASSERT_EQ(ex.size(), 1u);
  // BOS a b c EOS then pad: 9 tokens; targets a b c EOS count, padding does not.
  std::vector<int32_t> want{1, 'a', 'b', 'c', 2, 0, 0, 0, 0};
  EXPECT_EQ(ex[0].tokens, want);
  std::vector<uint8_t> mask{1, 1, 1, 1, 0, 0, 0, 0};
  EXPECT_EQ(ex[0].mask, mask);
}

TEST(LlmDataset, LongSampleCutIntoWindowsTrainsEveryTargetOnce) {
  DataOptions o;
  o.seq_len = 4;
  TextSample s;
  s.response = "abcdefg";  // 9 tokens with BOS/EOS -> 8 targets
  auto ex = dataset_tokenize({s}, char_encode, o, "x");
  // Windows start at 0 and 4: [BOS a b c d], [d e f g EOS]; 4 + 4 = 8 targets.
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(ex[1].tokens, (std::vector<int32_t>{'d', 'e', 'f', 'g', 2}));
  EXPECT_EQ(examples_loss_tokens(ex), 8);
  EXPECT_EQ(ex[0].id, 0);
  EXPECT_EQ(ex[1].id, 1);
}

TEST(LlmDataset, InstructionPromptIsMaskedOut) {
  DataOptions o;
  o.seq_len = 16;
  TextSample s;
  s.prompt = "Q:";
  s.response = "ok";
  auto ex = dataset_tokenize({s}, char_encode, o, "x");
  // BOS Q : o k EOS: targets Q, ':' are prompt (0), o k EOS count (1).
  std::vector<uint8_t> mask(16, 0);
  mask[2] = mask[3] = mask[4] = 1;
  EXPECT_EQ(ex[0].mask, mask);
}

TEST(LlmDataset, PackingConcatenatesSamples) {
  DataOptions o;
  o.seq_len = 4;
  o.pack = true;
  TextSample a, b;
  a.response = "ab";
  b.response = "cd";
  auto ex = dataset_tokenize({a, b}, char_encode, o, "x");
  // Stream BOS a b EOS BOS c d EOS -> windows [BOS a b EOS BOS] and [BOS c d EOS pad].
  // A BOS target is not trained: masks 1 1 1 0 and 1 1 1 0.
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(ex[0].tokens, (std::vector<int32_t>{1, 'a', 'b', 2, 1}));
  EXPECT_EQ(ex[0].mask, (std::vector<uint8_t>{1, 1, 1, 0}));
  EXPECT_EQ(ex[1].tokens, (std::vector<int32_t>{1, 'c', 'd', 2, 0}));
  EXPECT_EQ(ex[1].mask, (std::vector<uint8_t>{1, 1, 1, 0}));
}

TEST(LlmDataset, EpochOrderIsSeededPermutation) {
  auto a = epoch_order(50, 7, 1), b = epoch_order(50, 7, 1), c = epoch_order(50, 7, 2), d = epoch_order(50, 8, 1);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(a, d);
  std::set<int64_t> seen(a.begin(), a.end());
  EXPECT_EQ(seen.size(), 50u);
  EXPECT_EQ(*seen.begin(), 0);
  EXPECT_EQ(*seen.rbegin(), 49);
}

// The data-parallel order by owner: a permutation; with owners of 12 and 12 samples every
// mini-batch of 8 has exactly 4 from each (alternating places, the deficits tie and the
// lower rank goes first); with 6 : 12 : 6 every prefix of length k holds owner g's samples
// within one of count_g x k / n (so a batch of 8 has 2, 4 and 2: 6/24 x 8 = 2 exactly);
// each owner's samples are shuffled per epoch; one owner is the trainer's epoch_order.
TEST(LlmDataset, EpochOrderByOwnerGivesEachOwnerItsShare) {
  std::vector<int> two(24), three(24);
  for (int i = 0; i < 24; i++) {
    two[i] = (i * 7) % 24 < 12 ? 0 : 1;
    three[i] = i % 4 == 0 ? 0 : (i % 4 == 2 ? 2 : 1);  // 6, 12, 6
  }
  std::vector<int64_t> o = epoch_order_by_owner(two, 5, 2);
  std::set<int64_t> seen(o.begin(), o.end());
  EXPECT_EQ(o.size(), 24u);
  EXPECT_EQ(seen.size(), 24u);
  for (int k = 0; k < 24; k++) EXPECT_EQ(two[o[k]], k % 2) << "place " << k;
  o = epoch_order_by_owner(three, 5, 2);
  seen = std::set<int64_t>(o.begin(), o.end());
  EXPECT_EQ(seen.size(), 24u);
  const int count[3] = {6, 12, 6};
  int placed[3] = {0, 0, 0};
  for (int k = 1; k <= 24; k++) {
    placed[three[o[k - 1]]]++;
    for (int g = 0; g < 3; g++) EXPECT_LT(std::fabs(placed[g] - count[g] * k / 24.0), 1.0) << "prefix " << k << " owner " << g;
    if (k % 8 == 0) {
      EXPECT_EQ(placed[0], 2 * k / 8);
      EXPECT_EQ(placed[1], 4 * k / 8);
    }
  }
  // Another epoch: the same places per owner, other samples in them; the same epoch again
  // gives the same order.
  std::vector<int64_t> e3 = epoch_order_by_owner(three, 5, 3);
  EXPECT_NE(e3, o);
  EXPECT_EQ(epoch_order_by_owner(three, 5, 2), o);
  for (int k = 0; k < 24; k++) EXPECT_EQ(three[e3[k]], three[o[k]]);
  EXPECT_EQ(epoch_order_by_owner(std::vector<int>(24, 0), 5, 2), epoch_order(24, 5, 2));
  EXPECT_THROW(epoch_order_by_owner({0, -1}, 5, 2), InputError);
}

TEST(LlmDataset, SplitIsDisjointAndSized) {
  std::vector<TextSample> all(100);
  for (int i = 0; i < 100; i++) all[i].response = "s" + std::to_string(i);
  std::vector<TextSample> tr, ho;
  dataset_split(all, 0.2, 3, &tr, &ho);
  // round(0.2 * 100) = 20 held out, 80 train, no overlap.
  EXPECT_EQ(tr.size(), 80u);
  EXPECT_EQ(ho.size(), 20u);
  std::set<std::string> names;
  for (auto& s : tr) names.insert(s.response);
  for (auto& s : ho) names.insert(s.response);
  EXPECT_EQ(names.size(), 100u);
  EXPECT_THROW(dataset_split(all, 1.0, 3, &tr, &ho), InputError);
}

TEST(LlmDataset, ShippedPersonalCorpusParses) {
  std::string dir = std::string(PAC_SOURCE_DIR) + "/data/personal/";
  auto tr = dataset_read(dir + "train.txt");
  auto ho = dataset_read(dir + "heldout.txt");
  // make_corpus.py writes 300 + 60 entries, each one paragraph signed by Tomas.
  EXPECT_EQ(tr.size(), 300u);
  EXPECT_EQ(ho.size(), 60u);
  for (auto& s : ho) EXPECT_NE(s.response.find("Tomas"), std::string::npos);
}
