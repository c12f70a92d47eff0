// Tokenizers: llama2.c tokenizer.bin (BPE by merge score, byte fallback <0xNN>, run.c's
// leading-space handling) and SentencePiece .model files (libsentencepiece, reached
// through a dlopen'ed shim: sentencepiece/spm_shim.cpp explains why).
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace pac {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Text -> ids; bos/eos add the BOS / EOS id at the ends.
  virtual std::vector<int> encode(const std::string& text, bool bos, bool eos) const = 0;
  // The bytes `token` stands for when it follows `prev` (run.c drops the leading space
  // of the first piece after BOS; byte tokens become their byte).
  virtual std::string decode_piece(int prev, int token) const = 0;
  virtual int vocab_size() const = 0;
  virtual int bos_id() const = 0;
  virtual int eos_id() const = 0;
  // The piece string of a token as stored in the vocabulary (e.g. "<0x0A>", "▁the").
  virtual std::string piece(int token) const = 0;
  // Concatenated decode_piece over ids (ids[0]'s prev is BOS if ids[0] != BOS).
  std::string decode(const std::vector<int>& ids) const;
  // SHA-256 (hex) of the file bytes: identity of the tokenizer for caches.
  const std::string& checksum() const { return checksum_; }

 protected:
  std::string checksum_;
};

// By extension: *.model -> SentencePiece, otherwise llama2.c tokenizer.bin.
// Bad or truncated file -> InputError naming the file and what is wrong.
std::unique_ptr<Tokenizer> tokenizer_load(const std::string& path);
std::unique_ptr<Tokenizer> tokenizer_load_llama2c(const std::string& path);
std::unique_ptr<Tokenizer> tokenizer_load_sentencepiece(const std::string& path);

// Trains a SentencePiece model: SentencePieceTrainer::Train's command line, e.g.
// "--input=corpus.txt --model_prefix=out/m --vocab_size=200". InputError on failure.
void sentencepiece_train(const std::string& args);

std::string tokenizer_checksum(const std::string& path);  // SHA-256 hex of the file
std::string sha256_hex(const void* data, size_t n);

}  // namespace pac
