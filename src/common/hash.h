// Small non-cryptographic hashes shared by the trainer's activation cache and the
// runtime (which ties cached records to their samples on every device).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace pac {

// FNV-1a over the token ids (4 little-endian bytes each): ties a cache record to the
// exact sample it was made from.
uint64_t tokens_hash(const std::vector<int32_t>& tokens);

// 16 lowercase hex digits and back (JSON numbers lose 64-bit values in many readers).
std::string hash_hex(uint64_t h);
// false when `s` is not exactly 16 hex digits.
bool hash_parse(const std::string& s, uint64_t* out);

}  // namespace pac
