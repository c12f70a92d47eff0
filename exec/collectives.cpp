// The only exec/ translation unit that includes torch headers (slow to compile).
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif
#include "exec/collectives.h"

#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "src/common/error.h"

namespace pac {

struct CollectiveStore::Impl {
  c10::intrusive_ptr<c10d::Store> store;
};

struct CollectiveGroup::Impl {
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
};

double allreduce_ring_bytes_sent(int size, double bytes) {
  if (size <= 1) return 0;
  return 2.0 * (size - 1) / size * bytes;
}

CollectiveStore CollectiveStore::in_process() {
  CollectiveStore s;
  s.impl = std::make_shared<Impl>();
  s.impl->store = c10::make_intrusive<c10d::HashStore>();
  return s;
}

CollectiveStore CollectiveStore::tcp(const std::string& host, uint16_t port, bool is_host, int world_size,
                                     std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions o;
  o.port = port;
  o.isServer = is_host;
  o.numWorkers = static_cast<size_t>(world_size);
  // The group constructor is the rendezvous; the store itself must not block rank 0.
  o.waitWorkers = false;
  o.timeout = timeout;
  CollectiveStore s;
  s.impl = std::make_shared<Impl>();
  try {
    s.impl->store = c10::make_intrusive<c10d::TCPStore>(host, o);
  } catch (const std::exception& e) {
    throw RuntimeError("collective store at " + host + ":" + std::to_string(port) + (is_host ? " (hosting)" : "") +
                       ": " + e.what());
  }
  return s;
}

// "allreduce 'grads' (group g, rank 1/4)": the prefix of every collective error.
static std::string call_name(const char* op, const CollectiveOptions& o, const std::string& group, int rank,
                             int size) {
  return std::string(op) + " '" + o.tag + "' (group " + group + ", rank " + std::to_string(rank) + "/" +
         std::to_string(size) + ")";
}

CollectiveGroup::CollectiveGroup(const CollectiveStore& store, const std::string& name, int rank, int size,
                                 const CollectiveOptions& options, const std::string& interface_host)
    : impl_(std::make_unique<Impl>()), name_(name), rank_(rank), size_(size) {
  if (size < 1 || rank < 0 || rank >= size)
    throw InputError("collective group " + name + ": rank " + std::to_string(rank) + " is not in 0.." +
                     std::to_string(size - 1));
  auto opts = c10d::ProcessGroupGloo::Options::create();
  opts->timeout = options.timeout;
  opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(interface_host));
  // Several groups (one per stage, one for data parallel) may share one store.
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("pac/" + name, store.impl->store);
  try {
    impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, size, opts);
  } catch (const std::exception& e) {
    throw RuntimeError(call_name("join", options, name, rank, size) + " failed within " +
                       std::to_string(options.timeout.count()) + " ms: " + e.what());
  }
}

CollectiveGroup::~CollectiveGroup() = default;

// Runs one c10d call and waits for it; every failure (a timeout, a peer that left)
// becomes a RuntimeError that names the call.
template <typename F>
static void run_work(const std::string& what, std::chrono::milliseconds timeout, F start) {
  try {
    c10::intrusive_ptr<c10d::Work> work = start();
    work->wait(timeout);
  } catch (const std::exception& e) {
    std::string msg = e.what();
    size_t nl = msg.find('\n');  // c10 appends a C++ backtrace; the first line says it
    if (nl != std::string::npos) msg = msg.substr(0, nl);
    throw RuntimeError(what + " failed (timeout " + std::to_string(timeout.count()) + " ms): " + msg);
  }
}

static void check_cpu_contiguous(const at::Tensor& t, const std::string& what) {
  if (!t.defined() || !t.device().is_cpu() || !t.is_contiguous())
    throw RuntimeError(what + ": tensor must be a defined, contiguous CPU tensor");
}

void CollectiveGroup::allreduce(at::Tensor& t, ReduceKind kind, const CollectiveOptions& options) {
  std::string what = call_name("allreduce", options, name_, rank_, size_);
  check_cpu_contiguous(t, what);
  std::vector<at::Tensor> ts{t};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::SUM;  // Gloo has no AVG: divide afterwards
  o.timeout = options.timeout;
  run_work(what, options.timeout, [&] { return impl_->pg->allreduce(ts, o); });
  if (kind == ReduceKind::Mean) t.div_(static_cast<double>(size_));
}

void CollectiveGroup::allreduce(std::vector<float>& v, ReduceKind kind, const CollectiveOptions& options) {
  at::Tensor t = torch::from_blob(v.data(), {static_cast<int64_t>(v.size())}, torch::kFloat32);
  allreduce(t, kind, options);
}

std::vector<at::Tensor> CollectiveGroup::allgather(const at::Tensor& t, const CollectiveOptions& options) {
  std::string what = call_name("allgather", options, name_, rank_, size_);
  check_cpu_contiguous(t, what);
  std::vector<at::Tensor> in{t};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < size_; r++) out[0].push_back(torch::empty_like(t));
  c10d::AllgatherOptions o;
  o.timeout = options.timeout;
  run_work(what, options.timeout, [&] { return impl_->pg->allgather(out, in, o); });
  return out[0];
}

std::vector<std::vector<float>> CollectiveGroup::allgather(const std::vector<float>& v,
                                                           const CollectiveOptions& options) {
  std::vector<float> copy = v;  // from_blob needs a mutable pointer; c10d does not write it
  at::Tensor t = torch::from_blob(copy.data(), {static_cast<int64_t>(copy.size())}, torch::kFloat32);
  std::vector<at::Tensor> parts = allgather(t, options);
  std::vector<std::vector<float>> out;
  for (const at::Tensor& p : parts) out.emplace_back(p.data_ptr<float>(), p.data_ptr<float>() + p.numel());
  return out;
}

void CollectiveGroup::broadcast(at::Tensor& t, int root, const CollectiveOptions& options) {
  std::string what = call_name("broadcast", options, name_, rank_, size_);
  check_cpu_contiguous(t, what);
  if (root < 0 || root >= size_) throw RuntimeError(what + ": root " + std::to_string(root) + " is not a rank");
  std::vector<at::Tensor> ts{t};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  o.timeout = options.timeout;
  run_work(what, options.timeout, [&] { return impl_->pg->broadcast(ts, o); });
}

void CollectiveGroup::broadcast(std::vector<float>& v, int root, const CollectiveOptions& options) {
  at::Tensor t = torch::from_blob(v.data(), {static_cast<int64_t>(v.size())}, torch::kFloat32);
  broadcast(t, root, options);
}

void CollectiveGroup::barrier(const CollectiveOptions& options) {
  c10d::BarrierOptions o;
  o.timeout = options.timeout;
  run_work(call_name("barrier", options, name_, rank_, size_), options.timeout,
           [&] { return impl_->pg->barrier(o); });
}

}  // namespace pac
