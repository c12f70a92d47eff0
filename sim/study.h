// Studies over many simulations of one scenario: `pac-sim --compare` (every strategy x
// fine-tuning method, the paper's Table 2) and `pac-sim --sweep key=v1,v2,...`
// (what-if over one scenario parameter). Both produce rows of the same shape, printed as
// one table and written as JSON.
#pragma once
#include <string>
#include <vector>

#include "sim/engine.h"
#include "src/core/plan.h"

namespace pac {

struct StudyRow {
  std::string label;          // "pac parallel_adapters+cache(fp16)" or "bandwidth_mbps=100"
  std::string strategy;
  std::string method;
  std::string status;         // "ok" | "oom" (planner found no fit or simulated OOM) | "fault" | "n/a"
  std::string note;           // why not ok (device, need / have), one line
  std::string groups;         // "[4-4]"
  double total_s = 0;
  std::vector<double> epoch_s;
  double predicted_s = 0;     // the planner's own prediction
  std::vector<double> peak_memory_bytes;  // per device
  double energy_j = 0;
  double speedup = 0;         // vs the reference row (0 when there is none)
  bool reference = false;     // the row speedups are relative to
};

struct StudyOptions {
  bool progress = true;
};

// Fine-tuning methods the strategies are combined with. PAC/PAC-opt run Parallel
// Adapters with the scenario's cache setting; the baselines each run full, LoRA and
// Houlsby adapters (the paper's baselines).
std::vector<StudyRow> study_compare(const Scenario& s, const StudyOptions& opt);

// Keys: bandwidth_mbps, latency_ms, devices, epochs, micro_batches, mini_batch, samples,
// seq_len, strategy, network (shared|switched). `spec` is "key=v1,v2,...". Plans with
// `strategy` (empty: the scenario's). Throws InputError for an unknown key or value.
std::vector<StudyRow> study_sweep(const Scenario& s, const std::string& spec, const std::string& strategy,
                                  const StudyOptions& opt);

// Plans and simulates one configuration into a row (never throws for OOM: the row says).
StudyRow study_run(const Scenario& s, const std::string& strategy, const std::string& label);

// Table for stdout; `speedup_title` heads the speedup column ("vs standalone").
std::string study_table(const std::vector<StudyRow>& rows, const std::string& speedup_title);
json study_to_json(const std::vector<StudyRow>& rows, const std::string& kind);

}  // namespace pac
