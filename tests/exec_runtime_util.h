// Shared harness of the in-process runtime tests (exec_runtime_*_test.cpp): workers as
// threads on loopback, a tiny random model, random examples, a plan of given stages,
// and the relative difference the distributed == single-device checks use.
#pragma once
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "exec/coordinator.h"
#include "exec/executors.h"
#include "exec/worker.h"
#include "src/core/plan.h"
#include "src/llm/dataset.h"
#include "src/llm/model.h"

namespace pac {

inline const ClusterKey& runtime_test_key() {
  static const ClusterKey key{"runtime-test-cluster-key-0123456789", "test"};
  return key;
}

struct InProcWorker {
  std::unique_ptr<Worker> worker;
  std::thread thread;
  explicit InProcWorker(const std::string& id) {
    WorkerOptions o;
    o.device_id = id;
    o.listen = "127.0.0.1:0";
    o.io_timeout = Millis(5000);
    o.peer_timeout = Millis(20000);
    o.log = [](const std::string&) {};
    worker = std::make_unique<Worker>(o, runtime_test_key(), executor_create_runtime);
    worker->start();
    thread = std::thread([this] { worker->serve(); });
  }
  ~InProcWorker() {
    worker->stop();
    thread.join();
  }
};

// Workers w0..w<n-1> as threads and a coordinator connected to them.
struct InProcCluster {
  std::vector<std::unique_ptr<InProcWorker>> workers;
  std::unique_ptr<Coordinator> coord;
  explicit InProcCluster(int n) {
    std::vector<WorkerAddress> addrs;
    for (int d = 0; d < n; d++) {
      workers.push_back(std::make_unique<InProcWorker>("w" + std::to_string(d)));
      addrs.push_back({"w" + std::to_string(d), workers.back()->worker->address()});
    }
    coord = std::make_unique<Coordinator>(addrs, runtime_test_key(),
                                          CoordinatorOptions{"coord", Millis(20000), Millis(500), 20});
    coord->connect_all();
  }
};

inline LlamaConfig runtime_tiny_config() {
  LlamaConfig c;
  c.dim = 64;
  c.hidden_dim = 128;
  c.n_layers = 4;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 96;
  c.max_seq_len = 16;
  return c;
}

// The fragment's "model" object for `c`.
inline json runtime_config_json(const LlamaConfig& c) {
  return {{"dim", c.dim},           {"hidden_dim", c.hidden_dim}, {"n_layers", c.n_layers},
          {"n_heads", c.n_heads},   {"n_kv_heads", c.n_kv_heads}, {"vocab_size", c.vocab_size},
          {"max_seq_len", c.max_seq_len}, {"tied_classifier", c.tied_classifier}};
}

// Random examples with a few masked-out targets, so the loss normaliser N matters.
inline std::vector<Example> runtime_examples(int n, int T, int vocab, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::vector<Example> ex(n);
  for (int i = 0; i < n; i++) {
    ex[i].id = i;
    for (int t = 0; t <= T; t++) ex[i].tokens.push_back(static_cast<int32_t>(rng() % vocab));
    for (int t = 0; t < T; t++) ex[i].mask.push_back((rng() % 5) == 0 ? 0 : 1);
  }
  return ex;
}

inline StagePlan runtime_stage(int lb, int le, std::vector<int> devs, std::vector<double> shares) {
  StagePlan s;
  s.layer_begin = lb;
  s.layer_end = le;
  s.devices = std::move(devs);
  s.shares = std::move(shares);
  return s;
}

// A one-phase plan over devices w0..w<workers-1> with these stages.
inline Plan runtime_plan(int n_layers, int workers, int micro_batches, const std::vector<StagePlan>& stages) {
  Plan plan;
  plan.scenario.model.decoder_layers = n_layers;
  for (int d = 0; d < workers; d++) {
    DeviceSpec ds;
    ds.id = "w" + std::to_string(d);
    plan.scenario.devices.push_back(ds);
  }
  Phase ph;
  ph.kind = stages.size() > 1 ? "pipeline" : "data_parallel";
  ph.micro_batches = micro_batches;
  ph.stages = stages;
  plan.phases.push_back(ph);
  return plan;
}

// |a - b| / |b| (Frobenius norms).
inline double runtime_rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
  double nb = b.norm().item<double>();
  return (a - b).norm().item<double>() / std::max(nb, 1e-12);
}

}  // namespace pac
