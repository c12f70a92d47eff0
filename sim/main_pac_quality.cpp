// pac-quality: the planner-quality gate (docs/quality-gates.md). Plans and simulates every
// scenario of the suite with every strategy, prints a table, and compares with the
// committed baseline.
//
//   pac-quality                                  check tests/quality against its baseline
//   pac-quality --update --reason "why"          rewrite the baseline (atomically), then check
//   pac-quality --suite DIR --baseline FILE --profiles DIR
//
// Exit: 0 the gate passes; 1 it fails (a regression > tolerance, or pac-opt slower than
// another strategy without an excuse); 2 bad input (suite, baseline, missing --reason).
#include <cstdio>

#include "sim/quality.h"
#include "src/common/cli.h"
#include "src/common/error.h"

using namespace pac;

static int pac_quality(int argc, char** argv) {
  CLI::App app{"pac-quality: planner-quality gate over a scenario suite (docs/quality-gates.md)"};
  QualityGateOptions opt;
  opt.suite_dir = "tests/quality";
  bool quiet = false;
  app.add_option("--suite", opt.suite_dir, "folder of *.scenario.json (default: tests/quality)");
  app.add_option("--baseline", opt.baseline_file, "baseline file (default: <suite>/baseline.json)");
  app.add_option("--profiles", opt.profiles_dir, "profiles folder (default: <suite>/../../profiles)");
  app.add_flag("--update", opt.update, "rewrite the baseline with today's numbers (keeps tolerance and excuses)");
  app.add_option("--reason", opt.reason, "why the baseline changes (required with --update)");
  app.add_flag("--quiet", quiet, "no progress lines");
  if (int rc = cli_parse(app, argc, argv); rc >= 0) return rc;
  opt.progress = !quiet;
  std::string report;
  QualityVerdict v = quality_gate(opt, &report);
  std::fputs(report.c_str(), stdout);
  return v.ok() ? 0 : 1;
}

int main(int argc, char** argv) {
  return run_main("pac-quality", [&] { return pac_quality(argc, argv); });
}
