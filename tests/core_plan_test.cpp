// Plan JSON: round trip, and validation errors that name the task or device.
#include <cmath>
#include <map>
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "planner/planner.h"
#include "src/common/error.h"
#include "tests/test_util.h"
#include "src/common/fs.h"
#include "src/core/plan.h"
#include "src/core/rows.h"

using namespace pac;

static const std::string kSrc = PAC_SOURCE_DIR;

static Plan bart_plan() {
  Scenario s = scenario_load(kSrc + "/scenarios/paper-bart-large-mrpc.json", kSrc + "/profiles");
  return plan_make(s, "pac");
}


TEST(Plan, RoundTripIsExact) {
  Plan p = bart_plan();
  ASSERT_EQ(p.segments.size(), 3u);  // pipeline, switch, data_parallel
  json x = plan_to_json(p);
  EXPECT_EQ(plan_to_json(plan_from_json(JsonIn::from(x, "p.json"))), x);
  // Through the file too (text doubles must survive).
  std::string file = ::testing::TempDir() + "/plan.json";
  plan_save(p, file);
  EXPECT_EQ(plan_to_json(plan_load(file)), x);

  // A Local task and a first use survive too; an unknown kind names the choices.
  Plan q = p;
  Task& l = q.segments[1].graph.tasks.emplace_back();
  l.id = static_cast<int>(q.segments[1].graph.tasks.size()) - 1;
  l.kind = TaskKind::Local;
  l.device = 0;
  l.seconds = 0.08;
  q.segments[0].graph.tasks[0].first_extra_s = 0.27;
  json z = plan_to_json(q);
  EXPECT_EQ(z["segments"][1]["tasks"].back()["kind"], "local");
  EXPECT_EQ(z["segments"][0]["tasks"][0]["first_extra_s"], 0.27);
  EXPECT_FALSE(z["segments"][0]["tasks"][1].contains("first_extra_s"));
  EXPECT_EQ(plan_to_json(plan_from_json(JsonIn::from(z, "q.json"))), z);
  z["segments"][1]["tasks"].back()["kind"] = "nap";
  std::string err = input_error([&] { plan_from_json(JsonIn::from(z, "q.json")); });
  EXPECT_NE(err.find("cache_read, local, got \"nap\""), std::string::npos) << err;

  // Eco-FL's asynchronous pipeline marks its segment "overlap"; it survives too.
  Scenario s = scenario_load(kSrc + "/scenarios/paper-bart-large-mrpc.json", kSrc + "/profiles");
  s.method.kind = "adapters";
  s.method.cache = false;
  Plan e = plan_make(s, "ecofl");
  ASSERT_TRUE(e.segments[0].overlap);
  json y = plan_to_json(e);
  EXPECT_EQ(plan_to_json(plan_from_json(JsonIn::from(y, "e.json"))), y);
}

TEST(Plan, TasksAreTopologicalAndSegmentsRepeat) {
  Plan p = bart_plan();
  const Segment& pipe = p.segments[0];
  // MRPC: ceil(3668 / 16) = 230 iterations, one epoch in the pipeline.
  EXPECT_EQ(pipe.repeat, 230);
  EXPECT_EQ(p.segments[2].repeat, 230 * 2);
  for (const Task& t : pipe.graph.tasks) {
    for (int d : t.deps) EXPECT_LT(d, t.id);
  }
  // Every forward's activations are freed by its own backward (same stage, micro-batch, device).
  int forwards = 0;
  std::map<int, double> stage_rows;
  for (const Task& t : pipe.graph.tasks) {
    if (t.kind != TaskKind::Forward) continue;
    forwards++;
    stage_rows[t.stage] += t.samples;
    EXPECT_EQ(t.samples, std::floor(t.samples)) << t.label << ": the runtime computes whole rows";
    const Task& b = pipe.graph.tasks[t.mem_free_task];
    EXPECT_EQ(b.kind, TaskKind::Backward);
    EXPECT_EQ(b.device, t.device);
    EXPECT_EQ(b.micro_batch, t.micro_batch);
  }
  // Every stage computes each of the mini-batch's 16 rows once.
  const Phase& ph = p.phases[0];
  ASSERT_EQ(stage_rows.size(), ph.stages.size());
  for (auto& kv : stage_rows) EXPECT_EQ(kv.second, 16.0) << "stage " << kv.first;
  // One forward per (device, micro-batch) that has rows: 8 devices over 4 micro-batches
  // of 4 rows; a device of a group gets no task for a micro-batch without rows of it.
  int expected = 0;
  for (const StagePlan& st : ph.stages)
    for (int m = 0; m < ph.micro_batches; m++)
      for (const RowRange& r : stage_split(micro_batch_rows(16, ph.micro_batches, m), st.shares))
        expected += r.size() > 0;
  EXPECT_EQ(forwards, expected);
  EXPECT_LE(forwards, 32);
}

TEST(Plan, ValidationNamesTheTaskOrDevice) {
  Plan good = bart_plan();
  EXPECT_NO_THROW(plan_validate(good, "p.json"));

  Plan p = good;
  Task& first = p.segments[0].graph.tasks[0];
  first.deps.push_back((int)p.segments[0].graph.tasks.size() - 1);
  std::string msg = input_error([&] { plan_validate(p, "p.json"); });
  EXPECT_NE(msg.find("segment \"pipeline\" task 0 (" + first.label + ")"), std::string::npos) << msg;

  p = good;
  p.phases[0].stages[1].layer_begin -= 1;
  int layer = p.phases[0].stages[1].layer_begin;
  EXPECT_EQ(input_error([&] { plan_validate(p, "p.json"); }),
            "p.json: $.phases[0].stages: layer " + std::to_string(layer) + " is placed 2 times (expected exactly once)");

  p = good;
  p.segments[0].graph.tasks[5].device = 42;
  msg = input_error([&] { plan_validate(p, "p.json"); });
  EXPECT_NE(msg.find("$.segments[0].tasks[5].device"), std::string::npos) << msg;
  EXPECT_NE(msg.find("device 42 does not exist"), std::string::npos) << msg;

  p = good;
  p.segments[2].resident_bytes[3] = 5e9;
  msg = input_error([&] { plan_validate(p, "p.json"); });
  EXPECT_NE(msg.find("device nano3 (index 3) is over its memory"), std::string::npos) << msg;

  p = good;
  p.phases[0].stages[0].shares[0] += 0.5;
  msg = input_error([&] { plan_validate(p, "p.json"); });
  EXPECT_NE(msg.find("$.phases[0].stages[0].shares: expected shares summing to 1"), std::string::npos) << msg;
}
