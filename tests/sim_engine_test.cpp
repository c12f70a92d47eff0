// Simulator engine against closed-form results (SimGrid style: the expected value is
// derived in the comment above each check). Plans are built by hand so these tests
// depend only on the plan types, not on the planner.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "sim/engine.h"
#include "src/common/error.h"
#include "sim/network.h"
#include "tests/sim_plans.h"

using namespace pac;

// ---------------------------------------------------------------- fluid network

TEST(SimNetwork, MaxMinWithPerFlowCap) {
  // Three NICs of 100 B/s. Flow A: 0->1 capped at 25 B/s, flow B: 0->2, flow C: 3->2.
  // Progressive filling: A freezes at its cap 25; downlink 2 offers 100/2 = 50 to B and
  // C, uplink 0 offers (100-25)/1 = 75 to B, so B = C = 50.
  FluidNet net;
  net.init({100, 100, 100, 100}, {100, 100, 100, 100}, 0);
  int a = net.flow_start(0, 0, 1, 1000, 25, 0, -1);
  int b = net.flow_start(0, 0, 2, 1000, 0, 1, -1);
  int c = net.flow_start(0, 3, 2, 1000, 0, 2, -1);
  EXPECT_DOUBLE_EQ(net.flow(a).rate, 25);
  EXPECT_DOUBLE_EQ(net.flow(b).rate, 50);
  EXPECT_DOUBLE_EQ(net.flow(c).rate, 50);
  // When C ends at t=1, B alone on downlink 2 is held by uplink 0: 100 - 25 = 75.
  net.flow_end(1, c);
  EXPECT_DOUBLE_EQ(net.flow(b).rate, 75);
  // B moved 50 bytes in [0,1]: 950 left at 75 B/s -> done at 1 + 950/75.
  int who = -1;
  double t = net.next_completion(&who);
  EXPECT_EQ(who, b);
  EXPECT_NEAR(t, 1 + 950.0 / 75, 1e-9);
}

TEST(SimNetwork, SharedMediumSplitsEvenly) {
  // Medium 90 B/s, NICs unlimited, three flows between distinct pairs: 30 B/s each.
  FluidNet net;
  net.init({0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0}, 90);
  int a = net.flow_start(0, 0, 1, 10, 0, 0, -1);
  int b = net.flow_start(0, 2, 3, 10, 0, 1, -1);
  int c = net.flow_start(0, 4, 5, 10, 0, 2, -1);
  EXPECT_DOUBLE_EQ(net.flow(a).rate, 30);
  EXPECT_DOUBLE_EQ(net.flow(b).rate, 30);
  EXPECT_DOUBLE_EQ(net.flow(c).rate, 30);
}

TEST(SimNetwork, RandomFlowSetsAreMaxMinFair) {
  // The textbook characterisation, checked independently of how the rates were found:
  // an allocation is max-min fair iff it is feasible and every flow has a bottleneck,
  // i.e. it is at its own cap, or it crosses a saturated resource on which no other flow
  // gets more.
  std::mt19937 rng(7);
  for (int trial = 0; trial < 500; trial++) {
    int n = 2 + static_cast<int>(rng() % 5);
    std::vector<double> up(n), down(n);
    for (int d = 0; d < n; d++) {
      up[d] = (rng() % 3 == 0) ? 0 : 10 + static_cast<double>(rng() % 90);
      down[d] = (rng() % 3 == 0) ? 0 : 10 + static_cast<double>(rng() % 90);
    }
    double medium = (rng() % 2) ? 50 + static_cast<double>(rng() % 200) : 0;
    FluidNet net;
    net.init(up, down, medium);
    int nf = 1 + static_cast<int>(rng() % 10);
    std::vector<int> flows;
    for (int i = 0; i < nf; i++) {
      int a = static_cast<int>(rng() % n), b = static_cast<int>((a + 1 + rng() % (n - 1)) % n);
      double cap = (rng() % 4 == 0) ? 5 + static_cast<double>(rng() % 40) : 0;
      flows.push_back(net.flow_start(0, a, b, 1000, cap, i, -1));
    }
    // Load per resource.
    std::vector<double> load(2 * n + 1, 0), top(2 * n + 1, 0);
    for (int f : flows) {
      const NetFlow& fl = net.flow(f);
      for (int k = 0; k < fl.nres; k++) {
        load[fl.res[k]] += fl.rate;
        top[fl.res[k]] = std::max(top[fl.res[k]], fl.rate);
      }
    }
    for (int f : flows) {
      const NetFlow& fl = net.flow(f);
      if (fl.rate >= 1e29) continue;  // nothing limits it (no finite resource, no cap)
      if (fl.cap > 0) {
        ASSERT_LE(fl.rate, fl.cap * (1 + 1e-9)) << "trial " << trial;
      }
      bool bottleneck = fl.cap > 0 && fl.rate >= fl.cap * (1 - 1e-9);
      for (int k = 0; k < fl.nres; k++) {
        int r = fl.res[k];
        ASSERT_LE(load[r], net.capacity(r) * (1 + 1e-9)) << "trial " << trial << " resource " << r;
        if (load[r] >= net.capacity(r) * (1 - 1e-9) && fl.rate >= top[r] * (1 - 1e-9)) bottleneck = true;
      }
      ASSERT_TRUE(bottleneck) << "trial " << trial << " flow " << f << " rate " << fl.rate;
    }
  }
}

// ---------------------------------------------------------------- engine

// The trace without its memory counter samples: tasks and flows only.
static std::vector<SimTraceEvent> work_of(const SimResult& r) {
  std::vector<SimTraceEvent> out;
  for (const SimTraceEvent& e : r.trace)
    if (e.kind != SimTraceKind::Memory) out.push_back(e);
  return out;
}

// Simulates a one-iteration plan with a trace; `end[t]` / `begin[t]`: when task t's last
// traced piece ended / its first began (flows begin after their latency).
struct TracedRun {
  SimResult r;
  std::vector<double> begin, end;
};
static TracedRun traced_run(const Plan& plan) {
  SimOptions opt;
  opt.trace = true;
  TracedRun tr;
  tr.r = sim_run(plan, opt);
  size_t nt = plan.segments[0].graph.tasks.size();
  tr.begin.assign(nt, -1);
  tr.end.assign(nt, -1);
  for (const SimTraceEvent& e : work_of(tr.r)) {
    if (tr.begin[e.task] < 0) tr.begin[e.task] = e.t0;
    tr.end[e.task] = std::max(tr.end[e.task], e.t1);
  }
  return tr;
}

TEST(SimEngine, SingleDeviceIsSumOfTaskTimes) {
  // One device, F 1 s -> B 2 s -> Opt 0.5 s, 4 iterations over 2 epochs:
  // makespan = 4 x 3.5 = 14 s, 7 s per epoch, busy 14, bubble 0.
  SimPlanBuilder pb(1);
  pb.seg("train", 1, 2, 4);
  int f = pb.compute(TaskKind::Forward, 0, 1.0, {});
  int b = pb.compute(TaskKind::Backward, 0, 2.0, {f});
  pb.compute(TaskKind::Optimizer, 0, 0.5, {b});
  SimResult r = sim_run(pb.plan);
  ASSERT_TRUE(r.ok) << r.failure.message;
  EXPECT_DOUBLE_EQ(r.makespan_s, 14);
  ASSERT_EQ(r.epoch_s.size(), 2u);
  EXPECT_DOUBLE_EQ(r.epoch_s[0], 7);
  EXPECT_DOUBLE_EQ(r.epoch_s[1], 7);
  EXPECT_DOUBLE_EQ(r.devices[0].busy_s, 14);
  EXPECT_DOUBLE_EQ(r.devices[0].bubble_s, 0);
  EXPECT_EQ(r.tasks, 12);
}

TEST(SimEngine, FirstExtraIsPaidInTheSegmentsFirstIterationOnly) {
  // One device, F 1 s (first_extra_s 0.5) -> B 2 s, 4 iterations over 2 epochs, then a
  // second segment of 2 iterations (epoch 3) of F 1 s (first_extra_s 0.25):
  // epoch 1 = 0.5 + 2 x 3 = 6.5, epoch 2 = 2 x 3 = 6, epoch 3 = 0.25 + 2 x 1 = 2.25.
  SimPlanBuilder pb(1);
  pb.seg("pipeline", 1, 2, 4);
  int f = pb.compute(TaskKind::Forward, 0, 1.0, {});
  pb.plan.segments.back().graph.tasks[f].first_extra_s = 0.5;
  pb.compute(TaskKind::Backward, 0, 2.0, {f});
  pb.seg("data_parallel", 3, 3, 2);
  int g = pb.compute(TaskKind::Forward, 0, 1.0, {});
  pb.plan.segments.back().graph.tasks[g].first_extra_s = 0.25;
  SimResult r = sim_run(pb.plan);
  ASSERT_TRUE(r.ok) << r.failure.message;
  ASSERT_EQ(r.epoch_s.size(), 3u);
  EXPECT_DOUBLE_EQ(r.epoch_s[0], 6.5);
  EXPECT_DOUBLE_EQ(r.epoch_s[1], 6);
  EXPECT_DOUBLE_EQ(r.epoch_s[2], 2.25);
  EXPECT_DOUBLE_EQ(r.devices[0].busy_s, 14.75);  // the extra is compute: busy
}

TEST(SimEngine, LocalWorkTakesTheDevicesComputeEngine) {
  // Device 0: a Local task of 1 s and a Forward of 2 s, independent; device 1: a Local
  // task of 0.5 s. Local work is CPU work: on device 0 it queues with the forward
  // (1 + 2 = 3 s, the lower id first), on device 1 it runs alone; makespan 3 s.
  SimPlanBuilder pb(2);
  pb.seg("switch", 1, 1, 1);
  pb.compute(TaskKind::Local, 0, 1.0, {});
  pb.compute(TaskKind::Forward, 0, 2.0, {});
  pb.compute(TaskKind::Local, 1, 0.5, {});
  SimResult r = sim_run(pb.plan);
  ASSERT_TRUE(r.ok) << r.failure.message;
  EXPECT_DOUBLE_EQ(r.makespan_s, 3);
  EXPECT_DOUBLE_EQ(r.devices[0].busy_s, 3);
  EXPECT_DOUBLE_EQ(r.devices[1].busy_s, 0.5);
}

// GPipe-style pipeline: S stages, M micro-batches, forward f and backward b per stage,
// zero-byte sends between stages (pure dependency). Closed form:
// makespan = (M + S - 1)(f + b), each device busy M(f + b), bubble (S - 1)(f + b).
static void pipeline_check(int S, int M, double f, double b, int iters) {
  SimPlanBuilder pb(S);
  pb.seg("pipeline", 1, 1, iters);
  pipeline_build(pb, S, M, f, b, 0);
  SimResult r = sim_run(pb.plan);
  ASSERT_TRUE(r.ok) << r.failure.message;
  EXPECT_NEAR(r.makespan_s, iters * (M + S - 1) * (f + b), 1e-9);
  for (int d = 0; d < S; d++) {
    EXPECT_NEAR(r.devices[d].busy_s, iters * M * (f + b), 1e-9);
    EXPECT_NEAR(r.devices[d].bubble_s, iters * (S - 1) * (f + b), 1e-9) << "stage " << d;
  }
}

TEST(SimEngine, TwoStagePipelineBubble) { pipeline_check(2, 4, 1.0, 2.0, 3); }
TEST(SimEngine, FourStagePipelineBubble) { pipeline_check(4, 8, 0.25, 0.5, 2); }

TEST(SimEngine, PipelineSendCostsLatencyPlusBytesOverBandwidth) {
  // Two stages, one micro-batch, f = 1, b = 1, activations of 12.5 MB each way over
  // 100 Mbit/s (12.5 MB/s) with 10 ms latency: each send 0.01 + 1 = 1.01 s.
  // makespan = F0 1 + send 1.01 + F1 1 + B1 1 + send 1.01 + B0 1 = 6.02 s.
  SimPlanBuilder pb(2, 100e6, 0.01);
  pb.seg("pipeline", 1, 1, 1);
  pipeline_build(pb, 2, 1, 1.0, 1.0, 12.5e6);
  SimResult r = sim_run(pb.plan);
  ASSERT_TRUE(r.ok);
  EXPECT_NEAR(r.makespan_s, 6.02, 1e-9);
  // One activation 0->1 and one gradient 1->0.
  EXPECT_DOUBLE_EQ(r.link_bytes[0 * 2 + 1], 12.5e6);
  EXPECT_DOUBLE_EQ(r.link_bytes[1 * 2 + 0], 12.5e6);
}

static SimResult allreduce_run(int n, const std::string& net_kind, double bytes, TaskKind kind) {
  SimPlanBuilder pb(n, 1e9, 0.001, net_kind);
  pb.seg("dp", 1, 1, 1);
  std::vector<int> group;
  for (int d = 0; d < n; d++) group.push_back(d);
  pb.collective(kind, group, bytes, {});
  return sim_run(pb.plan);
}

TEST(SimEngine, RingAllReduceSwitched) {
  // n = 4, 100 MB, 1 Gbit/s NICs (125 MB/s), 1 ms latency. Ring: 2(n-1) = 6 steps, each
  // a chunk of 25 MB on every ring link at once (no link shared): 0.001 + 0.2 s.
  // total = 6 x 0.201 = 1.206 s = 2(n-1)/n x bytes / bandwidth + 2(n-1) x latency.
  SimResult r = allreduce_run(4, "switched", 100e6, TaskKind::AllReduce);
  ASSERT_TRUE(r.ok);
  EXPECT_NEAR(r.makespan_s, 1.206, 1e-9);
  // Every ring link carries 6 chunks of 25 MB = 150 MB; non-ring pairs carry nothing.
  EXPECT_DOUBLE_EQ(r.link_bytes[0 * 4 + 1], 150e6);
  EXPECT_DOUBLE_EQ(r.link_bytes[3 * 4 + 0], 150e6);
  EXPECT_DOUBLE_EQ(r.link_bytes[1 * 4 + 0], 0);
}

TEST(SimEngine, RingAllReduceOnSharedMedium) {
  // Same, but on one shared 1 Gbit/s medium: the 4 concurrent chunks of a step share it,
  // so a step takes 0.001 + 4 x 25 MB / 125 MB/s = 0.801 s; 6 steps = 4.806 s.
  SimResult r = allreduce_run(4, "shared", 100e6, TaskKind::AllReduce);
  ASSERT_TRUE(r.ok);
  EXPECT_NEAR(r.makespan_s, 4.806, 1e-9);
}

TEST(SimEngine, RingAllGather) {
  // All-gather: n - 1 = 3 steps of 0.201 s on the switched network = 0.603 s.
  SimResult r = allreduce_run(4, "switched", 100e6, TaskKind::AllGather);
  ASSERT_TRUE(r.ok);
  EXPECT_NEAR(r.makespan_s, 0.603, 1e-9);
}

// Two sends over a shared 1 Gbit/s medium, no latency: X = 100 MB (0->1) and Y = 50 MB
// (2->3) start together at 62.5 MB/s each. Y ends at 2Y/B = 0.8 s; X then gets the whole
// medium and ends at (X + Y)/B = 1.2 s.
TEST(SimEngine, FairSharingOnSharedMedium) {
  SimPlanBuilder pb(4, 1e9, 0, "shared");
  pb.seg("x", 1, 1, 1);
  pb.send(0, 1, 100e6, {});
  pb.send(2, 3, 50e6, {});
  TracedRun tr = traced_run(pb.plan);
  ASSERT_TRUE(tr.r.ok);
  EXPECT_NEAR(tr.end[1], 0.8, 1e-12);
  EXPECT_NEAR(tr.end[0], 1.2, 1e-12);
  EXPECT_NEAR(tr.r.makespan_s, 1.2, 1e-12);
}

TEST(SimEngine, SwitchedNetworkSharesOnlyTheCommonNic) {
  // Switched 1 Gbit/s: 0->1 (100 MB) and 0->2 (50 MB) share device 0's uplink (62.5 MB/s
  // each) -> the small one ends at 0.8 s, the big one at 1.2 s; 3->4 (100 MB) shares
  // nothing and ends at 100/125 = 0.8 s.
  SimPlanBuilder pb(5, 1e9, 0, "switched");
  pb.seg("x", 1, 1, 1);
  pb.send(0, 1, 100e6, {});
  pb.send(0, 2, 50e6, {});
  pb.send(3, 4, 100e6, {});
  TracedRun tr = traced_run(pb.plan);
  ASSERT_TRUE(tr.r.ok);
  const std::vector<double>& end = tr.end;
  EXPECT_NEAR(end[0], 1.2, 1e-12);
  EXPECT_NEAR(end[1], 0.8, 1e-12);
  EXPECT_NEAR(end[2], 0.8, 1e-12);
}

TEST(SimEngine, SlowerNicLimitsTheFlowOnASwitch) {
  // 1 Gbit/s switch, but d1's NIC does 100 Mbit/s (12.5 MB/s) with 2 ms NIC latency:
  // 12.5 MB d0 -> d1 takes latency (0.5 ms network + the slower NIC's 2 ms) + 1 s.
  SimPlanBuilder pb(2, 1e9, 0.0005);
  pb.plan.scenario.devices[1].profile.nic_bandwidth_bps = 100e6;
  pb.plan.scenario.devices[1].profile.nic_latency_s = 0.002;
  pb.seg("x", 1, 1, 1);
  pb.send(0, 1, 12.5e6, {});
  SimResult r = sim_run(pb.plan);
  ASSERT_TRUE(r.ok);
  EXPECT_NEAR(r.makespan_s, 1.0025, 1e-9);
}

TEST(SimEngine, PerPairLinkOverride) {
  // A 50 Mbit/s (6.25 MB/s), 5 ms link between d0 and d1 overrides the 1 Gbit/s network:
  // 12.5 MB d0 -> d1 moves from 0.005 s and ends at 0.005 + 12.5 / 6.25 = 2.005 s.
  // At the same time 12.5 MB d0 -> d2 (no latency) shares d0's 125 MB/s uplink: alone
  // until 0.005 s (0.625 MB), then max-min gives it 125 - 6.25 = 118.75 MB/s for the
  // remaining 11.875 MB: it ends at 0.005 + 0.1 = 0.105 s.
  SimPlanBuilder pb(3, 1e9, 0);
  pb.plan.scenario.network.links.push_back(LinkSpec{"d0", "d1", 50e6, 0.005});
  pb.seg("x", 1, 1, 1);
  pb.send(0, 1, 12.5e6, {});
  pb.send(0, 2, 12.5e6, {});
  TracedRun tr = traced_run(pb.plan);
  ASSERT_TRUE(tr.r.ok);
  EXPECT_NEAR(tr.r.makespan_s, 2.005, 1e-9);
  EXPECT_NEAR(tr.end[1], 0.105, 1e-9);
  EXPECT_NEAR(tr.begin[0], 0.005, 1e-12);  // moving starts after the latency
}

TEST(SimEngine, EnergyIsBusyTimesBusyPowerPlusIdleTimesIdlePower) {
  // d0 computes 1 s, sends 125 MB at 1 Gbit/s + 10 ms latency (1.01 s), d1 computes 2 s.
  // makespan = 4.01. Power busy 10 W, idle 2 W:
  //   d0: 1 x 10 + 3.01 x 2 = 16.02 J;  d1: 2 x 10 + 2.01 x 2 = 24.02 J.
  SimPlanBuilder pb(2, 1e9, 0.01);
  pb.seg("x", 1, 1, 1);
  int a = pb.compute(TaskKind::Forward, 0, 1.0, {});
  int s = pb.send(0, 1, 125e6, {a});
  pb.compute(TaskKind::Forward, 1, 2.0, {s});
  SimResult r = sim_run(pb.plan);
  ASSERT_TRUE(r.ok);
  EXPECT_NEAR(r.makespan_s, 4.01, 1e-9);
  EXPECT_NEAR(r.devices[0].energy_j, 16.02, 1e-9);
  EXPECT_NEAR(r.devices[1].energy_j, 24.02, 1e-9);
  EXPECT_NEAR(r.energy_j(), 40.04, 1e-9);
  // d0's NIC moved data for the 1 s transfer (latency is not counted as moving).
  EXPECT_NEAR(r.devices[0].comm_s, 1.0, 1e-9);
}

TEST(SimEngine, MemoryPeakAndOutOfMemoryNamesDeviceAndTask) {
  // Device with 1 GB: resident 0.5 GB; F mb0 and F mb1 each hold 0.3 GB until their
  // backward ends. GPipe order keeps both alive: peak 0.5 + 0.3 + 0.3 = 1.1 GB > 1 GB,
  // so the run stops at "F mb1" (t = 1 s, when it starts).
  auto build = [](double mem) {
    SimPlanBuilder pb(1);
    pb.plan.scenario.devices[0].profile.memory_bytes = mem;
    pb.seg("pipeline", 1, 1, 3);
    pb.plan.segments[0].resident_bytes = {0.5e9};
    int f0 = pb.compute(TaskKind::Forward, 0, 1.0, {}, "F mb0");
    int f1 = pb.compute(TaskKind::Forward, 0, 1.0, {}, "F mb1");
    int b0 = pb.compute(TaskKind::Backward, 0, 1.0, {f0, f1}, "B mb0");
    int b1 = pb.compute(TaskKind::Backward, 0, 1.0, {b0}, "B mb1");
    pb.alloc(f0, 0.3e9, b0);
    pb.alloc(f1, 0.3e9, b1);
    return pb.plan;
  };
  SimOptions opt;
  opt.trace = true;
  opt.trace_iterations = 1;
  SimResult ok = sim_run(build(2e9), opt);
  ASSERT_TRUE(ok.ok);
  EXPECT_NEAR(ok.devices[0].peak_memory_bytes, 1.1e9, 1);
  // The memory counter of iteration 0: resident 0.5 at t=0, +0.3 (F mb0) at 0, +0.3 at
  // 1 (F mb1), -0.3 when B mb0 ends at 3, -0.3 when B mb1 ends at 4.
  std::vector<std::pair<double, double>> mem;
  for (const SimTraceEvent& e : ok.trace)
    if (e.kind == SimTraceKind::Memory) mem.push_back({e.t0, e.value});
  std::vector<std::pair<double, double>> want = {{0, 0.5e9}, {0, 0.8e9}, {1, 1.1e9}, {3, 0.8e9}, {4, 0.5e9}};
  ASSERT_EQ(mem.size(), want.size());
  for (size_t i = 0; i < want.size(); i++) {
    EXPECT_DOUBLE_EQ(mem[i].first, want[i].first) << i;
    EXPECT_NEAR(mem[i].second, want[i].second, 1) << i;
  }
  SimResult r = sim_run(build(1e9));
  ASSERT_FALSE(r.ok);
  EXPECT_EQ(r.failure.kind, "oom");
  EXPECT_EQ(r.failure.device, "d0");
  EXPECT_EQ(r.failure.task, "F mb1");
  EXPECT_DOUBLE_EQ(r.failure.time_s, 1.0);
  EXPECT_EQ(r.failure.iteration, 0);
  EXPECT_NE(r.failure.message.find("out of memory on d0"), std::string::npos) << r.failure.message;
  EXPECT_NE(r.failure.message.find("F mb1 needs 1.100 GB"), std::string::npos) << r.failure.message;
}

TEST(SimEngine, ResidentStateAloneCanRunOutOfMemory) {
  SimPlanBuilder pb(2);
  pb.plan.scenario.devices[1].profile.memory_bytes = 1e9;
  pb.seg("data_parallel", 1, 1, 1);
  pb.plan.segments[0].resident_bytes = {0.5e9, 1.5e9};
  pb.compute(TaskKind::Forward, 0, 1.0, {});
  SimResult r = sim_run(pb.plan);
  ASSERT_FALSE(r.ok);
  EXPECT_EQ(r.failure.device, "d1");
  EXPECT_EQ(r.failure.task, "resident state of segment data_parallel");
}

TEST(SimEngine, FailureAtTimeEndsTheRun) {
  SimPlanBuilder pb(2);
  pb.seg("x", 1, 1, 10);
  pb.compute(TaskKind::Forward, 0, 1.0, {});
  pb.plan.scenario.faults.push_back(FaultSpec{"fail", "d1", "", 3.5, -1, 1});
  SimResult r = sim_run(pb.plan);
  ASSERT_FALSE(r.ok);
  EXPECT_EQ(r.failure.kind, "fault");
  EXPECT_EQ(r.failure.device, "d1");
  EXPECT_DOUBLE_EQ(r.failure.time_s, 3.5);
  // 3 iterations of 1 s were complete; the 4th was running.
  EXPECT_EQ(r.failure.iteration, 3);
  EXPECT_NE(r.failure.message.find("device d1 failed at t=3.500 s"), std::string::npos) << r.failure.message;
}

TEST(SimEngine, SlowdownAtIterationScalesLaterComputeTasks) {
  // 4 iterations of a 1 s task; from iteration 2 (0-based) the device is 2x slower:
  // 1 + 1 + 2 + 2 = 6 s.
  SimPlanBuilder pb(1);
  pb.seg("x", 1, 1, 4);
  pb.compute(TaskKind::Forward, 0, 1.0, {});
  pb.plan.scenario.faults.push_back(FaultSpec{"slowdown", "d0", "", -1, 2, 2.0});
  SimResult r = sim_run(pb.plan);
  ASSERT_TRUE(r.ok);
  EXPECT_DOUBLE_EQ(r.makespan_s, 6);
  ASSERT_EQ(r.faults.size(), 1u);
  EXPECT_DOUBLE_EQ(r.faults[0].time_s, 2);
}

TEST(SimEngine, FaultsAfterTheEndAreReportedAsNotReached) {
  // 2 iterations of 1 s: a failure at t = 5 s and a slowdown at iteration 7 never happen.
  SimPlanBuilder pb(1);
  pb.seg("x", 1, 1, 2);
  pb.compute(TaskKind::Forward, 0, 1.0, {});
  pb.plan.scenario.faults.push_back(FaultSpec{"fail", "d0", "", 5, -1, 1});
  pb.plan.scenario.faults.push_back(FaultSpec{"slowdown", "d0", "", -1, 7, 3});
  SimResult r = sim_run(pb.plan);
  ASSERT_TRUE(r.ok);
  EXPECT_DOUBLE_EQ(r.makespan_s, 2);
  ASSERT_EQ(r.faults.size(), 2u);
  EXPECT_EQ(r.faults[0].text, "fail of d0 at t=5.000 s not reached");
  EXPECT_EQ(r.faults[1].text, "slowdown of d0 at iteration 7 not reached");
  EXPECT_LT(r.faults[1].time_s, 0);
}

TEST(SimEngine, LinkDegradeSlowsAFlowInFlight) {
  // 125 MB at 1 Gbit/s would take 1 s; at t = 0.5 the link degrades by 2: the second
  // half (62.5 MB) moves at 62.5 MB/s, so the transfer ends at 0.5 + 1 = 1.5 s.
  SimPlanBuilder pb(2, 1e9, 0);
  pb.seg("x", 1, 1, 1);
  pb.send(0, 1, 125e6, {});
  pb.plan.scenario.faults.push_back(FaultSpec{"link_degrade", "d0", "d1", 0.5, -1, 2.0});
  SimResult r = sim_run(pb.plan);
  ASSERT_TRUE(r.ok);
  EXPECT_NEAR(r.makespan_s, 1.5, 1e-9);
}

TEST(SimEngine, ComputeOverlapsCommunicationAndStorage) {
  // d0: compute 2 s while sending 125 MB (1 s) and writing the cache (1.5 s), all
  // independent: makespan = max(2, 1, 1.5) = 2 s (no cpu_quota; 1.5 cores the same).
  // On a testbed device of cpu_quota 1 (and 0.5) its one core does the cache write's CPU
  // work too, so forward and write run one after the other (the lower task id first):
  // makespan 2 + 1.5 = 3.5 s; busy stays the compute's 2 s, storage 1.5 s, and the
  // compute engine never waits (bubble 0). The send overlaps in every case (NIC).
  for (double q : {0.0, 1.5, 1.0, 0.5}) {
    SimPlanBuilder pb(2, 1e9, 0);
    pb.plan.scenario.devices[0].cpu_quota = q;
    pb.seg("x", 1, 1, 1);
    pb.compute(TaskKind::Forward, 0, 2.0, {});
    pb.send(0, 1, 125e6, {});
    pb.compute(TaskKind::CacheWrite, 0, 1.5, {});
    SimResult r = sim_run(pb.plan);
    ASSERT_TRUE(r.ok);
    EXPECT_NEAR(r.makespan_s, q > 0 && q <= 1 ? 3.5 : 2.0, 1e-12) << q;
    EXPECT_NEAR(r.devices[0].storage_s, 1.5, 1e-12) << q;
    EXPECT_NEAR(r.devices[0].busy_s, 2.0, 1e-12) << q;
    EXPECT_NEAR(r.devices[0].bubble_s, 0.0, 1e-12) << q;
  }
}

TEST(SimEngine, QuotaBurstsRunFasterThanTheSustainedRate) {
  // A profile sustained under a CFS quota of 0.5 core (period 100 ms): a task's seconds
  // are at the sustained rate, its CPU work is half of them at full speed, served while
  // the period's 50 ms of budget lasts.
  // (a) Two 60 ms tasks back to back from t = 0: the first is 30 ms of CPU and ends at
  //     30 ms; the second gets the 20 ms left (to 50 ms), waits for the period at 100
  //     ms and ends at 110 ms (sustained: 120 ms).
  // (b) One 60 ms task, then one that waits for a 0.2 s send: it starts in a fresh
  //     period and runs at full speed, 30 ms of CPU: 0.2 + latency + 0.03.
  // (c) Busy for a long time, 40 tasks of 60 ms (1.2 s of CPU, 24 periods of 50 ms):
  //     the sustained rate exactly, 2.4 s minus the last period's unused 50 ms: 2.35 s.
  // (a') With throttle_delay_s, a device that waited for a period resumes that much
  //     after the period begins.
  // (d) A cache write on the one-core device takes budget like compute: 0.06 s of
  //     storage time then the 60 ms forward -> like (a), 110 ms.
  auto plan = [](double quota) {
    SimPlanBuilder pb(2, 1e9, 0);
    pb.plan.scenario.devices[0].profile.sustained_quota = quota;
    pb.plan.scenario.devices[0].cpu_quota = quota;
    return pb;
  };
  for (double delay : {0.0, 0.01}) {
    // With throttle_delay_s 10 ms the second task resumes at 110 ms and ends at 120 ms.
    SimPlanBuilder pb = plan(0.5);
    pb.plan.scenario.devices[0].profile.throttle_delay_s = delay;
    pb.seg("x", 1, 1, 1);
    int a = pb.compute(TaskKind::Forward, 0, 0.06, {});
    pb.compute(TaskKind::Forward, 0, 0.06, {a});
    SimResult r = sim_run(pb.plan);
    ASSERT_TRUE(r.ok);
    EXPECT_NEAR(r.makespan_s, 0.11 + delay, 1e-12);
    EXPECT_NEAR(r.devices[0].busy_s, 0.11 + delay, 1e-12);  // a throttled task is busy (it holds the core)
  }
  {
    SimPlanBuilder pb = plan(0.5);
    pb.seg("x", 1, 1, 1);
    int a = pb.compute(TaskKind::Forward, 0, 0.06, {});
    int s = pb.send(1, 0, 25e6, {});  // 0.2 s at 1 Gbit/s
    pb.compute(TaskKind::Forward, 0, 0.06, {a, s});
    SimResult r = sim_run(pb.plan);
    ASSERT_TRUE(r.ok);
    EXPECT_NEAR(r.makespan_s, 0.2 + 0.03, 1e-12);
  }
  for (double quota : {0.5, 0.0}) {
    SimPlanBuilder pb = plan(quota);
    pb.seg("x", 1, 1, 1);
    int prev = -1;
    for (int i = 0; i < 40; i++) prev = pb.compute(TaskKind::Forward, 0, 0.06, prev < 0 ? std::vector<int>{} : std::vector<int>{prev});
    SimResult r = sim_run(pb.plan);
    ASSERT_TRUE(r.ok);
    EXPECT_NEAR(r.makespan_s, quota > 0 ? 2.35 : 2.4, 1e-9) << quota;  // no quota: the sum, 40 x 60 ms
  }
  {
    // Busy with a 10 ms delay: periods 1-23 each run 50 ms from 10 ms after they begin:
    // the last one ends at 2.3 + 0.01 + 0.05 = 2.36 s. A quota-free device ignores it.
    SimPlanBuilder pb = plan(0.5);
    pb.plan.scenario.devices[0].profile.throttle_delay_s = 0.01;
    pb.seg("x", 1, 1, 1);
    int prev = -1;
    for (int i = 0; i < 40; i++) prev = pb.compute(TaskKind::Forward, 0, 0.06, prev < 0 ? std::vector<int>{} : std::vector<int>{prev});
    SimResult r = sim_run(pb.plan);
    ASSERT_TRUE(r.ok);
    EXPECT_NEAR(r.makespan_s, 2.36, 1e-9);
  }
  {
    SimPlanBuilder pb = plan(0.5);
    pb.plan.scenario.devices[0].profile.storage_write_bytes_per_s = 0;  // the task's own seconds
    pb.seg("x", 1, 1, 1);
    int w = pb.compute(TaskKind::CacheWrite, 0, 0.06, {});
    pb.compute(TaskKind::Forward, 0, 0.06, {w});
    SimResult r = sim_run(pb.plan);
    ASSERT_TRUE(r.ok);
    EXPECT_NEAR(r.makespan_s, 0.11, 1e-12);
  }
}

TEST(SimEngine, AThrottledMemberHoldsTheRingUntilItsNextPeriod) {
  // Device 0 under a 0.5-core quota (100 ms period, 50 ms of budget), device 1 free; a
  // forward on device 0, then a small all-reduce of both. A forward of 0.1 s (sustained)
  // is 50 ms of CPU: it ends at 50 ms with the budget spent, so the ring cannot step
  // until device 0 runs again at 100 ms, exactly when the forward would end without the
  // quota. A forward of 0.08 s ends at 40 ms with budget left: the ring starts at once,
  // 40 ms before the unthrottled case. With throttle_delay_s 10 ms the first waits 10 ms
  // more.
  auto run = [](double fwd_s, double quota, double delay) {
    SimPlanBuilder pb(2, 1e9, 0);
    pb.plan.scenario.devices[0].profile.sustained_quota = quota;
    pb.plan.scenario.devices[0].cpu_quota = quota;
    pb.plan.scenario.devices[0].profile.throttle_delay_s = delay;
    pb.seg("x", 1, 1, 1);
    int f = pb.compute(TaskKind::Forward, 0, fwd_s, {});
    pb.collective(TaskKind::AllReduce, {0, 1}, 1e3, {f});
    SimResult r = sim_run(pb.plan);
    EXPECT_TRUE(r.ok);
    return r.makespan_s;
  };
  EXPECT_NEAR(run(0.1, 0.5, 0), run(0.1, 0, 0), 1e-12);
  EXPECT_NEAR(run(0.08, 0.5, 0), run(0.08, 0, 0) - 0.04, 1e-12);
  EXPECT_NEAR(run(0.1, 0.5, 0.01), run(0.1, 0, 0) + 0.01, 1e-12);
}

TEST(SimEngine, CacheIoUsesTheDeviceStorageRate) {
  // Storage writes 50 MB/s, reads 200 MB/s: writing 100 MB takes 2 s, reading it back
  // 0.5 s (the tasks' own seconds, 9 s, are ignored when the task moves bytes).
  SimPlanBuilder pb(1);
  pb.plan.scenario.devices[0].profile.storage_write_bytes_per_s = 50e6;
  pb.plan.scenario.devices[0].profile.storage_read_bytes_per_s = 200e6;
  pb.seg("x", 1, 1, 1);
  int w = pb.compute(TaskKind::CacheWrite, 0, 9.0, {});
  int r = pb.compute(TaskKind::CacheRead, 0, 9.0, {w});
  pb.plan.segments[0].graph.tasks[w].bytes = 100e6;
  pb.plan.segments[0].graph.tasks[r].bytes = 100e6;
  SimResult res = sim_run(pb.plan);
  ASSERT_TRUE(res.ok);
  EXPECT_NEAR(res.makespan_s, 2.5, 1e-12);
  // With a fixed cost per record (10 ms to write one, 2 ms to read one) and 4 samples'
  // records in each task: 2 + 4 x 0.01 + 0.5 + 4 x 0.002 = 2.548 s.
  pb.plan.scenario.devices[0].profile.storage_write_record_s = 0.01;
  pb.plan.scenario.devices[0].profile.storage_read_record_s = 0.002;
  pb.plan.segments[0].graph.tasks[w].samples = 4;
  pb.plan.segments[0].graph.tasks[r].samples = 4;
  res = sim_run(pb.plan);
  ASSERT_TRUE(res.ok);
  EXPECT_NEAR(res.makespan_s, 2.548, 1e-12);
}

TEST(SimEngine, SameInputSameResult) {
  SimPlanBuilder pb(4, 1e9, 0.001, "shared");
  pb.seg("pipeline", 1, 2, 6);
  pipeline_build(pb, 4, 6, 0.3, 0.7, 3e6);
  SimResult a = sim_run(pb.plan), b = sim_run(pb.plan);
  EXPECT_EQ(a.events, b.events);
  EXPECT_EQ(a.makespan_s, b.makespan_s);
  for (size_t d = 0; d < a.devices.size(); d++) EXPECT_EQ(a.devices[d].bubble_s, b.devices[d].bubble_s);
}

// Independent reference for compute-only DAGs (plus zero-byte sends as pure
// dependencies): a round-based list scheduler written from the rules in
// docs/simulator.md, over all `R` iterations of the segment at once. An idle compute
// engine takes the ready task with the lowest id; a task instance (j, t) is ready when its
// dependencies in iteration j have finished and, without overlap, all of iteration j-1
// has finished (the barrier), or, with overlap, the same task and its prev_deps of
// iteration j-1 have finished and j is within n+1 of the oldest unfinished iteration;
// among ready tasks the oldest iteration, then the lowest id, goes first. Integer
// durations, many of them 0, make ties common.
static std::vector<std::vector<double>> reference_starts(const Plan& plan, double* makespan) {
  const Segment& seg = plan.segments[0];
  const auto& tasks = seg.graph.tasks;
  const int nt = static_cast<int>(tasks.size());
  const int n = static_cast<int>(plan.scenario.devices.size());
  const int R = static_cast<int>(seg.repeat);
  std::vector<std::vector<double>> start(R, std::vector<double>(nt, -1)), finish = start;
  std::vector<std::vector<char>> fin(R, std::vector<char>(nt, 0));
  std::vector<char> dev_busy(n, 0);
  double T = 0;
  int done = 0;
  auto iter_done = [&](int j) { return std::all_of(fin[j].begin(), fin[j].end(), [](char c) { return c != 0; }); };
  auto ready = [&](int j, int t) {
    for (int d : tasks[t].deps)
      if (!fin[j][d]) return false;
    if (j == 0) return true;
    if (!seg.overlap) return iter_done(j - 1);
    if (!fin[j - 1][t]) return false;
    for (int u : tasks[t].prev_deps)
      if (!fin[j - 1][u]) return false;
    int oldest = 0;
    while (oldest < R && iter_done(oldest)) oldest++;
    return j < oldest + n + 1;
  };
  while (done < R * nt) {
    for (int j = 0; j < R; j++)
      for (int t = 0; t < nt; t++)
        if (start[j][t] >= 0 && !fin[j][t] && finish[j][t] == T) {
          fin[j][t] = 1;
          done++;
          if (tasks[t].kind != TaskKind::Send) dev_busy[tasks[t].device] = 0;
        }
    bool started = true;
    while (started) {
      started = false;
      for (bool more = true; more;) {  // sends complete at once, before engines choose
        more = false;
        for (int j = 0; j < R; j++)
          for (int t = 0; t < nt; t++)
            if (tasks[t].kind == TaskKind::Send && start[j][t] < 0 && ready(j, t)) {
              start[j][t] = finish[j][t] = T;
              fin[j][t] = 1;
              done++;
              more = true;
            }
      }
      // One dispatch round over idle devices, on the ready set as it is now.
      std::vector<std::pair<int, int>> pick(n, {-1, -1});
      for (int j = 0; j < R; j++)
        for (int t = 0; t < nt; t++) {
          const Task& k = tasks[t];
          if (k.kind == TaskKind::Send || start[j][t] >= 0 || dev_busy[k.device] || pick[k.device].first >= 0) continue;
          if (ready(j, t)) pick[k.device] = {j, t};
        }
      for (int d = 0; d < n; d++) {
        auto [j, t] = pick[d];
        if (t < 0) continue;
        start[j][t] = T;
        finish[j][t] = T + tasks[t].seconds;
        dev_busy[d] = 1;
        started = true;
      }
      for (int d = 0; d < n; d++) {  // zero-length tasks end within this instant
        auto [j, t] = pick[d];
        if (t >= 0 && finish[j][t] == T) {
          fin[j][t] = 1;
          done++;
          dev_busy[d] = 0;
        }
      }
    }
    double next = 1e300;
    for (int j = 0; j < R; j++)
      for (int t = 0; t < nt; t++)
        if (start[j][t] >= 0 && !fin[j][t]) next = std::min(next, finish[j][t]);
    if (done < R * nt && next == 1e300) break;  // cannot happen for a DAG
    if (done < R * nt) T = next;
  }
  *makespan = T;
  return start;
}

static void reference_check(bool overlap, int trials, unsigned seed, double host_cores = 0) {
  std::mt19937 rng(seed);
  for (int trial = 0; trial < trials; trial++) {
    int n = 1 + static_cast<int>(rng() % 4);
    int nt = 2 + static_cast<int>(rng() % 25);
    SimPlanBuilder pb(n);
    pb.plan.scenario.host_cores = host_cores;
    pb.seg("x", 1, 1, 1 + static_cast<int>(rng() % 4));
    pb.plan.segments[0].overlap = overlap;
    for (int t = 0; t < nt; t++) {
      std::vector<int> deps;
      for (int d = 0; d < t; d++)
        if (rng() % 5 == 0) deps.push_back(d);
      int dev = static_cast<int>(rng() % n);
      if (rng() % 4 == 0) pb.send(dev, static_cast<int>(rng() % n), 0, deps);
      else pb.compute(TaskKind::Forward, dev, static_cast<double>(rng() % 4), deps);
      // Previous-iteration dependencies on any task, later ones included.
      if (overlap)
        for (int u = 0; u < nt; u++)
          if (rng() % 8 == 0) pb.plan.segments[0].graph.tasks[t].prev_deps.push_back(u);
    }
    double ref_makespan = 0;
    std::vector<std::vector<double>> ref = reference_starts(pb.plan, &ref_makespan);
    SimOptions opt;
    opt.trace = true;
    SimResult r = sim_run(pb.plan, opt);
    ASSERT_TRUE(r.ok);
    ASSERT_DOUBLE_EQ(r.makespan_s, ref_makespan) << "trial " << trial;
    for (const SimTraceEvent& e : work_of(r))
      ASSERT_DOUBLE_EQ(e.t0, ref[e.iteration][e.task]) << "trial " << trial << " iteration " << e.iteration
                                                       << " task " << e.task;
  }
}

TEST(SimEngine, MatchesAReferenceListSchedulerOnRandomDags) { reference_check(false, 300, 12345); }
TEST(SimEngine, MatchesTheReferenceWithOverlappingIterations) { reference_check(true, 300, 777); }
// On a shared host with a core for every device (at most 4 here) nothing is shared: the
// fluid CPU path gives the same starts as the reference.
TEST(SimEngine, SharedHostWithCoresToSpareMatchesTheReference) {
  reference_check(false, 300, 12345, 4);
  reference_check(true, 300, 777, 8);
}

TEST(SimEngine, SharedHostSharesItsCoresFairly) {
  // Three devices without quotas, one task each of 1, 1 and 2 s, on a host of 2 cores:
  // each gets 2/3 of a core until the two short ones end at 1 / (2/3) = 1.5 s; the long
  // one has 1 s left and a core of its own: it ends at 2.5 s. Busy time is wall time on
  // the engine (1.5, 1.5, 2.5). Without the host (host_cores 0) or with 3 cores: 2 s.
  auto run = [](double host) {
    SimPlanBuilder pb(3);
    pb.plan.scenario.host_cores = host;
    pb.seg("x", 1, 1, 1);
    pb.compute(TaskKind::Forward, 0, 1.0, {});
    pb.compute(TaskKind::Forward, 1, 1.0, {});
    pb.compute(TaskKind::Forward, 2, 2.0, {});
    SimResult r = sim_run(pb.plan);
    EXPECT_TRUE(r.ok);
    return r;
  };
  SimResult r = run(2);
  EXPECT_NEAR(r.makespan_s, 2.5, 1e-12);
  EXPECT_NEAR(r.devices[0].busy_s, 1.5, 1e-12);
  EXPECT_NEAR(r.devices[2].busy_s, 2.5, 1e-12);
  EXPECT_NEAR(run(0).makespan_s, 2.0, 1e-12);
  EXPECT_NEAR(run(3).makespan_s, 2.0, 1e-12);
  // One core for all three: 3 x 1/3 until 3 s (the short ones), then the long one alone
  // for its last second: 4 s, the sum of the work.
  EXPECT_NEAR(run(1).makespan_s, 4.0, 1e-12);
  // A device of 2 cores (cpu_quota 2) beside two of one on a 2-core host: max-min fair
  // shares of 2/3 core each, so the 2-core device runs at 1/3 of its speed. Tasks of 1 s
  // each: the two small ones end at 1.5 s, when the big one has done 0.5 s of its 1 s;
  // alone on the host it finishes the rest at full speed: 2 s.
  SimPlanBuilder pb(3);
  pb.plan.scenario.host_cores = 2;
  pb.plan.scenario.devices[2].cpu_quota = 2;
  pb.seg("x", 1, 1, 1);
  for (int d = 0; d < 3; d++) pb.compute(TaskKind::Forward, d, 1.0, {});
  SimResult r2 = sim_run(pb.plan);
  ASSERT_TRUE(r2.ok);
  EXPECT_NEAR(r2.makespan_s, 2.0, 1e-12);
  EXPECT_NEAR(r2.devices[0].busy_s, 1.5, 1e-12);
}

TEST(SimEngine, SharedHostAndQuotasTogether) {
  // Three devices under 0.5-core quotas (100 ms period, 50 ms budget) on a 2-core host,
  // one task each of 0.2 s sustained = 0.1 s of CPU at full speed. Alone, a device
  // bursts 50 ms, is throttled to 100 ms and ends at 150 ms. Together each gets 2/3 of
  // a core: the budgets run out at 75 ms, all wait for the period at 100 ms, then the
  // last 50 ms of CPU at 2/3 takes 75 ms: 175 ms. With 3 cores: 150 ms, as alone.
  auto run = [](double host, double delay) {
    SimPlanBuilder pb(3);
    pb.plan.scenario.host_cores = host;
    pb.plan.scenario.cfs_phases_aligned = true;  // the closed forms: every period at 0
    for (int d = 0; d < 3; d++) {
      pb.plan.scenario.devices[d].profile.sustained_quota = 0.5;
      pb.plan.scenario.devices[d].cpu_quota = 0.5;
      pb.plan.scenario.devices[d].profile.throttle_delay_s = delay;
    }
    pb.seg("x", 1, 1, 1);
    for (int d = 0; d < 3; d++) pb.compute(TaskKind::Forward, d, 0.2, {});
    SimResult r = sim_run(pb.plan);
    EXPECT_TRUE(r.ok);
    return r.makespan_s;
  };
  EXPECT_NEAR(run(2, 0), 0.175, 1e-12);
  EXPECT_NEAR(run(3, 0), 0.15, 1e-12);
  EXPECT_NEAR(run(0, 0), 0.15, 1e-12);
  // With a 10 ms throttle delay every device resumes at 110 ms: 185 ms.
  EXPECT_NEAR(run(2, 0.01), 0.185, 1e-12);
}

TEST(SimEngine, CoRunSlowdownOnASharedHost) {
  // Devices whose profiles say a micro-batch of 1 computes 1.2x slower, and one of 4
  // 1.5x slower, while the host's other cores are all busy (corun_slowdown).
  auto run = [](double host, int n, std::vector<double> secs, double samples, double quota = 0) {
    SimPlanBuilder pb(n);
    pb.plan.scenario.host_cores = host;
    pb.plan.scenario.cfs_phases_aligned = true;
    for (int d = 0; d < n; d++) {
      pb.plan.scenario.devices[d].profile.corun_slowdown = {{1, 1.2}, {4, 1.5}};
      if (quota > 0) {
        pb.plan.scenario.devices[d].profile.sustained_quota = quota;
        pb.plan.scenario.devices[d].cpu_quota = quota;
      }
    }
    pb.seg("x", 1, 1, 1);
    for (int d = 0; d < n; d++) {
      int t = pb.compute(TaskKind::Forward, d, secs[d], {});
      pb.plan.segments.back().graph.tasks[t].samples = samples;
    }
    SimResult r = sim_run(pb.plan);
    EXPECT_TRUE(r.ok);
    return r;
  };
  // Two 1 s tasks on a 2-core host: each has the other core busy all along: 1.2 s.
  EXPECT_NEAR(run(2, 2, {1, 1}, 1).makespan_s, 1.2, 1e-12);
  // One alone on the host: its profile's 1 s. Not a shared host (host_cores 0): 1 s.
  EXPECT_NEAR(run(2, 1, {1}, 1).makespan_s, 1.0, 1e-12);
  EXPECT_NEAR(run(0, 2, {1, 1}, 1).makespan_s, 1.0, 1e-12);
  // A 0.5 s task beside a 1 s one: both at 1/1.2 until the short one ends at 0.6 s, when
  // the long one has done 0.5 s; its other 0.5 s alone: 1.1 s.
  SimResult r = run(2, 2, {1, 0.5}, 1);
  EXPECT_NEAR(r.makespan_s, 1.1, 1e-12);
  EXPECT_NEAR(r.devices[1].busy_s, 0.6, 1e-12);
  // Micro-batch 2: linear between 1 (1.2) and 4 (1.5): 1.3. Outside them, the nearest:
  // 8 -> 1.5.
  EXPECT_NEAR(run(2, 2, {1, 1}, 2).makespan_s, 1.3, 1e-12);
  EXPECT_NEAR(run(2, 2, {1, 1}, 8).makespan_s, 1.5, 1e-12);
  // One core for two: each gets half of it and no other core is busy: 2 s, the work.
  EXPECT_NEAR(run(1, 2, {1, 1}, 1).makespan_s, 2.0, 1e-12);
  // Three on 2 cores: 2/3 of a core each, the other core busy (the others have 4/3 of
  // a core): 1 / (2/3) x 1.2 = 1.8 s.
  EXPECT_NEAR(run(2, 3, {1, 1, 1}, 1).makespan_s, 1.8, 1e-12);
  // Two under 0.5-core quotas (50 ms budget per 100 ms period), 0.2 s sustained = 0.1 s
  // of CPU each. The budget is spent at the wall rate; the work at 1/1.2 of it: 41.67 ms
  // done per period, so two periods and then 16.67 ms x 1.2 = 20 ms: 220 ms (150 ms
  // alone).
  EXPECT_NEAR(run(2, 2, {0.2, 0.2}, 1, 0.5).makespan_s, 0.22, 1e-9);
  EXPECT_NEAR(run(2, 1, {0.2}, 1, 0.5).makespan_s, 0.15, 1e-9);
}

TEST(SimEngine, CfsPhasesSpreadShiftEachDevicesPeriods) {
  // Two devices under 0.5-core quotas (100 ms period, 50 ms budget). d1 computes 0.14 s
  // sustained (70 ms of CPU), then hands over (0 bytes, no latency) to d0, which computes
  // 0.02 s sustained (10 ms of CPU). Aligned periods: d1 bursts 0-50 ms, is throttled to
  // 100 ms, ends at 120 ms; d0 (its budget unspent) ends at 130 ms. Spread: d1's periods
  // begin at frac(0.618..) x 100 ms = 61.8034 ms; it bursts 0-50 ms in its first, resumes
  // at 61.8034 and ends at 81.8034 ms; d0 (period 0 from 0) ends at 91.8034 ms. Both on a
  // shared host with cores to spare and without one.
  for (double host : {0.0, 4.0})
    for (bool aligned : {true, false}) {
      SimPlanBuilder pb(2, 1e9, 0);
      pb.plan.scenario.host_cores = host;
      pb.plan.scenario.cfs_phases_aligned = aligned;
      for (int d = 0; d < 2; d++) {
        pb.plan.scenario.devices[d].profile.sustained_quota = 0.5;
        pb.plan.scenario.devices[d].cpu_quota = 0.5;
      }
      pb.seg("x", 1, 1, 1);
      int f = pb.compute(TaskKind::Forward, 1, 0.14, {});
      int s = pb.send(1, 0, 0, {f});
      pb.compute(TaskKind::Forward, 0, 0.02, {s});
      SimResult r = sim_run(pb.plan);
      ASSERT_TRUE(r.ok);
      EXPECT_NEAR(r.makespan_s, aligned ? 0.13 : 0.0918034, 1e-7) << "host " << host;
    }
}

TEST(SimEngine, ComputeJitterCostsABarrierTheExpectedMaximum) {
  // n devices each compute 1 s per iteration, with a barrier between iterations, N =
  // 3000 iterations, compute_jitter_cv = 0.2: each device's multiplier is uniform on
  // [1 - a, 1 + a], a = 0.2 sqrt(3), so an iteration takes the maximum of n of them and
  // the run N (1 + a (n - 1) / (n + 1)): 3000 s on one device (its own mean is kept),
  // 3346.41 s on two, 3623.53 s on four. The sequence is deterministic and
  // equidistributed, not random: within 0.3%. Without jitter: exactly N on any count.
  const int N = 3000;
  const double a = 0.2 * std::sqrt(3.0);
  for (int n : {1, 2, 4})
    for (double cv : {0.0, 0.2}) {
      SimPlanBuilder pb(n);
      for (int d = 0; d < n; d++) pb.plan.scenario.devices[d].profile.compute_jitter_cv = cv;
      pb.seg("x", 1, 1, N);
      for (int d = 0; d < n; d++) pb.compute(TaskKind::Forward, d, 1.0, {});
      SimResult r = sim_run(pb.plan);
      ASSERT_TRUE(r.ok);
      double want = cv > 0 ? N * (1 + a * (n - 1) / (n + 1)) : N;
      EXPECT_NEAR(r.makespan_s, want, cv > 0 ? 0.003 * N : 1e-6) << n << " devices, cv " << cv;
    }
}

// The quota model's cases (QuotaBurstsRunFasterThanTheSustainedRate, the throttled ring)
// give the same times through the shared host's fluid path when it has cores to spare.
TEST(SimEngine, SharedHostWithCoresToSpareKeepsTheQuotaModel) {
  for (double delay : {0.0, 0.01}) {
    double t[2];
    for (int h = 0; h < 2; h++) {
      SimPlanBuilder pb(2, 1e9, 0);
      pb.plan.scenario.host_cores = h ? 8 : 0;
      pb.plan.scenario.devices[0].profile.sustained_quota = 0.5;
      pb.plan.scenario.devices[0].cpu_quota = 0.5;
      pb.plan.scenario.devices[0].profile.throttle_delay_s = delay;
      pb.plan.scenario.devices[0].profile.storage_write_bytes_per_s = 0;
      pb.seg("x", 1, 1, 1);
      int prev = pb.compute(TaskKind::CacheWrite, 0, 0.06, {});
      for (int i = 0; i < 40; i++) {
        prev = pb.compute(TaskKind::Forward, 0, 0.013 * (1 + i % 7), {prev});
        if (i % 5 == 0) prev = pb.collective(TaskKind::AllReduce, {0, 1}, 1e5, {prev});
        if (i % 9 == 0) prev = pb.send(1, 0, 2e6, {prev});
      }
      SimResult r = sim_run(pb.plan);
      ASSERT_TRUE(r.ok);
      t[h] = r.makespan_s;
    }
    EXPECT_NEAR(t[1], t[0], 1e-9) << "delay " << delay;
  }
}

TEST(SimEngine, OverlappingIterationsPipelineWithoutABarrier) {
  // d0 computes 1 s and hands over (zero-byte send) to d1, which computes 2 s; 5
  // iterations. With a barrier: 5 x 3 = 15 s. With overlap d0 runs ahead and d1 is the
  // bottleneck: 1 + 5 x 2 = 11 s (the first hand-over, then d1 back to back).
  for (bool overlap : {false, true}) {
    SimPlanBuilder pb(2);
    pb.seg("async", 1, 1, 5);
    pb.plan.segments[0].overlap = overlap;
    int f = pb.compute(TaskKind::Forward, 0, 1.0, {});
    int s = pb.send(0, 1, 0, {f});
    pb.compute(TaskKind::Forward, 1, 2.0, {s});
    SimResult r = sim_run(pb.plan);
    ASSERT_TRUE(r.ok);
    EXPECT_DOUBLE_EQ(r.makespan_s, overlap ? 11 : 15);
    EXPECT_EQ(r.tasks, 15);
    // d1 waits only for the first hand-over: bubble 1 s with overlap, 5 x 1 s without.
    EXPECT_DOUBLE_EQ(r.devices[1].bubble_s, overlap ? 1 : 5);
  }
}

TEST(SimEngine, PrevDepsBoundHowFarAnOverlappedStageRunsAhead) {
  // d0 computes 1 s and hands over to d1, which computes 3 s; 4 iterations. Overlap
  // alone: d0 runs ahead, 1 + 4 x 3 = 13 s. With d0's task depending on d1's task of
  // the previous iteration (one item in flight), the two serialise: 4 x (1 + 3) = 16 s.
  for (bool bounded : {false, true}) {
    SimPlanBuilder pb(2);
    pb.seg("async", 1, 1, 4);
    pb.plan.segments[0].overlap = true;
    int f = pb.compute(TaskKind::Forward, 0, 1.0, {});
    int s = pb.send(0, 1, 0, {f});
    int g = pb.compute(TaskKind::Forward, 1, 3.0, {s});
    if (bounded) pb.plan.segments[0].graph.tasks[f].prev_deps = {g};
    SimResult r = sim_run(pb.plan);
    ASSERT_TRUE(r.ok);
    EXPECT_DOUBLE_EQ(r.makespan_s, bounded ? 16 : 13);
  }
}

TEST(SimEngine, MalformedPlanIsAnInputError) {
  SimPlanBuilder pb(2);
  pb.seg("x", 1, 1, 1);
  pb.compute(TaskKind::Forward, 0, 1.0, {});
  pb.plan.segments[0].graph.tasks[0].device = 5;
  try {
    sim_run(pb.plan);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(),
                 "plan.json: $.segments[0].graph.tasks[0]: task 0: device index 5 out of range 0..1");
  }
}
