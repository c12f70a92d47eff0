// The planner-quality gate (sim/quality.h, docs/quality-gates.md): its rules on
// in-memory numbers with closed-form verdicts, the baseline file format, and the gate
// itself on the committed suite tests/quality against tests/quality/baseline.json.
//
// PAC_QUALITY_UPDATE=1 PAC_QUALITY_REASON="why" ctest -R PlannerQuality.Suite
// rewrites the baseline (atomically) before checking it.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <limits>

#include "sim/quality.h"
#include "src/common/error.h"
#include "src/common/fs.h"
#include "test_util.h"

using namespace pac;

static QualityEntry entry(const std::string& scenario, const std::string& strategy, double total_s) {
  QualityEntry e;
  e.scenario = scenario;
  e.strategy = strategy;
  e.groups = "[1-1]";
  if (total_s == std::numeric_limits<double>::infinity()) {
    e.status = "oom";
    e.note = "planner: no placement fits";
  } else {
    e.total_s = total_s;
    e.epoch_s = {total_s};
  }
  return e;
}

// Today's numbers on scenario "s": pac 100 s, pac-opt 90 s, ecofl 95 s, standalone OOM.
static std::vector<QualityEntry> today() {
  return {entry("s", "pac", 100), entry("s", "pac-opt", 90), entry("s", "ecofl", 95),
          entry("s", "standalone", std::numeric_limits<double>::infinity())};
}

static QualityBaseline baseline_of(const std::vector<QualityEntry>& v) {
  QualityBaseline b;
  b.reason = "test";
  b.entries = v;
  return b;
}

static QualityEntry* find(std::vector<QualityEntry>& v, const std::string& strategy) {
  for (QualityEntry& e : v)
    if (e.strategy == strategy) return &e;
  return nullptr;
}

TEST(PlannerQuality, SameNumbersPass) {
  QualityVerdict v = quality_check(today(), baseline_of(today()));
  EXPECT_TRUE(v.ok());
  EXPECT_TRUE(v.improvements.empty());
  EXPECT_TRUE(v.notes.empty());
}

TEST(PlannerQuality, BaselineTwoPercentBetterThanRealityFails) {
  // Baseline pac-opt = 90 / 1.02 = 88.235 s; today 90 s is +2.00% > +1% tolerance.
  std::vector<QualityEntry> base = today();
  find(base, "pac-opt")->total_s = 90 / 1.02;
  QualityVerdict v = quality_check(today(), baseline_of(base));
  ASSERT_EQ(v.failures.size(), 1u);
  EXPECT_EQ(v.failures[0], "s: pac-opt regressed: baseline 88.2 s, now 90.0 s (+2.00%, limit +1.0%)");
  // The same for pac: baseline 100 / 1.02 = 98.04 s.
  base = today();
  find(base, "pac")->total_s = 100 / 1.02;
  v = quality_check(today(), baseline_of(base));
  ASSERT_EQ(v.failures.size(), 1u);
  EXPECT_EQ(v.failures[0], "s: pac regressed: baseline 98.0 s, now 100.0 s (+2.00%, limit +1.0%)");
}

TEST(PlannerQuality, HalfPercentWorsePasses) {
  // 90 / (90 / 1.005) - 1 = +0.5% < +1%: passes, and is no improvement either.
  std::vector<QualityEntry> base = today();
  find(base, "pac-opt")->total_s = 90 / 1.005;
  find(base, "pac")->total_s = 100 / 1.005;
  QualityVerdict v = quality_check(today(), baseline_of(base));
  EXPECT_TRUE(v.ok()) << v.failures[0];
  EXPECT_TRUE(v.improvements.empty());
}

TEST(PlannerQuality, PacOptSlowerThanEcoflFails) {
  // ecofl 85 s today, pac-opt 90 s: 90 / 85 - 1 = +5.88%, against today's numbers (the
  // baseline agrees with today, so only the ordering rule can fire).
  std::vector<QualityEntry> now = today();
  find(now, "ecofl")->total_s = 85;
  QualityVerdict v = quality_check(now, baseline_of(now));
  ASSERT_EQ(v.failures.size(), 1u);
  EXPECT_EQ(v.failures[0], "s: pac-opt (90.0 s, [1-1]) is slower than ecofl (85.0 s, [1-1]) by +5.88%");
  // Slower than pac is the same failure.
  now = today();
  find(now, "pac")->total_s = 89.9;
  v = quality_check(now, baseline_of(now));
  ASSERT_EQ(v.failures.size(), 1u);
  EXPECT_NE(v.failures[0].find("slower than pac (89.9 s"), std::string::npos) << v.failures[0];
}

TEST(PlannerQuality, ExcusedLossIsANoteNotAFailure) {
  std::vector<QualityEntry> now = today();
  find(now, "ecofl")->total_s = 85;
  QualityBaseline b = baseline_of(now);
  b.excused.push_back({"s", "ecofl", "asynchronous pipeline", 0.06});
  QualityVerdict v = quality_check(now, b);
  EXPECT_TRUE(v.ok());
  ASSERT_EQ(v.notes.size(), 1u);
  EXPECT_EQ(v.notes[0],
            "excused: s: pac-opt (90.0 s, [1-1]) is slower than ecofl (85.0 s, [1-1]) by +5.88% -- asynchronous pipeline");
  // Beyond the excused gap it fails: ecofl 84 s, 90 / 84 - 1 = +7.14% > +6%.
  std::vector<QualityEntry> wider = now;
  find(wider, "ecofl")->total_s = 84;
  b.entries = wider;
  v = quality_check(wider, b);
  ASSERT_EQ(v.failures.size(), 1u);
  EXPECT_EQ(v.failures[0],
            "s: pac-opt (90.0 s, [1-1]) is slower than ecofl (84.0 s, [1-1]) by +7.14% (excused only up to +6.00%)");
  b.entries = now;
  // An excuse covers one strategy only: losing to pac as well still fails.
  find(now, "pac")->total_s = 89;
  b.entries = now;
  EXPECT_EQ(quality_check(now, b).failures.size(), 1u);
}

TEST(PlannerQuality, ACannotRunStrategyIsInfinitelySlow) {
  // pac-opt OOM today: infinitely slower than its 90 s baseline, and than pac and ecofl.
  std::vector<QualityEntry> now = today();
  *find(now, "pac-opt") = entry("s", "pac-opt", std::numeric_limits<double>::infinity());
  QualityVerdict v = quality_check(now, baseline_of(today()));
  ASSERT_EQ(v.failures.size(), 3u);
  EXPECT_EQ(v.failures[0], "s: pac-opt regressed: baseline 90.0 s, now cannot run (oom: planner: no placement fits)");
  EXPECT_EQ(v.failures[1], "s: pac-opt cannot run (oom: planner: no placement fits) but pac can (100.0 s)");
  // Both OOM (baseline and today): nothing to compare, passes.
  QualityBaseline b = baseline_of(now);
  std::vector<QualityEntry> both = now;
  *find(both, "pac") = entry("s", "pac", std::numeric_limits<double>::infinity());
  *find(both, "ecofl") = entry("s", "ecofl", std::numeric_limits<double>::infinity());
  b.entries = both;
  EXPECT_TRUE(quality_check(both, b).ok());
}

TEST(PlannerQuality, ImprovementPassesAndIsPrinted) {
  // Baseline pac = 100 / (1 - 0.032) = 103.31 s, today 100 s: improved by 3.2%.
  std::vector<QualityEntry> base = today();
  find(base, "pac")->total_s = 100 / (1 - 0.032);
  QualityVerdict v = quality_check(today(), baseline_of(base));
  EXPECT_TRUE(v.ok());
  ASSERT_EQ(v.improvements.size(), 1u);
  EXPECT_EQ(v.improvements[0], "pac improved by 3.2% on s (103.3 s -> 100.0 s); update the baseline");
}

TEST(PlannerQuality, BaselineStrategyDriftIsANote) {
  // ecofl 95 -> 99 s (+4.21%): not gated, shown.
  std::vector<QualityEntry> base = today();
  find(base, "ecofl")->total_s = 95;
  std::vector<QualityEntry> now = today();
  find(now, "ecofl")->total_s = 99;
  QualityVerdict v = quality_check(now, baseline_of(base));
  EXPECT_TRUE(v.ok());
  ASSERT_EQ(v.notes.size(), 1u);
  EXPECT_EQ(v.notes[0], "s: ecofl moved from 95.0 s to 99.0 s +4.21% (not gated; update the baseline)");
}

TEST(PlannerQuality, NewOrDroppedScenariosFail) {
  std::vector<QualityEntry> now = today();
  std::vector<QualityEntry> extra = {entry("t", "pac", 10), entry("t", "pac-opt", 10)};
  now.insert(now.end(), extra.begin(), extra.end());
  QualityVerdict v = quality_check(now, baseline_of(today()));
  ASSERT_EQ(v.failures.size(), 2u);  // t's pac and pac-opt have no baseline
  EXPECT_NE(v.failures[0].find("t: pac has no baseline"), std::string::npos) << v.failures[0];
  v = quality_check(today(), baseline_of(now));
  ASSERT_EQ(v.failures.size(), 1u);
  EXPECT_EQ(v.failures[0], "t: in the baseline but not in the suite (update the baseline)");
}

TEST(PlannerQuality, BaselineJsonRoundTripsAndBadFieldsNameThePath) {
  QualityBaseline b = baseline_of(today());
  b.tolerance = 0.02;
  b.excused.push_back({"s", "ecofl", "why", 0.05});
  QualityBaseline c = quality_baseline_from_json(JsonIn::from(quality_baseline_to_json(b), "b.json"));
  EXPECT_EQ(quality_baseline_to_json(c), quality_baseline_to_json(b));
  ASSERT_EQ(c.entries.size(), 4u);
  EXPECT_EQ(quality_time(*find(c.entries, "standalone")), std::numeric_limits<double>::infinity());

  json j = quality_baseline_to_json(b);
  j["scenarios"]["s"]["pac"]["total_s"] = -1;
  EXPECT_EQ(input_error([&] { quality_baseline_from_json(JsonIn::from(j, "b.json")); }),
            "b.json: $.scenarios.s.pac.total_s: expected a number >= 0, got the number -1");
  j = quality_baseline_to_json(b);
  j["tolerence"] = 0.01;
  EXPECT_NE(input_error([&] { quality_baseline_from_json(JsonIn::from(j, "b.json")); }).find("tolerence"),
            std::string::npos);
}

TEST(PlannerQuality, UpdateWithoutReasonIsRefused) {
  QualityGateOptions opt;
  opt.suite_dir = "/nonexistent";
  opt.update = true;
  EXPECT_EQ(input_error([&] { quality_gate(opt, nullptr); }),
            "updating the quality baseline needs a reason (--reason / PAC_QUALITY_REASON)");
}

static std::string source_root() {
  const char* e = std::getenv("PAC_SOURCE_DIR");
  return e && *e ? e : PAC_SOURCE_DIR;
}

// pac-opt chooses among candidates by its latency model, so the model has to price
// pipelines as the simulator runs them. Without the 1F1B dependency-cycle bound
// (planner_dp.cpp, cycle_period_s) q09's plan was predicted at 40.2 s and simulated at
// 53.7 s (-25%), and q02/q06 were 19-21% under; with it every suite scenario is within 3%.
TEST(PlannerQuality, PacOptPredictsItsSimulatedTimeWithinFivePercent) {
  std::string dir = path_join(source_root(), "tests/quality");
  for (const char* name : {"q01-pair-t5-base-switched-1000", "q02-wifi-qwen-100", "q03-4nano-bart-large-nocache",
                           "q06-home-llama-1b-shared-300", "q09-orin-llama-3b-switched-200"}) {
    Scenario s = scenario_load(path_join(dir, std::string(name) + ".scenario.json"),
                               path_join(source_root(), "profiles"));
    for (const QualityEntry& e : quality_run_scenario(s, name)) {
      if (e.strategy != "pac-opt") continue;
      ASSERT_EQ(e.status, "ok") << name << ": " << e.note;
      EXPECT_NEAR(e.predicted_s / e.total_s, 1.0, 0.05)
          << name << ": predicted " << e.predicted_s << " s, simulated " << e.total_s << " s";
    }
  }
}

// The gate itself: the committed suite against the committed baseline.
TEST(PlannerQuality, Suite) {
  std::string root = source_root();
  QualityGateOptions opt;
  opt.suite_dir = path_join(root, "tests/quality");
  opt.profiles_dir = path_join(root, "profiles");
  opt.progress = false;
  const char* up = std::getenv("PAC_QUALITY_UPDATE");
  if (up && std::string(up) == "1") {
    opt.update = true;
    const char* why = std::getenv("PAC_QUALITY_REASON");
    opt.reason = why ? why : "";
  }
  std::string report;
  QualityVerdict v = quality_gate(opt, &report);
  std::fputs(report.c_str(), stdout);
  std::string all;
  for (const std::string& f : v.failures) all += "\n  " + f;
  EXPECT_TRUE(v.ok()) << "planner-quality gate failed:" << all;
}
