// The PAC wire protocol: framed binary messages between coordinator and workers and
// between workers (docs/wire-protocol.md).
//
// Every frame is a fixed 32-byte little-endian header followed by `length` payload
// bytes:
//   off size field
//     0    4 magic        "PACW" (0x57434150 read as little-endian u32)
//     4    2 version      kWireVersion
//     6    2 type         MsgType
//     8    4 flags        FrameFlag bits; unknown bits are refused
//    12    4 length       payload bytes, <= the receiver's limit (default 256 MiB)
//    16    8 seq          per-connection, per-direction counter starting at 0
//    24    4 payload_crc  CRC-32C of the payload
//    28    4 header_crc   CRC-32C of bytes 0..27 (so a flipped seq or flag is caught)
//
// Decoding never trusts the peer: every field is checked before anything is
// allocated, and the payload is only allocated once its length is under the limit.
// Nothing here does I/O; transport.h moves these bytes over sockets.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "src/common/error.h"

namespace pac {

constexpr uint32_t kWireMagic = 0x57434150u;  // bytes 'P','A','C','W'
constexpr uint16_t kWireVersion = 1;
constexpr size_t kWireHeaderBytes = 32;
constexpr uint32_t kWireDefaultMaxPayload = 256u << 20;  // 256 MiB
// Before a peer has authenticated it may only send small frames: an unauthenticated
// stranger must not be able to make us allocate 256 MiB.
constexpr uint32_t kWirePreAuthMaxPayload = 64u << 10;

enum class MsgType : uint16_t {
  // control plane (JSON payloads)
  Hello = 1,          // client -> server: {"role","id","nonce"}
  AuthChallenge = 2,  // server -> client: {"id","nonce","mac"}
  AuthResponse = 3,   // client -> server: {"mac"}
  AuthOk = 4,         // server -> client: {}
  Assign = 10,        // coordinator -> worker: plan fragment for this device
  AssignAck = 11,     // worker -> coordinator: executor's answer
  Start = 12,         // coordinator -> worker: run one step (executor-defined)
  Progress = 13,      // worker -> coordinator: free-form progress JSON
  Result = 14,        // worker -> coordinator: a step's result JSON
  Heartbeat = 20,     // either way: payload echoed back
  HeartbeatAck = 21,
  Error = 30,         // {"error": "..."}; the sender closes afterwards
  Shutdown = 31,      // coordinator -> worker: {"exit": bool}
  // tensor streams (TensorHeader + raw bytes)
  Activation = 40,
  SideState = 41,
  Gradient = 42,
};

// Flags. EndOfStream marks the last frame of a tensor stream. Redistribute marks a
// tensor of the phase switch (docs/runtime.md, "Switch"): a cached-activation record
// (Activation: tag = sample id, stage = first tap) or a side-network tensor with its
// optimizer state (SideState: tag = parameter index, micro_batch = AdamW step).
constexpr uint32_t kFlagEndOfStream = 1u << 0;
constexpr uint32_t kFlagRedistribute = 1u << 1;
constexpr uint32_t kFlagsKnown = kFlagEndOfStream | kFlagRedistribute;

const char* msg_type_name(MsgType t);
bool msg_type_known(uint16_t t);
bool msg_type_is_tensor(MsgType t);

struct FrameHeader {
  uint32_t magic = kWireMagic;
  uint16_t version = kWireVersion;
  MsgType type = MsgType::Heartbeat;
  uint32_t flags = 0;
  uint32_t length = 0;
  uint64_t seq = 0;
  uint32_t payload_crc = 0;
  uint32_t header_crc = 0;
};

struct Frame {
  FrameHeader header;
  std::string payload;
  MsgType type() const { return header.type; }
};

// CRC-32C (Castagnoli). Uses the SSE4.2 crc32 instruction when the CPU has it, a
// slicing-by-8 table otherwise; both give the same value (tested).
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);
uint32_t crc32c_software(const void* data, size_t n, uint32_t crc = 0);

// Fills magic/version/length/crcs and writes the 32 header bytes to `out`.
void frame_header_encode(MsgType type, uint32_t flags, uint64_t seq, const void* payload,
                         size_t length, uint8_t out[kWireHeaderBytes]);

// Whole frame as one string (header + payload); used by tests and small messages.
std::string frame_encode(MsgType type, uint32_t flags, uint64_t seq, const std::string& payload);

// Checks the 32 header bytes. Returns "" when the header is acceptable, otherwise the
// reason ("bad magic 0x...", "payload length 300000000 over the limit 268435456", ...).
// `expected_seq` is the next sequence number this side expects from the peer.
std::string frame_header_check(const uint8_t in[kWireHeaderBytes], uint64_t expected_seq,
                               uint32_t max_payload, FrameHeader* out);

// Checks a payload against its header's CRC; "" when it matches.
std::string frame_payload_check(const FrameHeader& h, const void* payload, size_t n);

// Decodes one frame from a byte buffer (header check, then payload check). Throws
// WireError with the reason; `consumed` gets the frame's total size.
Frame frame_decode(const std::string& bytes, uint64_t expected_seq, uint32_t max_payload,
                   size_t* consumed = nullptr);

// A frame or tensor payload we refuse. A runtime failure (exit 1): the input files were fine.
struct WireError : RuntimeError {
  using RuntimeError::RuntimeError;
};

// ---- tensor payloads ----
//
// A tensor frame's payload: a 16-byte fixed part, ndim x int64 dims, then the raw
// element bytes (little-endian, row-major):
//   off size field
//     0    1 dtype        TensorDtype
//     1    1 ndim         0..8
//     2    2 reserved     must be 0
//     4    4 micro_batch  which micro-batch this belongs to
//     8    4 stage        sender's stage (for routing / traces)
//    12    4 tag          stream tag chosen by the executor
//    16 8*nd dims         each >= 0
enum class TensorDtype : uint8_t { F32 = 1, F16 = 2, BF16 = 3, I64 = 4, I32 = 5, U8 = 6 };
constexpr int kTensorMaxDims = 8;

size_t tensor_dtype_size(TensorDtype d);  // 0 when unknown
const char* tensor_dtype_name(TensorDtype d);

struct TensorHeader {
  TensorDtype dtype = TensorDtype::F32;
  uint32_t micro_batch = 0;
  uint32_t stage = 0;
  uint32_t tag = 0;
  std::vector<int64_t> dims;
  int64_t numel() const;
  size_t header_bytes() const { return 16 + 8 * dims.size(); }
};

// A decoded tensor frame: header plus a pointer into the frame's payload (no copy).
struct TensorView {
  TensorHeader header;
  const uint8_t* data = nullptr;
  size_t bytes = 0;
};

// Writes the tensor header bytes (to be followed by the data bytes).
std::string tensor_header_encode(const TensorHeader& h);
// Header + data in one payload string.
std::string tensor_payload_encode(const TensorHeader& h, const void* data, size_t bytes);
// Validates dtype, ndim, dims (non-negative, no overflow) and that the data size is
// exactly numel x element size. Throws WireError with the reason.
TensorView tensor_payload_decode(const std::string& payload);

}  // namespace pac
