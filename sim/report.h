// What pac-sim writes: the report JSON (docs/report-format.md, shared with pac-run),
// the summary a person reads, and the Chrome trace (Perfetto).
#pragma once
#include <string>

#include "sim/engine.h"
#include "src/core/plan.h"

namespace pac {

// The report document. Deterministic: the same plan gives the same bytes (no host
// times, no dates).
json report_to_json(const Plan& plan, const SimResult& r);

// "[4-4]": devices per stage of the plan's first pipeline phase, "[8]" for pure data
// parallelism, "[1]" standalone.
std::string plan_groups_text(const Plan& plan);
// "parallel_adapters+cache(fp16)", "lora", ...
std::string method_text(const MethodSpec& m);

// Multi-line summary for stdout.
std::string report_summary(const Plan& plan, const SimResult& r);

// Chrome trace JSON: one track per device compute engine, per device storage engine
// and per link that carried data. Times in microseconds.
std::string trace_to_chrome_json(const Plan& plan, const SimResult& r);

// "1.23 GB", "512 MB", "12 kB"
std::string bytes_text(double b);

}  // namespace pac
