// pac-plan end to end: exit codes (0 / 2 bad input / 1 infeasible), the plan file, and
// the messages naming file, JSON path and the tightest device.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <sys/wait.h>

#include "src/common/fs.h"
#include "src/common/json_in.h"
#include "src/core/plan.h"

using namespace pac;

static const std::string kSrc = PAC_SOURCE_DIR;

struct RunResult {
  int rc = -1;
  std::string out;  // stdout and stderr together
};

static std::string tool() {
  const char* bin = std::getenv("PAC_BIN_DIR");
  return std::string(bin ? bin : PAC_BINARY_DIR "/bin") + "/pac-plan";
}

static RunResult run(const std::string& args) {
  RunResult r;
  std::string cmd = tool() + " " + args + " --profiles " + kSrc + "/profiles 2>&1";
  FILE* f = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) r.out.append(buf, n);
  int st = pclose(f);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

// Writes the paper's T5-Base scenario with one change applied.
static std::string scenario_variant(const std::string& name, const std::function<void(json&)>& change) {
  json doc = json::parse(file_read(kSrc + "/scenarios/paper-t5-base-mrpc.json"));
  change(doc);
  std::string path = ::testing::TempDir() + "/" + name + ".json";
  file_write_atomic(path, doc.dump(1));
  return path;
}

class PacPlanCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!file_exists(tool())) GTEST_SKIP() << "pac-plan not built at " << tool();
  }
};

TEST_F(PacPlanCli, WritesAValidPlanAndASummary) {
  std::string out = ::testing::TempDir() + "/t5.plan.json";
  std::remove(out.c_str());
  RunResult r = run(kSrc + "/scenarios/paper-t5-base-mrpc.json -o " + out);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("devices per stage [8]"), std::string::npos) << r.out;
  Plan p = plan_load(out);
  EXPECT_EQ(p.strategy, "pac");
  EXPECT_EQ(p.predicted.epoch_s.size(), 3u);
}

TEST_F(PacPlanCli, JsonSummaryParses) {
  RunResult r = run(kSrc + "/scenarios/paper-bart-large-mrpc.json --strategy pac-opt --json");
  ASSERT_EQ(r.rc, 0) << r.out;
  json j = json::parse(r.out);
  EXPECT_EQ(j["strategy"], "pac-opt");
  EXPECT_GT(j["predicted"]["total_s"].get<double>(), 0);
}

TEST_F(PacPlanCli, BadInputExitsTwoNamingFileAndPath) {
  std::string f = scenario_variant("bad-profile", [](json& d) { d["cluster"]["devices"][0]["profile"] = "jetson-tx9"; });
  RunResult r = run(f);
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.out.find(f + ": $.cluster.devices[0].profile: unknown device profile \"jetson-tx9\""), std::string::npos) << r.out;

  f = scenario_variant("bad-bw", [](json& d) { d["network"]["bandwidth_mbps"] = -100; });
  r = run(f);
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.out.find(f + ": $.network.bandwidth_mbps: expected a number > 0"), std::string::npos) << r.out;

  f = scenario_variant("bad-stages", [](json& d) { d["stages"] = 25; });
  r = run(f);
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.out.find(f + ": $.stages: expected at most the model's 24 layers, got 25"), std::string::npos) << r.out;

  f = scenario_variant("fits-nowhere", [](json& d) { d["cluster"]["devices"][0] = {{"profile", "jetson-nano-4gb"}, {"memory_bytes", 1e8}}; });
  r = run(f);
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.out.find(f + ": $.cluster.devices: the model t5-base needs"), std::string::npos) << r.out;

  r = run(kSrc + "/scenarios/paper-t5-base-mrpc.json --strategy magic");
  EXPECT_EQ(r.rc, 2);
}

TEST_F(PacPlanCli, InfeasibleExitsOneNamingTheTightestDevice) {
  std::string out = ::testing::TempDir() + "/none.plan.json";
  std::remove(out.c_str());
  RunResult r = run(kSrc + "/scenarios/paper-bart-large-mrpc.json --strategy standalone --method adapters -o " + out);
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("no feasible plan for strategy \"standalone\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("the tightest device is nano0 (jetson-nano-4gb)"), std::string::npos) << r.out;
  EXPECT_FALSE(file_exists(out));  // nothing half-written
}
