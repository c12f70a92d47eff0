// The planner-quality gate (docs/quality-gates.md, issue 6 "CI quality gates"): a
// committed suite of scenarios (tests/quality/*.scenario.json) is planned and simulated
// with every strategy; the simulated total of each is compared with a committed baseline
// (tests/quality/baseline.json). The gate fails when
//   - pac or pac-opt is slower than its baseline by more than the tolerance (1%), or
//   - pac-opt is slower than pac or any other strategy on the same scenario (today's
//     numbers), unless that pair is listed under "excused" with a reason and a largest
//     allowed gap (then it is printed on every run and fails only beyond that gap).
// A strategy that cannot run (planner finds no placement, simulated OOM, not applicable)
// counts as infinitely slow. Improvements pass and are printed, so the baseline gets
// updated in the same commit with a reason (PAC_QUALITY_UPDATE=1 or pac-quality --update).
//
// The check is a plain function of numbers (quality_check) so that its rules are tested
// on in-memory cases; quality_gate() wires it to the files.
#pragma once
#include <string>
#include <vector>

#include "src/common/json_in.h"
#include "src/core/scenario.h"

namespace pac {

// One strategy on one scenario.
struct QualityEntry {
  std::string scenario;           // file stem: "q03-4nano-bart-large-nocache"
  std::string strategy;
  std::string status = "ok";      // "ok" | "oom" | "fault" | "n/a"
  std::string note;               // why not ok
  std::string groups;             // the plan's shape, "[1-3]"
  double total_s = 0;             // simulated
  std::vector<double> epoch_s;    // simulated, per epoch
  double predicted_s = 0;         // the planner's own prediction (not kept in the baseline)
};

// A (scenario, strategy) pair where pac-opt may be slower than `strategy`, with why, but
// by at most `max_gap` (a fraction: 0.09 = pac-opt at most 9% slower): an excuse is a
// known, bounded weakness, not a blank cheque.
struct QualityExcuse {
  std::string scenario, strategy, reason;
  double max_gap = 0;
};

struct QualityBaseline {
  double tolerance = 0.01;        // allowed slowdown of pac / pac-opt vs baseline (fraction)
  std::string reason;             // why the baseline was last updated
  std::vector<QualityEntry> entries;
  std::vector<QualityExcuse> excused;
};

struct QualityVerdict {
  std::vector<std::string> failures;      // each one line naming scenario, strategy, numbers
  std::vector<std::string> improvements;  // "pac improved by 3.2% on X; update the baseline"
  std::vector<std::string> notes;         // excused losses, non-gated baseline drift
  bool ok() const { return failures.empty(); }
};

// The simulated total, +infinity when the strategy cannot run.
double quality_time(const QualityEntry& e);

// Plans and simulates `s` with every strategy (planner_strategies() order).
std::vector<QualityEntry> quality_run_scenario(const Scenario& s, const std::string& name);

// The rules above, on numbers only.
QualityVerdict quality_check(const std::vector<QualityEntry>& now, const QualityBaseline& base);

QualityBaseline quality_baseline_from_json(const JsonIn& doc);
QualityBaseline quality_baseline_load(const std::string& file);
json quality_baseline_to_json(const QualityBaseline& b);

// One row per scenario: each strategy's simulated total in seconds ("OOM" / "n/a"),
// pac-opt's shape and pac-opt's speedup over the best other strategy.
std::string quality_table(const std::vector<QualityEntry>& now);

struct QualityGateOptions {
  std::string suite_dir;          // holds *.scenario.json
  std::string baseline_file;      // "" = <suite_dir>/baseline.json
  std::string profiles_dir;       // "" = <suite_dir>/../../profiles when present, else scenario_load's search
  bool update = false;            // rewrite the baseline (atomically) before checking
  std::string reason;             // required with update
  bool progress = true;
};

// Runs the suite, optionally rewrites the baseline (keeping its tolerance and excuses),
// checks, and returns the verdict; `report` receives the table and every message.
// Throws InputError for a bad suite or baseline file, or an update without a reason.
QualityVerdict quality_gate(const QualityGateOptions& opt, std::string* report);

}  // namespace pac
