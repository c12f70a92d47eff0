// File helpers. Every output file is written to "<path>.tmp.<pid>" and renamed into
// place, so a crash or a bad input never leaves a half-written file behind.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace pac {

// Reads a whole file; throws InputError("<path>: cannot open ...") if it is missing.
std::string file_read(const std::string& path);
bool file_exists(const std::string& path);
int64_t file_size(const std::string& path);  // -1 when missing

// Atomic write: temp file in the same folder, fsync, rename. Creates parent folders.
// Throws RuntimeError naming the path when the disk refuses. sync = false leaves out the
// fsync: readers still never see a partial file, but a power loss may leave the renamed
// file empty or short. Only for records that carry their own checksum and are rebuilt
// when it fails (the activation cache: docs/training.md), where the fsync per record
// cost more than the record's write.
void file_write_atomic(const std::string& path, const std::string& bytes);
void file_write_atomic(const std::string& path, const void* data, size_t n, bool sync = true);

void dir_create(const std::string& path);  // mkdir -p

// Joins a folder and a name with one '/'.
std::string path_join(const std::string& a, const std::string& b);

}  // namespace pac
