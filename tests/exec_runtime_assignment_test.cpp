// The plan -> per-device assignment translation (exec/assignment.h) on the planner's
// own plans for shipped scenarios and every strategy, plus closed-form row splits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
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

// A stage's rows of micro-batch m of an n-row mini-batch, all devices.
static std::vector<RowRange> split_of(int n, int M, int m, const std::vector<double>& shares) {
  return stage_split(micro_batch_rows(n, M, m), shares);
}

// Every micro-batch m of n rows in M: device g holds [begin[m][g], end[m][g]).
static void expect_splits(int n, int M, const std::vector<double>& shares, const std::vector<std::vector<int>>& begin,
                          const std::vector<std::vector<int>>& end) {
  for (int m = 0; m < M; m++) {
    std::vector<RowRange> sp = split_of(n, M, m, shares);
    ASSERT_EQ(sp.size(), shares.size());
    for (size_t g = 0; g < shares.size(); g++) {
      EXPECT_EQ(sp[g].begin, begin[m][g]) << "n " << n << " micro-batch " << m << " device " << g;
      EXPECT_EQ(sp[g].end, end[m][g]) << "n " << n << " micro-batch " << m << " device " << g;
    }
  }
}

TEST(ExecRuntimeAssignment, SmallMicroBatchesSpreadOverTheStage) {
  // The testbed case (docs/testbed-compare.md): mini-batch 8 in 8 one-row micro-batches,
  // shares 1/8, 2/8, 2/8, 3/8 (weights 1:2:2:3). Largest deficit w_g*(r+1) - 8*count_g,
  // by hand: row 0 -> 3 (deficits 1,2,2,3), 1 -> 1 (2,4,4,-2; tie 1/2 -> 1), 2 -> 2,
  // 3 -> 0 (4,0,0,4; tie -> 0), 4 -> 3, 5 -> 1, 6 -> 2, 7 -> 3 (0,0,0,8).
  std::vector<double> s = {0.125, 0.25, 0.25, 0.375};
  int expect_dev[8] = {3, 1, 2, 0, 3, 1, 2, 3};
  std::vector<int> total(4, 0), busy(4, 0);
  for (int m = 0; m < 8; m++) {
    std::vector<RowRange> sp = split_of(8, 8, m, s);
    ASSERT_EQ(sp.size(), 4u);
    for (int g = 0; g < 4; g++) {
      // The one row m sits with expect_dev[m]; the others hold the empty range at m or m+1.
      EXPECT_EQ(sp[g].size(), g == expect_dev[m] ? 1 : 0) << "micro-batch " << m << " device " << g;
      total[g] += sp[g].size();
      busy[g] += sp[g].size() > 0;
    }
    EXPECT_EQ(sp[expect_dev[m]].begin, m);
  }
  // Totals 1/2/2/3 = share x 8, and every device computes in 1/2/2/3 micro-batches:
  // no device sits out the mini-batch. The old per-micro-batch rounding gave device 2
  // all 8 rows: its boundaries b + round(.375) = b and b + round(.625) = b + 1.
  for (int g = 0; g < 4; g++) {
    EXPECT_EQ(total[g], static_cast<int>(s[g] * 8));
    EXPECT_EQ(busy[g], static_cast<int>(s[g] * 8));
  }
  EXPECT_EQ(share_rows({5, 6}, s, 2).size(), 1);  // the old rule, for the record

  // Same shares, 4 micro-batches of 2 rows: the sequence 3,1 | 2,0 | 3,1 | 2,3 gives
  // counts (0,1,0,1) (1,0,1,0) (0,1,0,1) (0,0,1,1), laid out contiguously in device order.
  expect_splits(8, 4, s, {{0, 0, 1, 1}, {2, 3, 3, 4}, {4, 4, 5, 5}, {6, 6, 6, 7}},
                {{0, 1, 1, 2}, {3, 3, 4, 4}, {4, 5, 5, 6}, {6, 6, 7, 8}});
}

TEST(ExecRuntimeAssignment, EqualSharesSplitEqually) {
  // Equal weights tie every round: plain round-robin 0,1,2,0,1,2,... So 12 rows in 2
  // micro-batches of 6 give 2 contiguous rows each: [b, b+2) [b+2, b+4) [b+4, b+6).
  std::vector<double> t = {1.0 / 3, 1.0 / 3, 1.0 / 3};
  for (int m = 0; m < 2; m++) {
    std::vector<RowRange> sp = split_of(12, 2, m, t);
    for (int g = 0; g < 3; g++) {
      EXPECT_EQ(sp[g].begin, 6 * m + 2 * g);
      EXPECT_EQ(sp[g].end, 6 * m + 2 * g + 2);
    }
  }
  // The testbed's pac stage (docs/testbed-compare.md): thirds, 8 rows in 4 micro-batches
  // of 2. Round-robin 0,1 | 2,0 | 1,2 | 0,1: totals 3/3/2 and busy in 3/3/2 micro-batches,
  // where rounding each micro-batch gave device 1 none ([b + round(2/3), b + round(4/3))).
  std::vector<int> total(3, 0), busy(3, 0);
  for (int m = 0; m < 4; m++) {
    std::vector<RowRange> sp = split_of(8, 4, m, t);
    for (int g = 0; g < 3; g++) {
      total[g] += sp[g].size();
      busy[g] += sp[g].size() > 0;
    }
    EXPECT_EQ(share_rows(micro_batch_rows(8, 4, m), t, 1).size(), 0);
  }
  EXPECT_EQ(total, std::vector<int>({3, 3, 2}));
  EXPECT_EQ(busy, std::vector<int>({3, 3, 2}));
  // Halves of 8 rows in 2 micro-batches: [0,2) [2,4) | [4,6) [6,8), as the rounding gave.
  std::vector<double> h = {0.5, 0.5};
  for (int m = 0; m < 2; m++)
    for (int g = 0; g < 2; g++) {
      EXPECT_EQ(split_of(8, 2, m, h)[g].begin, 4 * m + 2 * g);
      EXPECT_EQ(split_of(8, 2, m, h)[g].end, 4 * m + 2 * g + 2);
      EXPECT_EQ(split_of(8, 2, m, h)[g].begin, share_rows(micro_batch_rows(8, 2, m), h, g).begin);
    }
  // One device holds every row.
  EXPECT_EQ(split_of(5, 2, 1, {1.0})[0].begin, 2);
  EXPECT_EQ(split_of(5, 2, 1, {1.0})[0].end, 5);
}

// Whole rows (src/core/rows.h), closed form. Shares 1/3 : 2/3 over 8 rows in 4
// micro-batches of 2: the row rule gives rows to devices 1,0 | 1,1 | 0,1 | 1,0, i.e.
// (1,1), (0,2), (1,1), (1,1). The planner's search bound, with 2 s and 1 s per row,
// prices each device at its fullest micro-batch: ceil(2/3) x 2 s = ceil(4/3) x 1 s = 2 s,
// which is also every micro-batch's slowest part above (the fluid model: 2 / (1/2 + 1)
// = 1.33 s). Over the whole mini-batch (a stage no neighbour waits on): ceil(8/3) x 2 s
// = 6 s, ceil(16/3) x 1 s = 6 s, matching the deal's 3 and 5 rows (6 s and 5 s).
TEST(ExecRuntimeAssignment, WholeRowsClosedForm) {
  std::vector<double> shares = {1.0 / 3, 2.0 / 3}, row_s = {2.0, 1.0};
  std::vector<std::vector<int>> rows = stage_rows_per_micro_batch(8, 4, shares);
  std::vector<std::vector<int>> want = {{1, 1}, {0, 2}, {1, 1}, {1, 1}};
  EXPECT_EQ(rows, want);
  EXPECT_DOUBLE_EQ(stage_rows_bound_s(2, row_s), 2.0);
  EXPECT_DOUBLE_EQ(stage_rows_bound_s(8, row_s), 6.0);
  // One device: all rows, 2 x 3 s.
  EXPECT_DOUBLE_EQ(stage_rows_bound_s(2, {3.0}), 6.0);
  // Four equal devices on 2-row micro-batches: two idle in every micro-batch, so a
  // micro-batch takes one row's time (1 s), twice the fluid 0.5 s; the deal agrees.
  std::vector<double> one(4, 1.0);
  EXPECT_DOUBLE_EQ(stage_rows_bound_s(2, one), 1.0);
  for (const std::vector<int>& c : stage_rows_per_micro_batch(8, 4, std::vector<double>(4, 0.25)))
    EXPECT_EQ(*std::max_element(c.begin(), c.end()), 1);
  EXPECT_DOUBLE_EQ(stage_rows_bound_s(8, one), 2.0);  // 2 rows each over the mini-batch
}

TEST(ExecRuntimeAssignment, ShortLastMiniBatch) {
  // n = 3 < M = 4: micro-batches [0,0) [0,1) [1,2) [2,3) (m*3/4). Halves alternate
  // 0,1,0 over rows 0..2: micro-batch 1 -> device 0, 2 -> device 1, 3 -> device 0.
  std::vector<double> h = {0.5, 0.5};
  expect_splits(3, 4, h, {{0, 0}, {0, 1}, {1, 1}, {2, 3}}, {{0, 0}, {1, 1}, {1, 2}, {3, 3}});
}

TEST(ExecRuntimeAssignment, RowRuleBoundOnEveryPrefix) {
  // The rule's guarantee (exec/assignment.h): after any k rows, s_g*k - (G-1) < count_g
  // < s_g*k + 1 (deficits stay above -W and sum to 0). Checked on pseudo-random shares
  // (fixed LCG, 1..6 devices, some zero shares) against a count taken row by row with
  // one-row ranges, independently of stage_split's layout.
  uint64_t x = 12345;
  auto next = [&x]() {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(x >> 33);
  };
  for (int trial = 0; trial < 200; trial++) {
    int G = 1 + next() % 6;
    std::vector<double> s(G);
    double sum = 0;
    for (int g = 0; g < G; g++) {
      s[g] = (next() % 5 == 0) ? 0.0 : 1 + next() % 1000;
      sum += s[g];
    }
    if (sum == 0) s[0] = sum = 1;
    for (double& v : s) v /= sum;
    int n = 1 + next() % 64;
    std::vector<int> count(G, 0);
    for (int r = 0; r < n; r++) {
      std::vector<int> c = stage_row_counts({r, r + 1}, s);
      int given = 0;
      for (int g = 0; g < G; g++) given += c[g];
      ASSERT_EQ(given, 1) << "row " << r;
      for (int g = 0; g < G; g++) {
        count[g] += c[g];
        double ideal = s[g] * (r + 1);
        EXPECT_LT(count[g], ideal + 1 + 1e-4) << "trial " << trial << " row " << r << " device " << g;
        EXPECT_GT(count[g], ideal - std::max(1, G - 1) - 1e-4) << "trial " << trial << " row " << r;
        if (s[g] == 0) {
          EXPECT_EQ(count[g], 0);
        }
      }
    }
    // The same counts come out of one call over the whole mini-batch.
    EXPECT_EQ(stage_row_counts({0, n}, s), count) << "trial " << trial;
  }
}

// A hand-made two-stage phase: devices 0..2 in stage 0 (shares s0), 3..4 in stage 1 (s1).
static std::vector<Assignment> two_stages(int M, const std::vector<double>& s0, const std::vector<double>& s1) {
  Assignment base;
  base.phase_kind = "pipeline";
  base.micro_batches = M;
  base.n_layers = 2;
  int d = 0;
  for (int st = 0; st < 2; st++) {
    StageInfo si;
    si.layer_begin = st;
    si.layer_end = st + 1;
    si.shares = st == 0 ? s0 : s1;
    for (size_t g = 0; g < si.shares.size(); g++, d++) {
      si.devices.push_back(d);
      si.device_ids.push_back("d" + std::to_string(d));
      si.addresses.push_back("");
    }
    base.stages.push_back(si);
  }
  std::vector<Assignment> out;
  for (int st = 0; st < 2; st++)
    for (size_t g = 0; g < base.stages[st].devices.size(); g++) {
      Assignment a = base;
      a.device = base.stages[st].devices[g];
      a.device_id = base.stages[st].device_ids[g];
      a.stage = st;
      a.group_rank = static_cast<int>(g);
      out.push_back(a);
    }
  return out;
}

TEST(ExecRuntimeAssignment, TwoStagesSendEveryRowOnce) {
  // Stage 0 shares .2/.3/.5, stage 1 .75/.25: every row of every micro-batch leaves
  // stage 0 exactly once (forward) and the receiver names the same rows upstream; the
  // gradients go back over the same pairs, so every row comes back exactly once too.
  std::vector<Assignment> as = two_stages(4, {0.2, 0.3, 0.5}, {0.75, 0.25});
  for (int n : {1, 3, 4, 8, 10, 37}) {
    for (int m = 0; m < 4; m++) {
      RowRange mb = micro_batch_rows(n, 4, m);
      std::vector<int> sent(n, 0), back(n, 0);
      for (int i = 0; i < 3; i++) {
        RowRange mine = assignment_rows(as[i], n, m);
        for (const PeerRows& p : assignment_down_peers(as[i], n, m)) {
          EXPECT_GE(p.rows.begin, mine.begin);
          EXPECT_LE(p.rows.end, mine.end);
          for (int r = p.rows.begin; r < p.rows.end; r++) sent[r]++;
        }
      }
      for (int j = 3; j < 5; j++) {
        EXPECT_TRUE(assignment_down_peers(as[j], n, m).empty());
        for (const PeerRows& p : assignment_up_peers(as[j], n, m))
          for (int r = p.rows.begin; r < p.rows.end; r++) back[r]++;
      }
      for (int r = 0; r < n; r++) {
        int inside = r >= mb.begin && r < mb.end;
        EXPECT_EQ(sent[r], inside) << "n " << n << " micro-batch " << m << " row " << r;
        EXPECT_EQ(back[r], inside) << "n " << n << " micro-batch " << m << " row " << r;
      }
    }
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
  for (int n : {plan.scenario.data.mini_batch, M + 1, 7 * M + 3, M / 2 + 1}) {
    std::vector<std::vector<int>> total(ph.stages.size());
    for (size_t s = 0; s < ph.stages.size(); s++) total[s].assign(ph.stages[s].devices.size(), 0);
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
          next = r.end;
          total[s][g] += r.size();
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
    // Over the mini-batch each device gets its share of the rows: within the row rule's
    // bound (s*n - (G-1), s*n + 1) (exec/assignment.h), 2^-20 weights aside.
    for (size_t s = 0; s < ph.stages.size(); s++) {
      const StagePlan& sp = ph.stages[s];
      int G = static_cast<int>(sp.devices.size());
      for (int g = 0; g < G; g++) {
        double ideal = sp.shares[g] * n;
        EXPECT_LT(total[s][g], ideal + 1 + 1e-3) << what << " n " << n << " stage " << s << " device " << g;
        EXPECT_GT(total[s][g], ideal - std::max(1, G - 1) - 1e-3) << what << " n " << n << " stage " << s;
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
