// Asio transport: framed, authenticated connections with a timeout on every wait.
//
// Asio owns the sockets and does name resolution, connect and accept on one
// process-wide io_context thread (each wait bounded by a deadline). Frames then move
// on the calling thread with non-blocking send/recv and poll() until the deadline, so
// one thread may send while another receives on the same connection (one mutex per
// direction) and copies of different connections run in parallel. A wait that passes
// its deadline throws PeerError naming the device and address it waited for; a peer
// that hangs up is reported the same way.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "exec/auth.h"
#include "exec/wire.h"
#include "src/common/error.h"

namespace pac {

using json = nlohmann::json;
using Millis = std::chrono::milliseconds;

// Gloo-style options carried by every connection: how long any one wait may take and a
// tag that appears in every message about it ("control", "stream s0->s1").
struct ConnOptions {
  Millis timeout{10000};
  std::string tag = "control";
  int connect_attempts = 50;          // connect: tries before giving up ...
  Millis retry_delay{100};            // ... with this pause between them
  uint32_t max_payload = kWireDefaultMaxPayload;  // frames above it are refused
};

// Who is at the other end: "device w1 (127.0.0.1:40211)". `id` is empty until known.
struct PeerName {
  std::string id;
  std::string address;
  std::string str() const;
};

// A peer timed out, hung up, or sent something we refused. Runtime failure (exit 1);
// `peer_id` lets a coordinator know which device to re-plan around.
struct PeerError : RuntimeError {
  PeerError(const std::string& what, std::string peer_id, bool timed_out)
      : RuntimeError(what), peer_id(std::move(peer_id)), timed_out(timed_out) {}
  std::string peer_id;
  bool timed_out;
};

// "HOST:PORT" -> host, port. Throws InputError naming `what` (e.g. "--listen").
void address_parse(const std::string& address, const std::string& what, std::string* host, uint16_t* port);

class Connection {
 public:
  struct Impl;
  Connection(std::shared_ptr<Impl> impl, PeerName peer, const ConnOptions& options);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Connects to "host:port", retrying (the peer may still be starting) up to
  // options.connect_attempts times; each attempt waits at most options.timeout.
  static std::unique_ptr<Connection> connect(const std::string& address, const std::string& peer_id,
                                             const ConnOptions& options);

  // Sends one frame. Whole-frame deadline = options.timeout.
  void send(MsgType type, const std::string& payload, uint32_t flags = 0);
  void send_json(MsgType type, const json& j, uint32_t flags = 0);
  // Tensor frame: header + data gathered straight from `data` (no copy of the data).
  void send_tensor(MsgType type, const TensorHeader& h, const void* data, size_t bytes, uint32_t flags = 0);

  // Receives one frame, waiting at most options.timeout for it. Throws PeerError on
  // timeout or hang-up; WireError (connection closed) on a frame it refuses.
  Frame recv();
  // recv into a reused frame: when the payload size repeats, no new buffer is zeroed.
  void recv_into(Frame& f);
  // Like recv, but returns nullopt when no frame started to arrive within `wait`; the
  // connection stays usable (a partly received header is kept for the next call).
  std::optional<Frame> try_recv(Millis wait);

  // Unframed bytes, for tests (garbage injection) and the raw-socket benchmark.
  void write_raw(const void* data, size_t n);
  void read_raw(void* data, size_t n);

  void close();
  bool is_open() const;

  const PeerName& peer() const { return peer_; }
  void set_peer_id(const std::string& id) { peer_.id = id; }
  const ConnOptions& options() const { return options_; }
  void set_max_payload(uint32_t n) { options_.max_payload = n; }
  void set_timeout(Millis t) { options_.timeout = t; }

 private:
  // false: no frame started before header_deadline (only when may_time_out).
  bool recv_until(Frame& f, std::chrono::steady_clock::time_point header_deadline, bool may_time_out);
  [[noreturn]] void fail(const std::string& what, bool timed_out);

  std::shared_ptr<Impl> impl_;
  PeerName peer_;
  ConnOptions options_;
  std::mutex send_mu_, recv_mu_;
  uint64_t send_seq_ = 0, recv_seq_ = 0;
  uint8_t hdr_[kWireHeaderBytes];
  size_t hdr_have_ = 0;  // bytes of the next header already received (try_recv)
};

// A listening socket. accept() waits at most `wait` and returns nullptr when nobody came,
// so a serve loop can check its stop flag.
class Listener {
 public:
  struct Impl;
  Listener(const std::string& host, uint16_t port);  // port 0: the OS picks one
  ~Listener();
  uint16_t port() const;
  std::string address() const;  // "host:port" actually bound
  std::unique_ptr<Connection> accept(Millis wait, const ConnOptions& options);
  void close();

 private:
  std::shared_ptr<Impl> impl_;
  std::string host_;
};

// ---- the authentication handshake (auth.h describes it) ----

struct HelloInfo {
  std::string role;  // "coordinator" | "worker" | anything the client says
  std::string id;
};

// Client side. Throws PeerError when the server cannot prove it holds the key.
// On success the connection's peer id is the server's id.
void handshake_client(Connection& c, const ClusterKey& key, const std::string& my_role, const std::string& my_id);

// Server side. Only small frames are allowed until the client proved itself
// (kWirePreAuthMaxPayload). On a wrong key it sends an Error frame, closes the
// connection and throws PeerError naming the client's address.
HelloInfo handshake_server(Connection& c, const ClusterKey& key, const std::string& my_id);

// Parses a control frame's JSON payload; a parse error is a WireError naming the peer.
json frame_json(const Frame& f, const PeerName& from);
// The "error" text of an Error frame (or the start of its raw payload).
std::string frame_error_text(const Frame& f);

}  // namespace pac
