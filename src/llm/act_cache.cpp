#include "src/llm/act_cache.h"

#include <openssl/evp.h>

#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "src/common/error.h"
#include "src/common/fs.h"

namespace pac {

CacheDtype cache_dtype_parse(const std::string& s) {
  if (s == "fp32") return CacheDtype::F32;
  if (s == "fp16") return CacheDtype::F16;
  if (s == "bf16") return CacheDtype::BF16;
  throw InputError("cache dtype: expected fp32, fp16 or bf16, got \"" + s + "\"");
}

std::string cache_dtype_name(CacheDtype d) {
  switch (d) {
    case CacheDtype::F32: return "fp32";
    case CacheDtype::F16: return "fp16";
    case CacheDtype::BF16: return "bf16";
  }
  return "?";
}

torch::ScalarType cache_scalar_type(CacheDtype d) {
  switch (d) {
    case CacheDtype::F32: return torch::kFloat;
    case CacheDtype::F16: return torch::kHalf;
    case CacheDtype::BF16: return torch::kBFloat16;
  }
  return torch::kFloat;
}

torch::Tensor cache_round_trip(const torch::Tensor& taps, CacheDtype d) {
  if (d == CacheDtype::F32) return taps.to(torch::kFloat);
  return taps.to(cache_scalar_type(d)).to(torch::kFloat);
}

// --- hashing ---------------------------------------------------------------

struct Sha256 {
  EVP_MD_CTX* ctx;
  Sha256() : ctx(EVP_MD_CTX_new()) { EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr); }
  ~Sha256() { EVP_MD_CTX_free(ctx); }
  void add(const void* p, size_t n) { EVP_DigestUpdate(ctx, p, n); }
  void finish(unsigned char out[32]) {
    unsigned int len = 32;
    EVP_DigestFinal_ex(ctx, out, &len);
  }
};

static std::string hex(const unsigned char* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s(2 * n, '0');
  for (size_t i = 0; i < n; i++) {
    s[2 * i] = digits[p[i] >> 4];
    s[2 * i + 1] = digits[p[i] & 15];
  }
  return s;
}

std::string backbone_checksum(Llama& model) {
  torch::NoGradGuard ng;
  Sha256 h;
  for (auto& kv : model->backbone_named_parameters()) {
    torch::Tensor t = kv.second.detach().to(torch::kFloat).contiguous();
    h.add(kv.first.data(), kv.first.size() + 1);
    for (int64_t s : t.sizes()) h.add(&s, sizeof s);
    h.add(t.data_ptr(), static_cast<size_t>(t.numel()) * sizeof(float));
  }
  unsigned char d[32];
  h.finish(d);
  return hex(d, 32);
}


// --- key -------------------------------------------------------------------

static nlohmann::json key_json(const CacheKey& k) {
  return {{"format", "pac-activation-cache"}, {"version", 1},
          {"weights_sha256", k.weights_sha256}, {"tokenizer_sha256", k.tokenizer_sha256},
          {"seq_len", k.seq_len}, {"dtype", cache_dtype_name(k.dtype)},
          {"dim", k.dim}, {"n_taps", k.n_taps}};
}

std::string CacheKey::to_json() const { return key_json(*this).dump(2) + "\n"; }

uint64_t CacheKey::hash() const {
  std::string s = to_json();
  Sha256 h;
  h.add(s.data(), s.size());
  unsigned char d[32];
  h.finish(d);
  uint64_t v;
  std::memcpy(&v, d, 8);
  return v;
}

// Which fields of the stored key differ from the wanted one ("" when equal).
static std::string key_difference(const std::string& stored_text, const CacheKey& want) {
  nlohmann::json stored;
  try {
    stored = nlohmann::json::parse(stored_text);
  } catch (const nlohmann::json::exception&) {
    return "key.json is not valid JSON";
  }
  nlohmann::json w = key_json(want);
  std::string diff;
  for (auto& kv : w.items()) {
    if (!stored.is_object() || !stored.contains(kv.key()) || stored[kv.key()] != kv.value())
      diff += (diff.empty() ? "" : ", ") + kv.key();
  }
  return diff.empty() ? "" : "differs in " + diff;
}

static bool is_record_name(const std::string& name) {
  return name.size() > 5 && name.compare(name.size() - 5, 5, ".pacc") == 0;
}

ActCache::ActCache(const std::string& dir, const CacheKey& key) : dir_(dir), key_(key), key_hash_(key.hash()) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_directory(dir, ec))
    throw InputError(dir + ": cache folder is a file, expected a folder");
  try {
    dir_create(dir);
  } catch (const RuntimeError& e) {
    throw InputError(std::string("cache folder unusable: ") + e.what());
  }
  std::string key_path = path_join(dir, "key.json");
  std::string want = key.to_json();
  if (file_exists(key_path)) {
    std::string diff = key_difference(file_read(key_path), key);
    if (diff.empty()) return;
    stale_reason_ = diff;
  } else {
    // Records without a key.json cannot be trusted either.
    for (auto& e : fs::directory_iterator(dir, ec))
      if (is_record_name(e.path().filename().string())) { stale_reason_ = "no key.json"; break; }
  }
  if (!stale_reason_.empty()) {
    for (auto& e : fs::directory_iterator(dir, ec))
      if (is_record_name(e.path().filename().string())) fs::remove(e.path(), ec);
  }
  try {
    file_write_atomic(key_path, want);
  } catch (const RuntimeError& e) {
    throw InputError(std::string("cache folder not writable: ") + e.what());
  }
}

std::string ActCache::sample_path(const std::string& split, int64_t id) const {
  return path_join(dir_, split + "-" + std::to_string(id) + ".pacc");
}

static const char kMagic[8] = {'P', 'A', 'C', 'T', 'A', 'P', 'S', '1'};
static const size_t kHeaderBytes = 88;

struct RecordHeader {
  uint32_t dtype, n_taps, seq_len, dim;
  int64_t id;
  uint64_t tok_hash, key_hash, payload_bytes;
  unsigned char sha[32];
};

static void header_put(char* p, const RecordHeader& h) {
  std::memcpy(p, kMagic, 8);
  std::memcpy(p + 8, &h.dtype, 4);
  std::memcpy(p + 12, &h.n_taps, 4);
  std::memcpy(p + 16, &h.seq_len, 4);
  std::memcpy(p + 20, &h.dim, 4);
  std::memcpy(p + 24, &h.id, 8);
  std::memcpy(p + 32, &h.tok_hash, 8);
  std::memcpy(p + 40, &h.key_hash, 8);
  std::memcpy(p + 48, &h.payload_bytes, 8);
  std::memcpy(p + 56, h.sha, 32);
}

static RecordHeader header_get(const char* p) {
  RecordHeader h;
  std::memcpy(&h.dtype, p + 8, 4);
  std::memcpy(&h.n_taps, p + 12, 4);
  std::memcpy(&h.seq_len, p + 16, 4);
  std::memcpy(&h.dim, p + 20, 4);
  std::memcpy(&h.id, p + 24, 8);
  std::memcpy(&h.tok_hash, p + 32, 8);
  std::memcpy(&h.key_hash, p + 40, 8);
  std::memcpy(&h.payload_bytes, p + 48, 8);
  std::memcpy(h.sha, p + 56, 32);
  return h;
}

void ActCache::cache_write_sample(const std::string& split, int64_t id, uint64_t tok_hash, const torch::Tensor& taps) {
  if (taps.dim() != 3 || taps.size(0) != key_.n_taps || taps.size(1) != key_.seq_len || taps.size(2) != key_.dim)
    throw RuntimeError("activation cache: taps of sample " + std::to_string(id) + " have shape " +
                       c10::str(taps.sizes()) + ", expected [" + std::to_string(key_.n_taps) + ", " +
                       std::to_string(key_.seq_len) + ", " + std::to_string(key_.dim) + "]");
  torch::Tensor t = taps.detach().to(cache_scalar_type(key_.dtype)).contiguous();
  size_t payload = static_cast<size_t>(t.numel()) * t.element_size();
  RecordHeader h;
  h.dtype = static_cast<uint32_t>(key_.dtype);
  h.n_taps = static_cast<uint32_t>(key_.n_taps);
  h.seq_len = static_cast<uint32_t>(key_.seq_len);
  h.dim = static_cast<uint32_t>(key_.dim);
  h.id = id;
  h.tok_hash = tok_hash;
  h.key_hash = key_hash_;
  h.payload_bytes = payload;
  Sha256 sh;
  sh.add(t.data_ptr(), payload);
  sh.finish(h.sha);
  std::string bytes(kHeaderBytes + payload, '\0');
  header_put(&bytes[0], h);
  std::memcpy(&bytes[kHeaderBytes], t.data_ptr(), payload);
  // No fsync: the record's SHA-256 and sizes are checked on every read, and a record a
  // crash left short or empty is recomputed and rewritten like any corrupt one. An fsync
  // per record cost 4-7 ms each (more with several workers on one disk), as much as
  // writing the record.
  file_write_atomic(sample_path(split, id), bytes.data(), bytes.size(), false);
  bytes_written += static_cast<int64_t>(bytes.size());
}

CacheRead ActCache::cache_read_sample(const std::string& split, int64_t id, uint64_t tok_hash) {
  CacheRead r;
  std::string path = sample_path(split, id);
  if (!file_exists(path)) {
    misses++;
    return r;
  }
  std::string bytes = file_read(path);
  bytes_read += static_cast<int64_t>(bytes.size());
  auto bad = [&](const std::string& what) {
    r.status = CacheStatus::Corrupt;
    r.problem = what;
    corrupt++;
    return r;
  };
  if (bytes.size() < kHeaderBytes)
    return bad("truncated: " + std::to_string(bytes.size()) + " bytes, header needs " + std::to_string(kHeaderBytes));
  if (std::memcmp(bytes.data(), kMagic, 8) != 0) return bad("bad magic (not a PAC cache record)");
  RecordHeader h = header_get(bytes.data());
  if (h.dtype != static_cast<uint32_t>(key_.dtype) || h.n_taps != static_cast<uint32_t>(key_.n_taps) ||
      h.seq_len != static_cast<uint32_t>(key_.seq_len) || h.dim != static_cast<uint32_t>(key_.dim))
    return bad("header shape/dtype does not match the cache key");
  if (h.id != id) return bad("record holds sample " + std::to_string(h.id));
  if (h.key_hash != key_hash_) return bad("record was written for another backbone/key");
  if (h.tok_hash != tok_hash) return bad("record was made from other tokens (data changed)");
  size_t elem = torch::elementSize(cache_scalar_type(key_.dtype));
  uint64_t want = static_cast<uint64_t>(key_.n_taps) * key_.seq_len * key_.dim * elem;
  if (h.payload_bytes != want) return bad("header payload size " + std::to_string(h.payload_bytes) + " != " + std::to_string(want));
  if (bytes.size() != kHeaderBytes + want)
    return bad("truncated: " + std::to_string(bytes.size()) + " bytes, expected " + std::to_string(kHeaderBytes + want));
  Sha256 sh;
  sh.add(bytes.data() + kHeaderBytes, want);
  unsigned char d[32];
  sh.finish(d);
  if (std::memcmp(d, h.sha, 32) != 0) return bad("checksum mismatch (payload corrupt)");
  torch::Tensor t = torch::from_blob(&bytes[kHeaderBytes], {key_.n_taps, key_.seq_len, key_.dim},
                                     torch::TensorOptions().dtype(cache_scalar_type(key_.dtype)));
  // Own the memory: `bytes` dies on return.
  r.taps = key_.dtype == CacheDtype::F32 ? t.clone() : t.to(torch::kFloat);
  r.status = CacheStatus::Hit;
  hits++;
  return r;
}

}  // namespace pac
