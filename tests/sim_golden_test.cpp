// Golden outputs of pac-sim (SimGrid .tesh style): each case runs the real binary and
// compares stdout (and the report JSON when there is one) byte for byte with
// tests/golden/<case>.txt / <case>.report.json.
//
// Regenerate after an intended change (and review the diff before committing):
//   PAC_GOLDEN_UPDATE=1 build-sim/tests/sim_golden_test
// Update mode also rewrites tests/golden/hand.plan.json from hand_plan_build below.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "sim/engine.h"
#include "src/common/fs.h"
#include "tests/sim_plans.h"

using namespace pac;

static std::string src_dir() {
  const char* e = std::getenv("PAC_SOURCE_DIR");
  return e && *e ? e : PAC_SOURCE_DIR;
}
static std::string bin_dir() {
  const char* e = std::getenv("PAC_BIN_DIR");
  return e && *e ? e : std::string(PAC_BINARY_DIR) + "/bin";
}
static bool updating() {
  const char* e = std::getenv("PAC_GOLDEN_UPDATE");
  return e && std::string(e) == "1";
}

// Runs pac-sim from the repository root; returns stdout (and stderr when asked).
static std::string run_sim(const std::string& args, bool with_stderr, int* rc) {
  std::string cmd = "cd '" + src_dir() + "' && '" + bin_dir() + "/pac-sim' " + args + " --quiet" +
                    (with_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = pclose(p);
  *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

static void golden_check(const std::string& name, const std::string& actual) {
  std::string path = path_join(src_dir(), "tests/golden/" + name);
  if (updating()) {
    file_write_atomic(path, actual);
    return;
  }
  ASSERT_TRUE(file_exists(path)) << path << " missing; run PAC_GOLDEN_UPDATE=1 " << bin_dir() << "/../tests/sim_golden_test";
  EXPECT_EQ(file_read(path), actual) << "pac-sim output differs from " << path
                                     << "; if the change is intended: PAC_GOLDEN_UPDATE=1 " << bin_dir()
                                     << "/../tests/sim_golden_test, then review git diff tests/golden";
}

// Runs one case: `name`.txt pins stdout (+stderr for bad input), `name`.report.json the
// report when `json` is set.
static void golden_case(const std::string& name, const std::string& args, int want_rc, bool json,
                        bool with_stderr = false) {
  std::string report = std::string(PAC_BINARY_DIR) + "/golden-" + name + ".report.json";
  std::remove(report.c_str());
  int rc = -1;
  std::string out = run_sim(args + (json ? " --json '" + report + "'" : ""), with_stderr, &rc);
  EXPECT_EQ(rc, want_rc) << out;
  golden_check(name + ".txt", out);
  if (json) {
    ASSERT_TRUE(file_exists(report)) << report;
    golden_check(name + ".report.json", file_read(report));
  }
}

// The hand-built plan replayed by the hand* cases: 4 boards, epoch 1 a [2-2] hybrid
// pipeline writing the cache, a switch (all-gather of the side network + cache
// redistribution), epochs 2-3 data parallel from the cache.
static Plan hand_plan_build(const Scenario& sc) {
  SimPlanBuilder pb(4);
  pb.plan.scenario = sc;
  pb.plan.strategy = "pac";
  pb.seg("pipeline", 1, 1, 5);
  pb.plan.segments.back().resident_bytes = {0.9e9, 0.9e9, 0.7e9, 0.7e9};
  hybrid_build(pb, 2, 2, 2, 0.2, 0.05, 1.5e6, 3e6, 2e6, 0.2e9);
  pb.seg("switch", 1, 1, 1);
  pb.plan.segments.back().resident_bytes = {0.3e9, 0.3e9, 0.3e9, 0.3e9};
  int ag = pb.collective(TaskKind::AllGather, {0, 1, 2, 3}, 8e6, {});
  pb.plan.segments.back().graph.tasks[ag].label = "AG side network";
  for (int d = 0; d < 4; d++) {
    int s = pb.send(d, (d + 2) % 4, 20e6, {}, "cache to b" + std::to_string((d + 2) % 4));
    int w = pb.compute(TaskKind::CacheWrite, (d + 2) % 4, 0, {s}, "W cache");
    pb.plan.segments.back().graph.tasks[w].bytes = 20e6;
  }
  pb.seg("data_parallel", 2, 3, 10);
  pb.plan.segments.back().resident_bytes = {0.3e9, 0.3e9, 0.3e9, 0.3e9};
  std::vector<int> bs;
  for (int d = 0; d < 4; d++) {
    int r = pb.compute(TaskKind::CacheRead, d, 0, {}, "R cache");
    pb.plan.segments.back().graph.tasks[r].bytes = 8e6;
    int f = pb.compute(TaskKind::Forward, d, 0.03, {r}, "F side");
    bs.push_back(pb.compute(TaskKind::Backward, d, 0.02, {f}, "B side"));
    pb.alloc(f, 0.1e9, bs.back());
  }
  int ar = pb.collective(TaskKind::AllReduce, {0, 1, 2, 3}, 8e6, bs);
  pb.plan.segments.back().graph.tasks[ar].label = "AR side network";
  for (int d = 0; d < 4; d++) pb.compute(TaskKind::Optimizer, d, 0.01, {ar}, "Opt");
  pb.plan.predicted.total_s = 10;  // a round number so the summary shows the comparison
  return pb.plan;
}

class SimGolden : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!updating()) return;
    Scenario sc = scenario_load(path_join(src_dir(), "tests/golden/hand.scenario.json"));
    plan_save(hand_plan_build(sc), path_join(src_dir(), "tests/golden/hand.plan.json"));
  }
};

TEST_F(SimGolden, HandPlanReplay) {
  golden_case("hand", "tests/golden/hand.scenario.json --plan tests/golden/hand.plan.json", 0, true);
}

TEST_F(SimGolden, HandPlanWithFaultsStopsAtTheFailure) {
  golden_case("hand-faults", "tests/golden/hand-faults.scenario.json --plan tests/golden/hand.plan.json", 1, true);
}

TEST_F(SimGolden, PlanForOtherDevicesIsRefusedWithTheDifference) {
  golden_case("other-devices", "tests/golden/other.scenario.json --plan tests/golden/hand.plan.json", 2, false, true);
}

TEST_F(SimGolden, UnknownSweepKeyIsBadInput) {
  golden_case("bad-sweep", "tests/golden/hand.scenario.json --sweep bandwith=1,2", 2, false, true);
}

// The paper's setting through the real planner: pins planner + simulator together, so a
// change of the cost model or of profiles/ shows up here (regenerate, review, commit).
TEST_F(SimGolden, PaperT5BaseMrpc) {
  golden_case("paper-t5-base-mrpc", "scenarios/paper-t5-base-mrpc.json", 0, true);
}

TEST_F(SimGolden, SameInputSameBytesIncludingTheTrace) {
  // Two runs of the same plan write identical reports and traces.
  std::string t1 = std::string(PAC_BINARY_DIR) + "/golden-det1.trace.json";
  std::string t2 = std::string(PAC_BINARY_DIR) + "/golden-det2.trace.json";
  int rc1 = -1, rc2 = -1;
  std::string a = run_sim("tests/golden/hand.scenario.json --plan tests/golden/hand.plan.json --trace '" + t1 + "'", false, &rc1);
  std::string b = run_sim("tests/golden/hand.scenario.json --plan tests/golden/hand.plan.json --trace '" + t2 + "'", false, &rc2);
  EXPECT_EQ(rc1, 0);
  EXPECT_EQ(a, b);
  EXPECT_EQ(file_read(t1), file_read(t2));
  // The trace names every device and the busiest links as tracks.
  std::string t = file_read(t1);
  EXPECT_NE(t.find("\"name\":\"b3\""), std::string::npos);
  EXPECT_NE(t.find("\"name\":\"b0 -> b2\""), std::string::npos);
  EXPECT_NE(t.find("\"name\":\"AR side network\""), std::string::npos);
}
