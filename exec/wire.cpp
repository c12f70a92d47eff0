#include "exec/wire.h"

#include <cstring>
#include <mutex>

namespace pac {

const char* msg_type_name(MsgType t) {
  switch (t) {
    case MsgType::Hello: return "hello";
    case MsgType::AuthChallenge: return "auth_challenge";
    case MsgType::AuthResponse: return "auth_response";
    case MsgType::AuthOk: return "auth_ok";
    case MsgType::Assign: return "assign";
    case MsgType::AssignAck: return "assign_ack";
    case MsgType::Start: return "start";
    case MsgType::Progress: return "progress";
    case MsgType::Result: return "result";
    case MsgType::Heartbeat: return "heartbeat";
    case MsgType::HeartbeatAck: return "heartbeat_ack";
    case MsgType::Error: return "error";
    case MsgType::Shutdown: return "shutdown";
    case MsgType::Activation: return "activation";
    case MsgType::SideState: return "side_state";
    case MsgType::Gradient: return "gradient";
  }
  return "unknown";
}

bool msg_type_known(uint16_t t) {
  return std::strcmp(msg_type_name(static_cast<MsgType>(t)), "unknown") != 0;
}

bool msg_type_is_tensor(MsgType t) {
  return t == MsgType::Activation || t == MsgType::SideState || t == MsgType::Gradient;
}

// ---- CRC-32C ----

static uint32_t g_crc_table[8][256];

static void crc_table_init() {
  const uint32_t poly = 0x82F63B78u;  // Castagnoli, reflected
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ poly : c >> 1;
    g_crc_table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++)
    for (int t = 1; t < 8; t++)
      g_crc_table[t][i] = (g_crc_table[t - 1][i] >> 8) ^ g_crc_table[0][g_crc_table[t - 1][i] & 0xff];
}

static std::once_flag g_crc_once;

uint32_t crc32c_software(const void* data, size_t n, uint32_t crc) {
  std::call_once(g_crc_once, crc_table_init);
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint32_t c = ~crc;
  // slicing-by-8: 8 table lookups per 8 input bytes instead of 8 dependent steps
  while (n >= 8) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= c;
    c = g_crc_table[7][lo & 0xff] ^ g_crc_table[6][(lo >> 8) & 0xff] ^
        g_crc_table[5][(lo >> 16) & 0xff] ^ g_crc_table[4][lo >> 24] ^
        g_crc_table[3][hi & 0xff] ^ g_crc_table[2][(hi >> 8) & 0xff] ^
        g_crc_table[1][(hi >> 16) & 0xff] ^ g_crc_table[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ g_crc_table[0][(c ^ *p++) & 0xff];
  return ~c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(const void* data, size_t n, uint32_t crc) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint64_t c = ~crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return ~c32;
}
#endif

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  if (hw) return crc32c_hw(data, n, crc);
#endif
  return crc32c_software(data, n, crc);
}

// ---- little-endian helpers ----

static void put_u16(uint8_t* p, uint16_t v) { p[0] = v & 0xff; p[1] = v >> 8; }
static void put_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (v >> (8 * i)) & 0xff;
}
static void put_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (v >> (8 * i)) & 0xff;
}
static uint16_t get_u16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
static uint32_t get_u32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}
static uint64_t get_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

static std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

// ---- frames ----

void frame_header_encode(MsgType type, uint32_t flags, uint64_t seq, const void* payload,
                         size_t length, uint8_t out[kWireHeaderBytes]) {
  if (length > 0xffffffffu) throw WireError("payload of " + std::to_string(length) + " bytes does not fit a frame");
  put_u32(out + 0, kWireMagic);
  put_u16(out + 4, kWireVersion);
  put_u16(out + 6, static_cast<uint16_t>(type));
  put_u32(out + 8, flags);
  put_u32(out + 12, static_cast<uint32_t>(length));
  put_u64(out + 16, seq);
  put_u32(out + 24, crc32c(payload, length));
  put_u32(out + 28, crc32c(out, 28));
}

std::string frame_encode(MsgType type, uint32_t flags, uint64_t seq, const std::string& payload) {
  std::string out(kWireHeaderBytes + payload.size(), '\0');
  frame_header_encode(type, flags, seq, payload.data(), payload.size(), reinterpret_cast<uint8_t*>(&out[0]));
  std::memcpy(&out[kWireHeaderBytes], payload.data(), payload.size());
  return out;
}

std::string frame_header_check(const uint8_t in[kWireHeaderBytes], uint64_t expected_seq,
                               uint32_t max_payload, FrameHeader* out) {
  FrameHeader h;
  h.magic = get_u32(in + 0);
  h.version = get_u16(in + 4);
  uint16_t type = get_u16(in + 6);
  h.flags = get_u32(in + 8);
  h.length = get_u32(in + 12);
  h.seq = get_u64(in + 16);
  h.payload_crc = get_u32(in + 24);
  h.header_crc = get_u32(in + 28);
  // Order matters for the messages: a stranger speaking another protocol is told
  // "bad magic", not "bad checksum".
  if (h.magic != kWireMagic) return "bad magic " + hex32(h.magic) + " (expected " + hex32(kWireMagic) + ")";
  if (h.version != kWireVersion)
    return "unsupported protocol version " + std::to_string(h.version) + " (expected " + std::to_string(kWireVersion) + ")";
  uint32_t crc = crc32c(in, 28);
  if (crc != h.header_crc) return "header checksum mismatch (got " + hex32(h.header_crc) + ", computed " + hex32(crc) + ")";
  if (!msg_type_known(type)) return "unknown message type " + std::to_string(type);
  h.type = static_cast<MsgType>(type);
  if (h.flags & ~kFlagsKnown) return "unknown flag bits " + hex32(h.flags & ~kFlagsKnown);
  if (h.length > max_payload)
    return "payload length " + std::to_string(h.length) + " over the limit " + std::to_string(max_payload);
  if (h.seq != expected_seq)
    return "sequence number " + std::to_string(h.seq) + " out of order (expected " + std::to_string(expected_seq) + ")";
  if (out) *out = h;
  return "";
}

std::string frame_payload_check(const FrameHeader& h, const void* payload, size_t n) {
  if (n != h.length) return "payload is " + std::to_string(n) + " bytes, header says " + std::to_string(h.length);
  uint32_t crc = crc32c(payload, n);
  if (crc != h.payload_crc) return "payload checksum mismatch (got " + hex32(h.payload_crc) + ", computed " + hex32(crc) + ")";
  return "";
}

Frame frame_decode(const std::string& bytes, uint64_t expected_seq, uint32_t max_payload, size_t* consumed) {
  if (bytes.size() < kWireHeaderBytes)
    throw WireError("truncated frame: " + std::to_string(bytes.size()) + " bytes, header needs " +
                    std::to_string(kWireHeaderBytes));
  Frame f;
  std::string why = frame_header_check(reinterpret_cast<const uint8_t*>(bytes.data()), expected_seq, max_payload, &f.header);
  if (!why.empty()) throw WireError(why);
  if (bytes.size() - kWireHeaderBytes < f.header.length)
    throw WireError("truncated frame: payload has " + std::to_string(bytes.size() - kWireHeaderBytes) +
                    " of " + std::to_string(f.header.length) + " bytes");
  f.payload.assign(bytes, kWireHeaderBytes, f.header.length);
  why = frame_payload_check(f.header, f.payload.data(), f.payload.size());
  if (!why.empty()) throw WireError(why);
  if (consumed) *consumed = kWireHeaderBytes + f.header.length;
  return f;
}

// ---- tensors ----

size_t tensor_dtype_size(TensorDtype d) {
  switch (d) {
    case TensorDtype::F32: return 4;
    case TensorDtype::F16: return 2;
    case TensorDtype::BF16: return 2;
    case TensorDtype::I64: return 8;
    case TensorDtype::I32: return 4;
    case TensorDtype::U8: return 1;
  }
  return 0;
}

const char* tensor_dtype_name(TensorDtype d) {
  switch (d) {
    case TensorDtype::F32: return "f32";
    case TensorDtype::F16: return "f16";
    case TensorDtype::BF16: return "bf16";
    case TensorDtype::I64: return "i64";
    case TensorDtype::I32: return "i32";
    case TensorDtype::U8: return "u8";
  }
  return "unknown";
}

int64_t TensorHeader::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::string tensor_header_encode(const TensorHeader& h) {
  if (h.dims.size() > size_t(kTensorMaxDims)) throw WireError("tensor has " + std::to_string(h.dims.size()) + " dims, at most 8 allowed");
  std::string out(h.header_bytes(), '\0');
  uint8_t* p = reinterpret_cast<uint8_t*>(&out[0]);
  p[0] = static_cast<uint8_t>(h.dtype);
  p[1] = static_cast<uint8_t>(h.dims.size());
  put_u16(p + 2, 0);
  put_u32(p + 4, h.micro_batch);
  put_u32(p + 8, h.stage);
  put_u32(p + 12, h.tag);
  for (size_t i = 0; i < h.dims.size(); i++) put_u64(p + 16 + 8 * i, static_cast<uint64_t>(h.dims[i]));
  return out;
}

std::string tensor_payload_encode(const TensorHeader& h, const void* data, size_t bytes) {
  std::string out = tensor_header_encode(h);
  out.append(static_cast<const char*>(data), bytes);
  return out;
}

TensorView tensor_payload_decode(const std::string& payload) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(payload.data());
  if (payload.size() < 16) throw WireError("tensor payload of " + std::to_string(payload.size()) + " bytes is shorter than its 16-byte header");
  TensorView v;
  v.header.dtype = static_cast<TensorDtype>(p[0]);
  size_t esize = tensor_dtype_size(v.header.dtype);
  if (esize == 0) throw WireError("unknown tensor dtype " + std::to_string(p[0]));
  int ndim = p[1];
  if (ndim > kTensorMaxDims) throw WireError("tensor has " + std::to_string(ndim) + " dims, at most 8 allowed");
  if (get_u16(p + 2) != 0) throw WireError("tensor header reserved bytes are not zero");
  v.header.micro_batch = get_u32(p + 4);
  v.header.stage = get_u32(p + 8);
  v.header.tag = get_u32(p + 12);
  size_t hbytes = 16 + 8 * size_t(ndim);
  if (payload.size() < hbytes) throw WireError("tensor payload truncated inside its dims");
  // numel x esize must equal the remaining bytes; check each step against the
  // payload size so a hostile dims list cannot overflow the product.
  uint64_t limit = payload.size() - hbytes;
  uint64_t numel = 1;
  for (int i = 0; i < ndim; i++) {
    uint64_t d = get_u64(p + 16 + 8 * i);
    if (d > uint64_t(INT64_MAX)) throw WireError("tensor dim " + std::to_string(i) + " is negative");
    v.header.dims.push_back(static_cast<int64_t>(d));
    if (d != 0 && numel > limit / d) numel = limit + 1;  // saturate: certainly too big
    else numel *= d;
  }
  if (numel > limit || numel * esize != limit)
    throw WireError("tensor data is " + std::to_string(limit) + " bytes, dims x " + tensor_dtype_name(v.header.dtype) +
                    " need " + (numel > limit ? std::string("more") : std::to_string(numel * esize)));
  v.data = p + hbytes;
  v.bytes = limit;
  return v;
}

}  // namespace pac
