#include "exec/coordinator.h"

#include <functional>

namespace pac {

using Clock = std::chrono::steady_clock;

static const Millis kReaderSlice{200};

Coordinator::Coordinator(std::vector<WorkerAddress> workers, ClusterKey key, CoordinatorOptions options)
    : workers_(std::move(workers)), key_(std::move(key)), options_(std::move(options)) {}

Coordinator::~Coordinator() {
  stop_heartbeats();
  for (auto& l : links_)
    if (l->conn) l->conn->close();
  for (auto& l : links_)
    if (l->reader.joinable()) l->reader.join();
}

void Coordinator::connect_all() {
  for (const WorkerAddress& w : workers_) {
    ConnOptions copt;
    copt.timeout = options_.timeout;
    copt.connect_attempts = options_.connect_attempts;
    copt.tag = "control";
    auto link = std::make_unique<Link>();
    link->conn = Connection::connect(w.address, w.id, copt);
    handshake_client(*link->conn, key_, "coordinator", options_.id);
    link->last_heard = Clock::now();
    links_.push_back(std::move(link));
  }
  for (int w = 0; w < worker_count(); w++) links_[w]->reader = std::thread([this, w] { reader_loop(w); });
  heartbeat_thread_ = std::thread([this] { heartbeat_loop(); });
}

// Heartbeats go out on their own thread, not only while the caller waits: a coordinator
// busy elsewhere for longer than a worker's --peer-timeout-s must not be dropped.
void Coordinator::heartbeat_loop() {
  while (!stop_) {
    heartbeat_tick();
    std::unique_lock<std::mutex> lk(mu_);
    Clock::time_point next = Clock::now() + options_.heartbeat;
    while (!stop_ && Clock::now() < next) cv_.wait_until(lk, next);
  }
}

void Coordinator::stop_heartbeats() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
    cv_.notify_all();
  }
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
}

void Coordinator::reader_loop(int w) {
  Link& l = *links_[w];
  while (!stop_) {
    try {
      std::optional<Frame> f = l.conn->try_recv(kReaderSlice);
      if (!f) continue;
      std::lock_guard<std::mutex> lk(mu_);
      l.last_heard = Clock::now();
      l.heartbeat_pending = false;
      if (f->type() == MsgType::HeartbeatAck) continue;
      inbox_.push_back({w, std::move(*f)});
      cv_.notify_all();
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lk(mu_);
      l.lost = e.what();
      cv_.notify_all();
      return;
    }
  }
}

void Coordinator::fail_worker(int w, const std::string& why, bool timed_out) {
  throw PeerError(why, workers_[w].id, timed_out);
}

void Coordinator::heartbeat_tick() {
  for (int w = 0; w < worker_count(); w++) {
    Link& l = *links_[w];
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (!l.lost.empty()) continue;
      if (!l.heartbeat_pending) {
        l.heartbeat_pending = true;
        l.heartbeat_since = Clock::now();
      }
    }
    try {
      l.conn->send(MsgType::Heartbeat, "");
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lk(mu_);
      if (l.lost.empty()) l.lost = e.what();
      cv_.notify_all();
    }
  }
}

WorkerEvent Coordinator::wait_match(const std::function<bool(const WorkerEvent&)>& match, Millis wait,
                                    const std::string& what) {
  Clock::time_point deadline = Clock::now() + wait;
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      for (auto it = inbox_.begin(); it != inbox_.end(); ++it) {
        if (it->frame.type() == MsgType::Error) {
          int w = it->worker;
          std::string text = frame_error_text(it->frame);
          inbox_.erase(it);
          lk.unlock();
          fail_worker(w, "device " + workers_[w].id + " (" + workers_[w].address + ") reported an error: " + text,
                      false);
        }
        if (match(*it)) {
          WorkerEvent e = std::move(*it);
          inbox_.erase(it);
          return e;
        }
      }
      Clock::time_point now = Clock::now();
      for (int w = 0; w < worker_count(); w++) {
        Link& l = *links_[w];
        if (!l.lost.empty()) {
          std::string why = l.lost;
          lk.unlock();
          fail_worker(w, "lost device " + workers_[w].id + " (" + workers_[w].address + "): " + why, false);
        }
        if (l.heartbeat_pending && now - l.heartbeat_since > options_.timeout) {
          lk.unlock();
          fail_worker(w,
                      "device " + workers_[w].id + " (" + workers_[w].address + ") did not answer heartbeats for " +
                          std::to_string(options_.timeout.count()) + " ms",
                      true);
        }
      }
      if (now >= deadline) {
        std::string ids;
        for (const WorkerAddress& a : workers_) ids += (ids.empty() ? "" : ", ") + a.id + " (" + a.address + ")";
        throw PeerError("timed out after " + std::to_string(wait.count()) + " ms waiting for " + what +
                            " from devices " + ids,
                        "", true);
      }
      // Woken by new frames and lost links; the periodic wake re-checks silence.
      cv_.wait_until(lk, std::min(deadline, Clock::now() + options_.heartbeat));
    }
  }
}

WorkerEvent Coordinator::wait_event(Millis wait) {
  return wait_match([](const WorkerEvent&) { return true; }, wait, "any frame");
}

Frame Coordinator::wait_from(int w, MsgType type, Millis wait) {
  WorkerEvent e = wait_match([w, type](const WorkerEvent& ev) { return ev.worker == w && ev.frame.type() == type; },
                             wait, std::string(msg_type_name(type)) + " of device " + workers_[w].id);
  return std::move(e.frame);
}

json Coordinator::assign(int w, const json& fragment) {
  links_[w]->conn->send_json(MsgType::Assign, fragment);
  Frame f = wait_from(w, MsgType::AssignAck, options_.timeout);
  return frame_json(f, links_[w]->conn->peer());
}

json Coordinator::run_step(int w, const json& step) { return run_step(w, step, options_.timeout); }

json Coordinator::run_step(int w, const json& step, Millis wait) {
  links_[w]->conn->send_json(MsgType::Start, step);
  Frame f = wait_from(w, MsgType::Result, wait);
  return frame_json(f, links_[w]->conn->peer());
}

void Coordinator::shutdown(bool exit_workers) {
  for (auto& l : links_) {
    if (!l->conn->is_open()) continue;
    try {
      l->conn->send_json(MsgType::Shutdown, {{"exit", exit_workers}});
    } catch (const std::exception&) {
      // already gone: nothing to tell it
    }
  }
  stop_heartbeats();
  for (auto& l : links_) l->conn->close();
  for (auto& l : links_)
    if (l->reader.joinable()) l->reader.join();
}

}  // namespace pac
