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

// Hybrid pipeline as the planner builds it for PAC's first phase: `groups` stages of
// `per_group` replicas (stage s on devices s*per_group ..), every micro-batch split over a
// stage's replicas, activations sent replica i -> replica i of the next stage, GPipe
// order, then one ring all-reduce of `grad_bytes` per stage and an optimizer step. With
// `cache_bytes` > 0 each forward also writes that many bytes to the activation cache;
// with `act_mem` > 0 each forward holds that much memory until its backward ends.
inline void hybrid_build(SimPlanBuilder& pb, int groups, int per_group, int M, double f, double b, double act_bytes,
                         double grad_bytes, double cache_bytes = 0, double act_mem = 0) {
  std::vector<std::vector<std::vector<int>>> F(groups, std::vector<std::vector<int>>(M, std::vector<int>(per_group)));
  auto B = F;
  auto dev = [&](int s, int i) { return s * per_group + i; };
  auto name = [](const char* k, int s, int m) { return std::string(k) + " s" + std::to_string(s) + " mb" + std::to_string(m); };
  for (int m = 0; m < M; m++)
    for (int s = 0; s < groups; s++)
      for (int i = 0; i < per_group; i++) {
        std::vector<int> deps;
        if (s > 0) deps.push_back(pb.send(dev(s - 1, i), dev(s, i), act_bytes, {F[s - 1][m][i]}, name("A", s, m)));
        F[s][m][i] = pb.compute(TaskKind::Forward, dev(s, i), f, deps, name("F", s, m));
        if (cache_bytes > 0) {
          int w = pb.compute(TaskKind::CacheWrite, dev(s, i), 0, {F[s][m][i]}, name("W", s, m));
          pb.plan.segments.back().graph.tasks[w].bytes = cache_bytes;
        }
      }
  for (int m = 0; m < M; m++)
    for (int s = groups - 1; s >= 0; s--)
      for (int i = 0; i < per_group; i++) {
        std::vector<int> deps;
        if (s == groups - 1) deps.push_back(F[s][m][i]);
        else deps.push_back(pb.send(dev(s + 1, i), dev(s, i), act_bytes, {B[s + 1][m][i]}, name("G", s, m)));
        deps.push_back(m == 0 ? F[s][M - 1][i] : B[s][m - 1][i]);
        B[s][m][i] = pb.compute(TaskKind::Backward, dev(s, i), b, deps, name("B", s, m));
        if (act_mem > 0) pb.alloc(F[s][m][i], act_mem, B[s][m][i]);
      }
  for (int s = 0; s < groups; s++) {
    std::vector<int> group, deps;
    for (int i = 0; i < per_group; i++) {
      group.push_back(dev(s, i));
      deps.push_back(B[s][M - 1][i]);
    }
    int ar = pb.collective(TaskKind::AllReduce, group, grad_bytes, deps);
    pb.plan.segments.back().graph.tasks[ar].label = "AR s" + std::to_string(s);
    for (int i = 0; i < per_group; i++)
      pb.compute(TaskKind::Optimizer, dev(s, i), 0.01, {ar}, "Opt s" + std::to_string(s));
  }
}

}  // namespace pac
