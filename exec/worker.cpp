#include "exec/worker.h"

#include "src/common/cgroup.h"

#include <cstdio>

namespace pac {

using Clock = std::chrono::steady_clock;

// How often blocking waits wake up to look at the stop flag.
static const Millis kPollSlice{200};

Worker::Worker(WorkerOptions options, ClusterKey key, ExecutorFactory factory)
    : options_(std::move(options)), key_(std::move(key)), factory_(std::move(factory)) {
  last_coordinator_ = Clock::now();
}

Worker::~Worker() {
  stop();
  std::vector<ConnThread> threads;
  {
    std::lock_guard<std::mutex> lk(mu_);
    threads.swap(threads_);
  }
  for (auto& t : threads) t.thread.join();
  if (step_thread_.joinable()) step_thread_.join();
}

void Worker::log(const std::string& line) {
  if (options_.log) {
    options_.log(line);
    return;
  }
  std::lock_guard<std::mutex> lk(log_mu_);
  std::fprintf(stderr, "[pac-worker %s] %s\n", options_.device_id.c_str(), line.c_str());
  std::fflush(stderr);
}

void Worker::start() {
  std::string host;
  uint16_t port = 0;
  address_parse(options_.listen, "--listen", &host, &port);
  listener_ = std::make_unique<Listener>(host, port);
}

std::string Worker::address() const { return listener_ ? listener_->address() : ""; }

WorkerStats Worker::stats() {
  std::lock_guard<std::mutex> lk(mu_);
  WorkerStats s = stats_;
  s.open_connections = long(live_.size());
  return s;
}

void Worker::stop() {
  stop_ = true;
  std::lock_guard<std::mutex> lk(mu_);
  if (listener_) listener_->close();
  // Closing wakes every connection thread blocked in a receive.
  for (auto& c : live_) c->close();
  for (auto& p : peers_) p.second->close();
}

void Worker::serve() {
  if (!listener_) start();
  ConnOptions copt;
  copt.timeout = options_.io_timeout;
  copt.max_payload = options_.max_payload;
  copt.tag = "control";
  while (!stop_) {
    std::unique_ptr<Connection> c = listener_->accept(kPollSlice, copt);
    if (options_.idle_exit.count() > 0) {
      std::lock_guard<std::mutex> lk(mu_);
      if (!coordinator_ && Clock::now() - last_coordinator_ > options_.idle_exit) {
        log("no coordinator for " + std::to_string(options_.idle_exit.count() / 1000) + " s; exiting");
        stop_ = true;
      }
    }
    std::lock_guard<std::mutex> lk(mu_);
    // Reap the threads of connections that ended, so a long-lived worker that sees
    // many short connections (or a flood of garbage) does not accumulate them.
    for (size_t i = 0; i < threads_.size();) {
      if (threads_[i].done->load()) {
        threads_[i].thread.join();
        threads_.erase(threads_.begin() + long(i));
      } else {
        i++;
      }
    }
    if (!c) continue;
    if (live_.size() >= size_t(options_.max_connections)) {
      // One thread per connection: a cap keeps a connection flood from exhausting us.
      log("refusing connection from " + c->peer().address + ": " + std::to_string(live_.size()) +
          " connections already open (--max-connections)");
      c->close();
      stats_.refused_busy++;
      continue;
    }
    std::shared_ptr<Connection> sc(std::move(c));
    live_.push_back(sc);
    auto done = std::make_shared<std::atomic<bool>>(false);
    threads_.push_back({std::thread([this, sc, done] {
                          serve_connection(sc);
                          *done = true;
                        }),
                        done});
  }
  stop();
}

void Worker::serve_connection(std::shared_ptr<Connection> c) {
  HelloInfo hello;
  bool authenticated = false;
  try {
    hello = handshake_server(*c, key_, options_.device_id);
    authenticated = true;
  } catch (const std::exception& e) {
    // Wrong key, garbage instead of a hello, or silence: log who it was and move on.
    log(std::string("refused connection: ") + e.what());
    std::lock_guard<std::mutex> lk(mu_);
    stats_.refused_auth++;
  }
  if (authenticated) {
    log("accepted " + hello.role + " " + c->peer().str());
    {
      std::lock_guard<std::mutex> lk(mu_);
      stats_.accepted++;
      if (hello.role == "coordinator") {
        // A new coordinator replaces the old one (it may have restarted after a failure).
        if (coordinator_) retired_.push_back(coordinator_);
        coordinator_ = c;
        last_coordinator_ = Clock::now();
      }
    }
    try {
      serve_frames(c, hello);
    } catch (const WireError& e) {
      log(std::string("closed connection: ") + e.what());
      std::lock_guard<std::mutex> lk(mu_);
      stats_.bad_frames++;
    } catch (const std::exception& e) {
      if (!stop_) log(std::string("closed connection: ") + e.what());
    }
  }
  c->close();
  std::lock_guard<std::mutex> lk(mu_);
  if (coordinator_ == c) {
    // Executors may still hold a reference from coordinator(); keep the object alive.
    retired_.push_back(coordinator_);
    coordinator_.reset();
    last_coordinator_ = Clock::now();
  }
  for (size_t i = 0; i < live_.size(); i++)
    if (live_[i] == c) {
      live_.erase(live_.begin() + long(i));
      break;
    }
}

void Worker::serve_frames(const std::shared_ptr<Connection>& sc, const HelloInfo& hello) {
  Connection& c = *sc;
  Clock::time_point last_heard = Clock::now();
  while (!stop_) {
    std::optional<Frame> got = c.try_recv(kPollSlice);
    if (!got) {
      // Only a coordinator must stay audible (it heartbeats on its own thread). A
      // stream from an upstream worker may rightly be quiet for long (between epochs,
      // in the data-parallel phase); dropping it would break the next send, and a dead
      // upstream is reported by the coordinator's own link to it.
      if (hello.role == "coordinator" && Clock::now() - last_heard > options_.peer_timeout) {
        log("no frame from " + c.peer().str() + " for " + std::to_string(options_.peer_timeout.count() / 1000) +
            " s; closing its connection");
        return;
      }
      continue;
    }
    last_heard = Clock::now();
    const Frame& fr = *got;
    if (msg_type_is_tensor(fr.type())) {
      TensorView t = tensor_payload_decode(fr.payload);  // WireError closes the connection
      std::shared_ptr<StageExecutor> ex;
      {
        std::lock_guard<std::mutex> lk(mu_);
        ex = executor_;
      }
      try {
        if (!ex) throw InputError(std::string(msg_type_name(fr.type())) + " from " + c.peer().str() + " before any assignment");
        ex->on_tensor(c.peer(), fr.type(), t, fr.header.flags, *this);
      } catch (const std::exception& e) {
        // The stream is broken; tell the coordinator which device failed and why.
        std::string msg = "device " + options_.device_id + ": " + e.what();
        log(msg);
        try {
          coordinator().send_json(MsgType::Error, {{"error", msg}, {"device", options_.device_id}});
        } catch (const std::exception&) {
        }
        return;
      }
      continue;
    }
    switch (fr.type()) {
      case MsgType::Heartbeat: {
        c.send(MsgType::HeartbeatAck, fr.payload);
        std::lock_guard<std::mutex> lk(mu_);
        stats_.heartbeats++;
        break;
      }
      case MsgType::HeartbeatAck:
        break;
      case MsgType::Assign:
      case MsgType::Start:
        handle_control(sc, fr);
        break;
      case MsgType::Shutdown: {
        json j = frame_json(fr, c.peer());
        bool exit = j.value("exit", false);
        log(std::string("shutdown from ") + c.peer().str() + (exit ? " (exiting)" : ""));
        if (exit) stop_ = true;
        return;
      }
      case MsgType::Error: {
        log("error from " + c.peer().str() + ": " + fr.payload.substr(0, 500));
        return;
      }
      default:
        c.send_json(MsgType::Error, {{"error", std::string("unexpected ") + msg_type_name(fr.type()) + " from " +
                                                   hello.role + " " + hello.id}});
        throw WireError(c.peer().str() + " sent an unexpected " + msg_type_name(fr.type()) + " frame");
    }
  }
}

void Worker::handle_control(const std::shared_ptr<Connection>& sc, const Frame& f) {
  Connection& c = *sc;
  std::string where = std::string(msg_type_name(f.type())) + " from " + c.peer().str();
  json reply;
  try {
    JsonIn doc = JsonIn::from(frame_json(f, c.peer()), where);
    std::shared_ptr<StageExecutor> ex;
    if (f.type() == MsgType::Assign) {
      std::string kind = doc.string("executor");
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (!executor_ || executor_->name() != kind) executor_ = factory_(kind);
        ex = executor_;
        stats_.assignments++;
      }
      reply = ex->on_assign(doc, *this);
      c.send_json(MsgType::AssignAck, reply);
    } else {
      // A step may run for minutes (a mini-batch of training): run it on its own
      // thread so this connection keeps answering heartbeats meanwhile.
      std::lock_guard<std::mutex> lk(mu_);
      ex = executor_;
      if (!ex) throw InputError("start before any assignment");
      if (step_running_) throw InputError("start while the previous step is still running");
      if (step_thread_.joinable()) step_thread_.join();
      step_running_ = true;
      step_thread_ = std::thread([this, sc, ex, doc] {
        // The step is over before its answer leaves: a coordinator that sends the next
        // Start the moment it reads this Result must find the worker free.
        json reply;
        MsgType type = MsgType::Result;
        try {
          reply = ex->run_step(doc, *this);
          if (reply.is_object()) reply["cpu_s"] = process_cpu_s();
        } catch (const std::exception& e) {
          std::string msg = "device " + options_.device_id + ": step failed: " + e.what();
          log(msg);
          type = MsgType::Error;
          reply = {{"error", msg}, {"device", options_.device_id}};
        }
        step_running_ = false;
        try {
          sc->send_json(type, reply);
        } catch (const std::exception& e) {
          if (type == MsgType::Result) log("device " + options_.device_id + ": cannot send a step result: " + e.what());
        }
      });
    }
  } catch (const WireError&) {
    throw;
  } catch (const PeerError&) {
    throw;
  } catch (const std::exception& e) {
    // A bad assignment is the coordinator's problem, not a reason to drop the link.
    std::string msg = "device " + options_.device_id + ": " + e.what();
    log(msg);
    c.send_json(MsgType::Error, {{"error", msg}, {"device", options_.device_id}});
  }
}

Connection& Worker::peer(const std::string& id, const std::string& address) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = peers_.find(id);
    if (it != peers_.end() && it->second->is_open()) return *it->second;
  }
  std::lock_guard<std::mutex> connect_lk(peers_connect_mu_);
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = peers_.find(id);
    if (it != peers_.end() && it->second->is_open()) return *it->second;
  }
  ConnOptions copt;
  copt.timeout = options_.io_timeout;
  copt.max_payload = options_.max_payload;
  copt.tag = "stream " + options_.device_id + "->" + id;
  copt.connect_attempts = 20;
  std::unique_ptr<Connection> c = Connection::connect(address, id, copt);
  handshake_client(*c, key_, "worker", options_.device_id);
  log("connected to " + c->peer().str());
  std::lock_guard<std::mutex> lk(mu_);
  // An old, closed connection may still be referenced by a thread that is failing;
  // retire it instead of destroying it.
  auto& slot = peers_[id];
  if (slot) retired_.push_back(std::shared_ptr<Connection>(std::move(slot)));
  slot = std::move(c);
  return *slot;
}

Connection& Worker::coordinator() {
  std::lock_guard<std::mutex> lk(mu_);
  if (!coordinator_) throw RuntimeError("device " + options_.device_id + " has no coordinator connected");
  return *coordinator_;
}

}  // namespace pac
