#include "src/llm/dataset.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "src/common/error.h"
#include "src/common/fs.h"

namespace pac {

static bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

static bool line_is_blank(const std::string& line) {
  for (char c : line)
    if (c != ' ' && c != '\t' && c != '\r') return false;
  return true;
}

static std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start <= text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos) {
      if (start < text.size()) lines.push_back(text.substr(start));
      break;
    }
    lines.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  for (auto& l : lines)
    if (!l.empty() && l.back() == '\r') l.pop_back();
  return lines;
}

// A text file that is really binary (a checkpoint passed as --data by mistake) should
// fail loudly instead of training on garbage.
static void check_text(const std::string& text, const std::string& name) {
  int line = 1;
  for (unsigned char c : text) {
    if (c == '\n') line++;
    if (c == 0) throw_input(name, "line " + std::to_string(line), "binary data (NUL byte), expected UTF-8 text");
  }
}

std::vector<TextSample> dataset_read_text(const std::string& text, const std::string& name) {
  check_text(text, name);
  std::vector<TextSample> out;
  std::vector<std::string> lines = split_lines(text);
  TextSample cur;
  bool open = false;
  for (size_t i = 0; i < lines.size(); i++) {
    if (line_is_blank(lines[i])) {
      if (open) out.push_back(cur);
      open = false;
      continue;
    }
    if (!open) {
      cur = TextSample();
      cur.line = static_cast<int>(i) + 1;
      cur.response = lines[i];
      open = true;
    } else {
      cur.response += "\n" + lines[i];
    }
  }
  if (open) out.push_back(cur);
  if (out.empty()) throw_input(name, "", "no text samples (file is empty or blank)");
  return out;
}

std::string instruction_render(const std::string& instruction, const std::string& input) {
  std::string s = "Instruction: " + instruction + "\n";
  if (!input.empty()) s += "Input: " + input + "\n";
  s += "Response: ";
  return s;
}

static std::string jsonl_string(const nlohmann::json& obj, const char* key, const std::string& name,
                                int line, bool required) {
  auto it = obj.find(key);
  if (it == obj.end()) {
    if (required) throw_input(name, "line " + std::to_string(line), std::string("missing \"") + key + "\"");
    return "";
  }
  if (!it->is_string())
    throw_input(name, "line " + std::to_string(line) + ": $." + key, "expected a string");
  return it->get<std::string>();
}

std::vector<TextSample> dataset_read_jsonl(const std::string& text, const std::string& name) {
  check_text(text, name);
  std::vector<TextSample> out;
  std::vector<std::string> lines = split_lines(text);
  for (size_t i = 0; i < lines.size(); i++) {
    int line = static_cast<int>(i) + 1;
    if (line_is_blank(lines[i])) continue;
    nlohmann::json obj;
    try {
      obj = nlohmann::json::parse(lines[i]);
    } catch (const nlohmann::json::exception& e) {
      throw_input(name, "line " + std::to_string(line), std::string("not valid JSON (") + e.what() + ")");
    }
    if (!obj.is_object()) throw_input(name, "line " + std::to_string(line), "expected a JSON object");
    TextSample s;
    s.line = line;
    if (obj.contains("text")) {
      for (auto& kv : obj.items())
        if (kv.key() != "text")
          throw_input(name, "line " + std::to_string(line), "unexpected key \"" + kv.key() + "\" next to \"text\"");
      s.response = jsonl_string(obj, "text", name, line, true);
    } else if (obj.contains("instruction")) {
      for (auto& kv : obj.items())
        if (kv.key() != "instruction" && kv.key() != "input" && kv.key() != "output")
          throw_input(name, "line " + std::to_string(line),
                      "unexpected key \"" + kv.key() + "\" (expected instruction, input, output)");
      std::string instruction = jsonl_string(obj, "instruction", name, line, true);
      std::string input = jsonl_string(obj, "input", name, line, false);
      s.prompt = instruction_render(instruction, input);
      s.response = jsonl_string(obj, "output", name, line, true);
    } else {
      throw_input(name, "line " + std::to_string(line),
                  "expected {\"text\": ...} or {\"instruction\", \"input\", \"output\"}");
    }
    if (s.prompt.empty() && s.response.empty())
      throw_input(name, "line " + std::to_string(line), "empty sample");
    out.push_back(s);
  }
  if (out.empty()) throw_input(name, "", "no samples (file is empty)");
  return out;
}

std::vector<TextSample> dataset_read(const std::string& path) {
  if (!file_exists(path)) throw InputError(path + ": data file not found");
  std::string text = file_read(path);
  if (ends_with(path, ".jsonl")) return dataset_read_jsonl(text, path);
  return dataset_read_text(text, path);
}

uint64_t splitmix64(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Fisher-Yates with our own generator: std::shuffle's result differs between
// standard libraries, and the cache test needs the same order in two runs.
static void shuffle_indices(std::vector<int64_t>* v, uint64_t seed) {
  uint64_t st = seed;
  for (int64_t i = static_cast<int64_t>(v->size()) - 1; i > 0; i--) {
    int64_t j = static_cast<int64_t>(splitmix64(&st) % static_cast<uint64_t>(i + 1));
    std::swap((*v)[i], (*v)[j]);
  }
}

std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int epoch) {
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; i++) order[i] = i;
  shuffle_indices(&order, seed * 1000003ull + static_cast<uint64_t>(epoch) + 1);
  return order;
}

std::vector<int64_t> epoch_order_by_owner(const std::vector<int>& owner, uint64_t seed, int epoch) {
  int64_t n = static_cast<int64_t>(owner.size());
  int G = 0;
  for (int o : owner) {
    if (o < 0) throw InputError("epoch_order_by_owner: sample without an owner");
    G = std::max(G, o + 1);
  }
  if (G <= 1) return epoch_order(n, seed, epoch);
  std::vector<std::vector<int64_t>> mine(G);
  for (int64_t i = 0; i < n; i++) mine[owner[i]].push_back(i);
  for (int g = 0; g < G; g++)
    shuffle_indices(&mine[g], (seed * 1000003ull + static_cast<uint64_t>(epoch) + 1) * 0x100000001b3ull +
                                  static_cast<uint64_t>(g));
  // Position k goes to the owner furthest behind its proportional count:
  // deficit_g = count_g x (k+1) - placed_g x n (integers; ties to the lower rank).
  std::vector<int64_t> order, placed(G, 0);
  order.reserve(n);
  for (int64_t k = 0; k < n; k++) {
    int best = -1;
    int64_t best_def = 0;
    for (int g = 0; g < G; g++) {
      int64_t cnt = static_cast<int64_t>(mine[g].size());
      if (placed[g] == cnt) continue;
      int64_t def = cnt * (k + 1) - placed[g] * n;
      if (best < 0 || def > best_def) {
        best = g;
        best_def = def;
      }
    }
    order.push_back(mine[best][placed[best]++]);
  }
  return order;
}

void dataset_split(const std::vector<TextSample>& all, double heldout_fraction, uint64_t seed,
                   std::vector<TextSample>* train, std::vector<TextSample>* heldout) {
  if (heldout_fraction < 0 || heldout_fraction >= 1)
    throw InputError("held-out fraction must be in [0, 1), got " + std::to_string(heldout_fraction));
  int64_t n = static_cast<int64_t>(all.size());
  int64_t n_held = static_cast<int64_t>(heldout_fraction * static_cast<double>(n) + 0.5);
  if (heldout_fraction > 0 && n_held == 0) n_held = 1;
  if (n_held >= n) throw InputError("held-out split leaves no training samples (" + std::to_string(n) + " samples)");
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; i++) order[i] = i;
  shuffle_indices(&order, seed ^ 0x5eed5eedull);
  train->clear();
  heldout->clear();
  for (int64_t i = 0; i < n; i++) {
    if (i < n - n_held) train->push_back(all[order[i]]);
    else heldout->push_back(all[order[i]]);
  }
}

// Cuts one token stream (with its mask over *targets*) into windows of seq_len + 1
// tokens; consecutive windows overlap by one token so every target is trained once.
static void stream_to_examples(const std::vector<int32_t>& toks, const std::vector<uint8_t>& tmask,
                               const DataOptions& opt, std::vector<Example>* out) {
  const size_t w = static_cast<size_t>(opt.seq_len);
  for (size_t start = 0; start + 1 < toks.size(); start += w) {
    Example ex;
    ex.tokens.assign(w + 1, opt.pad_id);
    ex.mask.assign(w, 0);
    size_t n = std::min(w + 1, toks.size() - start);
    for (size_t t = 0; t < n; t++) ex.tokens[t] = toks[start + t];
    for (size_t t = 0; t + 1 < n; t++) ex.mask[t] = tmask[start + t + 1];
    bool any = false;
    for (uint8_t m : ex.mask) any = any || m;
    if (any) out->push_back(std::move(ex));
  }
}

std::vector<Example> dataset_tokenize(const std::vector<TextSample>& samples, const EncodeFn& encode,
                                      const DataOptions& opt, const std::string& name) {
  if (opt.seq_len < 2) throw InputError("sequence length must be >= 2, got " + std::to_string(opt.seq_len));
  std::vector<Example> out;
  std::vector<int32_t> stream;
  std::vector<uint8_t> smask;  // smask[i] = 1 when token i is a trained target
  for (const TextSample& s : samples) {
    std::vector<int32_t> toks{opt.bos_id};
    std::vector<uint8_t> m{0};
    if (!s.prompt.empty())
      for (int t : encode(s.prompt)) { toks.push_back(t); m.push_back(0); }
    // Encoding prompt and response separately keeps the boundary exact for the mask.
    if (!s.response.empty())
      for (int t : encode(s.response)) { toks.push_back(t); m.push_back(1); }
    if (opt.add_eos) { toks.push_back(opt.eos_id); m.push_back(1); }
    if (opt.pack) {
      stream.insert(stream.end(), toks.begin(), toks.end());
      smask.insert(smask.end(), m.begin(), m.end());
    } else {
      stream_to_examples(toks, m, opt, &out);
    }
  }
  if (opt.pack) stream_to_examples(stream, smask, opt, &out);
  if (out.empty()) throw_input(name, "", "no trainable tokens after tokenization");
  for (size_t i = 0; i < out.size(); i++) out[i].id = static_cast<int64_t>(i);
  return out;
}

int64_t examples_loss_tokens(const std::vector<Example>& ex) {
  int64_t n = 0;
  for (const Example& e : ex)
    for (uint8_t m : e.mask) n += m;
  return n;
}

}  // namespace pac
