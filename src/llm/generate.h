// Text generation with the KV cache: greedy (temperature 0), temperature sampling and
// top-p (nucleus) sampling, deterministic given the seed. The sampler is run.c's
// (xorshift* RNG, same top-p cutoff), so with the same seed it draws the same tokens.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "src/llm/model.h"
#include "src/llm/tokenizer.h"

namespace pac {

class Sampler {
 public:
  Sampler(int vocab_size, float temperature, float top_p, uint64_t seed);
  // Picks the next token from logits[vocab_size] (modified in place: softmax).
  int sample(float* logits);
  uint32_t random_u32();
  float random_f32();  // [0, 1)

 private:
  int sample_argmax(const float* p) const;
  int sample_mult(const float* p, float coin) const;
  int sample_topp(const float* p, float coin);
  int vocab_size_;
  float temperature_, top_p_;
  uint64_t state_;
  std::vector<std::pair<float, int>> candidates_;
};

struct GenerateOptions {
  int steps = 256;            // total positions including the prompt, as in run.c
  float temperature = 0.f;    // 0 = greedy
  float top_p = 0.9f;         // used when temperature > 0; >= 1 disables
  uint64_t seed = 42;
  bool stop_at_eos = true;    // stop when EOS or BOS (run.c's sequence delimiter) comes
};

struct GenerateResult {
  std::vector<int> tokens;    // prompt followed by generated tokens
  std::string text;           // decoded pieces after the first prompt token
  int n_prompt = 0;
  double seconds = 0;         // wall time of the decode loop
};

// Runs the model one position at a time with a KV cache. `on_piece` (optional) gets each
// decoded piece as soon as it is produced (for streaming output).
GenerateResult generate(Llama& model, const Tokenizer& tok, const std::vector<int>& prompt,
                        const GenerateOptions& opt,
                        const std::function<void(const std::string&)>& on_piece = nullptr);

}  // namespace pac
