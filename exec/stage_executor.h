// The plug-in point between the worker's network loop and the work a device does.
//
// pac-worker owns the sockets, authentication, heartbeats and frame checks; what a
// device computes is a StageExecutor chosen by the assignment's "executor" field. The
// LLM pipeline/data-parallel trainer plugs in here later; AffineExecutor
// (affine_executor.h) is the real, small executor the tests run end to end.
//
// Threads: the worker serves each connection on its own thread, so on_tensor may be
// called from several threads at once (coordinator and upstream workers); executors
// lock their own state.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "exec/transport.h"
#include "exec/wire.h"
#include "src/common/json_in.h"

namespace pac {

// What the worker offers an executor.
class WorkerContext {
 public:
  virtual ~WorkerContext() = default;
  virtual const std::string& device_id() const = 0;
  // An authenticated connection to another worker, opened on first use and kept.
  // Thread-safe. Throws PeerError naming the device when it cannot be reached.
  virtual Connection& peer(const std::string& id, const std::string& address) = 0;
  // The coordinator's control connection (send only; thread-safe). Throws
  // RuntimeError when no coordinator is connected.
  virtual Connection& coordinator() = 0;
  virtual void log(const std::string& line) = 0;
};

class StageExecutor {
 public:
  virtual ~StageExecutor() = default;
  virtual std::string name() const = 0;
  // The plan fragment for this device (the Assign payload). Returns the AssignAck
  // payload. A bad fragment throws InputError; the worker sends it back as an Error
  // frame and keeps serving.
  virtual json on_assign(const JsonIn& assignment, WorkerContext& ctx) = 0;
  // A tensor frame (activation, side state or gradient) from `from`.
  virtual void on_tensor(const PeerName& from, MsgType type, const TensorView& t, uint32_t flags,
                         WorkerContext& ctx) = 0;
  // A Start message: run one step (a mini-batch, an epoch, a flush) and return the
  // Result payload.
  virtual json run_step(const JsonIn& step, WorkerContext& ctx) = 0;
};

// Makes the executor an assignment names ("affine", later "pac-pipeline", ...).
// Throws InputError for an unknown name.
using ExecutorFactory = std::function<std::unique_ptr<StageExecutor>(const std::string& name)>;

// Knows the executors built into exec/: "affine".
std::unique_ptr<StageExecutor> executor_create_builtin(const std::string& name);

}  // namespace pac
