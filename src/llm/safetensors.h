// safetensors: the Hugging Face tensor file format.
//   8 bytes little-endian u64 N, N bytes of JSON header, then the raw data.
//   header: {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//            "__metadata__": {"key": "value", ...}}   offsets are relative to the data start.
// Supported dtypes: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL. Every header field is
// validated; a bad file throws InputError naming the file, the tensor and the problem.
// Writing goes through pac::file_write_atomic, so a failed write leaves nothing behind.
#pragma once
#include <functional>
#include <map>
#include <set>
#include <string>

#include <torch/torch.h>

namespace pac {

struct SafeTensors {
  std::map<std::string, torch::Tensor> tensors;  // CPU, contiguous, owning their memory
  std::map<std::string, std::string> metadata;   // "__metadata__"
  std::set<std::string> skipped;                 // valid tensors the `want` filter left out
};

// Tensor names for which `want` is false are validated but not copied out of the file
// (listed in `skipped`); the file is mapped, so their bytes are never read into memory.
using TensorFilter = std::function<bool(const std::string&)>;
SafeTensors safetensors_read(const std::string& path, const TensorFilter& want = nullptr);
// Parses bytes already in memory; `file` is only used in messages.
SafeTensors safetensors_parse(const std::string& bytes, const std::string& file);

void safetensors_write(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});
// The exact bytes safetensors_write stores (tensors in name order, header padded to 8).
std::string safetensors_serialize(const std::map<std::string, torch::Tensor>& tensors,
                                  const std::map<std::string, std::string>& metadata = {});

}  // namespace pac
