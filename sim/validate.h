// pac-sim --validate: how far the simulator's prediction is from a measured run.
//
// A measured run report (pac-run --report, docs/report-format.md) is compared with the
// report pac-sim writes for the same plan, field by field: per-epoch time, per-device
// busy time and peak memory, bytes per directed link. Error = (predicted - measured) /
// measured, in percent (signed; the measurement is the reference), and the mean absolute
// percentage error (MAPE) of epoch time is the one number CI gates on.
// docs/fidelity.md describes the mode and the JSON it writes.
#pragma once
#include <string>
#include <vector>

#include "src/common/json_in.h"
#include "src/core/plan.h"

namespace pac {

// One compared quantity. has_* false when one side lacks it (a link only one side
// used); error_pct is meaningful only when both sides exist and measured != 0.
struct ValidateItem {
  std::string name;           // "1" (epoch), "w0" (device), "w0->w1" (link)
  double measured = 0, predicted = 0;
  bool has_measured = false, has_predicted = false;
  bool has_error() const { return has_measured && has_predicted && measured != 0; }
  double error_pct() const;   // (predicted - measured) / measured x 100
};

struct Validation {
  std::string measured_file, plan_file;
  std::string measured_source;      // "run" | "sim"
  std::string scenario, strategy, groups;
  std::vector<ValidateItem> epochs;       // seconds
  ValidateItem total;                     // seconds
  std::vector<ValidateItem> busy;         // per device, seconds
  std::vector<ValidateItem> bubble;       // per device, seconds
  std::vector<ValidateItem> peak_memory;  // per device, bytes
  // What the measured side of peak_memory is: "tensors" (the run's peak_tensor_bytes, what
  // the simulator counts) or "resident" (peak RSS: reports without tensor accounting).
  std::string peak_memory_basis = "resident";
  std::vector<ValidateItem> links;        // per directed pair, bytes
  // Segments simulated as the run executed them rather than as planned (the report's
  // run.pipeline_flush, plan_flush_pipelines): overlapped pipelines with a flush.
  int flushed_segments = 0;
  double epoch_mape_pct = 0;        // mean over epochs of |error|
  double epoch_max_error_pct = 0;   // largest |error| of one epoch
};

// The plan a measured report ran: `explicit_plan` when given, else the report's
// "plan_file" (relative paths taken from the report's folder). Throws InputError naming
// $.plan_file when neither exists.
std::string validate_plan_file(const JsonIn& measured, const std::string& explicit_plan);

// Compares a measured report with the simulated report of `plan` (both pac-report
// documents). Checks that the measured report is a finished run of this plan (scenario
// name, strategy, device ids, the run's settings when it records them, epoch count) and
// that every field compared is there; throws InputError naming file and JSON path.
Validation validate_reports(const JsonIn& measured, const JsonIn& simulated, const Plan& plan,
                            const std::string& plan_file);

std::string validate_table(const Validation& v);
// {"format": "pac-validation", ...}; `max_error_pct` < 0: no limit given.
json validate_to_json(const Validation& v, double max_error_pct);

struct ValidateOptions {
  std::string measured_file;   // the measured report
  std::string plan_file;       // --plan (optional)
  std::string json_file;       // --json: the comparison, atomically
  std::string trace_file;      // --trace: the simulated run's Chrome trace
  double max_error_pct = -1;   // --max-error: exit 3 when the epoch MAPE exceeds it
  bool progress = false;
};

// The whole mode: load, simulate, compare, print, write. Returns the exit code: 0, or 3
// when max_error_pct >= 0 and the epoch-time MAPE exceeds it. Bad input throws
// InputError (exit 2); a simulated run that fails (OOM) throws RuntimeError (exit 1).
int validate_main(const ValidateOptions& o);

}  // namespace pac
