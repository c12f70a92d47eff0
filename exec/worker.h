// The worker: what pac-worker runs on every device (docs/runtime.md).
//
// It listens, authenticates every connection (coordinator or another worker) with the
// cluster key, then serves each connection on its own thread: heartbeats are answered,
// Assign/Start go to the StageExecutor, tensor frames go to its on_tensor. A refused
// peer, a malformed or oversized frame, or a peer that goes silent closes only that
// connection; the worker keeps serving everyone else.
#pragma once
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "exec/stage_executor.h"
#include "exec/transport.h"

namespace pac {

struct WorkerOptions {
  std::string device_id = "worker";
  std::string listen = "127.0.0.1:0";  // HOST:PORT; port 0 lets the OS choose
  Millis peer_timeout{30000};          // a coordinator silent this long is dropped
  Millis io_timeout{10000};            // each send, each frame body, each connect attempt
  Millis idle_exit{0};                 // exit when no coordinator came for this long (0: never)
  uint32_t max_payload = kWireDefaultMaxPayload;
  int max_connections = 64;            // more at once are closed on accept
  std::function<void(const std::string&)> log;  // default: one line to stderr
};

// Counters, for logs and tests.
struct WorkerStats {
  long accepted = 0;          // connections that passed authentication
  long refused_auth = 0;      // failed the handshake (wrong key, garbage, silence)
  long refused_busy = 0;      // closed on accept: max_connections reached
  long open_connections = 0;  // being served right now
  long bad_frames = 0;        // closed for a malformed / oversized frame after auth
  long heartbeats = 0;
  long assignments = 0;
};

class Worker : private WorkerContext {
 public:
  Worker(WorkerOptions options, ClusterKey key, ExecutorFactory factory = executor_create_builtin);
  ~Worker();

  void start();                    // binds; throws RuntimeError when the port is taken
  std::string address() const;     // the bound "host:port"
  void set_device_id(const std::string& id) { options_.device_id = id; }  // before serve()
  void serve();                    // blocks until stop(), Shutdown{"exit":true} or idle_exit
  void stop();
  WorkerStats stats();

 private:
  // WorkerContext
  const std::string& device_id() const override { return options_.device_id; }
  Connection& peer(const std::string& id, const std::string& address) override;
  Connection& coordinator() override;
  void log(const std::string& line) override;

  void serve_connection(std::shared_ptr<Connection> c);
  void serve_frames(const std::shared_ptr<Connection>& c, const HelloInfo& hello);
  void handle_control(const std::shared_ptr<Connection>& c, const Frame& f);

  WorkerOptions options_;
  ClusterKey key_;
  ExecutorFactory factory_;
  std::unique_ptr<Listener> listener_;
  std::atomic<bool> stop_{false};

  std::mutex mu_;  // guards everything below
  std::shared_ptr<StageExecutor> executor_;
  std::shared_ptr<Connection> coordinator_;
  std::map<std::string, std::unique_ptr<Connection>> peers_;
  std::vector<std::shared_ptr<Connection>> live_;     // being served
  std::vector<std::shared_ptr<Connection>> retired_;  // closed, kept until ~Worker (see peer())
  struct ConnThread {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;  // set when serve_connection returned
  };
  std::vector<ConnThread> threads_;
  WorkerStats stats_;
  std::chrono::steady_clock::time_point last_coordinator_;
  std::mutex peers_connect_mu_;  // one outgoing connect at a time
  std::mutex log_mu_;
  std::thread step_thread_;           // runs the current Start (guarded by mu_)
  std::atomic<bool> step_running_{false};
};

}  // namespace pac
