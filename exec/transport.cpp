#include "exec/transport.h"

#include <array>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <thread>

#include <boost/asio.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

namespace pac {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using ErrorCode = boost::system::error_code;

// ---- the process-wide I/O thread ----

namespace {

struct IoLoop {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> guard{io.get_executor()};
  std::thread thread{[this] { io.run(); }};
  ~IoLoop() {
    guard.reset();
    io.stop();
    thread.join();
  }
};

IoLoop& io_loop() {
  static IoLoop loop;
  return loop;
}

// One asynchronous operation that a caller thread waits for.
struct OpState {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  ErrorCode ec;
  size_t n = 0;
  void finish(const ErrorCode& e, size_t k) {
    std::lock_guard<std::mutex> lk(m);
    done = true;
    ec = e;
    n = k;
    cv.notify_all();
  }
};

// Waits for `op` until `deadline`; past it, runs `cancel` (which makes the operation
// complete with operation_aborted) and still waits for the completion, because the
// operation's buffers belong to the caller. Returns true when it was cancelled.
bool op_wait(OpState& op, Clock::time_point deadline, const std::function<void()>& cancel) {
  std::unique_lock<std::mutex> lk(op.m);
  if (op.cv.wait_until(lk, deadline, [&] { return op.done; })) return false;
  lk.unlock();
  cancel();
  lk.lock();
  op.cv.wait(lk, [&] { return op.done; });
  return op.ec == asio::error::operation_aborted;
}

struct IoResult {
  ErrorCode ec;
  size_t n = 0;
  bool timed_out = false;
};

std::string seconds_str(Millis t) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", t.count() / 1000.0);
  return buf;
}

}  // namespace

struct Connection::Impl {
  tcp::socket sock{io_loop().io};
  std::atomic<bool> open{true};
};

struct Listener::Impl {
  tcp::acceptor acc{io_loop().io};
};

using ConnImpl = Connection::Impl;

static void sock_cancel(const std::shared_ptr<ConnImpl>& impl) {
  asio::post(io_loop().io, [impl] {
    ErrorCode e;
    impl->sock.cancel(e);
  });
}

// Data moves on the calling thread with non-blocking sendmsg/recvmsg, and poll() waits
// for readiness up to the deadline. The I/O thread only connects and accepts. Why not
// async_read on the I/O thread: in one process that thread then does every copy for
// every connection, and a frame pays two thread hand-offs; the loopback benchmark
// measured about half the raw socket's throughput that way (docs/runtime.md).
// poll() is level-triggered, so no readiness edge can be missed between a recv that
// says EAGAIN and the wait. close() shuts the socket down, which wakes any poll.
static IoResult io_transfer(ConnImpl& impl, std::vector<iovec> iov, Clock::time_point deadline, bool writing) {
  IoResult r;
  int fd = impl.sock.native_handle();
  size_t idx = 0;
  for (;;) {
    while (idx < iov.size() && iov[idx].iov_len == 0) idx++;
    if (idx == iov.size()) return r;
    if (!impl.open) {
      r.ec = asio::error::operation_aborted;
      return r;
    }
    msghdr m{};
    m.msg_iov = &iov[idx];
    m.msg_iovlen = iov.size() - idx;
    ssize_t k = writing ? ::sendmsg(fd, &m, MSG_NOSIGNAL) : ::recvmsg(fd, &m, 0);
    if (k > 0) {
      r.n += size_t(k);
      size_t left = size_t(k);
      while (left > 0) {  // advance the iovecs past what was moved
        size_t take = std::min(left, iov[idx].iov_len);
        iov[idx].iov_base = static_cast<char*>(iov[idx].iov_base) + take;
        iov[idx].iov_len -= take;
        left -= take;
        if (iov[idx].iov_len == 0) idx++;
      }
      continue;
    }
    int err = errno;
    if (k == 0 && !writing) {
      r.ec = impl.open ? ErrorCode(asio::error::eof) : ErrorCode(asio::error::operation_aborted);
      return r;
    }
    if (k < 0 && err == EINTR) continue;
    if (k < 0 && (err == EAGAIN || err == EWOULDBLOCK)) {
      Clock::time_point now = Clock::now();
      if (now >= deadline) {
        r.timed_out = true;
        return r;
      }
      long ms = long(std::chrono::duration_cast<Millis>(deadline - now).count()) + 1;
      pollfd p{fd, short(writing ? POLLOUT : POLLIN), 0};
      ::poll(&p, 1, int(std::min(ms, 1000L)));
      continue;
    }
    r.ec = impl.open ? ErrorCode(err, boost::system::system_category()) : ErrorCode(asio::error::operation_aborted);
    return r;
  }
}

static IoResult io_read(const std::shared_ptr<ConnImpl>& impl, void* buf, size_t n, Clock::time_point deadline) {
  return io_transfer(*impl, {iovec{buf, n}}, deadline, false);
}

static IoResult io_write(const std::shared_ptr<ConnImpl>& impl, const std::vector<asio::const_buffer>& bufs,
                         Clock::time_point deadline) {
  std::vector<iovec> iov;
  for (const auto& b : bufs) iov.push_back(iovec{const_cast<void*>(b.data()), b.size()});
  return io_transfer(*impl, iov, deadline, true);
}

// ---- addresses and names ----

void address_parse(const std::string& address, const std::string& what, std::string* host, uint16_t* port) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size())
    throw InputError(what + ": expected HOST:PORT, got \"" + address + "\"");
  std::string h = address.substr(0, colon);
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);  // [::1]:80
  std::string p = address.substr(colon + 1);
  for (char ch : p)
    if (ch < '0' || ch > '9') throw InputError(what + ": port \"" + p + "\" is not a number (in \"" + address + "\")");
  long v = p.size() > 5 ? 99999 : std::stol(p);
  if (v > 65535) throw InputError(what + ": port " + p + " is over 65535 (in \"" + address + "\")");
  *host = h;
  *port = static_cast<uint16_t>(v);
}

std::string PeerName::str() const {
  if (id.empty()) return "peer at " + address;
  return "device " + id + " (" + address + ")";
}

static std::string endpoint_str(const tcp::endpoint& ep) {
  if (ep.address().is_v6()) return "[" + ep.address().to_string() + "]:" + std::to_string(ep.port());
  return ep.address().to_string() + ":" + std::to_string(ep.port());
}

// ---- Connection ----

Connection::Connection(std::shared_ptr<Impl> impl, PeerName peer, const ConnOptions& options)
    : impl_(std::move(impl)), peer_(std::move(peer)), options_(options) {
  ErrorCode e;
  impl_->sock.non_blocking(true, e);  // io_transfer relies on EAGAIN, never blocks
}

Connection::~Connection() { close(); }

void Connection::close() {
  if (!impl_->open.exchange(false)) return;
  // shutdown() from any thread is safe and wakes a thread blocked in poll() on this
  // socket; the descriptor itself is closed only when the last owner of impl_ goes, so
  // its number cannot be reused under a thread still using it.
  ::shutdown(impl_->sock.native_handle(), SHUT_RDWR);
}

bool Connection::is_open() const { return impl_->open.load(); }

void Connection::fail(const std::string& what, bool timed_out) {
  close();
  throw PeerError(what + " " + peer_.str() + " [" + options_.tag + "]", peer_.id, timed_out);
}

static std::string io_error_text(const ErrorCode& ec) {
  if (ec == asio::error::eof) return "connection closed by";
  if (ec == asio::error::connection_reset) return "connection reset by";
  if (ec == asio::error::broken_pipe) return "connection broken (peer gone):";
  if (ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor) return "connection closed locally, talking to";
  return ec.message() + ", talking to";
}

std::unique_ptr<Connection> Connection::connect(const std::string& address, const std::string& peer_id,
                                                const ConnOptions& options) {
  std::string host;
  uint16_t port = 0;
  address_parse(address, "address of device " + (peer_id.empty() ? std::string("?") : peer_id), &host, &port);
  PeerName peer{peer_id, address};
  std::string last_error = "no attempt made";
  bool last_timed_out = false;
  int attempts = options.connect_attempts < 1 ? 1 : options.connect_attempts;
  for (int attempt = 0; attempt < attempts; attempt++) {
    if (attempt > 0) std::this_thread::sleep_for(options.retry_delay);
    ErrorCode ec;
    tcp::resolver resolver(io_loop().io);
    auto endpoints = resolver.resolve(host, std::to_string(port), tcp::resolver::numeric_service, ec);
    if (ec) {
      last_error = "cannot resolve host \"" + host + "\": " + ec.message();
      continue;
    }
    auto impl = std::make_shared<ConnImpl>();
    auto op = std::make_shared<OpState>();
    asio::post(io_loop().io, [impl, op, endpoints] {
      asio::async_connect(impl->sock, endpoints,
                          [op](const ErrorCode& e, const tcp::endpoint&) { op->finish(e, 0); });
    });
    bool timed_out = op_wait(*op, Clock::now() + options.timeout, [impl] { sock_cancel(impl); });
    if (!timed_out && !op->ec) {
      ErrorCode e;
      impl->sock.set_option(tcp::no_delay(true), e);
      return std::make_unique<Connection>(impl, peer, options);
    }
    last_timed_out = timed_out;
    last_error = timed_out ? "timed out after " + seconds_str(options.timeout) : op->ec.message();
    ErrorCode e;
    impl->sock.close(e);
  }
  throw PeerError("cannot connect to " + peer.str() + " [" + options.tag + "] after " + std::to_string(attempts) +
                      " attempts: " + last_error,
                  peer_id, last_timed_out);
}

void Connection::send(MsgType type, const std::string& payload, uint32_t flags) {
  std::lock_guard<std::mutex> lk(send_mu_);
  if (!is_open()) fail(std::string("cannot send ") + msg_type_name(type) + ": connection already closed to", false);
  uint8_t hdr[kWireHeaderBytes];
  frame_header_encode(type, flags, send_seq_, payload.data(), payload.size(), hdr);
  std::vector<asio::const_buffer> bufs{asio::buffer(hdr, sizeof hdr), asio::buffer(payload)};
  IoResult r = io_write(impl_, bufs, Clock::now() + options_.timeout);
  if (r.timed_out)
    fail("timed out after " + seconds_str(options_.timeout) + " sending " + msg_type_name(type) + " to", true);
  if (r.ec) fail(io_error_text(r.ec), false);
  send_seq_++;
}

void Connection::send_json(MsgType type, const json& j, uint32_t flags) { send(type, j.dump(), flags); }

void Connection::send_tensor(MsgType type, const TensorHeader& h, const void* data, size_t bytes, uint32_t flags) {
  std::lock_guard<std::mutex> lk(send_mu_);
  if (!is_open()) fail(std::string("cannot send ") + msg_type_name(type) + ": connection already closed to", false);
  if (size_t(h.numel()) * tensor_dtype_size(h.dtype) != bytes)
    throw RuntimeError("send_tensor: " + std::to_string(bytes) + " data bytes do not match the tensor header's dims");
  std::string th = tensor_header_encode(h);
  size_t length = th.size() + bytes;
  if (length > options_.max_payload)
    throw RuntimeError("tensor frame of " + std::to_string(length) + " bytes is over the frame limit " +
                       std::to_string(options_.max_payload) + " for " + peer_.str());
  // The CRC covers tensor header + data; chain it instead of copying into one buffer.
  uint32_t crc = crc32c(data, bytes, crc32c(th.data(), th.size()));
  uint8_t hdr[kWireHeaderBytes];
  frame_header_encode(type, flags, send_seq_, nullptr, 0, hdr);
  // Patch length and payload crc, then recompute the header crc (layout in wire.h).
  for (int i = 0; i < 4; i++) hdr[12 + i] = (length >> (8 * i)) & 0xff;
  for (int i = 0; i < 4; i++) hdr[24 + i] = (crc >> (8 * i)) & 0xff;
  uint32_t hcrc = crc32c(hdr, 28);
  for (int i = 0; i < 4; i++) hdr[28 + i] = (hcrc >> (8 * i)) & 0xff;
  std::vector<asio::const_buffer> bufs{asio::buffer(hdr, sizeof hdr), asio::buffer(th), asio::buffer(data, bytes)};
  IoResult r = io_write(impl_, bufs, Clock::now() + options_.timeout);
  if (r.timed_out)
    fail("timed out after " + seconds_str(options_.timeout) + " sending " + msg_type_name(type) + " to", true);
  if (r.ec) fail(io_error_text(r.ec), false);
  send_seq_++;
}

bool Connection::recv_until(Frame& f, Clock::time_point header_deadline, bool may_time_out) {
  std::lock_guard<std::mutex> lk(recv_mu_);
  if (!is_open()) fail("cannot receive: connection already closed to", false);
  while (hdr_have_ < kWireHeaderBytes) {
    IoResult r = io_read(impl_, hdr_ + hdr_have_, kWireHeaderBytes - hdr_have_, header_deadline);
    hdr_have_ += r.n;
    if (r.timed_out) {
      if (may_time_out) return false;  // partial header kept for the next call
      fail("timed out after " + seconds_str(options_.timeout) + " waiting for a frame from", true);
    }
    if (r.ec) fail(io_error_text(r.ec), false);
  }
  hdr_have_ = 0;
  std::string why = frame_header_check(hdr_, recv_seq_, options_.max_payload, &f.header);
  if (!why.empty()) {
    close();
    throw WireError(peer_.str() + " [" + options_.tag + "] sent a bad frame: " + why + "; connection closed");
  }
  // Only now, with the length checked against the limit, is the payload allocated.
  if (f.payload.size() != f.header.length) f.payload.resize(f.header.length);
  if (f.header.length > 0) {
    IoResult r = io_read(impl_, &f.payload[0], f.header.length, Clock::now() + options_.timeout);
    if (r.timed_out)
      fail("timed out after " + seconds_str(options_.timeout) + " inside a " + std::to_string(f.header.length) +
               "-byte " + msg_type_name(f.header.type) + " payload from",
           true);
    if (r.ec) fail(io_error_text(r.ec), false);
  }
  why = frame_payload_check(f.header, f.payload.data(), f.payload.size());
  if (!why.empty()) {
    close();
    throw WireError(peer_.str() + " [" + options_.tag + "] sent a bad frame: " + why + "; connection closed");
  }
  recv_seq_++;
  return true;
}

Frame Connection::recv() {
  Frame f;
  recv_until(f, Clock::now() + options_.timeout, false);
  return f;
}

void Connection::recv_into(Frame& f) { recv_until(f, Clock::now() + options_.timeout, false); }

std::optional<Frame> Connection::try_recv(Millis wait) {
  Frame f;
  if (!recv_until(f, Clock::now() + wait, true)) return std::nullopt;
  return f;
}

void Connection::write_raw(const void* data, size_t n) {
  std::lock_guard<std::mutex> lk(send_mu_);
  std::vector<asio::const_buffer> bufs{asio::buffer(data, n)};
  IoResult r = io_write(impl_, bufs, Clock::now() + options_.timeout);
  if (r.timed_out) fail("timed out after " + seconds_str(options_.timeout) + " writing raw bytes to", true);
  if (r.ec) fail(io_error_text(r.ec), false);
}

void Connection::read_raw(void* data, size_t n) {
  std::lock_guard<std::mutex> lk(recv_mu_);
  IoResult r = io_read(impl_, data, n, Clock::now() + options_.timeout);
  if (r.timed_out) fail("timed out after " + seconds_str(options_.timeout) + " reading raw bytes from", true);
  if (r.ec) fail(io_error_text(r.ec), false);
}

// ---- Listener ----

Listener::Listener(const std::string& host, uint16_t port) : impl_(std::make_shared<Impl>()), host_(host) {
  ErrorCode ec;
  asio::ip::address addr = asio::ip::make_address(host, ec);
  if (ec) {
    tcp::resolver resolver(io_loop().io);
    auto r = resolver.resolve(host, std::to_string(port), ec);
    if (ec || r.empty()) throw InputError("cannot listen on " + host + ":" + std::to_string(port) + ": cannot resolve host");
    addr = r.begin()->endpoint().address();
  }
  tcp::endpoint ep(addr, port);
  std::string where = host + ":" + std::to_string(port);
  impl_->acc.open(ep.protocol(), ec);
  if (!ec) impl_->acc.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl_->acc.bind(ep, ec);
  if (!ec) impl_->acc.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw RuntimeError("cannot listen on " + where + ": " + ec.message());
}

Listener::~Listener() { close(); }

uint16_t Listener::port() const {
  ErrorCode ec;
  return impl_->acc.local_endpoint(ec).port();
}

std::string Listener::address() const {
  ErrorCode ec;
  return endpoint_str(impl_->acc.local_endpoint(ec));
}

void Listener::close() {
  auto impl = impl_;
  asio::post(io_loop().io, [impl] {
    ErrorCode e;
    impl->acc.close(e);
  });
}

std::unique_ptr<Connection> Listener::accept(Millis wait, const ConnOptions& options) {
  auto conn_impl = std::make_shared<ConnImpl>();
  auto op = std::make_shared<OpState>();
  auto impl = impl_;
  asio::post(io_loop().io, [impl, conn_impl, op] {
    impl->acc.async_accept(conn_impl->sock, [op](const ErrorCode& e) { op->finish(e, 0); });
  });
  bool timed_out = op_wait(*op, Clock::now() + wait, [impl] {
    asio::post(io_loop().io, [impl] {
      ErrorCode e;
      impl->acc.cancel(e);
    });
  });
  if (timed_out || op->ec) return nullptr;  // nobody came, or the listener was closed
  ErrorCode e;
  conn_impl->sock.set_option(tcp::no_delay(true), e);
  std::string addr = endpoint_str(conn_impl->sock.remote_endpoint(e));
  if (e) addr = "unknown address";
  return std::make_unique<Connection>(conn_impl, PeerName{"", addr}, options);
}

// ---- handshake ----

json frame_json(const Frame& f, const PeerName& from) {
  json j;
  try {
    j = json::parse(f.payload);
  } catch (const std::exception& e) {
    throw WireError(from.str() + ": " + msg_type_name(f.type()) + " payload is not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw WireError(from.str() + ": " + msg_type_name(f.type()) + " payload is not a JSON object");
  return j;
}

// A string member of a handshake message, or a WireError naming the peer.
static std::string hello_string(const json& j, const char* key, const Frame& f, const PeerName& from) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string() || it->get<std::string>().size() > 256)
    throw WireError(from.str() + ": " + msg_type_name(f.type()) + " needs a string \"" + key + "\" of at most 256 chars");
  return it->get<std::string>();
}

std::string frame_error_text(const Frame& f) {
  try {
    json j = json::parse(f.payload);
    if (j.is_object() && j.contains("error") && j["error"].is_string()) return j["error"].get<std::string>();
  } catch (const std::exception&) {
  }
  return f.payload.substr(0, 200);
}

// Receives the next handshake frame; an Error frame or another type ends the handshake.
static Frame handshake_expect(Connection& c, MsgType want) {
  Frame f = c.recv();
  if (f.type() == MsgType::Error) {
    c.close();
    throw PeerError(c.peer().str() + " refused the handshake: " + frame_error_text(f), c.peer().id, false);
  }
  if (f.type() != want) {
    c.close();
    throw PeerError(c.peer().str() + " sent " + msg_type_name(f.type()) + " during the handshake, expected " +
                        msg_type_name(want),
                    c.peer().id, false);
  }
  return f;
}

void handshake_client(Connection& c, const ClusterKey& key, const std::string& my_role, const std::string& my_id) {
  std::string nc = auth_nonce();
  c.send_json(MsgType::Hello, {{"role", my_role}, {"id", my_id}, {"nonce", nc}});
  Frame f = handshake_expect(c, MsgType::AuthChallenge);
  json j = frame_json(f, c.peer());
  std::string server_id = hello_string(j, "id", f, c.peer());
  std::string ns = hello_string(j, "nonce", f, c.peer());
  std::string mac = hello_string(j, "mac", f, c.peer());
  if (!auth_mac_equal(mac, auth_hmac_hex(key.bytes, auth_server_message(nc, ns, server_id)))) {
    c.send_json(MsgType::Error, {{"error", "authentication failed: you do not hold this cluster's key"}});
    c.close();
    throw PeerError(c.peer().str() + " failed authentication: it does not hold our cluster key", c.peer().id, false);
  }
  if (!c.peer().id.empty() && c.peer().id != server_id) {
    c.close();
    throw PeerError(c.peer().str() + " says it is device " + server_id + ", expected " + c.peer().id, c.peer().id,
                    false);
  }
  c.set_peer_id(server_id);
  c.send_json(MsgType::AuthResponse, {{"mac", auth_hmac_hex(key.bytes, auth_client_message(ns, nc, my_id))}});
  handshake_expect(c, MsgType::AuthOk);
}

HelloInfo handshake_server(Connection& c, const ClusterKey& key, const std::string& my_id) {
  uint32_t limit = c.options().max_payload;
  c.set_max_payload(std::min(limit, kWirePreAuthMaxPayload));
  Frame f = handshake_expect(c, MsgType::Hello);
  json j = frame_json(f, c.peer());
  HelloInfo hello;
  hello.role = hello_string(j, "role", f, c.peer());
  hello.id = hello_string(j, "id", f, c.peer());
  std::string nc = hello_string(j, "nonce", f, c.peer());
  std::string ns = auth_nonce();
  c.send_json(MsgType::AuthChallenge,
              {{"id", my_id}, {"nonce", ns}, {"mac", auth_hmac_hex(key.bytes, auth_server_message(nc, ns, my_id))}});
  f = handshake_expect(c, MsgType::AuthResponse);
  j = frame_json(f, c.peer());
  std::string mac = hello_string(j, "mac", f, c.peer());
  if (!auth_mac_equal(mac, auth_hmac_hex(key.bytes, auth_client_message(ns, nc, hello.id)))) {
    c.send_json(MsgType::Error, {{"error", "authentication failed: wrong cluster key"}});
    c.close();
    throw PeerError("refused " + hello.role + " \"" + hello.id + "\" from " + c.peer().address +
                        ": wrong cluster key (authentication failed)",
                    hello.id, false);
  }
  c.send_json(MsgType::AuthOk, json::object());
  c.set_peer_id(hello.id);
  c.set_max_payload(limit);
  return hello;
}

}  // namespace pac
