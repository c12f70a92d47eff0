// The activation cache of Parallel Adapters (pac-brief.md section 2; docs/training.md,
// "Activation cache"). The backbone is frozen, so a sample's taps b_0..b_L are the same
// in every epoch: epoch 1 writes them to local disk, later epochs read them back and
// skip the backbone (whose weights can then be released).
//
// Folder layout:
//   <dir>/key.json               identity of what produced the records (CacheKey)
//   <dir>/<split>-<id>.pacc      one record per sample: header + taps [L+1, T, d]
// Record header (88 bytes, little-endian): "PACTAPS1", u32 dtype, u32 n_taps,
// u32 seq_len, u32 dim, i64 sample id, u64 tokens hash, u64 key hash, u64 payload
// bytes, 32-byte SHA-256 of the payload. Every header byte is checked against what the
// reader expects and the payload against its SHA-256, so a flipped byte anywhere or a
// truncated file is detected; such a sample is reported and recomputed.
//
// A key mismatch (other weights, tokenizer, sequence length or dtype) makes the cache
// stale: its records are deleted and rebuilt, never used.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "src/common/hash.h"  // tokens_hash
#include "src/llm/model.h"

namespace pac {

enum class CacheDtype { F32, F16, BF16 };
CacheDtype cache_dtype_parse(const std::string& s);  // "fp32"|"fp16"|"bf16", else InputError
std::string cache_dtype_name(CacheDtype d);
torch::ScalarType cache_scalar_type(CacheDtype d);
// What training sees: the taps rounded to the cache's dtype, back in fp32. Used for
// epoch 1 as well, so every epoch trains on the same values whether cached or not.
torch::Tensor cache_round_trip(const torch::Tensor& taps, CacheDtype d);

struct CacheKey {
  std::string weights_sha256;    // backbone_checksum()
  std::string tokenizer_sha256;  // Tokenizer::checksum()
  int seq_len = 0;
  CacheDtype dtype = CacheDtype::F32;
  int dim = 0;
  int n_taps = 0;                // n_layers + 1
  std::string to_json() const;   // canonical text stored in key.json
  uint64_t hash() const;         // first 8 bytes of SHA-256(to_json())
};

// SHA-256 (hex) over every backbone weight: name, shape and fp32 bytes.
std::string backbone_checksum(Llama& model);

enum class CacheStatus { Hit, Missing, Corrupt };

struct CacheRead {
  CacheStatus status = CacheStatus::Missing;
  torch::Tensor taps;   // [n_taps, T, d] fp32 on a hit
  std::string problem;  // for Corrupt: what was wrong
};

class ActCache {
 public:
  // Opens or creates the folder. Stale records (key mismatch) are deleted. A folder
  // that cannot be used (a file in the way, not writable) -> InputError naming it.
  ActCache(const std::string& dir, const CacheKey& key);

  const std::string& dir() const { return dir_; }
  const CacheKey& key() const { return key_; }
  bool was_stale() const { return !stale_reason_.empty(); }
  const std::string& stale_reason() const { return stale_reason_; }

  std::string sample_path(const std::string& split, int64_t id) const;
  // taps: [n_taps, T, d] any float dtype; stored in the key's dtype, atomically.
  void cache_write_sample(const std::string& split, int64_t id, uint64_t tok_hash, const torch::Tensor& taps);
  CacheRead cache_read_sample(const std::string& split, int64_t id, uint64_t tok_hash);

  int64_t bytes_written = 0, bytes_read = 0;
  int64_t hits = 0, misses = 0, corrupt = 0;

 private:
  std::string dir_;
  CacheKey key_;
  uint64_t key_hash_ = 0;
  std::string stale_reason_;
};

}  // namespace pac
