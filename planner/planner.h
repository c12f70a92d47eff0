// Planner entry point: scenario -> complete plan, for every strategy.
#pragma once
#include <string>
#include <vector>

#include "src/common/error.h"
#include "src/core/plan.h"

namespace pac {

// "pac", "pac-opt", "standalone", "eddl", "ecofl", "asteroid".
const std::vector<std::string>& planner_strategies();

// Thrown when no placement of the model fits the devices' memory. `tightest_device`
// is the device that came closest (smallest shortfall); the message says both.
struct PlanInfeasible : RuntimeError {
  PlanInfeasible(const std::string& msg, std::string device, double need_bytes, double have_bytes)
      : RuntimeError(msg), tightest_device(std::move(device)), need_bytes(need_bytes), have_bytes(have_bytes) {}
  std::string tightest_device;
  double need_bytes, have_bytes;
};

// Plans `s` with `strategy` (s.method says the fine-tuning method). Throws InputError
// for an unknown strategy or a scenario the strategy cannot express, PlanInfeasible
// when nothing fits memory.
Plan plan_make(const Scenario& s, const std::string& strategy);

}  // namespace pac
