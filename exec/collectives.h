// Collectives for the runtime: all-reduce (sum/mean), all-gather and broadcast over
// LibTorch's c10d ProcessGroupGloo (the proven engine design.md asks for).
//
// Gloo style: every call takes an options object with a timeout and a tag; the tag
// names the call in errors ("allreduce 'grads stage 1' rank 2/4 timed out after 5000
// ms"). A group finds its peers through a rendezvous store: a TCPStore (rank 0 hosts
// it; multi-process) or an in-process HashStore (N ranks as threads, for tests).
//
// This header does not include torch: the tensor calls take at::Tensor by reference
// (forward-declared); the float-vector calls need no torch at all.
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace at {
class Tensor;
}

namespace pac {

struct CollectiveOptions {
  std::chrono::milliseconds timeout{30000};
  std::string tag = "collective";
};

enum class ReduceKind { Sum, Mean };

// The rendezvous store a group is built on. Copies share the same store.
class CollectiveStore {
 public:
  struct Impl;
  // In-process store for ranks running as threads of one process.
  static CollectiveStore in_process();
  // TCP store: rank 0 passes is_host = true and listens on host:port (port 0 is not
  // supported by c10d here; choose a free port); the others connect. Waits at most
  // `timeout` for the host.
  static CollectiveStore tcp(const std::string& host, uint16_t port, bool is_host, int world_size,
                             std::chrono::milliseconds timeout);
  std::shared_ptr<Impl> impl;
};

// Bytes one rank of a `size`-rank all-reduce of `bytes` per rank sends, all of them to
// its ring successor (rank + 1) % size: Gloo's default ring algorithm is a
// reduce-scatter then an all-gather, size - 1 steps each of bytes / size, so
// 2 (size - 1) / size x bytes (0 for one rank). The simulator's all-reduce task
// (sim/engine.cpp) moves the same volume over the same pairs. Runtimes report it as
// link bytes so that data-parallel runs do not show 0 bytes sent.
double allreduce_ring_bytes_sent(int size, double bytes);

class CollectiveGroup {
 public:
  // Joins group `name` (a prefix in the store, so several groups share one store) as
  // `rank` of `size`; blocks until every rank joined or options.timeout passed.
  // `interface_host` is the address Gloo binds its pairs to ("127.0.0.1" here).
  CollectiveGroup(const CollectiveStore& store, const std::string& name, int rank, int size,
                  const CollectiveOptions& options, const std::string& interface_host = "127.0.0.1");
  ~CollectiveGroup();
  CollectiveGroup(const CollectiveGroup&) = delete;
  CollectiveGroup& operator=(const CollectiveGroup&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }

  // In place: every rank ends with the element-wise sum (or mean) over ranks.
  void allreduce(at::Tensor& t, ReduceKind kind, const CollectiveOptions& options);
  void allreduce(std::vector<float>& v, ReduceKind kind, const CollectiveOptions& options);
  // Every rank contributes `t` (same shape everywhere); returns size() tensors, rank order.
  std::vector<at::Tensor> allgather(const at::Tensor& t, const CollectiveOptions& options);
  std::vector<std::vector<float>> allgather(const std::vector<float>& v, const CollectiveOptions& options);
  // In place: every rank ends with root's values.
  void broadcast(at::Tensor& t, int root, const CollectiveOptions& options);
  void broadcast(std::vector<float>& v, int root, const CollectiveOptions& options);
  void barrier(const CollectiveOptions& options);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string name_;
  int rank_ = 0, size_ = 1;
};

}  // namespace pac
