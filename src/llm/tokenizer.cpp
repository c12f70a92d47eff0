#include "src/llm/tokenizer.h"

#include <openssl/evp.h>
#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <unordered_map>

#include "src/common/error.h"
#include "src/common/fs.h"

namespace pac {

std::string sha256_hex(const void* data, size_t n) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data, n, md, &len, EVP_sha256(), nullptr) != 1) throw RuntimeError("SHA-256 failed (OpenSSL)");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; i++) {
    out.push_back(hex[md[i] >> 4]);
    out.push_back(hex[md[i] & 15]);
  }
  return out;
}

std::string tokenizer_checksum(const std::string& path) {
  std::string bytes = file_read(path);
  return sha256_hex(bytes.data(), bytes.size());
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  std::string out;
  int prev = bos_id();
  for (int id : ids) {
    if (id != bos_id()) out += decode_piece(prev, id);
    prev = id;
  }
  return out;
}

// "<0x0A>" -> 10; -1 if the piece is not a byte token.
static int byte_piece_value(const std::string& p) {
  if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; i++) {
    char c = p[i];
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

// ---------------------------------------------------------------- llama2.c tokenizer.bin

class Llama2cTokenizer : public Tokenizer {
 public:
  Llama2cTokenizer(const std::string& path) {
    std::string bytes = file_read(path);
    checksum_ = sha256_hex(bytes.data(), bytes.size());
    size_t pos = 0;
    auto need = [&](size_t n, const std::string& what) {
      if (pos + n > bytes.size())
        throw_input(path, "", "truncated while reading " + what + " at byte " + std::to_string(pos) +
                                  " (file has " + std::to_string(bytes.size()) + " bytes)");
    };
    need(4, "max_token_length");
    int32_t max_len;
    std::memcpy(&max_len, bytes.data(), 4);
    pos = 4;
    if (max_len <= 0 || max_len > 4096)
      throw_input(path, "max_token_length", "implausible value " + std::to_string(max_len) + " (not a llama2.c tokenizer?)");
    // The file does not store the vocabulary size: entries run to the end of the file.
    while (pos < bytes.size()) {
      std::string what = "token " + std::to_string(pieces_.size());
      need(8, what + " (score and length)");
      float score;
      int32_t len;
      std::memcpy(&score, bytes.data() + pos, 4);
      std::memcpy(&len, bytes.data() + pos + 4, 4);
      pos += 8;
      if (len < 0 || len > max_len)
        throw_input(path, what, "length " + std::to_string(len) + " outside 0..max_token_length " + std::to_string(max_len));
      need(len, what + " bytes");
      pieces_.emplace_back(bytes.data() + pos, len);
      scores_.push_back(score);
      pos += len;
    }
    if (pieces_.size() < 3) throw_input(path, "", "needs at least 3 tokens (unk, BOS, EOS), found " + std::to_string(pieces_.size()));
    for (size_t i = 0; i < pieces_.size(); i++) lookup_.emplace(pieces_[i], (int)i);
    // Byte fallback needs all 256 byte tokens; checking them also catches a file cut
    // exactly at an entry boundary (which parses cleanly but has too few tokens).
    for (int b = 0; b < 256; b++) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      auto it = lookup_.find(name);
      if (it == lookup_.end())
        throw_input(path, "", std::string("has ") + std::to_string(pieces_.size()) + " tokens but no byte token " + name +
                                  " (a llama2.c tokenizer holds <unk>, BOS, EOS and 256 byte tokens; truncated?)");
      byte_ids_[b] = it->second;
    }
  }

  int find(const std::string& s) const {
    auto it = lookup_.find(s);
    return it == lookup_.end() ? -1 : it->second;
  }

  std::vector<int> encode(const std::string& text, bool bos, bool eos) const override {
    // run.c's encode, step by step.
    std::vector<int> tokens;
    if (bos) tokens.push_back(1);
    // SentencePiece's add_dummy_prefix: a leading space before non-empty text.
    if (!text.empty()) push_piece(" ", &tokens);
    // Split into UTF-8 code points (at most 4 bytes each); each is a token or its bytes.
    size_t i = 0;
    while (i < text.size()) {
      size_t j = i + 1;
      while (j < text.size() && ((unsigned char)text[j] & 0xC0) == 0x80 && j - i < 4) j++;
      push_piece(text.substr(i, j - i), &tokens);
      i = j;
    }
    // Merge the best-scoring adjacent pair until no pair is in the vocabulary.
    // (BOS takes part like any token, as in run.c; its piece "\n<s>\n" never merges.)
    while (true) {
      float best_score = -1e10f;
      int best_id = -1;
      size_t best_idx = 0;
      for (size_t k = 0; k + 1 < tokens.size(); k++) {
        int id = find(pieces_[tokens[k]] + pieces_[tokens[k + 1]]);
        if (id != -1 && scores_[id] > best_score) {
          best_score = scores_[id];
          best_id = id;
          best_idx = k;
        }
      }
      if (best_id == -1) break;
      tokens[best_idx] = best_id;
      tokens.erase(tokens.begin() + best_idx + 1);
    }
    if (eos) tokens.push_back(2);
    return tokens;
  }

  std::string decode_piece(int prev, int token) const override {
    if (token < 0 || token >= (int)pieces_.size()) return "";
    std::string p = pieces_[token];
    // run.c: after BOS, SentencePiece strips the leading whitespace.
    if (prev == 1 && !p.empty() && p[0] == ' ') p.erase(0, 1);
    int b = byte_piece_value(p);
    if (b >= 0) return std::string(1, (char)b);
    return p;
  }

  int vocab_size() const override { return (int)pieces_.size(); }
  int bos_id() const override { return 1; }
  int eos_id() const override { return 2; }
  std::string piece(int token) const override {
    return token >= 0 && token < (int)pieces_.size() ? pieces_[token] : std::string();
  }

 private:
  // A string that is in the vocabulary becomes its id; otherwise its bytes become byte
  // tokens (run.c uses byte + 3, which is where <0x00>.. sit in LLaMA vocabularies; we
  // look the <0xNN> pieces up, so any vocabulary order works).
  void push_piece(const std::string& s, std::vector<int>* tokens) const {
    int id = find(s);
    if (id != -1) {
      tokens->push_back(id);
      return;
    }
    for (unsigned char c : s) tokens->push_back(byte_ids_[c]);
  }

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int> lookup_;
  int byte_ids_[256];
};

std::unique_ptr<Tokenizer> tokenizer_load_llama2c(const std::string& path) {
  if (!file_exists(path)) throw_input(path, "", "tokenizer not found");
  return std::make_unique<Llama2cTokenizer>(path);
}

// ---------------------------------------------------------------- SentencePiece

// libsentencepiece is reached through a small shim library loaded with RTLD_DEEPBIND
// (see sentencepiece/spm_shim.cpp for why it cannot be linked in directly).
struct SpmApi {
  void* (*load)(const char*, size_t, char*, size_t);
  void (*free)(void*);
  long (*encode)(void*, const char*, size_t, int*, long, char*, size_t);
  int (*piece_size)(void*);
  const char* (*piece)(void*, int, size_t*);
  int (*kind)(void*, int);
  int (*bos)(void*);
  int (*eos)(void*);
  int (*train)(const char*, char*, size_t);
};

static std::string spm_shim_path() {
  if (const char* e = std::getenv("PAC_SPM_SHIM"); e && *e) return e;
#ifdef PAC_SPM_SHIM
  if (file_exists(PAC_SPM_SHIM)) return PAC_SPM_SHIM;
#endif
  // An installed layout: <prefix>/bin/tool and <prefix>/lib/libpac_spm_shim.so.
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = 0;
    std::string dir = std::string(exe).substr(0, std::string(exe).rfind('/'));
    return dir + "/../lib/libpac_spm_shim.so";
  }
  return "libpac_spm_shim.so";
}

static const SpmApi& spm_api() {
  static SpmApi api = [] {
    std::string path = spm_shim_path();
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!h) throw RuntimeError("cannot load the SentencePiece shim " + path + " (" + dlerror() + "); set PAC_SPM_SHIM");
    SpmApi a;
    auto sym = [&](const char* name) {
      void* f = dlsym(h, name);
      if (!f) throw RuntimeError("SentencePiece shim " + path + " lacks " + name);
      return f;
    };
    a.load = (decltype(a.load))sym("pac_spm_load");
    a.free = (decltype(a.free))sym("pac_spm_free");
    a.encode = (decltype(a.encode))sym("pac_spm_encode");
    a.piece_size = (decltype(a.piece_size))sym("pac_spm_piece_size");
    a.piece = (decltype(a.piece))sym("pac_spm_piece");
    a.kind = (decltype(a.kind))sym("pac_spm_kind");
    a.bos = (decltype(a.bos))sym("pac_spm_bos");
    a.eos = (decltype(a.eos))sym("pac_spm_eos");
    a.train = (decltype(a.train))sym("pac_spm_train");
    return a;
  }();
  return api;
}

void sentencepiece_train(const std::string& args) {
  char err[1024] = {0};
  if (spm_api().train(args.c_str(), err, sizeof err) != 0) throw InputError(std::string("SentencePiece training failed: ") + err);
}

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) : api_(spm_api()) {
    std::string bytes = file_read(path);
    checksum_ = sha256_hex(bytes.data(), bytes.size());
    char err[1024] = {0};
    h_ = api_.load(bytes.data(), bytes.size(), err, sizeof err);
    if (!h_) throw_input(path, "", std::string("not a SentencePiece model: ") + err);
    n_ = api_.piece_size(h_);
    bos_ = api_.bos(h_);
    eos_ = api_.eos(h_);
  }
  ~SentencePieceTokenizer() override { api_.free(h_); }

  std::vector<int> encode(const std::string& text, bool bos, bool eos) const override {
    std::vector<int> ids;
    if (bos) ids.push_back(bos_);
    std::vector<int> body(text.size() + 16);
    char err[1024] = {0};
    long n = api_.encode(h_, text.data(), text.size(), body.data(), (long)body.size(), err, sizeof err);
    if (n > (long)body.size()) {  // more ids than bytes + 16: rare, ask again with room
      body.resize(n);
      n = api_.encode(h_, text.data(), text.size(), body.data(), (long)body.size(), err, sizeof err);
    }
    if (n < 0) throw RuntimeError(std::string("SentencePiece encode failed: ") + err);
    ids.insert(ids.end(), body.begin(), body.begin() + n);
    if (eos) ids.push_back(eos_);
    return ids;
  }

  std::string decode_piece(int prev, int token) const override {
    if (token < 0 || token >= n_) return "";
    int kind = api_.kind(h_, token);
    if (kind == 1) return "";  // control (<s>, </s>)
    std::string p = piece(token);
    if (kind == 2) {
      int b = byte_piece_value(p);
      return b >= 0 ? std::string(1, (char)b) : "";
    }
    if (kind == 3) return " \xE2\x81\x87 ";  // what SentencePiece's decoder prints for <unk>
    // "▁" (U+2581) marks a space; after BOS the leading one is dropped, as run.c does.
    std::string out;
    for (size_t i = 0; i < p.size();) {
      if (p.compare(i, 3, "\xE2\x96\x81") == 0) {
        out.push_back(' ');
        i += 3;
      } else {
        out.push_back(p[i++]);
      }
    }
    if (prev == bos_ && !out.empty() && out[0] == ' ') out.erase(0, 1);
    return out;
  }

  int vocab_size() const override { return n_; }
  int bos_id() const override { return bos_; }
  int eos_id() const override { return eos_; }
  std::string piece(int token) const override {
    if (token < 0 || token >= n_) return "";
    size_t len = 0;
    const char* p = api_.piece(h_, token, &len);
    return std::string(p, len);
  }

 private:
  const SpmApi& api_;
  void* h_ = nullptr;
  int n_ = 0, bos_ = -1, eos_ = -1;
};

std::unique_ptr<Tokenizer> tokenizer_load_sentencepiece(const std::string& path) {
  if (!file_exists(path)) throw_input(path, "", "tokenizer not found");
  return std::make_unique<SentencePieceTokenizer>(path);
}

std::unique_ptr<Tokenizer> tokenizer_load(const std::string& path) {
  if (path.size() >= 6 && path.compare(path.size() - 6, 6, ".model") == 0) return tokenizer_load_sentencepiece(path);
  return tokenizer_load_llama2c(path);
}

}  // namespace pac
