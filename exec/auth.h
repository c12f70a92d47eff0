// Cluster-key authentication: mutual HMAC-SHA256 challenge-response (OpenSSL).
//
// Every process of one cluster holds the same secret key. A connection is usable only
// after both ends proved they hold it, without sending it:
//   client -> Hello         {"role","id","nonce":Nc}
//   server -> AuthChallenge {"id","nonce":Ns,"mac":HMAC(key,"pac-server|"+Nc+"|"+Ns+"|"+server_id)}
//   client checks the server's mac (so a client never talks to an impostor), then
//   client -> AuthResponse  {"mac":HMAC(key,"pac-client|"+Ns+"|"+Nc+"|"+client_id)}
//   server checks it        -> AuthOk, or Error + close + a log line with the address.
// The "pac-server"/"pac-client" labels stop a peer from reflecting one side's mac back
// as the other's; fresh 32-byte random nonces on both sides stop replays. Macs are
// compared in constant time (CRYPTO_memcmp).
#pragma once
#include <string>

namespace pac {

// The cluster key. Never printed: `describe()` names only where it came from.
struct ClusterKey {
  std::string bytes;
  std::string source;  // "file /path" or "env PAC_CLUSTER_KEY"
};

// Loads the key: `key_file` if not empty, else $PAC_CLUSTER_KEY_FILE, else
// $PAC_CLUSTER_KEY (the key itself, for tests and containers). Surrounding whitespace
// in a file is dropped. Throws InputError (exit 2) naming the source when the key is
// missing or shorter than 16 bytes.
ClusterKey cluster_key_load(const std::string& key_file);

// 32 random bytes from OpenSSL's RAND_bytes, hex-encoded (64 chars).
std::string auth_nonce();

// HMAC-SHA256 of `message` under `key`, hex-encoded.
std::string auth_hmac_hex(const std::string& key, const std::string& message);

// Which string each side signs (see the protocol above).
std::string auth_server_message(const std::string& client_nonce, const std::string& server_nonce,
                                const std::string& server_id);
std::string auth_client_message(const std::string& server_nonce, const std::string& client_nonce,
                                 const std::string& client_id);

// Constant-time check of a received hex mac against the expected one.
bool auth_mac_equal(const std::string& got, const std::string& expected);

}  // namespace pac
