// Wire protocol and authentication primitives: no sockets here (exec_transport_test
// covers those). Every check compares against a closed-form or published value.
#include <gtest/gtest.h>

#include <sys/resource.h>

#include <cstdlib>
#include <cstring>
#include <random>

#include "exec/auth.h"
#include "exec/wire.h"
#include "src/common/fs.h"

using namespace pac;

static std::string decode_error(const std::string& bytes, uint64_t seq = 0, uint32_t limit = kWireDefaultMaxPayload) {
  try {
    frame_decode(bytes, seq, limit);
  } catch (const WireError& e) {
    return e.what();
  }
  return "";
}

// Rewrites the header crc after a field was changed: a hostile peer that computes
// checksums correctly must still be refused by the field's own check.
static void reseal(std::string& frame) {
  uint32_t c = crc32c(frame.data(), 28);
  for (int i = 0; i < 4; i++) frame[28 + i] = char((c >> (8 * i)) & 0xff);
}

TEST(ExecWire, Crc32cMatchesPublishedCheckValue) {
  // CRC-32C("123456789") = 0xE3069283 (the standard check value of the Castagnoli CRC).
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c_software("123456789", 9), 0xE3069283u);
}

TEST(ExecWire, Crc32cHardwareAndTableAgreeOnEveryLength) {
  std::mt19937 rng(7);
  std::string buf(1000, '\0');
  for (char& c : buf) c = char(rng());
  for (size_t n = 0; n < buf.size(); n += 37) {
    // Expected: the table implementation, an independent computation of the same CRC.
    EXPECT_EQ(crc32c(buf.data(), n), crc32c_software(buf.data(), n)) << "length " << n;
  }
  // Chaining over a split equals one pass: crc(a+b) == crc(b, crc(a)).
  EXPECT_EQ(crc32c(buf.data() + 100, 900, crc32c(buf.data(), 100)), crc32c(buf.data(), 1000));
}

TEST(ExecWire, FrameRoundTripKeepsEveryField) {
  std::string payload = "{\"role\":\"coordinator\"}";
  std::string bytes = frame_encode(MsgType::Hello, 0, 41, payload);
  ASSERT_EQ(bytes.size(), kWireHeaderBytes + payload.size());
  // The header starts with the magic bytes "PACW".
  EXPECT_EQ(bytes.substr(0, 4), "PACW");
  size_t consumed = 0;
  Frame f = frame_decode(bytes, 41, kWireDefaultMaxPayload, &consumed);
  EXPECT_EQ(consumed, bytes.size());
  EXPECT_EQ(f.type(), MsgType::Hello);
  EXPECT_EQ(f.header.seq, 41u);
  EXPECT_EQ(f.header.length, payload.size());
  EXPECT_EQ(f.header.flags, 0u);
  EXPECT_EQ(f.payload, payload);

  // An empty payload with the end-of-stream flag.
  Frame g = frame_decode(frame_encode(MsgType::Activation, kFlagEndOfStream, 0, ""), 0, 16);
  EXPECT_EQ(g.header.flags, kFlagEndOfStream);
  EXPECT_TRUE(g.payload.empty());
}

TEST(ExecWire, EveryCorruptedHeaderFieldIsRefused) {
  const std::string good = frame_encode(MsgType::Assign, 0, 5, "{\"plan\":1}");
  ASSERT_EQ(decode_error(good, 5), "");

  std::string f = good;
  f[0] = 'X';  // magic
  EXPECT_NE(decode_error(f, 5).find("bad magic"), std::string::npos);

  f = good;
  f[4] = 9;  // version 9, checksum resealed
  reseal(f);
  EXPECT_NE(decode_error(f, 5).find("unsupported protocol version 9"), std::string::npos);

  f = good;
  f[6] = char(0xe7), f[7] = 3;  // type 999
  reseal(f);
  EXPECT_NE(decode_error(f, 5).find("unknown message type 999"), std::string::npos);

  f = good;
  f[8] = 0x20;  // flag bit 5 is not defined
  reseal(f);
  EXPECT_NE(decode_error(f, 5).find("unknown flag bits 0x00000020"), std::string::npos);

  f = good;
  f[12] = 11;  // length 11 instead of 10: the payload is one byte short
  reseal(f);
  EXPECT_NE(decode_error(f, 5).find("truncated frame"), std::string::npos);

  f = good;
  f[16] = 6;  // seq 6 where 5 is expected (a replayed or dropped frame)
  reseal(f);
  EXPECT_NE(decode_error(f, 5).find("sequence number 6 out of order (expected 5)"), std::string::npos);

  f = good;
  f[24] ^= 1;  // payload crc
  reseal(f);
  EXPECT_NE(decode_error(f, 5).find("payload checksum mismatch"), std::string::npos);

  f = good;
  f[28] ^= 1;  // header crc itself
  EXPECT_NE(decode_error(f, 5).find("header checksum mismatch"), std::string::npos);

  f = good;
  f[16] = 6;  // any field changed without resealing: caught by the header crc
  EXPECT_NE(decode_error(f, 5).find("header checksum mismatch"), std::string::npos);

  f = good;
  f[kWireHeaderBytes + 2] ^= 0x40;  // one payload bit flipped in transit
  EXPECT_NE(decode_error(f, 5).find("payload checksum mismatch"), std::string::npos);

  EXPECT_NE(decode_error(good.substr(0, 20), 5).find("truncated frame: 20 bytes"), std::string::npos);
}

TEST(ExecWire, OversizedLengthIsRefusedBeforeAnyAllocation) {
  // A header claiming 0xFFFFFFFF bytes (4 GiB - 1) against the 256 MiB limit.
  std::string f = frame_encode(MsgType::Activation, 0, 0, "");
  for (int i = 0; i < 4; i++) f[12 + i] = char(0xff);
  reseal(f);
  struct rusage before, after;
  getrusage(RUSAGE_SELF, &before);
  std::string err = decode_error(f, 0);
  getrusage(RUSAGE_SELF, &after);
  EXPECT_NE(err.find("payload length 4294967295 over the limit 268435456"), std::string::npos) << err;
  // Had the decoder allocated (and zeroed) the claimed 4 GiB, the peak RSS would have
  // grown by gigabytes; allow 64 MiB of noise (ru_maxrss is in KiB).
  EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 64 * 1024);

  // The same length under a configured limit of 1 KiB names that limit.
  std::string g = frame_encode(MsgType::Activation, 0, 0, std::string(2048, 'x'));
  EXPECT_NE(decode_error(g, 0, 1024).find("payload length 2048 over the limit 1024"), std::string::npos);
}

TEST(ExecWire, TensorPayloadRoundTrip) {
  TensorHeader h;
  h.dtype = TensorDtype::F32;
  h.micro_batch = 3;
  h.stage = 2;
  h.tag = 77;
  h.dims = {2, 3};
  float data[6] = {1, -2, 3.5f, 4, 5, -6.25f};
  std::string p = tensor_payload_encode(h, data, sizeof data);
  // 16-byte fixed part + 2 dims x 8 bytes + 6 floats x 4 bytes = 56 bytes.
  ASSERT_EQ(p.size(), 56u);
  TensorView v = tensor_payload_decode(p);
  EXPECT_EQ(v.header.dtype, TensorDtype::F32);
  EXPECT_EQ(v.header.micro_batch, 3u);
  EXPECT_EQ(v.header.stage, 2u);
  EXPECT_EQ(v.header.tag, 77u);
  EXPECT_EQ(v.header.dims, (std::vector<int64_t>{2, 3}));
  ASSERT_EQ(v.bytes, sizeof data);
  EXPECT_EQ(std::memcmp(v.data, data, sizeof data), 0);

  TensorHeader s;  // a scalar has no dims and one element
  s.dtype = TensorDtype::I64;
  int64_t one = 42;
  TensorView sv = tensor_payload_decode(tensor_payload_encode(s, &one, 8));
  EXPECT_EQ(sv.header.numel(), 1);
  EXPECT_EQ(sv.bytes, 8u);
}

static std::string tensor_error(const std::string& p) {
  try {
    tensor_payload_decode(p);
  } catch (const WireError& e) {
    return e.what();
  }
  return "";
}

TEST(ExecWire, HostileTensorHeadersAreRefused) {
  TensorHeader h;
  h.dims = {4};
  float d[4] = {0, 1, 2, 3};
  const std::string good = tensor_payload_encode(h, d, sizeof d);
  ASSERT_EQ(tensor_error(good), "");

  std::string p = good;
  p[0] = 99;
  EXPECT_NE(tensor_error(p).find("unknown tensor dtype 99"), std::string::npos);
  p = good;
  p[1] = 9;
  EXPECT_NE(tensor_error(p).find("9 dims, at most 8"), std::string::npos);
  p = good;
  p[2] = 1;
  EXPECT_NE(tensor_error(p).find("reserved"), std::string::npos);
  p = good;
  p[16] = 5;  // dims say 5 floats (20 bytes), data has 16
  EXPECT_NE(tensor_error(p).find("tensor data is 16 bytes, dims x f32 need 20"), std::string::npos);
  EXPECT_NE(tensor_error(good.substr(0, 10)).find("shorter than its 16-byte header"), std::string::npos);

  // Two dims of 2^40: the product 2^80 overflows 64 bits; must be refused, not wrapped.
  TensorHeader big;
  big.dims = {int64_t(1) << 40, int64_t(1) << 40};
  std::string hb = tensor_header_encode(big) + std::string(16, '\0');
  EXPECT_NE(tensor_error(hb).find("need more"), std::string::npos);
  // A dim with the sign bit set is negative.
  TensorHeader neg;
  neg.dims = {-1};
  EXPECT_NE(tensor_error(tensor_header_encode(neg)).find("negative"), std::string::npos);
}

TEST(ExecAuth, HmacSha256MatchesRfc4231) {
  // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
  EXPECT_EQ(auth_hmac_hex("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(ExecAuth, MacsDependOnRoleNoncesAndKey) {
  std::string k = "0123456789abcdef0123";
  std::string nc = auth_nonce(), ns = auth_nonce();
  EXPECT_EQ(nc.size(), 64u);
  EXPECT_NE(nc, ns);  // 256 random bits twice: equal only by a broken RNG
  std::string server = auth_hmac_hex(k, auth_server_message(nc, ns, "w0"));
  std::string client = auth_hmac_hex(k, auth_client_message(ns, nc, "w0"));
  // The role label keeps a server's mac from being reflected as a client's.
  EXPECT_NE(server, client);
  EXPECT_NE(server, auth_hmac_hex(k + "x", auth_server_message(nc, ns, "w0")));
  EXPECT_TRUE(auth_mac_equal(server, auth_hmac_hex(k, auth_server_message(nc, ns, "w0"))));
  EXPECT_FALSE(auth_mac_equal(server, client));
  EXPECT_FALSE(auth_mac_equal(server, server.substr(0, 63)));
}

TEST(ExecAuth, KeyLoadsFromFileOrEnvAndRejectsShortKeys) {
  std::string dir = testing::TempDir() + "exec_auth_key";
  dir_create(dir);
  std::string file = path_join(dir, "key");
  file_write_atomic(file, "  0123456789abcdef0123456789abcdef\n");
  ClusterKey k = cluster_key_load(file);
  EXPECT_EQ(k.bytes, "0123456789abcdef0123456789abcdef");  // whitespace trimmed
  EXPECT_NE(k.source.find(file), std::string::npos);

  file_write_atomic(file, "short");
  try {
    cluster_key_load(file);
    FAIL() << "a 5-byte key was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("cluster key has 5 bytes, expected at least 16"), std::string::npos);
    EXPECT_EQ(std::string(e.what()).find("short"), std::string::npos) << "the key itself must never be printed";
  }

  unsetenv("PAC_CLUSTER_KEY_FILE");
  setenv("PAC_CLUSTER_KEY", "env-key-0123456789", 1);
  EXPECT_EQ(cluster_key_load("").bytes, "env-key-0123456789");
  unsetenv("PAC_CLUSTER_KEY");
  EXPECT_THROW(cluster_key_load(""), InputError);
  EXPECT_THROW(cluster_key_load(path_join(dir, "missing")), InputError);
}
