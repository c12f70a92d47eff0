#include "exec/auth.h"

#include <cstdlib>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "src/common/error.h"
#include "src/common/fs.h"

namespace pac {

static std::string hex_encode(const unsigned char* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 15];
  }
  return out;
}

static std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

ClusterKey cluster_key_load(const std::string& key_file) {
  ClusterKey k;
  std::string file = key_file;
  if (file.empty()) {
    const char* env = std::getenv("PAC_CLUSTER_KEY_FILE");
    if (env && *env) file = env;
  }
  if (!file.empty()) {
    k.source = "key file " + file;
    k.bytes = trim(file_read(file));
  } else {
    const char* env = std::getenv("PAC_CLUSTER_KEY");
    if (!env || !*env)
      throw InputError("no cluster key: pass --key-file FILE or set PAC_CLUSTER_KEY_FILE (or PAC_CLUSTER_KEY)");
    k.source = "environment variable PAC_CLUSTER_KEY";
    k.bytes = trim(env);
  }
  // A short key is guessable offline from one recorded handshake.
  if (k.bytes.size() < 16)
    throw InputError(k.source + ": cluster key has " + std::to_string(k.bytes.size()) +
                     " bytes, expected at least 16 (e.g. `openssl rand -hex 32 > key`)");
  return k;
}

std::string auth_nonce() {
  unsigned char buf[32];
  if (RAND_bytes(buf, sizeof buf) != 1) throw RuntimeError("OpenSSL RAND_bytes failed to produce a nonce");
  return hex_encode(buf, sizeof buf);
}

std::string auth_hmac_hex(const std::string& key, const std::string& message) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
            reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac, &len))
    throw RuntimeError("OpenSSL HMAC-SHA256 failed");
  return hex_encode(mac, len);
}

std::string auth_server_message(const std::string& client_nonce, const std::string& server_nonce,
                                const std::string& server_id) {
  return "pac-server|" + client_nonce + "|" + server_nonce + "|" + server_id;
}

std::string auth_client_message(const std::string& server_nonce, const std::string& client_nonce,
                                const std::string& client_id) {
  return "pac-client|" + server_nonce + "|" + client_nonce + "|" + client_id;
}

bool auth_mac_equal(const std::string& got, const std::string& expected) {
  // Length is public (always 64 hex chars for SHA-256); only the content must not leak.
  if (got.size() != expected.size()) return false;
  return CRYPTO_memcmp(got.data(), expected.data(), got.size()) == 0;
}

}  // namespace pac
