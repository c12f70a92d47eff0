// The plan -> per-device assignment translation (exec/assignment.h) on the planner's
// own plans for shipped scenarios and every strategy, plus closed-form row splits.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "exec/assignment.h"
#include "planner/planner.h"
#include "src/common/error.h"

using namespace pac;

static const std::string kSrc = PAC_SOURCE_DIR;

TEST(ExecRuntimeAssignment, ClosedFormRowSplits) {
  // 10 rows in 4 micro-batches: [0,2) [2,5) [5,7) [7,10) (m*n/M, integer division).
  int expect_b[] = {0, 2, 5, 7}, expect_e[] = {2, 5, 7, 10};
  for (int m = 0; m < 4; m++) {
    RowRange r = micro_batch_rows(10, 4, m);
    EXPECT_EQ(r.begin, expect_b[m]);
    EXPECT_EQ(r.end, expect_e[m]);
  }
  // Shares 0.25/0.75 of [4, 12): boundary 4 + round(0.25 * 8) = 6 -> [4,6) [6,12).
  std::vector<double> s = {0.25, 0.75};
  EXPECT_EQ(share_rows({4, 12}, s, 0).begin, 4);
  EXPECT_EQ(share_rows({4, 12}, s, 0).end, 6);
  EXPECT_EQ(share_rows({4, 12}, s, 1).begin, 6);
  EXPECT_EQ(share_rows({4, 12}, s, 1).end, 12);
  // Thirds that do not sum exactly to 1 in floating point still cover [0, 3): 1 row each.
  std::vector<double> t = {0.333, 0.333, 0.334};
  for (int g = 0; g < 3; g++) {
    EXPECT_EQ(share_rows({0, 3}, t, g).begin, g);
    EXPECT_EQ(share_rows({0, 3}, t, g).end, g + 1);
  }
}

// Checks one phase's assignments against the plan, independently of how they were made:
// layers and side blocks placed exactly once, embedding/head once, rows of every
// micro-batch partitioned by each stage, forward transfers covering each micro-batch
// exactly once and matching the receiver's view (upstream peers), rows within one of
// share x size.
static void check_phase(const Plan& plan, int phase, const std::string& what) {
  std::vector<Assignment> as = assignments_make(plan, phase);
  const Phase& ph = plan.phases[phase];
  int L = plan.scenario.model.total_layers();
  ASSERT_EQ(as.size(), plan.scenario.devices.size()) << what;
  std::vector<int> layer_count(L, 0), block_count(L + 2, 0);
  int embed = 0, head = 0;
  std::set<int> stage_firsts;
  for (const Assignment& a : as) {
    if (a.stage < 0) continue;
    // A device's JSON round trip gives the same assignment.
    Assignment b = assignment_from_json(JsonIn::from(assignment_to_json(a)));
    EXPECT_EQ(assignment_to_json(b), assignment_to_json(a)) << what;
    EXPECT_EQ(ph.stages[a.stage].devices[a.group_rank], a.device) << what;
    if (a.group_rank == 0) {
      // Count layers and blocks once per stage (the group replicates them).
      for (int l = a.layer_begin(); l < a.layer_end(); l++) layer_count[l]++;
      for (int i = a.side_block_begin(); i < a.side_block_end(); i++) block_count[i]++;
      embed += a.has_embedding();
      head += a.has_head();
    }
  }
  for (int l = 0; l < L; l++) EXPECT_EQ(layer_count[l], 1) << what << " layer " << l;
  for (int i = 1; i <= L; i++) EXPECT_EQ(block_count[i], 1) << what << " side block " << i;
  EXPECT_EQ(embed, 1) << what;
  EXPECT_EQ(head, 1) << what;

  int M = std::max(1, ph.micro_batches);
  for (int n : {plan.scenario.data.mini_batch, M + 1, 7 * M + 3}) {
    for (int m = 0; m < M; m++) {
      RowRange mb = micro_batch_rows(n, M, m);
      for (int s = 0; s < static_cast<int>(ph.stages.size()); s++) {
        // The stage's devices partition the micro-batch, in device order.
        int next = mb.begin;
        const StagePlan& sp = ph.stages[s];
        for (int g = 0; g < static_cast<int>(sp.devices.size()); g++) {
          const Assignment& a = as[sp.devices[g]];
          RowRange r = assignment_rows(a, n, m);
          EXPECT_EQ(r.begin, next) << what;
          // |rows - share * size| <= 1 (two roundings of the cumulative share).
          EXPECT_LE(std::fabs(r.size() - sp.shares[g] * mb.size()), 1.0 + 1e-9) << what;
          next = r.end;
          // Forward transfers: cover this device's rows exactly, each matched by the
          // receiver's upstream view of the same rows.
          int sent = 0;
          for (const PeerRows& p : assignment_down_peers(a, n, m)) {
            sent += p.rows.size();
            const Assignment& recv = as[ph.stages[s + 1].devices[p.stage_index]];
            bool matched = false;
            for (const PeerRows& q : assignment_up_peers(recv, n, m))
              if (q.id == a.device_id) matched = q.rows.begin == p.rows.begin && q.rows.end == p.rows.end;
            EXPECT_TRUE(matched) << what << " " << a.device_id << " -> " << p.id;
          }
          if (s + 1 < static_cast<int>(ph.stages.size())) EXPECT_EQ(sent, r.size()) << what;
          else EXPECT_TRUE(assignment_down_peers(a, n, m).empty()) << what;
        }
        EXPECT_EQ(next, mb.end) << what;
      }
    }
  }
}

TEST(ExecRuntimeAssignment, PlannerPlansOfShippedScenarios) {
  int checked = 0, pipelines = 0, groups = 0;
  for (const char* sc : {"local-stories260k", "home-wifi-tinyllama", "home-wifi-t5-base-mixed", "lab-llama-2-7b"}) {
    Scenario s = scenario_load(kSrc + "/scenarios/" + sc + ".json");
    for (const std::string& strategy : planner_strategies()) {
      Plan p;
      try {
        p = plan_make(s, strategy);
      } catch (const std::exception& e) {
        // The strategy does not fit this scenario (out of memory): nothing to assign.
        if (std::string(e.what()).find("no feasible plan") == std::string::npos) throw;
        continue;
      }
      for (int ph = 0; ph < static_cast<int>(p.phases.size()); ph++) {
        check_phase(p, ph, std::string(sc) + " " + strategy + " phase " + std::to_string(ph));
        checked++;
        pipelines += p.phases[ph].stages.size() > 1;
        for (const StagePlan& st : p.phases[ph].stages) groups += st.devices.size() > 1;
      }
    }
  }
  // The set must exercise real pipelines and real groups, not only trivial phases.
  EXPECT_GE(checked, 10);
  EXPECT_GE(pipelines, 3);
  EXPECT_GE(groups, 3);
}

TEST(ExecRuntimeAssignment, BadFragmentNamesThePath) {
  Scenario s = scenario_load(kSrc + "/scenarios/local-stories260k.json");
  Plan p = plan_make(s, "pac");
  json j = assignment_to_json(assignments_make(p, 0)[0]);
  j["stages"][0]["shares"] = json::array();
  for (size_t i = 0; i < j["stages"][0]["devices"].size(); i++) j["stages"][0]["shares"].push_back(0.1);
  try {
    assignment_from_json(JsonIn::from(j, "frag.json"));
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("frag.json"), std::string::npos) << m;
    EXPECT_NE(m.find("shares"), std::string::npos) << m;
  }
}
