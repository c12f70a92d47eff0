// The coordinator's side of the control plane (what pac-run drives).
//
// It connects to every worker, authenticates it, and keeps one reader thread per
// worker that turns incoming frames into events in one inbox, and a heartbeat thread.
// A worker that hangs up, or leaves a heartbeat unanswered past the timeout, ends the
// caller's next wait with a PeerError naming that device and its address. The
// error carries the device id so a later fault-recovery layer can re-plan around it
// and replay the lost micro-batches instead of restarting (Asteroid's pipeline replay).
#pragma once
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "exec/transport.h"

namespace pac {

struct WorkerAddress {
  std::string id;       // device id from the plan ("nano0")
  std::string address;  // "host:port"
};

struct CoordinatorOptions {
  std::string id = "coordinator";
  Millis timeout{10000};    // connect attempts, sends, and the longest silence of a worker
  Millis heartbeat{500};    // heartbeat period
  int connect_attempts = 50;
};

struct WorkerEvent {
  int worker = -1;  // index into the worker list
  Frame frame;
};

class Coordinator {
 public:
  Coordinator(std::vector<WorkerAddress> workers, ClusterKey key, CoordinatorOptions options = {});
  ~Coordinator();

  // Connects to and authenticates every worker, then starts the readers.
  void connect_all();
  int worker_count() const { return static_cast<int>(workers_.size()); }
  const WorkerAddress& worker(int w) const { return workers_[w]; }
  Connection& connection(int w) { return *links_[w]->conn; }

  // Sends an Assign and waits for its AssignAck; an Error reply is a RuntimeError
  // naming the worker.
  json assign(int w, const json& fragment);
  // Sends a Start and waits up to `wait` for its Result (default: options.timeout). A
  // step may take long; liveness meanwhile is the heartbeats' job, not this wait's.
  json run_step(int w, const json& step);
  json run_step(int w, const json& step, Millis wait);

  // The next frame from any worker (heartbeat acks are consumed here), waiting at most
  // `wait`. An Error frame from a worker, a lost worker, or a silent worker throws.
  WorkerEvent wait_event(Millis wait);
  // The next frame of type `type` from worker `w`; other events are kept for later.
  Frame wait_from(int w, MsgType type, Millis wait);

  // Tells every reachable worker to stop (exit: the worker process ends) and closes.
  void shutdown(bool exit_workers);

 private:
  struct Link {
    std::unique_ptr<Connection> conn;
    std::thread reader;
    std::chrono::steady_clock::time_point last_heard;
    // Silence is measured from the first heartbeat not yet answered, so time the
    // coordinator spent not waiting (computing, say) never counts against a worker.
    bool heartbeat_pending = false;
    std::chrono::steady_clock::time_point heartbeat_since;
    std::string lost;  // why the reader stopped ("" while healthy)
  };
  void reader_loop(int w);
  WorkerEvent wait_match(const std::function<bool(const WorkerEvent&)>& match, Millis wait, const std::string& what);
  void heartbeat_tick();
  void heartbeat_loop();
  void stop_heartbeats();
  [[noreturn]] void fail_worker(int w, const std::string& why, bool timed_out);

  std::vector<WorkerAddress> workers_;
  ClusterKey key_;
  CoordinatorOptions options_;
  std::vector<std::unique_ptr<Link>> links_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<WorkerEvent> inbox_;
  std::thread heartbeat_thread_;
};

}  // namespace pac
