// Training data for the single-device trainer: plain text or JSONL files turned into
// fixed-length token examples with a loss mask (docs/training.md, "Data").
//
// Plain text (.txt or anything not ending in .jsonl): one sample per PARAGRAPH; a
// paragraph ends at a blank line and its lines are joined with '\n'.
// JSONL (.jsonl): one JSON object per line, either {"text": "..."} or
// {"instruction": "...", "input": "...", "output": "..."} ("input" optional), the latter
// rendered with instruction_render(); only the response tokens count in the loss.
//
// Each sample becomes BOS + tokens (+ EOS). With packing off (default) a sample longer
// than seq_len+1 tokens is cut into consecutive windows and the last window is padded;
// with packing on, all samples are concatenated and cut into windows of seq_len+1.
// This file does not include torch: the trainer turns examples into tensors.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace pac {

struct TextSample {
  std::string prompt;    // not trained on (instruction part); empty for plain text
  std::string response;  // trained on
  int line = 0;          // 1-based line in the source file where the sample starts
};

// One training example: `tokens` has seq_len + 1 entries; inputs are tokens[0..seq_len),
// targets are tokens[1..seq_len]; mask[t] = 1 when target t counts in the loss.
struct Example {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;  // seq_len entries
  int64_t id = 0;             // stable index in the data set (cache key of the sample)
};

// Encodes text to token ids without BOS/EOS (the tokenizer's own encode).
using EncodeFn = std::function<std::vector<int>(const std::string&)>;

struct DataOptions {
  int seq_len = 64;
  bool pack = false;      // concatenate samples instead of padding each one
  bool add_eos = true;
  int bos_id = 1;
  int eos_id = 2;
  int pad_id = 0;         // padding token (masked out of the loss anyway)
};

// Reads samples; bad files throw InputError naming the file and the line.
std::vector<TextSample> dataset_read(const std::string& path);
std::vector<TextSample> dataset_read_text(const std::string& text, const std::string& name);
std::vector<TextSample> dataset_read_jsonl(const std::string& text, const std::string& name);

// The fixed template for instruction samples (prompt part; the output follows it).
std::string instruction_render(const std::string& instruction, const std::string& input);

// Tokenizes, packs or pads. Throws InputError if nothing trainable is left.
std::vector<Example> dataset_tokenize(const std::vector<TextSample>& samples, const EncodeFn& encode,
                                      const DataOptions& opt, const std::string& name);

// Splits off the last `heldout_fraction` of the samples after a seeded shuffle.
void dataset_split(const std::vector<TextSample>& all, double heldout_fraction, uint64_t seed,
                   std::vector<TextSample>* train, std::vector<TextSample>* heldout);

// Visiting order of examples in one epoch: a Fisher-Yates shuffle driven by splitmix64
// of (seed, epoch), so it is the same on every platform and standard library.
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int epoch);

// Visiting order of a data-parallel epoch over samples that live on their owners
// (owner[i] in 0..G-1: the rank whose activation cache holds sample i). Every prefix of
// the order holds each owner's samples in proportion to how many it owns, within one
// (largest-deficit interleave), so a mini-batch of B gives owner g floor or ceil of
// B x count_g / n rows: the share the plan prices, where a plain shuffle gives each rank
// whatever its samples' positions give (1-4 of 8 rows on two ranks of 4 each). Which of
// its samples fill an owner's places is a Fisher-Yates shuffle of (seed, epoch, g), as in
// DistributedSampler. With one owner this is epoch_order (the trainer's order).
std::vector<int64_t> epoch_order_by_owner(const std::vector<int>& owner, uint64_t seed, int epoch);

uint64_t splitmix64(uint64_t* state);

// Number of target tokens that count in the loss.
int64_t examples_loss_tokens(const std::vector<Example>& ex);

}  // namespace pac
