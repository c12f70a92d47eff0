#include "src/llm/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>

#include "src/common/error.h"
#include "src/common/fs.h"

namespace pac {

using json = nlohmann::json;

struct DtypeName {
  const char* name;
  torch::Dtype dtype;
};

static const DtypeName kDtypes[] = {
    {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16}, {"F64", torch::kFloat64},
    {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"I16", torch::kInt16},     {"I8", torch::kInt8},
    {"U8", torch::kUInt8},    {"BOOL", torch::kBool},
};

static const char* dtype_name(torch::Dtype d) {
  for (auto& e : kDtypes)
    if (e.dtype == d) return e.name;
  return nullptr;
}

static SafeTensors safetensors_parse_bytes(const char* bytes, size_t size, const std::string& file,
                                           const TensorFilter& want = nullptr) {
  if (size < 8) throw_input(file, "", "not a safetensors file: " + std::to_string(size) + " bytes, need at least 8");
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | (uint8_t)bytes[i];  // little-endian
  if (n > size - 8)
    throw_input(file, "", "header length " + std::to_string(n) + " exceeds the file (" + std::to_string(size) +
                              " bytes): truncated or not safetensors");
  json header;
  try {
    header = json::parse(bytes + 8, bytes + 8 + n);
  } catch (const json::parse_error& e) {
    throw_input(file, "header", std::string("invalid JSON: ") + e.what());
  }
  if (!header.is_object()) throw_input(file, "header", "expected a JSON object");

  const char* data = bytes + 8 + n;
  const uint64_t data_size = size - 8 - n;
  SafeTensors out;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& e = it.value();
    if (name == "__metadata__") {
      if (!e.is_object()) throw_input(file, "__metadata__", "expected an object of strings");
      for (auto m = e.begin(); m != e.end(); ++m) {
        if (!m.value().is_string()) throw_input(file, "__metadata__." + m.key(), "expected a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
      throw_input(file, name, "expected an object with dtype, shape and data_offsets");
    if (!e["dtype"].is_string()) throw_input(file, name + ".dtype", "expected a string");
    std::string dt = e["dtype"].get<std::string>();
    const DtypeName* found = nullptr;
    for (auto& d : kDtypes)
      if (dt == d.name) found = &d;
    if (!found) throw_input(file, name + ".dtype", "unsupported dtype '" + dt + "' (F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL)");
    if (!e["shape"].is_array()) throw_input(file, name + ".shape", "expected an array of sizes");
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    for (auto& s : e["shape"]) {
      if (!s.is_number_unsigned()) throw_input(file, name + ".shape", "expected non-negative integer sizes");
      shape.push_back(s.get<int64_t>());
      numel *= s.get<uint64_t>();
    }
    const json& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw_input(file, name + ".data_offsets", "expected [begin, end] non-negative integers");
    uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > data_size)
      throw_input(file, name + ".data_offsets",
                  "[" + std::to_string(begin) + ", " + std::to_string(end) + "] out of range: the data section has " +
                      std::to_string(data_size) + " bytes (truncated file?)");
    uint64_t elem = torch::elementSize(found->dtype);
    if (end - begin != numel * elem)
      throw_input(file, name, "data_offsets span " + std::to_string(end - begin) + " bytes but " + dt + " shape needs " +
                                  std::to_string(numel * elem));
    if (want && !want(name)) {
      out.skipped.insert(name);
      continue;
    }
    torch::Tensor t = torch::empty(shape, torch::TensorOptions().dtype(found->dtype));
    if (numel > 0) std::memcpy(t.data_ptr(), data + begin, end - begin);
    out.tensors[name] = t;
  }
  return out;
}

SafeTensors safetensors_parse(const std::string& bytes, const std::string& file) {
  return safetensors_parse_bytes(bytes.data(), bytes.size(), file);
}

SafeTensors safetensors_read(const std::string& path, const TensorFilter& want) {
  // mmap rather than read: a multi-GB checkpoint is then held once (in the tensors), not
  // twice (a file buffer plus the tensors).
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw InputError(path + ": cannot open for reading (" + std::strerror(errno) + ")");
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw InputError(path + ": not a regular file");
  }
  size_t size = (size_t)st.st_size;
  if (size == 0) {
    ::close(fd);
    return safetensors_parse_bytes("", 0, path, want);
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) throw RuntimeError(path + ": mmap failed (" + std::strerror(errno) + ")");
  try {
    SafeTensors out = safetensors_parse_bytes((const char*)map, size, path, want);
    ::munmap(map, size);
    return out;
  } catch (...) {
    ::munmap(map, size);
    throw;
  }
}

std::string safetensors_serialize(const std::map<std::string, torch::Tensor>& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> contiguous;
  uint64_t offset = 0;
  for (auto& kv : tensors) {
    torch::Tensor t = kv.second.detach().to(torch::kCPU).contiguous();
    const char* dt = dtype_name(t.scalar_type());
    if (!dt) throw RuntimeError("safetensors: tensor '" + kv.first + "' has an unsupported dtype");
    uint64_t nbytes = t.numel() * t.element_size();
    header[kv.first] = {{"dtype", dt}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    contiguous.push_back(t);
  }
  std::string h = header.dump();
  // The format recommends the data section start 8-aligned; pad the header with spaces.
  while (h.size() % 8) h.push_back(' ');
  std::string out;
  out.reserve(8 + h.size() + offset);
  uint64_t n = h.size();
  for (int i = 0; i < 8; i++) out.push_back((char)((n >> (8 * i)) & 0xff));
  out += h;
  for (auto& t : contiguous) out.append((const char*)t.data_ptr(), t.numel() * t.element_size());
  return out;
}

void safetensors_write(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  file_write_atomic(path, safetensors_serialize(tensors, metadata));
}

}  // namespace pac
