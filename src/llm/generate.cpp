#include "src/llm/generate.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>

#include "src/common/error.h"

namespace pac {

// ---------------------------------------------------------------- sampler (run.c's)

Sampler::Sampler(int vocab_size, float temperature, float top_p, uint64_t seed)
    : vocab_size_(vocab_size), temperature_(temperature), top_p_(top_p),
      // xorshift never leaves state 0; map seed 0 to a fixed non-zero state.
      state_(seed == 0 ? 0x9E3779B97F4A7C15ull : seed) {
  if (temperature < 0) throw InputError("temperature must be >= 0, got " + std::to_string(temperature));
  if (top_p < 0) throw InputError("top-p must be >= 0, got " + std::to_string(top_p));
}

uint32_t Sampler::random_u32() {
  // xorshift*: https://en.wikipedia.org/wiki/Xorshift#xorshift.2A
  state_ ^= state_ >> 12;
  state_ ^= state_ << 25;
  state_ ^= state_ >> 27;
  return (uint32_t)((state_ * 0x2545F4914F6CDD1Dull) >> 32);
}

float Sampler::random_f32() { return (float)(random_u32() >> 8) / 16777216.0f; }

int Sampler::sample_argmax(const float* p) const {
  int best = 0;
  for (int i = 1; i < vocab_size_; i++)
    if (p[i] > p[best]) best = i;
  return best;
}

int Sampler::sample_mult(const float* p, float coin) const {
  float cdf = 0.f;
  for (int i = 0; i < vocab_size_; i++) {
    cdf += p[i];
    if (coin < cdf) return i;
  }
  return vocab_size_ - 1;  // rounding
}

int Sampler::sample_topp(const float* p, float coin) {
  // Tokens below (1 - top_p) / (n - 1) can never be in the nucleus: drop them before
  // sorting (run.c's shortcut; it changes no result).
  const float cutoff = (1.0f - top_p_) / (float)(vocab_size_ - 1);
  candidates_.clear();
  for (int i = 0; i < vocab_size_; i++)
    if (p[i] >= cutoff) candidates_.emplace_back(p[i], i);
  // Descending probability; ties by index so the order never depends on the sort.
  std::sort(candidates_.begin(), candidates_.end(), [](const std::pair<float, int>& a, const std::pair<float, int>& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  float cumulative = 0.f;
  size_t last = candidates_.size() - 1;
  for (size_t i = 0; i < candidates_.size(); i++) {
    cumulative += candidates_[i].first;
    if (cumulative > top_p_) {
      last = i;
      break;
    }
  }
  float r = coin * cumulative;
  float cdf = 0.f;
  for (size_t i = 0; i <= last; i++) {
    cdf += candidates_[i].first;
    if (r < cdf) return candidates_[i].second;
  }
  return candidates_[last].second;
}

int Sampler::sample(float* logits) {
  if (temperature_ == 0.f) return sample_argmax(logits);
  float mx = logits[0];
  for (int i = 0; i < vocab_size_; i++) {
    logits[i] /= temperature_;
    mx = std::max(mx, logits[i]);
  }
  float sum = 0.f;
  for (int i = 0; i < vocab_size_; i++) {
    logits[i] = expf(logits[i] - mx);
    sum += logits[i];
  }
  for (int i = 0; i < vocab_size_; i++) logits[i] /= sum;
  float coin = random_f32();
  if (top_p_ <= 0.f || top_p_ >= 1.f) return sample_mult(logits, coin);
  return sample_topp(logits, coin);
}

// ---------------------------------------------------------------- generation

// run.c's safe_printf: a lone byte piece that is neither printable nor whitespace is
// dropped (raw bytes such as the halves of a UTF-8 character are still printed).
static std::string piece_printable(const std::string& p) {
  if (p.size() == 1) {
    unsigned char c = (unsigned char)p[0];
    if (!(std::isprint(c) || std::isspace(c))) return "";
  }
  return p;
}

GenerateResult generate(Llama& model, const Tokenizer& tok, const std::vector<int>& prompt,
                        const GenerateOptions& opt, const std::function<void(const std::string&)>& on_piece) {
  const LlamaConfig& c = model->config();
  if (prompt.empty()) throw InputError("generate: the prompt has no tokens (encode with BOS)");
  if ((int)prompt.size() > c.max_seq_len)
    throw InputError("generate: the prompt has " + std::to_string(prompt.size()) + " tokens, the model's context is " +
                     std::to_string(c.max_seq_len));
  for (int t : prompt)
    if (t < 0 || t >= c.vocab_size) throw InputError("generate: token id " + std::to_string(t) + " outside the model's vocabulary");
  const int steps = std::min(std::max(opt.steps, (int)prompt.size()), c.max_seq_len);

  // InferenceMode skips autograd's bookkeeping entirely (cheaper than NoGradGuard per op,
  // which matters for small models where per-op overhead dominates).
  c10::InferenceMode inference;
  model->eval();
  Sampler sampler(c.vocab_size, opt.temperature, opt.top_p, opt.seed);
  KVCache cache = model->make_cache(1, steps);
  GenerateResult res;
  res.tokens = prompt;
  res.n_prompt = (int)prompt.size();
  auto emit = [&](int prev, int next) {
    std::string p = piece_printable(tok.decode_piece(prev, next));
    res.text += p;
    if (on_piece && !p.empty()) on_piece(p);
  };
  for (size_t i = 1; i < prompt.size(); i++) emit(prompt[i - 1], prompt[i]);

  auto t0 = std::chrono::steady_clock::now();
  // Prefill: the whole prompt in one forward; its last position predicts the next token.
  torch::Tensor input = torch::tensor(std::vector<int64_t>(prompt.begin(), prompt.end()), torch::kInt64).view({1, -1});
  int64_t pos = 0;
  std::vector<float> logits(c.vocab_size);
  int token = prompt.back();
  while (true) {
    torch::Tensor out = model->forward(input, pos, &cache);
    pos += input.size(1);
    torch::Tensor last = out[0][out.size(1) - 1].to(torch::kFloat32).contiguous();
    std::copy(last.data_ptr<float>(), last.data_ptr<float>() + c.vocab_size, logits.begin());
    int next = sampler.sample(logits.data());
    // BOS delimits sequences (run.c stops there); EOS ends the text when asked to.
    if (next == tok.bos_id() || (opt.stop_at_eos && next == tok.eos_id())) break;
    res.tokens.push_back(next);
    emit(token, next);
    token = next;
    if (pos >= steps) break;
    input = torch::full({1, 1}, (int64_t)next, torch::kInt64);
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace pac
