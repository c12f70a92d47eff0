// pac-sim: plan a scenario (or take a plan) and simulate it; compare strategies; sweep
// a parameter. docs/simulator.md describes the model, docs/report-format.md the report.
//
//   pac-sim scenario.json                      plan with the scenario's strategy, simulate
//   pac-sim scenario.json --plan plan.json     replay a given plan on the scenario's cluster
//   pac-sim scenario.json --compare            every strategy x method (the paper's Table 2)
//   pac-sim scenario.json --sweep bandwidth_mbps=100,300,1000
//   pac-sim --validate measured-report.json [--plan plan.json] [--max-error PCT]
//                                              a measured run against the simulation of its plan
//   --json report.json   --trace trace.json   --strategy pac-opt   --quiet
//
// Exit: 0 ok; 2 bad input; 1 when the simulated run fails (out of memory, a device
// fails) or the planner finds no placement; 3 with --validate --max-error when the
// epoch-time error exceeds the limit (docs/fidelity.md).
#include <CLI/CLI.hpp>

#include <cstdio>

#include "planner/planner.h"
#include "sim/engine.h"
#include "sim/report.h"
#include "sim/study.h"
#include "sim/validate.h"
#include "src/common/cli.h"
#include "src/common/error.h"
#include "src/common/fs.h"

using namespace pac;

// A replayed plan must have been made for the same cluster: same device ids, in the
// same order, with the same profiles. The message lists every difference.
static void plan_devices_check(const Plan& p, const Scenario& s, const std::string& plan_file) {
  std::string diff;
  size_t n = std::max(p.scenario.devices.size(), s.devices.size());
  for (size_t i = 0; i < n; i++) {
    std::string a = i < p.scenario.devices.size()
                         ? p.scenario.devices[i].id + " (" + p.scenario.devices[i].profile.name + ")"
                         : "nothing";
    std::string b = i < s.devices.size() ? s.devices[i].id + " (" + s.devices[i].profile.name + ")" : "nothing";
    bool same = a == b;
    if (same && p.scenario.devices[i].profile.memory_bytes != s.devices[i].profile.memory_bytes) {
      a += " memory " + bytes_text(p.scenario.devices[i].profile.memory_bytes);
      b += " memory " + bytes_text(s.devices[i].profile.memory_bytes);
      same = false;
    }
    if (!same) diff += "\n  device " + std::to_string(i) + ": plan has " + a + ", scenario has " + b;
  }
  if (!diff.empty())
    throw_input(plan_file, "$.scenario.devices",
                "the plan was made for other devices than " + s.file + " describes:" + diff);
}

static int pac_sim(int argc, char** argv) {
  CLI::App app{"pac-sim: simulate a PAC plan on a cluster of edge devices (docs/simulator.md)"};
  std::string scenario_file, plan_file, json_file, trace_file, strategy, sweep, profiles;
  bool compare = false, quiet = false;
  std::string validate_file;
  double max_error = -1;
  app.add_option("scenario", scenario_file, "scenario.json (not with --validate: the plan carries it)");
  app.add_option("--plan", plan_file, "replay this plan instead of planning (its devices must match)");
  app.add_option("--strategy", strategy, "planner strategy (default: the scenario's)");
  app.add_flag("--compare", compare, "every strategy x fine-tuning method, one table (the paper's Table 2)");
  app.add_option("--sweep", sweep,
                 "key=v1,v2,...: bandwidth_mbps, latency_ms, devices, epochs, micro_batches, mini_batch, "
                 "samples, seq_len, strategy, network");
  app.add_option("--json", json_file, "write the report (or the --compare/--sweep rows) as JSON");
  app.add_option("--trace", trace_file, "write a Chrome trace (open in Perfetto / chrome://tracing)");
  int64_t trace_iterations = -1;
  app.add_option("--trace-iterations", trace_iterations, "trace only the first N iterations of each segment")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--profiles", profiles, "profiles folder (default: the repository's profiles/)");
  app.add_option("--validate", validate_file,
                 "compare a measured run report (pac-run --report) with the simulation of its plan");
  app.add_option("--max-error", max_error, "with --validate: exit 3 when the epoch-time MAPE exceeds PCT percent")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--quiet", quiet, "no progress lines on stderr");
  if (int rc = cli_parse(app, argc, argv); rc >= 0) return rc;
  if (!validate_file.empty()) {
    if (!scenario_file.empty() || compare || !sweep.empty() || !strategy.empty())
      throw InputError("--validate takes the measured report and optionally --plan, no scenario / --compare / "
                       "--sweep / --strategy (the plan carries the scenario)");
    return validate_main({validate_file, plan_file, json_file, trace_file, max_error, !quiet});
  }
  if (max_error >= 0) throw InputError("--max-error needs --validate");
  if (scenario_file.empty()) throw InputError("scenario.json is required (or --validate report.json)");
  int modes = (compare ? 1 : 0) + (!sweep.empty() ? 1 : 0) + (!plan_file.empty() ? 1 : 0);
  if (modes > 1) throw InputError("--compare, --sweep and --plan exclude each other");
  if (!trace_file.empty() && (compare || !sweep.empty()))
    throw InputError("--trace needs a single run (not --compare or --sweep)");

  Scenario sc = scenario_load(scenario_file, profiles);
  StudyOptions sopt;
  sopt.progress = !quiet;

  if (compare || !sweep.empty()) {
    std::vector<StudyRow> rows =
        compare ? study_compare(sc, sopt) : study_sweep(sc, sweep, strategy, sopt);
    std::printf("%s: %s, %s, %zu devices, %s %.0f Mbps, %d epoch(s)\n\n", sc.name.c_str(), sc.model.name.c_str(),
                sc.data.task.c_str(), sc.devices.size(), sc.network.kind.c_str(), sc.network.bandwidth_bps / 1e6,
                sc.epochs);
    std::fputs(study_table(rows, "vs ref.").c_str(), stdout);
    if (!json_file.empty()) file_write_atomic(json_file, study_to_json(rows, compare ? "compare" : "sweep").dump(1) + "\n");
    return 0;
  }

  Plan plan;
  if (!plan_file.empty()) {
    plan = plan_load(plan_file);
    plan_devices_check(plan, sc, plan_file);
    // Replay on the scenario's network and with its faults: the what-if of a fixed plan.
    plan.scenario.network = sc.network;
    plan.scenario.faults = sc.faults;
  } else {
    plan = plan_make(sc, strategy.empty() ? sc.strategy : strategy);
  }
  SimOptions opt;
  opt.progress = !quiet;
  opt.trace = !trace_file.empty();
  opt.trace_iterations = trace_iterations;
  SimResult r = sim_run(plan, opt);
  std::fputs(report_summary(plan, r).c_str(), stdout);
  if (!quiet)
    std::fprintf(stderr, "pac-sim: %lld events in %.3f s (%.2f M events/s)\n", static_cast<long long>(r.events),
                 r.wall_s, r.wall_s > 0 ? r.events / r.wall_s / 1e6 : 0.0);
  if (!json_file.empty()) file_write_atomic(json_file, report_to_json(plan, r).dump(1) + "\n");
  if (!trace_file.empty()) {
    file_write_atomic(trace_file, trace_to_chrome_json(plan, r));
    if (r.trace_truncated)
      std::fprintf(stderr, "pac-sim: trace truncated after %zu events\n", r.trace.size());
  }
  return r.ok ? 0 : 1;
}

int main(int argc, char** argv) {
  return run_main("pac-sim", [&] { return pac_sim(argc, argv); });
}
