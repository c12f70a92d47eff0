// Tokenizers: llama2.c tokenizer.bin (the shipped tok512.bin) against ids derived
// independently (a Python transcription of run.c's BPE over the same file, pieces listed
// next to each id), and SentencePiece models trained here from a few lines of text.
#include <gtest/gtest.h>

#include "tests/test_util.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>

#include "src/common/error.h"
#include "src/common/fs.h"
#include "src/llm/checkpoint.h"
#include "src/llm/tokenizer.h"

using namespace pac;

static std::string tok512_path() { return model_path("stories260K/tok512.bin"); }

#define REQUIRE_TOK512()                                                                        \
  if (!file_exists(tok512_path())) GTEST_SKIP() << "shared model files absent: " << tok512_path() \
                                                << " (set PAC_MODEL_DIR)"


static std::string temp_dir(const std::string& name) {
  std::string d = (std::filesystem::temp_directory_path() / (name + "." + std::to_string(getpid()))).string();
  std::filesystem::remove_all(d);
  dir_create(d);
  return d;
}

TEST(Llama2cTokenizer, LoadsTok512) {
  REQUIRE_TOK512();
  auto tok = tokenizer_load(tok512_path());
  // tok512.bin: 512 pieces; token 1 is BOS "\n<s>\n", 2 is EOS, 3.. are <0x00>.. bytes.
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->piece(1), "\n<s>\n");
  EXPECT_EQ(tok->piece(3 + 0x0A), "<0x0A>");
  // SHA-256 listed in ../shared/models/README.md.
  EXPECT_EQ(tok->checksum(), "037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312");
  EXPECT_EQ(tokenizer_checksum(tok512_path()), tok->checksum());
}

TEST(Llama2cTokenizer, EncodesKnownIds) {
  REQUIRE_TOK512();
  auto tok = tokenizer_load(tok512_path());
  // " Once" 403, " upon" 407, " a" 261, " time" 378 (dummy-prefix space merged in).
  EXPECT_EQ(tok->encode("Once upon a time", true, false), (std::vector<int>{1, 403, 407, 261, 378}));
  // " Lily" 317, " lo" 401, "ved" 396, " the" 265, " p" 282, "ar" 295, "k" 433, "." 426, "<0x0A>" 13, EOS 2
  EXPECT_EQ(tok->encode("Lily loved the park.\n", false, true),
            (std::vector<int>{317, 401, 396, 265, 282, 295, 433, 426, 13, 2}));
  // " H" 320, "i" 417, " " 410, "7" 491: a space before a digit stays alone.
  EXPECT_EQ(tok->encode("Hi 7", false, false), (std::vector<int>{320, 417, 410, 491}));
  // "日" (E6 97 A5) is not in the vocabulary: byte fallback to <0xE6>=233 <0x97>=154 <0xA5>=168.
  EXPECT_EQ(tok->encode("日", false, false), (std::vector<int>{410, 233, 154, 168}));
  // Empty text: no dummy prefix, only BOS.
  EXPECT_EQ(tok->encode("", true, false), (std::vector<int>{1}));
}

TEST(Llama2cTokenizer, DecodeRoundTrips) {
  REQUIRE_TOK512();
  auto tok = tokenizer_load(tok512_path());
  const char* texts[] = {"Once upon a time", "Lily loved the park.\nThe end!", "日本 and € 42", "  two  spaces"};
  for (const char* t : texts) {
    // decode() drops the leading dummy-prefix space after BOS, as run.c prints it.
    EXPECT_EQ(tok->decode(tok->encode(t, true, false)), t) << t;
  }
  // Without BOS the first piece keeps its space: " Once".
  EXPECT_EQ(tok->decode_piece(0, 403), " Once");
  EXPECT_EQ(tok->decode_piece(1, 403), "Once");
  EXPECT_EQ(tok->decode_piece(5, 13), "\n");  // byte token <0x0A>
}

TEST(Llama2cTokenizer, BadFilesNameTheProblem) {
  REQUIRE_TOK512();
  std::string dir = temp_dir("pac_tok_bad");
  std::string bytes = file_read(tok512_path());
  std::string cut = path_join(dir, "cut.bin");
  file_write_atomic(cut, bytes.substr(0, 1000));
  std::string e = input_error([&] { tokenizer_load(cut); });
  EXPECT_NE(e.find(cut), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
  // 100 bytes end exactly after token 6 (<0x03>): parses, but lacks the byte tokens.
  std::string boundary = path_join(dir, "boundary.bin");
  file_write_atomic(boundary, bytes.substr(0, 100));
  e = input_error([&] { tokenizer_load(boundary); });
  EXPECT_NE(e.find("has 7 tokens but no byte token <0x04>"), std::string::npos) << e;
  std::string garbage = path_join(dir, "garbage.bin");
  file_write_atomic(garbage, std::string("\xff\xff\xff\x7f", 4) + "hello");
  e = input_error([&] { tokenizer_load(garbage); });
  EXPECT_NE(e.find("max_token_length"), std::string::npos) << e;
  e = input_error([&] { tokenizer_load(path_join(dir, "missing.bin")); });
  EXPECT_NE(e.find("missing.bin"), std::string::npos) << e;
  std::filesystem::remove_all(dir);
}

class SentencePieceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = temp_dir("pac_spm");
    std::ofstream f(path_join(dir_, "corpus.txt"));
    const char* lines[] = {"the cat sat on the mat", "the dog sat on the log", "a cat and a dog met on a mat",
                           "the sun is warm and the sky is blue", "my notebook holds the small things I see"};
    for (int rep = 0; rep < 20; rep++)
      for (const char* l : lines) f << l << "\n";
    f.close();
    // byte_fallback: characters never seen in training still encode (as <0xNN> pieces).
    sentencepiece_train("--input=" + path_join(dir_, "corpus.txt") + " --model_prefix=" + path_join(dir_, "m") +
                        " --vocab_size=300 --model_type=bpe --byte_fallback=true --minloglevel=2");
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }
  static std::string dir_;
};
std::string SentencePieceTest::dir_;

TEST_F(SentencePieceTest, EncodesDecodesAndMatchesPieces) {
  std::string path = path_join(dir_, "m.model");
  auto tok = tokenizer_load(path);
  // SentencePiece's defaults: unk 0, bos 1, eos 2; vocab_size as trained.
  EXPECT_EQ(tok->vocab_size(), 300);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->checksum(), tokenizer_checksum(path));
  std::vector<int> ids = tok->encode("the cat sat on the mat", true, true);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(ids.back(), 2);
  // Independent check: the pieces themselves spell the text with "▁" for spaces.
  std::string joined;
  for (size_t i = 1; i + 1 < ids.size(); i++) joined += tok->piece(ids[i]);
  EXPECT_EQ(joined, "\xE2\x96\x81the\xE2\x96\x81" "cat\xE2\x96\x81sat\xE2\x96\x81on\xE2\x96\x81the\xE2\x96\x81mat");
  const char* texts[] = {"the dog met the cat", "a warm blue notebook", "zebra 日"};
  for (const char* t : texts) EXPECT_EQ(tok->decode(tok->encode(t, true, false)), t) << t;
}

TEST_F(SentencePieceTest, BadModelIsAnInputError) {
  std::string bad = path_join(dir_, "bad.model");
  file_write_atomic(bad, "this is not a protobuf");
  std::string e = input_error([&] { tokenizer_load(bad); });
  EXPECT_NE(e.find(bad), std::string::npos) << e;
  EXPECT_NE(e.find("not a SentencePiece model"), std::string::npos) << e;
}
