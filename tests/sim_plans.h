// Hand-built plans for the simulator's tests and benchmark: small scenarios of
// identical devices and task graphs written task by task, independent of the planner.
#pragma once
#include <string>
#include <vector>

#include "src/core/plan.h"

namespace pac {

struct SimPlanBuilder {
  Plan plan;

  // `n` devices "d0".."d<n-1>" (10 W busy, 2 W idle, unlimited memory) on a network of
  // `bw_bps` per NIC (switched) or for the medium (shared), `lat_s` latency.
  explicit SimPlanBuilder(int n, double bw_bps = 1e9, double lat_s = 0, const std::string& kind = "switched") {
    plan.strategy = "hand";
    plan.scenario.file = "plan.json";
    plan.scenario.name = "hand";
    for (int d = 0; d < n; d++) {
      DeviceSpec ds;
      ds.id = "d" + std::to_string(d);
      ds.profile.name = "test-device";
      ds.profile.power_busy_w = 10;
      ds.profile.power_idle_w = 2;
      plan.scenario.devices.push_back(ds);
    }
    plan.scenario.network.kind = kind;
    plan.scenario.network.bandwidth_bps = bw_bps;
    plan.scenario.network.latency_s = lat_s;
  }

  void seg(const std::string& name, int epoch_first, int epoch_last, int64_t repeat) {
    Segment s;
    s.name = name;
    s.epoch_first = epoch_first;
    s.epoch_last = epoch_last;
    s.repeat = repeat;
    plan.segments.push_back(s);
  }

  Task& add(TaskKind kind, int device, const std::vector<int>& deps, const std::string& label) {
    auto& tasks = plan.segments.back().graph.tasks;
    Task t;
    t.id = static_cast<int>(tasks.size());
    t.kind = kind;
    t.device = device;
    t.deps = deps;
    t.label = label;
    tasks.push_back(t);
    return tasks.back();
  }

  int compute(TaskKind kind, int device, double seconds, const std::vector<int>& deps,
              const std::string& label = "") {
    Task& t = add(kind, device, deps, label);
    t.seconds = seconds;
    return t.id;
  }

  int send(int from, int to, double bytes, const std::vector<int>& deps, const std::string& label = "") {
    Task& t = add(TaskKind::Send, from, deps, label);
    t.peer = to;
    t.bytes = bytes;
    return t.id;
  }

  int collective(TaskKind kind, const std::vector<int>& group, double bytes, const std::vector<int>& deps) {
    Task& t = add(kind, group[0], deps, "");
    t.group = group;
    t.bytes = bytes;
    return t.id;
  }

  void alloc(int task, double bytes, int free_task) {
    Task& t = plan.segments.back().graph.tasks[task];
    t.mem_alloc_bytes = bytes;
    t.mem_free_task = free_task;
  }
};

// GPipe iteration on devices 0..S-1 (one stage each): forwards of every micro-batch, then
// backwards in reverse stage order; stage s's first backward waits for its own last
// forward (the flush). `act_bytes` are sent between stages in both directions.
inline void pipeline_build(SimPlanBuilder& pb, int S, int M, double f, double b, double act_bytes) {
  std::vector<std::vector<int>> F(S, std::vector<int>(M)), B(S, std::vector<int>(M));
  for (int m = 0; m < M; m++) {
    for (int s = 0; s < S; s++) {
      std::vector<int> deps;
      if (s > 0) deps.push_back(pb.send(s - 1, s, act_bytes, {F[s - 1][m]}));
      F[s][m] = pb.compute(TaskKind::Forward, s, f, deps, "F s" + std::to_string(s) + " mb" + std::to_string(m));
    }
  }
  for (int m = 0; m < M; m++) {
    for (int s = S - 1; s >= 0; s--) {
      std::vector<int> deps;
      if (s == S - 1) deps.push_back(F[s][m]);
      else deps.push_back(pb.send(s + 1, s, act_bytes, {B[s + 1][m]}));
      if (m == 0) deps.push_back(F[s][M - 1]);
      else deps.push_back(B[s][m - 1]);
      B[s][m] = pb.compute(TaskKind::Backward, s, b, deps, "B s" + std::to_string(s) + " mb" + std::to_string(m));
    }
  }
  for (int s = 0; s < S; s++) pb.compute(TaskKind::Optimizer, s, 0, {B[s][M - 1]}, "Opt s" + std::to_string(s));
}

}  // namespace pac
