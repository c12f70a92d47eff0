// pac-sim --validate: a measured report against the simulation of its plan. The
// "measured" reports here are pac-sim's own report with known perturbations, so every
// expected error is a closed form. Error = (predicted - measured) / measured. At the end:
// bench/fidelity.py end to end and the committed testbed profiles.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sys/wait.h>
#include <thread>

#include "planner/planner.h"
#include "sim/engine.h"
#include "sim/report.h"
#include "sim/validate.h"
#include "src/common/fs.h"
#include "src/core/profile.h"
#include "tests/test_util.h"

using namespace pac;

static const std::string kSrc = PAC_SOURCE_DIR;

// Three 0.5-core testbed devices, llama-d512-l8, a shared 100 Mbit/s medium: a pipeline
// with links that carry data, 2 epochs (the second reads the activation cache).
static Scenario scenario_small() {
  json doc = {{"name", "validate-small"},
              {"model", "llama-d512-l8"},
              {"method", {{"kind", "parallel_adapters"}, {"reduction_k", 8}, {"cache", true}}},
              {"data", {{"task", "tinystories"}, {"samples", 64}, {"seq_len", 128}, {"mini_batch", 8},
                        {"micro_batches", 4}}},
              {"epochs", 2},
              {"cluster", {{"devices", {{{"id", "w"}, {"profile", "testbed-q050-d512"}, {"count", 3}}}}}},
              {"network", {{"kind", "shared"}, {"bandwidth_mbps", 100}, {"latency_ms", 1}}},
              {"strategy", "pac"},
              {"stages", 3}};
  return scenario_from_json(JsonIn::from(doc, "validate-small.json"), kSrc + "/profiles");
}

struct Fixture {
  Plan plan;
  json report;  // pac-sim's report of the plan
};

static const Fixture& fixture() {
  static Fixture f = [] {
    Fixture x;
    x.plan = plan_make(scenario_small(), "pac");
    SimResult r = sim_run(x.plan);
    EXPECT_TRUE(r.ok) << r.failure.message;
    x.report = report_to_json(x.plan, r);
    return x;
  }();
  return f;
}

static Validation validate(const json& measured) {
  const Fixture& f = fixture();
  return validate_reports(JsonIn::from(measured, "measured.json"), JsonIn::from(f.report, "<sim>"), f.plan,
                          "plan.json");
}

TEST(SimValidate, FixtureIsAPipelineWithTraffic) {
  const Fixture& f = fixture();
  ASSERT_EQ(f.report["epochs"].size(), 2u);
  ASSERT_GE(f.report["links"].size(), 2u);  // stages talk to each other
  EXPECT_EQ(plan_groups_text(f.plan), "[1-1-1]");
}

TEST(SimValidate, OwnReportHasZeroError) {
  // A second, independent simulation of the same plan is the "measurement": the
  // engine is deterministic, so every error is 0 (up to the report's 9-digit rounding).
  const Fixture& f = fixture();
  json again = report_to_json(f.plan, sim_run(f.plan));
  Validation v = validate(again);
  EXPECT_NEAR(v.epoch_mape_pct, 0.0, 1e-6);
  EXPECT_NEAR(v.epoch_max_error_pct, 0.0, 1e-6);
  ASSERT_EQ(v.busy.size(), 3u);
  for (const ValidateItem& d : v.busy) EXPECT_NEAR(d.error_pct(), 0.0, 1e-6) << d.name;
  for (const ValidateItem& d : v.peak_memory) EXPECT_NEAR(d.error_pct(), 0.0, 1e-6) << d.name;
  ASSERT_FALSE(v.links.empty());
  for (const ValidateItem& l : v.links) EXPECT_NEAR(l.error_pct(), 0.0, 1e-6) << l.name;
}

TEST(SimValidate, EpochTimesScaledGiveClosedFormErrors) {
  const Fixture& f = fixture();
  json m = f.report;
  for (json& e : m["epochs"]) e["time_s"] = e["time_s"].get<double>() * 1.1;
  Validation v = validate(m);
  // measured = 1.1 x predicted: error = (1/1.1 - 1) x 100 = -9.0909...% every epoch.
  ASSERT_EQ(v.epochs.size(), 2u);
  for (const ValidateItem& e : v.epochs) EXPECT_NEAR(e.error_pct(), (1 / 1.1 - 1) * 100, 1e-6);
  EXPECT_NEAR(v.epoch_mape_pct, (1 - 1 / 1.1) * 100, 1e-6);

  // measured = predicted / 0.9: error = (0.9 - 1) x 100 = -10% exactly.
  m = f.report;
  for (json& e : m["epochs"]) e["time_s"] = e["time_s"].get<double>() / 0.9;
  EXPECT_NEAR(validate(m).epoch_mape_pct, 10.0, 1e-6);

  // One epoch 20% slower, the other exact: errors -16.67% and 0, MAPE 8.33%.
  m = f.report;
  m["epochs"][1]["time_s"] = m["epochs"][1]["time_s"].get<double>() * 1.2;
  v = validate(m);
  EXPECT_NEAR(v.epochs[0].error_pct(), 0.0, 1e-6);
  EXPECT_NEAR(v.epochs[1].error_pct(), (1 / 1.2 - 1) * 100, 1e-6);
  EXPECT_NEAR(v.epoch_mape_pct, (1 - 1 / 1.2) * 100 / 2, 1e-6);
  EXPECT_NEAR(v.epoch_max_error_pct, (1 - 1 / 1.2) * 100, 1e-6);
}

TEST(SimValidate, BusyMemoryAndLinkErrors) {
  const Fixture& f = fixture();
  json m = f.report;
  for (json& d : m["devices"]) {
    d["busy_s"] = d["busy_s"].get<double>() * 2;                        // predicted = measured / 2: -50%
    d["peak_memory_bytes"] = d["peak_memory_bytes"].get<double>() * 4;  // -75%
  }
  for (json& l : m["links"]) l["bytes"] = l["bytes"].get<double>() * 0.8;  // predicted = measured / 0.8: +25%
  Validation v = validate(m);
  for (const ValidateItem& d : v.busy) EXPECT_NEAR(d.error_pct(), -50.0, 1e-6) << d.name;
  for (const ValidateItem& d : v.peak_memory) EXPECT_NEAR(d.error_pct(), -75.0, 1e-6) << d.name;
  for (const ValidateItem& l : v.links) EXPECT_NEAR(l.error_pct(), 25.0, 1e-6) << l.name;
  EXPECT_NEAR(v.epoch_mape_pct, 0.0, 1e-6);
  EXPECT_EQ(v.peak_memory_basis, "tensors");  // the fixture is a simulated report

  // A run that counted its tensors is compared on them, not on its RSS: RSS x4 as
  // above, tensors x2 -> predicted = measured / 2: -50%.
  m = f.report;
  m["source"] = "run";
  for (json& d : m["devices"]) {
    d["peak_tensor_bytes"] = d["peak_memory_bytes"].get<double>() * 2;
    d["peak_memory_bytes"] = d["peak_memory_bytes"].get<double>() * 4;
  }
  v = validate(m);
  EXPECT_EQ(v.peak_memory_basis, "tensors");
  for (const ValidateItem& d : v.peak_memory) EXPECT_NEAR(d.error_pct(), -50.0, 1e-6) << d.name;
  // Without peak_tensor_bytes on every device: RSS (-75%).
  m["devices"][0].erase("peak_tensor_bytes");
  v = validate(m);
  EXPECT_EQ(v.peak_memory_basis, "resident");
  for (const ValidateItem& d : v.peak_memory) EXPECT_NEAR(d.error_pct(), -75.0, 1e-6) << d.name;

  // A link the measurement left out (reports omit 0-byte pairs) is compared as 0
  // measured bytes: the predicted bytes stay, the relative error is undefined.
  m = f.report;
  std::string name = m["links"][0]["src"].get<std::string>() + "->" + m["links"][0]["dst"].get<std::string>();
  double bytes = m["links"][0]["bytes"];
  m["links"].erase(0);
  v = validate(m);
  bool found = false;
  for (const ValidateItem& l : v.links)
    if (l.name == name) {
      found = true;
      EXPECT_EQ(l.measured, 0.0);
      EXPECT_EQ(l.predicted, bytes);
      EXPECT_FALSE(l.has_error());
    }
  EXPECT_TRUE(found) << name;
}

TEST(SimValidate, BadMeasuredReportsNameTheField) {
  const Fixture& f = fixture();
  auto msg = [&](const std::function<void(json&)>& change) {
    json m = f.report;
    change(m);
    return input_error([&] { validate(m); });
  };
  std::string e = msg([](json& m) { m["devices"][0].erase("busy_s"); });
  EXPECT_NE(e.find("measured.json"), std::string::npos) << e;
  EXPECT_NE(e.find("$.devices[0].busy_s"), std::string::npos) << e;
  e = msg([](json& m) { m.erase("epochs"); });
  EXPECT_NE(e.find("$.epochs"), std::string::npos) << e;
  e = msg([](json& m) { m["epochs"][0]["time_s"] = 0; });
  EXPECT_NE(e.find("$.epochs[0].time_s"), std::string::npos) << e;
  e = msg([](json& m) { m["epochs"].erase(1); });
  EXPECT_NE(e.find("the run has 1 epoch(s)"), std::string::npos) << e;
  e = msg([](json& m) { m["status"] = "oom"; });
  EXPECT_NE(e.find("$.status"), std::string::npos) << e;
  e = msg([](json& m) { m["scenario"] = "other"; });
  EXPECT_NE(e.find("$.scenario"), std::string::npos) << e;
  e = msg([](json& m) { m["strategy"] = "eddl"; });
  EXPECT_NE(e.find("$.strategy"), std::string::npos) << e;
  e = msg([](json& m) { m["devices"][1]["id"] = "nano9"; });
  EXPECT_NE(e.find("$.devices[1].id"), std::string::npos) << e;
  e = msg([](json& m) { m["devices"].erase(2); });
  EXPECT_NE(e.find("\"w2\""), std::string::npos) << e;
  e = msg([](json& m) { m["run"] = {{"epochs", 1}}; });
  EXPECT_NE(e.find("$.run.epochs"), std::string::npos) << e;
  e = msg([](json& m) { m["run"] = {{"epochs", 2}, {"max_steps", 3}}; });
  EXPECT_NE(e.find("$.run.max_steps"), std::string::npos) << e;
  // 128 examples per epoch (long paragraphs cut in two) against the plan's 64 samples.
  e = msg([](json& m) { m["run"] = {{"epochs", 2}, {"samples", 128}}; });
  EXPECT_NE(e.find("$.run.samples"), std::string::npos) << e;
  EXPECT_NE(e.find("the run used 128"), std::string::npos) << e;
  // Settings that match the plan are accepted.
  EXPECT_EQ(msg([](json& m) {
              m["run"] = {{"epochs", 2}, {"samples", 64}, {"mini_batch", 8}, {"seq_len", 128}, {"max_steps", 0}};
            }),
            "");
}

TEST(SimValidate, PlanFileFromTheReport) {
  json m = {{"format", "pac-report"}, {"plan_file", "plan.json"}};
  EXPECT_EQ(validate_plan_file(JsonIn::from(m, "/runs/a/report.json"), ""), "/runs/a/plan.json");
  EXPECT_EQ(validate_plan_file(JsonIn::from(m, "/runs/a/report.json"), "x/p.json"), "x/p.json");
  m["plan_file"] = "/abs/plan.json";
  EXPECT_EQ(validate_plan_file(JsonIn::from(m, "/runs/a/report.json"), ""), "/abs/plan.json");
  m.erase("plan_file");
  std::string e = input_error([&] { validate_plan_file(JsonIn::from(m, "r.json"), ""); });
  EXPECT_NE(e.find("r.json: $.plan_file"), std::string::npos) << e;
}

// --- the CLI: exit codes 0 / 3 / 2 and the --json file ---

static std::string bin_dir() {
  const char* bin = std::getenv("PAC_BIN_DIR");
  return bin ? bin : PAC_BINARY_DIR "/bin";
}

static std::string sim_exe() { return bin_dir() + "/pac-sim"; }

// Runs a shell command; its exit code, stdout and stderr together in `out`.
static int sh(const std::string& cmd, std::string* out) {
  FILE* f = popen((cmd + " 2>&1").c_str(), "r");
  char buf[4096];
  size_t n;
  out->clear();
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) out->append(buf, n);
  int st = pclose(f);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int run(const std::string& args, std::string* out) { return sh(sim_exe() + " " + args + " --quiet", out); }

TEST(SimValidateCli, ExitCodesAndJson) {
  if (!file_exists(sim_exe())) GTEST_SKIP() << "pac-sim not built at " << sim_exe();
  const Fixture& f = fixture();
  std::string dir = ::testing::TempDir() + "/sim_validate_cli";
  dir_create(dir);
  plan_save(f.plan, dir + "/plan.json");
  json m = f.report;
  m["source"] = "run";
  m["plan_file"] = "plan.json";  // relative to the report's folder
  file_write_atomic(dir + "/same.json", m.dump());
  for (json& e : m["epochs"]) e["time_s"] = e["time_s"].get<double>() * 1.1;
  file_write_atomic(dir + "/slow.json", m.dump());
  m["devices"][0].erase("peak_memory_bytes");
  file_write_atomic(dir + "/broken.json", m.dump());

  std::string out;
  EXPECT_EQ(run("--validate " + dir + "/same.json", &out), 0) << out;
  EXPECT_NE(out.find("epoch time MAPE 0.00%"), std::string::npos) << out;
  // MAPE 9.09% (closed form above): over a 5% limit -> 3, under a 10% limit -> 0.
  std::remove((dir + "/v.json").c_str());
  EXPECT_EQ(run("--validate " + dir + "/slow.json --max-error 5 --json " + dir + "/v.json", &out), 3) << out;
  EXPECT_NE(out.find("exceeds --max-error"), std::string::npos) << out;
  json v = json::parse(file_read(dir + "/v.json"));
  EXPECT_EQ(v["format"], "pac-validation");
  EXPECT_NEAR(v["epoch_mape_pct"].get<double>(), (1 - 1 / 1.1) * 100, 1e-6);
  EXPECT_EQ(v["pass"], false);
  EXPECT_EQ(run("--validate " + dir + "/slow.json --plan " + dir + "/plan.json --max-error 10", &out), 0) << out;
  // Bad input: exit 2 naming file and field.
  EXPECT_EQ(run("--validate " + dir + "/broken.json", &out), 2) << out;
  EXPECT_NE(out.find("broken.json: $.devices[0].peak_memory_bytes"), std::string::npos) << out;
  EXPECT_EQ(run("--validate " + dir + "/missing.json", &out), 2) << out;
  EXPECT_NE(out.find("missing.json"), std::string::npos) << out;
  EXPECT_EQ(run("--max-error 5 " + kSrc + "/scenarios/local-stories260k.json", &out), 2) << out;
}

// pac-run runs Eco-FL's asynchronous pipeline with a flush per mini-batch (run.
// pipeline_flush), so --validate simulates that schedule: the flushed plan's own
// simulation, which is slower than the planned overlap; a report that says it overlapped
// (pipeline_flush false) is compared with the plan as it stands. plan_flush_pipelines
// leaves the cached epochs' overlapped data-parallel segments alone.
TEST(SimValidateCli, OverlappedPipelineIsSimulatedAsRun) {
  if (!file_exists(sim_exe())) GTEST_SKIP() << "pac-sim not built at " << sim_exe();
  Plan pac = fixture().plan;
  int overlapped_dp = 0;
  for (const Segment& seg : pac.segments) overlapped_dp += seg.overlap && seg.name == "data_parallel";
  ASSERT_GT(overlapped_dp, 0);
  EXPECT_EQ(plan_flush_pipelines(pac), 0);
  for (const Segment& seg : pac.segments) overlapped_dp -= seg.overlap && seg.name == "data_parallel";
  EXPECT_EQ(overlapped_dp, 0);

  Plan eco = plan_make(scenario_small(), "ecofl");
  Plan flushed = eco;
  ASSERT_EQ(plan_flush_pipelines(flushed), 1);
  for (const Segment& seg : flushed.segments) {
    EXPECT_FALSE(seg.overlap);
    for (const Task& t : seg.graph.tasks) EXPECT_TRUE(t.prev_deps.empty());
  }
  SimResult as_planned = sim_run(eco), as_run = sim_run(flushed);
  ASSERT_TRUE(as_planned.ok && as_run.ok);
  EXPECT_GT(as_run.makespan_s, as_planned.makespan_s * 1.01);  // the flush's fill and drain cost time

  std::string dir = ::testing::TempDir() + "/sim_validate_flush";
  dir_create(dir);
  plan_save(eco, dir + "/plan.json");
  json m = report_to_json(eco, as_planned);  // "measured" = the asynchronous schedule's times
  m["source"] = "run";
  m["plan_file"] = "plan.json";
  file_write_atomic(dir + "/default.json", m.dump());
  m["run"] = {{"pipeline_flush", false}};
  file_write_atomic(dir + "/overlapped.json", m.dump());
  std::string out;
  ASSERT_EQ(run("--validate " + dir + "/default.json --json " + dir + "/v1.json", &out), 0) << out;
  EXPECT_NE(out.find("simulated as run: 1 overlapped pipeline segment(s)"), std::string::npos) << out;
  json v1 = json::parse(file_read(dir + "/v1.json"));
  EXPECT_EQ(v1["flushed_segments"], 1);
  EXPECT_NEAR(v1["total"]["predicted_s"].get<double>(), report_to_json(flushed, as_run)["total_s"].get<double>(), 1e-6);
  ASSERT_EQ(run("--validate " + dir + "/overlapped.json --json " + dir + "/v2.json", &out), 0) << out;
  json v2 = json::parse(file_read(dir + "/v2.json"));
  EXPECT_EQ(v2["flushed_segments"], 0);
  EXPECT_NEAR(v2["epoch_mape_pct"].get<double>(), 0, 1e-9);
}

// --- bench/fidelity.py end to end with pac-sim alone: its simulated epoch times equal an
// independent in-process plan + simulation of the same scenario, the measured side says
// why it was skipped (never a crash), and the PNG is a well-formed image.

TEST(SimFidelityHarness, SimulatesEveryStrategyAndSaysWhyNothingWasMeasured) {
  if (!file_exists(bin_dir() + "/pac-plan") || !file_exists(bin_dir() + "/pac-sim"))
    GTEST_SKIP() << "pac-plan / pac-sim not built in " << bin_dir();
  std::string out;
  if (sh("python3 --version", &out) != 0) GTEST_SKIP() << "no python3";
  std::string dir = ::testing::TempDir() + "/sim_fidelity";
  dir_create(dir);
  std::string scen = kSrc + "/bench/fidelity/fid-s260k-4x050-switched200-cache.json";
  std::string build = bin_dir() + "/..";
  int rc = sh("python3 " + kSrc + "/bench/fidelity.py --build-dir " + build + " --scenarios " + scen +
                  " --strategies pac,eddl --work " + dir + "/work --out " + dir + "/f.json --table " + dir +
                  "/f.md --plot " + dir + "/f.png --trace-dir " + dir + " --no-run",
              &out);
  ASSERT_EQ(rc, 0) << out;
  json doc = json::parse(file_read(dir + "/f.json"));
  ASSERT_EQ(doc["rows"].size(), 2u);
  // By default the devices share this machine's cores, as the testbed's processes do.
  const double cores = static_cast<double>(std::thread::hardware_concurrency());
  EXPECT_EQ(doc["host_cores"].get<double>(), cores);

  // An independent computation: plan + simulate the same scenario in-process, its four
  // devices on one host of this machine's cores (the harness's default --host-cores).
  Scenario sc = scenario_load(scen, kSrc + "/profiles");
  sc.host_cores = cores;
  for (const json& row : doc["rows"]) {
    std::string strategy = row["strategy"];
    SimResult r = sim_run(plan_make(sc, strategy));
    ASSERT_TRUE(r.ok);
    ASSERT_EQ(row["sim_epoch_s"].size(), r.epoch_s.size()) << strategy;
    for (size_t e = 0; e < r.epoch_s.size(); e++)
      EXPECT_NEAR(row["sim_epoch_s"][e].get<double>(), r.epoch_s[e], 1e-6 * r.epoch_s[e]) << strategy;
    // Measured: skipped, saying why (--no-run here: this test checks the simulated side
    // and the outputs; measured runs are the fidelity benchmark's, docs/fidelity.md).
    std::string m = row["measured"];
    EXPECT_EQ(m.rfind("skipped: ", 0), 0u) << m;
    EXPECT_NE(m.find("--no-run"), std::string::npos) << m;
    EXPECT_TRUE(row["measured_epoch_s"].is_null());
  }
  // Ranking: the faster simulated total first.
  const json& s0 = doc["summary"]["scenarios"][0];
  double pac_total = doc["rows"][0]["sim_total_s"], eddl_total = doc["rows"][1]["sim_total_s"];
  EXPECT_EQ(s0["sim_order"][0], pac_total <= eddl_total ? "pac" : "eddl");
  EXPECT_TRUE(doc["summary"]["epoch_mape_mean_pct"].is_null());

  // PNG: signature, then IHDR of 640 x 480, 8-bit RGB.
  std::string png = file_read(dir + "/f.png");
  ASSERT_GT(png.size(), 33u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(png.substr(12, 4), "IHDR");
  auto be32 = [&](size_t i) {
    return (static_cast<uint32_t>(static_cast<unsigned char>(png[i])) << 24) |
           (static_cast<uint32_t>(static_cast<unsigned char>(png[i + 1])) << 16) |
           (static_cast<uint32_t>(static_cast<unsigned char>(png[i + 2])) << 8) |
           static_cast<uint32_t>(static_cast<unsigned char>(png[i + 3]));
  };
  EXPECT_EQ(be32(16), 640u);
  EXPECT_EQ(be32(20), 480u);
  EXPECT_EQ(png[24], 8);  // bit depth
  EXPECT_EQ(png[25], 2);  // RGB
  EXPECT_NE(file_read(dir + "/f.md").find("| fid-s260k-4x050-switched200-cache | pac |"), std::string::npos);

  // A device whose quota is not the one its profile was calibrated under: exit 2 naming it.
  json bad = json::parse(file_read(scen));
  bad["cluster"]["devices"][2]["cpu_quota"] = 1.0;
  file_write_atomic(dir + "/bad.json", bad.dump());
  rc = sh("python3 " + kSrc + "/bench/fidelity.py --build-dir " + build + " --no-run --scenarios " + dir +
              "/bad.json --out " + dir + "/g.json --table '' --plot ''",
          &out);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_NE(out.find("bad.json: $.cluster.devices[2].cpu_quota: expected 0.5"), std::string::npos) << out;
}

// The committed testbed profiles (bench/calibrate_testbed.sh): each loads as a device
// profile, and each calibrated rate is the no-quota 1-thread rate of its kind and
// micro-batch (recomputed here from the reference timing table) x min(1, quota).
// Every fidelity scenario's plan of every strategy simulates to times a report can carry:
// busy + bubble + idle = makespan on every used device, none below zero (a device whose cache I/O queues on
// its one core once ended a segment with bubble -2e-16 s, and --validate refused the
// simulation's own report).
TEST(SimFidelityHarness, EveryScenarioSimulatesToNonNegativeTimes) {
  int checked = 0;
  for (const auto& entry : std::filesystem::directory_iterator(kSrc + "/bench/fidelity")) {
    if (entry.path().extension() != ".json") continue;
    Scenario sc = scenario_load(entry.path().string(), kSrc + "/profiles");
    for (const char* strategy : {"pac", "pac-opt", "standalone", "eddl", "ecofl", "asteroid"}) {
      SimResult r = sim_run(plan_make(sc, strategy));
      ASSERT_TRUE(r.ok) << entry.path() << " " << strategy;
      for (size_t d = 0; d < r.devices.size(); d++) {
        const SimDeviceStats& st = r.devices[d];
        EXPECT_GE(st.bubble_s, 0.0) << entry.path() << " " << strategy << " device " << d;
        EXPECT_GE(st.idle_s, 0.0) << entry.path() << " " << strategy << " device " << d;
        if (st.used) {
          EXPECT_NEAR(st.busy_s + st.bubble_s + st.idle_s, r.makespan_s, 1e-9 * r.makespan_s);
        }
      }
      checked++;
    }
  }
  EXPECT_GE(checked, 8 * 6);
}

// Runs `body` as a Python script with bench/fidelity.py imported as `f` (the harness's
// pure functions, tested without running anything); returns its exit code.
static int fidelity_py(const std::string& name, const std::string& body, std::string* out) {
  std::string file = ::testing::TempDir() + "/" + name + ".py";
  {
    std::ofstream o(file);
    o << "import sys; sys.path.insert(0, '" + kSrc + "/bench'); import fidelity as f\n" << body;
  }
  return sh("python3 " + file, out);
}

// Runs a fidelity_py script that prints "ok" when its assertions hold.
static void fidelity_py_ok(const std::string& name, const std::string& body) {
  std::string out;
  ASSERT_EQ(fidelity_py(name, body, &out), 0) << out;
  EXPECT_NE(out.find("ok"), std::string::npos) << out;
}

// The harness's ranking rule: strategies the simulation ties (the same plan, e.g. pac and
// pac-opt both [2]) may be measured in either order; every other pair must be measured in
// the simulated order.
TEST(SimFidelityHarness, RankingIgnoresOnlySimulatedTies) {
  std::string out;
  if (sh("python3 --version", &out) != 0) GTEST_SKIP() << "no python3";
  std::string py =
      "r = lambda s, sim, m: {'strategy': s, 'sim_total_s': sim, 'measured_total_s': m}\n"
      "tie = [r('pac', 2.0, 2.2), r('pac-opt', 2.0, 2.1), r('eddl', 3.0, 3.5)]\n"
      "assert f.ranking_agrees(tie)\n"
      "assert f.order_text(tie, 'sim_total_s', f.sim_tied) == 'pac = pac-opt < eddl'\n"
      "assert not f.ranking_agrees([r('pac', 2.0, 2.2), r('pac-opt', 2.1, 2.1)])\n"
      "assert not f.ranking_agrees(tie + [r('ecofl', 1.0, 2.15)])\n"
      "assert f.ranking_agrees(tie + [r('ecofl', 1.0, 2.05), r('standalone', 9.0, None)])\n"
      "print('ok')\n";
  fidelity_py_ok("ranking_check", py);
}

// --repeats: a row is compared on its median run by total time; failed runs are not
// candidates; with an even count the lower middle run (2 of [1.0, 1.2, 1.4, 9.0] -> 1.2).
// The suite's speed per model is the median of all its runs' probes.
TEST(SimFidelityHarness, RowUsesTheMedianRun) {
  std::string out;
  if (sh("python3 --version", &out) != 0) GTEST_SKIP() << "no python3";
  std::string py =
      "r = lambda k, t, m='ok': {'run': k, 'measured': m, 'total_s': t}\n"
      "assert f.median_run([r(1, 3.1), r(2, 2.5), r(3, 4.0)])['run'] == 1\n"
      "assert f.median_run([r(1, 1.4), r(2, 9.0), r(3, 1.0), r(4, 1.2)])['run'] == 4\n"
      "assert f.median_run([r(1, 2.0), r(2, None, 'failed (exit 1)'), r(3, 5.0)])['run'] == 1\n"
      "assert f.median_run([r(1, None, 'skipped: no root')]) is None\n"
      // suite_speeds: per model key, the median of every probe of every run (4 -> mean of 2 middle).
      "rows = [{'speed_key': 'm1', 'runs': [{'machine_speed': [0.8, 1.0]}, {'machine_speed': None}]},\n"
      "        {'speed_key': 'm1', 'runs': [{'machine_speed': [1.2, 0.9]}]},\n"
      "        {'speed_key': 'm2', 'runs': [{'machine_speed': [1.5, 1.1]}, {'machine_speed': [1.3, 0.7]}]},\n"
      "        {'speed_key': 'm3'}]\n"
      "s = f.suite_speeds(rows)\n"
      "assert sorted(s) == ['m1', 'm2'] and abs(s['m1'] - 0.95) < 1e-12 and abs(s['m2'] - 1.2) < 1e-12, s\n"
      "print('ok')\n";
  fidelity_py_ok("median_run_check", py);
}

// The --max-error gate judges a row on the better of its plain MAPE and its MAPE at the
// probed machine speed (the plain one where the probes failed): 28.6% probed with 7.7%
// plain -> 7.7; 30.2% plain with 5.7% probed -> 5.7; 25 and 22 -> 22 (over a 20% limit).
TEST(SimFidelityHarness, GateJudgesTheBetterOfTheTwoSpeeds) {
  std::string out;
  if (sh("python3 --version", &out) != 0) GTEST_SKIP() << "no python3";
  std::string py =
      "r = lambda p, a: {'epoch_mape_pct': p, 'adj_epoch_mape_pct': a}\n"
      "assert f.gate_mape(r(7.7, 28.6)) == 7.7\n"
      "assert f.gate_mape(r(30.2, 5.7)) == 5.7\n"
      "assert f.gate_mape(r(25.0, 22.0)) == 22.0\n"
      "assert f.gate_mape(r(25.0, None)) == 25.0\n"
      "assert f.gate_mape(r(None, None)) is None\n"
      "print('ok')\n";
  fidelity_py_ok("gate_check", py);
}

// bench/calibrate_overhead.py: the fit inverts pac-plan + pac-sim. A bisection finds the
// root of a piecewise-linear increasing function (2 + 40 max(0, x - 0.2 ms) + 10x =
// 2.05 at x = 1.16 ms), clamps at 0 when the kernels alone are already slower than the
// measurement and at the cap when nothing reaches it. The CPU factor and the 2-stage
// check's CPU beyond the work per message end (recorded, not applied) in closed form.
// Then, on the real tools: the calibration plans' times simulated with known values (a
// 0.5-core profile: 2.1 ms per task, 0.4 ms per message end) are fitted back to those
// values, and the plans are the ones the tool assumes: one device, or a 2-stage
// pipeline, one epoch of 4 micro-batches per step.
TEST(SimFidelityHarness, OverheadFitInvertsTheSimulation) {
  std::string out;
  if (sh("python3 --version", &out) != 0) GTEST_SKIP() << "no python3";
  std::string dir = ::testing::TempDir() + "/overhead_fit";
  std::string py =
      "import json, os, shutil, types\n"
      "import calibrate_overhead as c\n"
      "measure_real = c.measure\n"
      "g = lambda x: 2.0 + 40 * max(0.0, x - 0.0002) + 10 * x\n"
      "x, g0 = c.fit_increasing(g, 2.05)\n"
      "assert abs(x - 0.00116) < 1e-6 and g0 == 2.0, x\n"
      "assert c.fit_increasing(g, 1.9) == (0.0, 2.0)\n"
      "assert c.fit_increasing(lambda x: 1.0, 2.0) == (1.0, 1.0)\n"
      "dir = '" + dir + "'\n"
      "shutil.rmtree(dir, ignore_errors=True)\n"
      "a = types.SimpleNamespace(bin_dir='" + bin_dir() + "', timeout=120, models_dir='" + kSrc + "/profiles/models')\n"
      "name = 'testbed-q050-s260k'\n"
      "prof = json.load(open('" + kSrc + "/profiles/devices/' + name + '.json'))\n"
      // The fits run with the measured cost per step in the profile; the inversion is
      // checked without it (4 ms per step would hide a 0.4 ms message in CFS waits).
      "prof.pop('step_overhead_s', None)\n"
      // pac-run's step gap per step: the epochs' step_gap_s over the steps run.
      "rep = os.path.join(dir, 'report.json'); os.makedirs(dir)\n"
      "json.dump({'tasks': 8, 'epochs': [{'step_gap_s': 0.01}, {'step_gap_s': 0.006}]}, open(rep, 'w'))\n"
      "assert abs(c.step_gap_s({'report': rep}) - 0.002) < 1e-15\n"
      "json.dump({'tasks': 8, 'epochs': [{'time_s': 1.0}]}, open(rep, 'w'))\n"
      "assert c.step_gap_s({'report': rep}) is None\n"
      // The first use of a phase: its first step's compute less the median of the others
      // (0.66 - median(0.16, 0.18, 0.15) = 0.5); none with one step; never below 0.
      "assert abs(c.first_step_excess_s([0.66, 0.16, 0.18, 0.15]) - 0.5) < 1e-12\n"
      "assert c.first_step_excess_s([0.66]) is None and c.first_step_excess_s([0.1, 0.2, 0.3]) == 0.0\n"
      // first_use_measure over three cached-plan runs (pac-run's reports, the runs stubbed):
      // first step median(0.3, 0.2, 0.25) = 0.25 s, cached median(0.5, 0.4, 0.45) = 0.45 s,
      // switch_local_s median(0.08, 0.1, 0.09) = 0.09; over the plan's first forwards'
      // bytes (5e7 in the first segment, 1.35e8 in the cached one, device 0):
      // 5e7 / 0.25 = 2e8 B/s and 1.35e8 / 0.45 = 3e8 B/s.
      "reps = []\n"
      "for k, (e1, e2, sw) in enumerate([(1.7, 0.66, 0.08), (1.6, 0.56, 0.1), (1.65, 0.61, 0.09)]):\n"
      "    f = os.path.join(dir, 'cached-%d.json' % k)\n"
      "    json.dump({'switch_s': sw, 'epochs': [{'step_compute_s': [e1, 1.4, 1.5, 1.3]}, "
      "{'step_compute_s': [e2, 0.16, 0.15, 0.17]}]}, open(f, 'w'))\n"
      "    reps.append({'report': f, 'total_s': 9.0})\n"
      "json.dump({'segments': [{'tasks': [{'kind': 'forward', 'device': 1, 'mem_alloc_bytes': 1}, "
      "{'kind': 'forward', 'device': 0, 'mem_alloc_bytes': 5e7}]}, {'tasks': []}, {'tasks': [{'kind': 'cache_read', "
      "'device': 0}, {'kind': 'forward', 'device': 0, 'mem_alloc_bytes': 1.35e8}]}]}, "
      "open(os.path.join(dir, 'plan.json'), 'w'))\n"
      "c.measure = lambda a, kind, name, profile, known: (None, None, reps)\n"
      "v, r = c.first_use_measure(a, 'x', {'first_step_bytes_per_s': 9})\n"
      "assert abs(v['first_step_bytes_per_s'] / 2e8 - 1) < 1e-12, v\n"
      "assert abs(v['cached_first_step_bytes_per_s'] / 3e8 - 1) < 1e-12, v\n"
      "assert abs(v['switch_local_s'] - 0.09) < 1e-12 and r['median_cached_first_step_s'] == 0.45, (v, r)\n"
      "q = {'first_step_bytes_per_s': 1, 'switch_local_s': 2}\n"
      "c.first_use_set(q, {'first_step_bytes_per_s': 2e8, 'cached_first_step_bytes_per_s': 0.0, 'switch_local_s': 0.09})\n"
      "assert q == {'first_step_bytes_per_s': 2e8, 'switch_local_s': 0.09}, q\n"
      "c.measure = measure_real\n"
      // cpu_work_factor: the worker's CPU x the probed speed over the plan's CPU work at
      // the rates. A 0.5-core plan of 4 iterations of a 0.1 s forward, a 0.2 s backward and
      // a 0.05 s optimizer of which 0.01 s is the step's cost: 4 x 0.34 x 0.5 = 0.68 s of
      // CPU; 0.85 s measured at speed 1 -> 1.25; at speed 0.8 -> 1.0; 0.5 s -> 0.74,
      // stored as 1 (faster than the rates is the host, not the runtime).
      "p = {'sustained_quota': 0.5, 'step_overhead_s': 0.01}\n"
      "tp = os.path.join(dir, 'trial-plan.json')\n"
      "json.dump({'segments': [{'repeat': 4, 'tasks': [{'kind': 'forward', 'seconds': 0.1}, {'kind': 'backward', "
      "'seconds': 0.2}, {'kind': 'optimizer', 'seconds': 0.05}, {'kind': 'send', 'seconds': 9}]}]}, open(tp, 'w'))\n"
      "assert abs(c.plan_cpu_work_s(tp, p) - 0.68) < 1e-12\n"
      "f, r = c.cpu_factor(tp, [{'cpu_s': [0.85], 'machine_speed': [1.0, 1.0]}], p)\n"
      "assert abs(f - 1.25) < 1e-12 and abs(r['measured'] - 1.25) < 1e-4, (f, r)\n"
      "assert abs(c.cpu_factor(tp, [{'cpu_s': [0.85], 'machine_speed': [0.7, 0.9]}], p)[0] - 1.0) < 1e-12\n"
      "f, r = c.cpu_factor(tp, [{'cpu_s': [0.5], 'machine_speed': None}], p)\n"
      "assert f == 1.0 and abs(r['measured'] - 0.5 / 0.68) < 1e-4, r\n"
      "assert c.cpu_factor(tp, [{'cpu_s': None}], p) == (1.0, None)\n"
      // The steady steps: pac-run's per-step CPU without the first (its first use is priced
      // apart). Steps [0.4, 0.2, 0.25, 0.15]: mean of the last three 0.2 x 4 = 0.8 s where
      // the run's CPU is 1.0 s; 0.8 x speed 1 / 0.68 -> 1.1765. Under 3 steps: the run's CPU.
      "st = {'cpu_s': [1.0], 'step_cpu_s': [0.4, 0.2, 0.25, 0.15], 'machine_speed': [1, 1]}\n"
      "assert abs(c.steady_cpu_s(st) - 0.8) < 1e-12 and c.run_cpu_s(st) == 1.0\n"
      "f, r = c.cpu_factor(tp, [st], p)\n"
      "assert abs(f - 0.8 / 0.68) < 1e-12 and r['worker_cpu_s'] == [1.0] and r['steady_cpu_s'] == [0.8], (f, r)\n"
      "assert c.steady_cpu_s({'cpu_s': [1.0], 'step_cpu_s': [0.6, 0.4]}) == 1.0\n"
      // From a report: devices[0].step_cpu_s.
      "json.dump({'devices': [{'cpu_s': 1.0, 'step_cpu_s': [0.4, 0.2, 0.25, 0.15]}]}, open(rep, 'w'))\n"
      "assert abs(c.steady_cpu_s({'report': rep}) - 0.8) < 1e-12\n"
      // The one-device plan's samples: whole mini-batches for MIN_TASK_WORK_S (4 s) of
      // work: 128 samples asking 0.55 s -> 128 x 4 / 0.55 = 930.9 -> 59 x 16 = 944;
      // asking 9.9 s -> 128 as they are.
      "assert c.MIN_TASK_WORK_S == 4.0 and c.task_samples(0.55) == 944 and c.task_samples(9.9) == 128\n"
      "assert c.task_samples(0.55, 128, 8) == 936 and c.task_samples(0.0) == 128\n"
      // Three runs: the median of CPU x speed (0.85, 0.952 x 0.5 = 0.476, 1.02) -> 0.85 -> 1.25.
      "runs = [{'cpu_s': [0.85], 'machine_speed': [1, 1]}, {'cpu_s': [0.952], 'machine_speed': [0.5, 0.5]}, "
      "{'cpu_s': [1.02], 'machine_speed': [1, 1]}]\n"
      "assert abs(c.cpu_factor(tp, runs, p)[0] - 1.25) < 1e-12\n"
      // The 2-stage check's diagnostic (recorded, not applied): per device, CPU x speed less
      // its compute's CPU work, over its message ends; the smaller of the two stages, the
      // median over the runs, / q.
      // 2 iterations of: F s0 0.1 s, send 0->1, F+B s1 0.2 + 0.2 s, send 1->0, B s0 0.1 s,
      // an optimizer each (0.05 s, 0.01 s of it the step's). At q = 0.5 the work is
      // 2 x 0.24 x 0.5 = 0.24 s (s0) and 2 x 0.44 x 0.5 = 0.44 s (s1); 4 ends each.
      // Runs: [0.26, 0.50] at 1 -> min(0.005, 0.015); [0.325, 0.6] at 0.8 -> min(0.005,
      // 0.01); [0.2, 0.5] at 1 -> min(-0.01, 0.015). Median 0.005 s per end, / 0.5 -> 10 ms.
      "mp = os.path.join(dir, 'msg-plan.json')\n"
      "json.dump({'segments': [{'repeat': 2, 'tasks': ["
      "{'kind': 'forward', 'device': 0, 'seconds': 0.1}, {'kind': 'send', 'device': 0, 'peer': 1, 'seconds': 9}, "
      "{'kind': 'forward', 'device': 1, 'seconds': 0.2}, {'kind': 'backward', 'device': 1, 'seconds': 0.2}, "
      "{'kind': 'send', 'device': 1, 'peer': 0, 'seconds': 9}, {'kind': 'backward', 'device': 0, 'seconds': 0.1}, "
      "{'kind': 'optimizer', 'device': 0, 'seconds': 0.05}, {'kind': 'optimizer', 'device': 1, 'seconds': 0.05}]}]}, "
      "open(mp, 'w'))\n"
      "w = c.plan_device_work_s(mp, p)\n"
      "assert abs(w[0] - 0.24) < 1e-12 and abs(w[1] - 0.44) < 1e-12, w\n"
      "assert c.plan_message_ends(mp) == {0: 4, 1: 4}\n"
      "runs = [{'cpu_s': [0.26, 0.50], 'machine_speed': [1, 1]}, {'cpu_s': [0.325, 0.6], 'machine_speed': [0.8, 0.8]}, "
      "{'cpu_s': [0.2, 0.5], 'machine_speed': [1, 1]}]\n"
      "m, r = c.pipeline_extra_cpu(mp, runs, p)\n"
      "assert abs(m - 0.01) < 1e-12 and r['per_end_cpu_s'] == [0.005, 0.005, -0.01], (m, r)\n"
      // Every device below its work: negative (the host was faster than the rates).
      "m, r = c.pipeline_extra_cpu(mp, [{'cpu_s': [0.2, 0.4], 'machine_speed': [1, 1]}], p)\n"
      "assert abs(m + 0.02) < 1e-12 and r['per_end_sustained_s'] == -0.02, (m, r)\n"
      "assert c.pipeline_extra_cpu(mp, [{'cpu_s': None}], p) == (0.0, None)\n"
      // The sync plan's traces (trace_sync_stats). A run's: device tracks w0, w1, the step
      // in args.step, times in us. Step 0 is left out (first use). Step 1: w0 computes
      // F 30 + B 10 ms = 40 ms, w1 50 + 10 = 60 ms; the all-reduce ends at 70 ms, 10 ms
      // after the last compute end. Step 2: both 50 ms, all-reduce 12 ms after. Compute
      // spread: step 1 sample sd 14.142 ms over mean 50 ms = 0.28284 (squared 0.08), step 2
      // 0; cv = sqrt(mean(0.08, 0)) = 0.2; tail: median(10, 12) = 11 ms.
      "def X(tid, name, ts, dur, **args):\n"
      "    return {'ph': 'X', 'pid': 1, 'tid': tid, 'name': name, 'ts': ts * 1e3, 'dur': dur * 1e3, 'args': args}\n"
      "M = lambda tid, n: {'ph': 'M', 'pid': 1, 'tid': tid, 'name': 'thread_name', 'args': {'name': n}}\n"
      "ev = [M(1, 'w0'), M(2, 'w1'), X(1, 'F mb0', 0, 500, step=0), X(2, 'F mb0', 0, 5, step=0), "
      "X(1, 'allreduce stage 0', 500, 1, step=0), "
      "X(1, 'F mb0', 1000, 30, step=1), X(1, 'B mb0', 1030, 10, step=1), X(2, 'F mb0', 1000, 50, step=1), "
      "X(2, 'B mb0', 1050, 10, step=1), X(1, 'allreduce stage 0', 1040, 30, step=1), "
      "X(2, 'allreduce stage 0', 1060, 10, step=1), X(1, 'opt', 1070, 2, step=1), "
      "X(1, 'F mb0', 2000, 40, step=2), X(1, 'B mb0', 2040, 10, step=2), X(2, 'F mb0', 2000, 40, step=2), "
      "X(2, 'B mb0', 2040, 10, step=2), X(2, 'allreduce stage 0', 2050, 12, step=2)]\n"
      "tf = os.path.join(dir, 'run.trace.json')\n"
      "json.dump({'traceEvents': ev}, open(tf, 'w'))\n"
      "cv, tail, n = c.trace_sync_stats(tf)\n"
      "assert abs(cv - 0.2) < 1e-9 and abs(tail - 0.011) < 1e-9 and n == 2, (cv, tail, n)\n"
      // A simulation's: compute on the device tracks, the ring's flows on link tracks
      // ('w0 -> w1'), the step in args.iteration (a list of events): equal compute (cv 0),
      // the ring's last flow 4 ms after the compute.
      "ev = [M(1, 'w0'), M(2, 'w1'), M(3, 'w0 -> w1'), M(4, 'w1 -> w0')]\n"
      "for it in range(3):\n"
      "    t0 = 100 * it\n"
      "    ev += [X(1, 'F s0 mb0', t0, 40, iteration=it), X(2, 'F s0 mb0', t0, 40, iteration=it), "
      "X(3, 'allreduce s0', t0 + 40, 2, iteration=it), X(4, 'allreduce s0', t0 + 42, 2, iteration=it)]\n"
      "json.dump(ev, open(tf, 'w'))\n"
      "cv, tail, n = c.trace_sync_stats(tf)\n"
      "assert cv == 0 and abs(tail - 0.004) < 1e-9 and n == 2, (cv, tail, n)\n"
      // sync_values: the median run cv 0.2 beyond the simulation's 0.12 in quadrature:
      // sqrt(0.04 - 0.0144) = 0.16; the median tail 11 ms beyond the simulated 4 ms over a
      // 4-device ring's 6 steps x 2 ends: 7 / 12 = 0.58333 ms per message end. The
      // simulation's spread or tail above the runs': 0.
      "v, r = c.sync_values([(0.2, 0.011), (0.25, 0.02), (0.1, 0.009)], (0.12, 0.004), 4)\n"
      "assert abs(v['compute_jitter_cv'] - 0.16) < 1e-12 and abs(v['message_overhead_s'] - 0.007 / 12) < 1e-12, v\n"
      "assert r['sim_tail_s'] == 0.004 and r['run_cv'] == [0.2, 0.25, 0.1], r\n"
      "v, _ = c.sync_values([(0.1, 0.003)], (0.12, 0.004), 4)\n"
      "assert v == {'compute_jitter_cv': 0.0, 'message_overhead_s': 0.0}, v\n"
      "assert c.sync_values([(None, None)], (0.1, 0.004), 4) == ({'compute_jitter_cv': 0.0, 'message_overhead_s': 0.0}, None)\n"
      // The sync plan's scenario: SYNC_DEVICES devices at the quota, one stage (data parallel).
      "sc = c.calibration_scenario('sync', name, prof['calibration'])\n"
      "assert len(sc['cluster']['devices']) == 4 and sc['stages'] == 1 and sc['data']['samples'] == 256, sc\n"
      "assert all(d['cpu_quota'] == 0.5 for d in sc['cluster']['devices']) and not sc['method']['cache'], sc\n"
      // A residual within half the runs' range is not resolved (the value is then 0).
      "assert c.below_spread(0.19, [30.3, 30.5, 31.1]) and c.below_spread(-0.4, [30.3, 30.5, 31.1])\n"
      "assert not c.below_spread(0.41, [30.3, 30.5, 31.1]) and not c.below_spread(0.01, [30.5])\n"
      "want = {'task': ('task_overhead_s', 0.0021), 'message': ('message_overhead_s', 0.0004)}\n"
      "for kind in ('task', 'message'):\n"
      "    scen, f = c.scenario_write(os.path.join(dir, kind), kind, name, prof)\n"
      "    t = c.Trial(a, f, name, prof, None, os.path.join(dir, kind, 'trial'))\n"
      "    field, value = want[kind]\n"
      "    known = {'task_overhead_s': 0.0021 if kind == 'message' else 0.0}\n"
      "    target = t.total_s(dict(known, **{field: value}))\n"
      "    x, s0 = c.fit_increasing(lambda v: t.total_s(dict(known, **{field: v})), target)\n"
      "    assert s0 < target and abs(x - value) < 2e-6, (kind, x, s0, target)\n"
      "    plan = json.load(open(os.path.join(dir, kind, 'trial', 'trial-plan.json')))\n"
      "    devs = [st['devices'] for st in plan['phases'][0]['stages']]\n"
      "    assert devs == ([[0], [1]] if kind == 'message' else [[0]]), devs\n"
      "    assert len(plan['phases']) == 1 and plan['phases'][0]['micro_batches'] == 4, plan['phases']\n"
      "print('ok')\n";
  fidelity_py_ok("overhead_fit", py);
}

TEST(SimFidelityHarness, TestbedProfilesAreSustainedRates) {
  int checked = 0, rounds_checked = 0, overheads = 0;
  for (const char* q : {"q025", "q050", "q075", "q100"})
    for (const char* m : {"s260k", "d512"}) {
      std::string file = kSrc + "/profiles/devices/testbed-" + q + "-" + m + ".json";
      JsonIn j = JsonIn::load_file(file);
      DeviceProfile p = device_profile_from_json(j);
      const json& c = j.raw()["calibration"];
      double quota = c["cpu_quota"];
      EXPECT_NEAR(quota, std::atoi(q + 1) / 100.0, 1e-9) << file;
      EXPECT_NEAR(c["sustained_factor"].get<double>(), std::min(1.0, quota), 1e-12) << file;
      // Below one core the simulator models the quota's period from this (docs/simulator.md).
      EXPECT_DOUBLE_EQ(p.sustained_quota, quota < 1 ? quota : 0.0) << file;
      int largest_mb = 0;
      for (const json& mb : c["micro_batches"]) largest_mb = std::max(largest_mb, mb.get<int>());
      // The reference is the median of its rounds (bench/calibrate_profiles.py merge):
      // each timing's median_s is the middle one of round_medians_s, each brought to the
      // rounds' middle level first (reference_rounds[].level; profiles merged before the
      // levels have none: 1); every round times 1 thread.
      std::vector<double> levels;
      for (const json& rr : c["reference_rounds"]) levels.push_back(rr.value("level", 1.0));
      std::vector<double> sorted_levels = levels;
      std::sort(sorted_levels.begin(), sorted_levels.end());
      double level = sorted_levels.empty() ? 1.0 : sorted_levels.size() % 2 ? sorted_levels[sorted_levels.size() / 2]
                     : (sorted_levels[sorted_levels.size() / 2 - 1] + sorted_levels[sorted_levels.size() / 2]) / 2;
      for (const json& t : c["reference_timings"]) {
        if (!t.contains("round_medians_s")) continue;
        std::vector<double> r = t["round_medians_s"].get<std::vector<double>>();
        for (size_t i = 0; i < r.size() && i < levels.size(); i++) r[i] *= level / levels[i];
        std::sort(r.begin(), r.end());
        double mid = r.size() % 2 ? r[r.size() / 2] : (r[r.size() / 2 - 1] + r[r.size() / 2]) / 2;
        EXPECT_NEAR(t["median_s"].get<double>(), mid, 1e-5 * mid) << file << " " << t["kind"] << "@" << t["micro_batch"];
        if (t["threads"] == 1) {  // 2 threads: round 1 only
          EXPECT_EQ(r.size(), c["reference_rounds"].size()) << file;
        }
        rounds_checked++;
      }
      for (const auto& kv : p.eff_flops_by_kind) {
        std::string kind = kv.first.substr(0, kv.first.find('@'));
        int mb = kv.first.find('@') == std::string::npos ? largest_mb : std::atoi(kv.first.c_str() + kind.size() + 1);
        double ref = 0;
        for (const json& t : c["reference_timings"])
          if (t["kind"] == kind && t["micro_batch"] == mb && t["threads"] == 1)
            ref = t["flops"].get<double>() / t["median_s"].get<double>();
        ASSERT_GT(ref, 0) << file << " " << kv.first;
        // rate = flops / median_s of the reference row x min(1, quota)
        EXPECT_NEAR(kv.second, ref * std::min(1.0, quota), 1e-9 * kv.second) << file << " " << kv.first;
        checked++;
      }
      EXPECT_EQ(p.memory_bytes, 4e9) << file;
      // The runtime costs are what bench/calibrate_overhead.py measured
      // (calibration.overhead): on the one-device plan the CPU factor, measured (stored
      // when above 1), and the rest of its time recorded, not fitted (a check: no cost
      // per task); no throttle delay; the 2-stage plan is a check too.
      ASSERT_TRUE(c.contains("overhead")) << file;
      const json& plans = c["overhead"]["plans"];
      EXPECT_EQ(plans["task"]["field"], "task_overhead_s") << file;
      EXPECT_EQ(plans["task"]["role"], "check") << file;
      EXPECT_EQ(plans["task"]["fitted"].get<double>(), 0.0) << file;
      EXPECT_EQ(p.task_overhead_s, 0.0) << file;
      const json& factor = c["overhead"]["cpu_work_factor"];
      ASSERT_TRUE(factor.is_object()) << file;
      EXPECT_NEAR(p.cpu_work_factor, std::max(1.0, factor["measured"].get<double>()), 1e-4) << file;
      EXPECT_EQ(p.throttle_delay_s, 0.0) << file;
      EXPECT_EQ(plans["message"]["role"], "check") << file;
      // The cost per message end and the compute jitter come from the sync plan
      // (calibration.overhead.sync) when it ran, else they are 0.
      const json& sync = c["overhead"].contains("sync") ? c["overhead"]["sync"] : json();
      EXPECT_NEAR(p.message_overhead_s, sync.is_object() ? sync["value_message_overhead_s"].get<double>() : 0.0, 1e-7)
          << file;
      EXPECT_NEAR(p.compute_jitter_cv, sync.is_object() ? sync["value_compute_jitter_cv"].get<double>() : 0.0, 1e-4)
          << file;
      // The cost per step is measured at one core and kept in sustained seconds: the
      // median per-step gap / the quota (1 at one core), rounded as written.
      const json& step = c["overhead"]["step"];
      std::vector<double> gaps = step["step_gap_s"].get<std::vector<double>>();
      std::sort(gaps.begin(), gaps.end());
      double mid = gaps.size() % 2 ? gaps[gaps.size() / 2] : (gaps[gaps.size() / 2 - 1] + gaps[gaps.size() / 2]) / 2;
      EXPECT_NEAR(p.step_overhead_s, mid / std::min(1.0, quota), 2e-7) << file;
      // The cache's cost: the line through the reference run's two record sizes
      // (calibration.reference_cache_records), its fixed cost / min(1, quota) and its
      // rate x min(1, quota).
      const json& cr = c["reference_cache_records"];
      double slope = (cr["large_write_s"].get<double>() - cr["small_write_s"].get<double>()) /
                     (cr["large_record_bytes"].get<double>() - cr["small_record_bytes"].get<double>());
      double fixed = std::max(0.0, cr["small_write_s"].get<double>() - cr["small_record_bytes"].get<double>() * slope);
      EXPECT_NEAR(p.storage_write_record_s, fixed / std::min(1.0, quota), 1e-9) << file;
      EXPECT_NEAR(p.storage_write_bytes_per_s, std::min(1.0, quota) / slope, 1e-6 / slope) << file;
      overheads++;
    }
  EXPECT_EQ(overheads, 8);
  EXPECT_GT(rounds_checked, 0);
  EXPECT_EQ(checked, 8 * 26);  // 5 kinds x (4 micro-batches + the plain key) + the optimizer per profile
}

// A Python snippet that merges reference rounds with bench/calibrate_profiles.py in a
// fresh folder: add_round(r) writes one round's profile, merged() merges all of them and
// returns the result.
static std::string merge_py(const std::string& name, const std::string& body) {
  return "import json, os, shutil\n"
         "import calibrate_profiles as cp\n"
         "dir = '" + ::testing::TempDir() + "/" + name + "'\n"
         "shutil.rmtree(dir, ignore_errors=True); os.makedirs(dir)\n"
         "files = []\n"
         "def add_round(r):\n"
         "    files.append(os.path.join(dir, 'r%d.json' % len(files))); json.dump(r, open(files[-1], 'w'))\n"
         "def merged():\n"
         "    cp.merge(os.path.join(dir, 'm.json'), files)\n"
         "    return json.load(open(os.path.join(dir, 'm.json')))\n" +
         body + "print('ok')\n";
}

// calibrate_profiles.py merge brings each round to the middle speed level before the
// median per timing, so one timing's ratio to another is a round's, not a mix of two.
// Three rounds of kinds a and b (b takes twice a): r1 (1.0, 2.0) and r2 (1.2, 2.4), the
// second 20% slower, and r3 (1.1, 1.9), a noisy one. A median per key takes a from r3
// and b from r1: b / a = 1.818. Levels (median over the keys of the round's time / the
// key's median over rounds: a 1.1, b 2.0): r1 (0.909 + 1.0) / 2 = 0.9545, r2 1.1455, r3
// 0.975 (middle). Brought to 0.975, r1 and r2 both give a 1.0214, b 2.0429 and r3 stays:
// medians a 1.0214, b 2.0429, b / a = 2.000.
TEST(SimFidelityHarness, MergeBringsRoundsToOneLevel) {
  std::string out;
  if (sh("python3 --version", &out) != 0) GTEST_SKIP() << "no python3";
  std::string py = merge_py("merge_levels",
      "for i, (a, b) in enumerate([(1.0, 2.0), (1.2, 2.4), (1.1, 1.9)]):\n"
      "    add_round({'storage_write_bytes_per_s': 1e8, 'calibration': {'date': str(i), 'load_average_before': 0,\n"
      "               'load_average_after': 0, 'timings': [\n"
      "                   {'kind': 'a', 'micro_batch': 1, 'threads': 1, 'flops': 1.0, 'median_s': a},\n"
      "                   {'kind': 'b', 'micro_batch': 1, 'threads': 1, 'flops': 1.0, 'median_s': b}]}})\n"
      "c = merged()['calibration']\n"
      "lv = [r['level'] for r in c['reference_rounds']]\n"
      "assert abs(lv[0] - 0.954545) < 1e-6 and abs(lv[1] - 1.145455) < 1e-6 and abs(lv[2] - 0.975) < 1e-9, lv\n"
      "t = {x['kind']: x for x in c['timings']}\n"
      "assert t['a']['round_medians_s'] == [1.0, 1.2, 1.1] and t['b']['round_medians_s'] == [2.0, 2.4, 1.9], t\n"
      "assert abs(t['a']['median_s'] - 0.975 / 0.9545454545) < 1e-9, t['a']\n"
      "assert abs(t['b']['median_s'] / t['a']['median_s'] - 2.0) < 1e-9, t\n");
  fidelity_py_ok("merge_levels", py);
}

// calibrate_profiles.py corun: pac-profile --corun's factors go into the model's testbed
// profiles, each at least 1 (0.98 is the host's noise, stored 1.0), the measurement kept;
// a profile of another model among them is refused (exit 2) and none is written.
TEST(SimFidelityHarness, CorunGoesIntoTheModelsProfiles) {
  std::string out;
  if (sh("python3 --version", &out) != 0) GTEST_SKIP() << "no python3";
  std::string py = merge_py("corun",
      "co = {'format': 'pac-corun', 'model': 'm1', 'cpus': [0, 1], 'rounds': 6,\n"
      "      'corun_slowdown': {'1': 1.2, '2': 0.98}, 'timings': [{'micro_batch': 1}, {'micro_batch': 2}]}\n"
      "cf = os.path.join(dir, 'corun.json'); json.dump(co, open(cf, 'w'))\n"
      "pf = [os.path.join(dir, 'p%d.json' % i) for i in range(2)]\n"
      "for f, m in zip(pf, ['m1', 'm2']): json.dump({'name': f, 'calibration': {'model': m}}, open(f, 'w'))\n"
      "assert cp.corun(cf, pf[:1]) == 0\n"
      "p = json.load(open(pf[0]))\n"
      "assert p['corun_slowdown'] == {'1': 1.2, '2': 1.0}, p\n"
      "assert p['calibration']['corun']['cpus'] == [0, 1] and len(p['calibration']['corun']['timings']) == 2, p\n"
      "before = [open(f).read() for f in pf]\n"
      "assert cp.corun(cf, pf[::-1]) == 2 and [open(f).read() for f in pf] == before\n");
  fidelity_py_ok("corun", py);
}

// calibrate_profiles.py merge: every timing the median of its rounds, and the cache's
// figures (rates, fixed costs per record, the measurements they were fitted from) all
// from the round with the median write rate, never mixed across rounds.
TEST(SimFidelityHarness, MergeTakesTheCacheFiguresOfOneRound) {
  std::string out;
  if (sh("python3 --version", &out) != 0) GTEST_SKIP() << "no python3";
  std::string py = merge_py("merge_rounds",
      "for i, (w, rec, med) in enumerate([(3e8, 2e-4, 0.03), (1e8, 5e-4, 0.05), (2e8, 1e-4, 0.04)]):\n"
      "    add_round({'storage_write_bytes_per_s': w, 'storage_read_bytes_per_s': 2 * w, 'storage_write_record_s': rec,\n"
      "               'calibration': {'date': str(i), 'load_average_before': 0, 'load_average_after': i,\n"
      "                               'cache_records': {'round': i}, 'storage_device': {'round': i},\n"
      "                               'timings': [{'kind': 'layer', 'micro_batch': 1, 'threads': 1, 'flops': 1e9,\n"
      "                                            'median_s': med}]}})\n"
      "m = merged()\n"
      "assert m['storage_write_bytes_per_s'] == 2e8 and m['storage_read_bytes_per_s'] == 4e8, m\n"
      "assert m['storage_write_record_s'] == 1e-4 and 'storage_read_record_s' not in m, m\n"
      "c = m['calibration']\n"
      "assert c['cache_records'] == {'round': 2} and c['storage_device'] == {'round': 2}, c\n"
      "t = c['timings'][0]\n"
      "assert abs(t['median_s'] - 0.04) < 1e-12 and t['round_medians_s'] == [0.03, 0.05, 0.04], t\n"
      // The median write rate in the first round, the one the merge starts from: its
      // figures stay whole (they were lost, 1 time in 3, when removed before being read).
      "r = json.load(open(files[0])); r['storage_write_bytes_per_s'] = 1.5e8; json.dump(r, open(files[0], 'w'))\n"
      "m = merged()\n"
      "assert m['storage_write_bytes_per_s'] == 1.5e8 and m['storage_read_bytes_per_s'] == 6e8, m\n"
      "assert m['storage_write_record_s'] == 2e-4 and m['calibration']['cache_records'] == {'round': 0}, m\n");
  fidelity_py_ok("merge_rounds", py);
}

// --refinish --reprofile: a plan's embedded profiles take the runtime costs and cache
// figures of other profiles (absent there = absent), and its compute tasks shift by the
// change in task_overhead_s (the optimizer's also by step_overhead_s); rates, layout and
// communication stay.
TEST(SimFidelityHarness, ReprofiledPlanTakesTheOtherProfilesRuntimeCosts) {
  std::string out;
  if (sh("python3 --version", &out) != 0) GTEST_SKIP() << "no python3";
  std::string dir = ::testing::TempDir() + "/reprofile";
  std::string py =
      "import json, os, shutil\n"
      "dir = '" + dir + "'\n"
      "shutil.rmtree(dir, ignore_errors=True); os.makedirs(dir + '/devices')\n"
      "prof = {'name': 'q', 'eff_flops': {'fp32': 1e9}, 'task_overhead_s': 0.001, 'message_overhead_s': 0.04,\n"
      "        'storage_write_bytes_per_s': 1e8}\n"
      "plan = {'scenario': {'cluster': {'devices': [{'id': 'w0', 'profile': dict(prof)}]}},\n"
      "        'segments': [{'tasks': [{'kind': 'forward', 'device': 0, 'seconds': 0.5},\n"
      "                                {'kind': 'optimizer', 'device': 0, 'seconds': 0.1},\n"
      "                                {'kind': 'send', 'device': 0, 'seconds': 0.2}]}]}\n"
      "json.dump(plan, open(dir + '/plan.json', 'w'))\n"
      "new = dict(prof, task_overhead_s=0.003, step_overhead_s=0.002, storage_write_record_s=0.0003,\n"
      "           storage_write_bytes_per_s=2e8, eff_flops={'fp32': 5e9})\n"
      "del new['message_overhead_s']\n"
      "json.dump(new, open(dir + '/devices/q.json', 'w'))\n"
      "f.plan_reprofiled(dir + '/plan.json', dir + '/devices', dir + '/out.json')\n"
      "p = json.load(open(dir + '/out.json'))\n"
      "e = p['scenario']['cluster']['devices'][0]['profile']\n"
      "assert e['task_overhead_s'] == 0.003 and e['step_overhead_s'] == 0.002, e\n"
      "assert e['storage_write_record_s'] == 0.0003 and e['storage_write_bytes_per_s'] == 2e8, e\n"
      "assert 'message_overhead_s' not in e and e['eff_flops'] == {'fp32': 1e9}, e\n"
      "t = p['segments'][0]['tasks']\n"
      "assert abs(t[0]['seconds'] - 0.502) < 1e-15 and abs(t[1]['seconds'] - 0.104) < 1e-15, t\n"
      "assert t[2]['seconds'] == 0.2, t\n"
      "print('ok')\n";
  fidelity_py_ok("reprofile", py);
}

// The harness at the probed machine speed: plan_at_speed divides every compute task's
// seconds by the speed and leaves communication and cache I/O alone, so the simulated
// standalone plan (compute only) takes exactly 1/speed as long, and a plan with
// all-reduces less than that; the summary at machine speed uses the adjusted columns.
TEST(SimFidelityHarness, PlanAtMachineSpeed) {
  std::string out;
  if (sh("python3 --version", &out) != 0) GTEST_SKIP() << "no python3";
  std::string dir = ::testing::TempDir() + "/sim_fidelity_speed";
  dir_create(dir);
  Scenario sc = scenario_load(kSrc + "/bench/fidelity/fid-d512-2x100-switched1000-cache.json", kSrc + "/profiles");
  for (const char* strategy : {"standalone", "eddl"}) {
    Plan p = plan_make(sc, strategy);
    std::string plan = dir + "/" + strategy + ".json", slow = dir + "/" + strategy + "-slow.json";
    file_write_atomic(plan, plan_to_json(p).dump());
    std::string py = "f.plan_at_speed('" + plan + "', 0.5, '" + slow + "')\n";
    ASSERT_EQ(fidelity_py("speed", py, &out), 0) << out;
    SimResult base = sim_run(p);
    SimResult half = sim_run(plan_from_json(JsonIn::load_file(slow)));
    ASSERT_TRUE(base.ok && half.ok);
    double comm = 0;
    for (const SimDeviceStats& d : base.devices) comm = std::max(comm, d.comm_s);
    if (std::string(strategy) == "standalone") {
      ASSERT_EQ(comm, 0);
      EXPECT_NEAR(half.makespan_s, 2 * base.makespan_s, 1e-9 * base.makespan_s);  // compute only: x 1/0.5
    } else {
      ASSERT_GT(comm, 0);  // the all-reduces do not slow down with the CPU
      EXPECT_LT(half.makespan_s, 2 * base.makespan_s - 0.5 * comm);
      EXPECT_GT(half.makespan_s, base.makespan_s);
    }
  }
  std::string py =
      "r = lambda s, sim, m, e, adj_sim, adj_e: {'scenario': 'x', 'strategy': s, 'sim_total_s': sim,\n"
      "    'measured_total_s': m, 'epoch_mape_pct': e, 'adj_sim_total_s': adj_sim, 'adj_epoch_mape_pct': adj_e,\n"
      "    'machine_speed': [0.7, 0.8]}\n"
      "s = f.summarize([r('pac', 2.0, 3.0, 30.0, 3.2, 6.0), r('eddl', 3.5, 2.9, 20.0, 2.95, 4.0)])\n"
      "assert abs(s['epoch_mape_mean_pct'] - 25.0) < 1e-9 and not s['scenarios'][0]['ranking_agrees']\n"
      "a = s['at_machine_speed']\n"
      "assert abs(a['epoch_mape_mean_pct'] - 5.0) < 1e-9 and a['scenarios'][0]['ranking_agrees']\n"
      "assert s['machine_speed_range'] == [0.7, 0.8] and a['targets_met']\n"
      "print('ok')\n";
  fidelity_py_ok("summary", py);
}

// The speed during a run (docs/fidelity.md, "Speed during the run"): the sentinel's
// samples that started inside the run's window, reference 13.2 ms over their median CPU
// time 12 ms = x1.1; one sample is too few (None, the probes then decide). A row is
// compared at the sentinel's speed when it has one, else at the probes' mean; the
// period stretches so that a long layer (two forwards per sample) keeps the sentinel's
// share at 5% of a core.
// Its share is taken off a shared host: two one-core devices on 2 - 0.5 cores compute
// slower, one device alone (1 core of 1.5) does not.
TEST(SimFidelityHarness, SpeedDuringTheRun) {
  std::string out;
  if (sh("python3 --version", &out) != 0) GTEST_SKIP() << "no python3";
  std::string py =
      "S = lambda t, c: {'t': t, 'cpu_s': c, 'wall_s': c}\n"
      "samples = [S(9.0, 0.5), S(10.0, 0.010), S(10.5, 0.014), S(11.0, 0.012), S(12.5, 0.5)]\n"
      "assert abs(f.speed_during(samples, 0.0132, 10.0, 12.0) - 1.1) < 1e-12\n"
      "assert f.speed_during(samples, 0.0132, 10.0, 10.2) is None\n"
      "assert f.run_speed({'speed_during': 0.9, 'machine_speed': [1.0, 1.2]}) == (0.9, 'during')\n"
      "sp, src = f.run_speed({'speed_during': 0.9, 'machine_speed': [1.0, 1.2]}, 'probes')\n"
      "assert abs(sp - 1.1) < 1e-12 and src == 'probes'\n"
      "assert f.run_speed({'speed_during': None, 'machine_speed': [1.0, 1.2]})[1] == 'probes'\n"
      "assert f.run_speed({}) == (None, None)\n"
      "assert f.sentinel_period(0.5, 0.001) == 0.5 and abs(f.sentinel_period(0.5, 0.05) - 2.0) < 1e-12\n"
      "r = lambda s, m, src, d: {'scenario': 'x', 'strategy': s, 'sim_total_s': 2.0, 'measured_total_s': m,\n"
      "    'epoch_mape_pct': 10.0, 'adj_sim_total_s': 2.0, 'adj_epoch_mape_pct': 5.0,\n"
      "    'machine_speed': [0.7, 0.8], 'speed_during': d, 'speed_source': src}\n"
      "s = f.summarize([r('pac', 2.1, 'during', 1.3), r('eddl', 2.2, 'probes', None)])\n"
      "assert s['machine_speed_range'] == [0.7, 1.3], s['machine_speed_range']\n"
      "assert s['speed_sources'] == {'during': 1, 'probes': 1}, s['speed_sources']\n"
      "print('ok')\n";
  fidelity_py_ok("speed_during_check", py);

  std::string dir = ::testing::TempDir() + "/sim_fidelity_sentinel";
  dir_create(dir);
  Scenario sc = scenario_load(kSrc + "/bench/fidelity/fid-d512-2x100-switched1000-cache.json", kSrc + "/profiles");
  sc.host_cores = 2;
  for (const char* strategy : {"standalone", "eddl"}) {
    Plan p = plan_make(sc, strategy);
    std::string plan = dir + "/" + strategy + ".json", taken = dir + "/" + strategy + "-taken.json";
    file_write_atomic(plan, plan_to_json(p).dump());
    ASSERT_EQ(fidelity_py("taken", "f.plan_at_speed('" + plan + "', 1.0, '" + taken + "', 0.5)\n", &out), 0) << out;
    Plan q = plan_from_json(JsonIn::load_file(taken));
    EXPECT_DOUBLE_EQ(q.scenario.host_cores, 1.5);
    SimResult base = sim_run(p), less = sim_run(q);
    ASSERT_TRUE(base.ok && less.ok);
    if (std::string(strategy) == "standalone")
      EXPECT_NEAR(less.makespan_s, base.makespan_s, 1e-9 * base.makespan_s);
    else
      EXPECT_GT(less.makespan_s, 1.05 * base.makespan_s);
  }
}

// --refinish with --reprofile / --host-cores validates the runs against another plan than
// the one that ran: the row's simulated times (its ranking, the plot) must become that
// plan's. The standalone plan's own simulation as the measured run, validated against the
// plan at half speed (compute only: x2) -> simulated total 2x the run, epoch MAPE 100%.
TEST(SimFidelityHarness, RefinishRanksTheSimulationItValidated) {
  std::string out;
  if (sh("python3 --version", &out) != 0) GTEST_SKIP() << "no python3";
  std::string dir = ::testing::TempDir() + "/sim_fidelity_refinish";
  dir_create(dir);
  Scenario sc = scenario_load(kSrc + "/bench/fidelity/fid-d512-2x100-switched1000-cache.json", kSrc + "/profiles");
  Plan p = plan_make(sc, "standalone");
  SimResult base = sim_run(p);
  ASSERT_TRUE(base.ok);
  file_write_atomic(dir + "/plan.json", plan_to_json(p).dump());
  file_write_atomic(dir + "/run-1.json", report_to_json(p, base).dump());
  std::string py =
      "import types\n"
      "dir = '" + dir + "'\n"
      "f.plan_at_speed(dir + '/plan.json', 0.5, dir + '/plan-slow.json')\n"
      "a = types.SimpleNamespace(bin_dir='" + bin_dir() + "', timeout=120, suite_speed={})\n"
      "base = " + std::to_string(base.makespan_s) + "\n"
      "row = {'scenario': 'x', 'strategy': 'standalone', 'sim_total_s': base, 'sim_epoch_s': [base / 2] * 2}\n"
      "job = {'dir': dir, 'plan': dir + '/plan-slow.json', 'trace': None,\n"
      "       'runs': [{'run': 1, 'measured': 'ok', 'total_s': base, 'load_average': None,\n"
      "                 'report': dir + '/run-1.json'}]}\n"
      "f.finish_row(a, row, job)\n"
      "assert row['measured'] == 'ok', row['measured']\n"
      "assert abs(row['sim_total_s'] - 2 * base) < 1e-4 * base, (row['sim_total_s'], base)\n"
      "assert abs(sum(row['sim_epoch_s']) - 2 * sum(row['measured_epoch_s'])) < 1e-4 * base, row\n"
      "assert abs(row['epoch_mape_pct'] - 100.0) < 0.01, row['epoch_mape_pct']\n"
      "import json\n"
      "f.plan_on_host(dir + '/plan.json', 2, dir + '/plan-h2.json')\n"
      "assert json.load(open(dir + '/plan-h2.json'))['scenario']['cluster']['host_cores'] == 2\n"
      "f.plan_on_host(dir + '/plan-h2.json', 0, dir + '/plan-h0.json')\n"
      "assert 'host_cores' not in json.load(open(dir + '/plan-h0.json'))['scenario']['cluster']\n"
      "print('ok')\n";
  fidelity_py_ok("refinish", py);
}

// The measurement against itself: round j's runs as the prediction of round k's, scored
// as the simulation is. Two rounds, scenario A: s1 1.0 / 1.2 s, s2 2.0 / 2.2 s; scenario
// B: s3 1.0 / 1.0 s, s4 3.0 / 0.9 s (one epoch each). Round 1 predicting round 2: A's
// MAPE (0.2/1.2 + 0.2/2.2) / 2 = 12.879%, B's (0 + 2.1/0.9) / 2 = 116.667%; mean 64.773,
// worst 116.667, ranking agrees in A only (B: s3 < s4, then s4 < s3). Round 2 predicting
// round 1: A (20 + 10) / 2 = 15%, B (0 + 70) / 2 = 35%; mean 25, worst 35. Medians of the
// two: 44.886%, 75.833%, 1 scenario. With one round there is nothing to compare.
// Ranking on separated pairs: runs a [1.0, 1.1], b [1.2, 1.3], c [1.05, 1.4], d [2.0, 2.1];
// c overlaps a and b, a-d is a simulated tie, so the pairs are a-b (simulated b < a:
// wrong), b-d (right), c-d (simulated d < c: wrong) -> 3 pairs, 1 agrees.
TEST(SimFidelityHarness, RepeatabilityAndSeparatedPairs) {
  std::string out;
  if (sh("python3 --version", &out) != 0) GTEST_SKIP() << "no python3";
  std::string py =
      "run = lambda k, t: {'run': k, 'measured': 'ok', 'total_s': t, 'epoch_s': [t]}\n"
      "row = lambda sc, s, t1, t2: {'scenario': sc, 'strategy': s, 'runs': [run(1, t1), run(2, t2)]}\n"
      "rows = [row('A', 's1', 1.0, 1.2), row('A', 's2', 2.0, 2.2), row('B', 's3', 1.0, 1.0), row('B', 's4', 3.0, 0.9)]\n"
      "r = f.repeatability(rows)\n"
      "p = {(x['predicted_by'], x['measured']): x for x in r['pairs']}\n"
      "assert abs(p[(1, 2)]['epoch_mape_mean_pct'] - (100 * (0.2 / 1.2 + 0.2 / 2.2) / 2 + 350 / 3) / 2) < 1e-9, p\n"
      "assert abs(p[(1, 2)]['epoch_mape_worst_scenario_pct'] - 350 / 3) < 1e-9 and p[(1, 2)]['ranking_agrees'] == 1\n"
      "assert abs(p[(2, 1)]['epoch_mape_mean_pct'] - 25) < 1e-9 and abs(p[(2, 1)]['epoch_mape_worst_scenario_pct'] - 35) < 1e-9\n"
      "assert abs(r['epoch_mape_mean_pct'] - 44.886363636) < 1e-6 and abs(r['epoch_mape_worst_scenario_pct'] - 75.833333333) < 1e-6\n"
      "assert r['ranking_agrees'] == 1 and r['scenarios'] == 2 and r['rounds'] == 2, r\n"
      "assert f.repeatability([dict(x, runs=x['runs'][:1]) for x in rows]) is None\n"
      "q = lambda s, ts, sim: {'scenario': 'S', 'strategy': s, 'runs': [run(k + 1, t) for k, t in enumerate(ts)],\n"
      "                        'measured_total_s': sorted(ts)[len(ts) // 2], 'sim_total_s': sim, 'epoch_mape_pct': 1.0}\n"
      "four = [q('a', [1.0, 1.1], 2.0), q('b', [1.2, 1.3], 1.5), q('c', [1.05, 1.4], 3.0), q('d', [2.0, 2.1], 2.0)]\n"
      "assert f.separated_pairs(four) == (3, 1), f.separated_pairs(four)\n"
      "s = f.summarize(four, adjusted=False)\n"
      "assert s['ranking_separated'] == {'pairs': 3, 'agree': 1, 'scenarios_agreeing': 0, 'scenarios': 1}, s\n"
      "one = [q('a', [1.0], 2.0), q('b', [1.2], 1.5)]\n"
      "assert f.separated_pairs(one) == (0, 0)\n"
      "print('ok')\n";
  fidelity_py_ok("repeatability", py);
}

// The planner prices every Optimizer task with the profile's timed AdamW rate when the
// profile has one (the testbed profiles do): seconds = 12 x parameters / that rate.
TEST(SimFidelityHarness, OptimizerTasksUseTheTimedRate) {
  Scenario sc = scenario_load(kSrc + "/bench/fidelity/fid-d512-2x100-switched1000-cache.json", kSrc + "/profiles");
  int checked = 0;
  for (const char* strategy : {"pac", "eddl", "standalone"}) {
    Plan p = plan_make(sc, strategy);
    for (const Segment& seg : p.segments)
      for (const Task& t : seg.graph.tasks) {
        if (t.kind != TaskKind::Optimizer) continue;
        const DeviceProfile& prof = sc.devices[t.device].profile;
        double rate = prof.eff_flops_by_kind.at("optimizer") / prof.cpu_work_factor;
        // The timed rate over the CPU the runtime spends per unit of work (cpu_work_factor,
        // measured by bench/calibrate_overhead.py), plus the runtime's per-task cost like every compute task, and
        // its cost per step (the coordinator's command and result after the step).
        EXPECT_NEAR(t.seconds, t.flops / rate + prof.task_overhead_s + prof.step_overhead_s, 1e-12 * t.seconds)
            << strategy << " " << t.label;
        checked++;
      }
  }
  EXPECT_GT(checked, 0);
}
