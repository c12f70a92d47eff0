// pac-plan: scenario.json -> plan.json, with a readable summary.
//   pac-plan scenarios/paper-bart-large-mrpc.json -o plan.json [--strategy pac-opt] [--json]
//   pac-plan scenario.json --compare     (every strategy side by side, nothing written)
#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>

#include "planner/planner.h"
#include "src/common/cli.h"
#include "src/common/error.h"
#include "src/common/progress.h"

using namespace pac;

static std::string gb(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GB", bytes / 1e9);
  return buf;
}

static std::string groups_text(const Phase& ph) {
  std::string s = "[";
  for (size_t j = 0; j < ph.stages.size(); j++) s += (j ? "-" : "") + std::to_string(ph.stages[j].devices.size());
  return s + "]";
}

static void summary_print(const Plan& p) {
  const Scenario& s = p.scenario;
  std::printf("plan: %s, strategy %s, %s + %s, %lld samples x %d epochs, %zu devices (%s network, %.0f Mbps)\n",
              s.name.c_str(), p.strategy.c_str(), s.model.name.c_str(), s.method.kind.c_str(),
              (long long)s.data.samples, s.epochs, s.devices.size(), s.network.kind.c_str(),
              s.network.bandwidth_bps / 1e6);
  for (const Phase& ph : p.phases) {
    std::printf("phase %s, epochs %d-%d, %d micro-batches, devices per stage %s\n", ph.kind.c_str(), ph.epoch_first,
                ph.epoch_last, ph.micro_batches, groups_text(ph).c_str());
    for (size_t j = 0; j < ph.stages.size(); j++) {
      const StagePlan& st = ph.stages[j];
      std::printf("  stage %zu: layers %d-%d on", j, st.layer_begin, st.layer_end - 1);
      for (size_t k = 0; k < st.devices.size(); k++)
        std::printf(" %s(%.0f%%)", s.devices[st.devices[k]].id.c_str(), 100 * st.shares[k]);
      std::printf("\n");
    }
  }
  for (size_t e = 0; e < p.predicted.epoch_s.size(); e++)
    std::printf("epoch %zu: %s\n", e + 1, format_duration(p.predicted.epoch_s[e]).c_str());
  if (p.predicted.switch_s > 0) std::printf("switch: %s\n", format_duration(p.predicted.switch_s).c_str());
  std::printf("total: %s (%.3f h), planned in %.3f s\n", format_duration(p.predicted.total_s).c_str(),
              p.predicted.total_s / 3600, p.predicted.planning_s);
  std::printf("%-14s %-26s %12s %12s %12s\n", "device", "profile", "peak mem", "budget", "energy kJ");
  double energy = 0;
  for (size_t d = 0; d < s.devices.size(); d++) {
    std::printf("%-14s %-26s %12s %12s %12.1f\n", s.devices[d].id.c_str(), s.devices[d].profile.name.c_str(),
                gb(p.predicted.peak_memory_bytes[d]).c_str(), gb(s.devices[d].profile.memory_bytes).c_str(),
                p.predicted.energy_j[d] / 1e3);
    energy += p.predicted.energy_j[d];
  }
  std::printf("energy: %.1f kJ (%.3f kWh) for the whole job\n", energy / 1e3, energy / 3.6e6);
}

static json summary_json(const Plan& p) {
  json j = plan_to_json(p);
  j.erase("segments");
  j.erase("scenario");
  j["scenario_name"] = p.scenario.name;
  return j;
}

int main(int argc, char** argv) {
  return run_main("pac-plan", [&]() -> int {
    CLI::App app{"pac-plan: turns a scenario into a plan (stages, groups, task graph, predictions)"};
    std::string scenario_file, out_file, strategy, profiles_dir;
    std::string method;
    bool as_json = false, compare = false;
    app.add_option("scenario", scenario_file, "scenario JSON (docs/scenario-format.md)")->required();
    app.add_option("-o,--output", out_file, "write the plan here (atomically)");
    app.add_option("--strategy", strategy, "pac | pac-opt | standalone | eddl | ecofl | asteroid (default: the scenario's)");
    app.add_option("--profiles", profiles_dir, "folder with devices/ and models/ (default: next to the scenario, or $PAC_PROFILES_DIR)");
    app.add_option("--method", method, "override the scenario's method: full | lora | adapters | parallel_adapters")
        ->check(CLI::IsMember({"full", "lora", "adapters", "parallel_adapters"}));
    app.add_flag("--json", as_json, "print a machine-readable summary on stdout");
    app.add_flag("--compare", compare, "plan with every strategy and print one line each");
    if (int rc = cli_parse(app, argc, argv); rc >= 0) return rc;
    Scenario s = scenario_load(scenario_file, profiles_dir);
    if (!method.empty()) {
      s.method.kind = method;
      s.method.cache = method == "parallel_adapters" && s.method.cache;
    }
    if (compare) {
      json rows = json::array();
      if (!as_json) std::printf("%-11s %-9s %12s %10s %s\n", "strategy", "groups", "total", "hours", "peak mem (max)");
      for (const std::string& st : planner_strategies()) {
        json row = {{"strategy", st}};
        try {
          Plan p = plan_make(s, st);
          double peak = 0;
          for (double m : p.predicted.peak_memory_bytes) peak = std::max(peak, m);
          row["groups"] = groups_text(p.phases[0]);
          row["total_s"] = p.predicted.total_s;
          row["peak_memory_bytes"] = peak;
          if (!as_json)
            std::printf("%-11s %-9s %12s %10.3f %s\n", st.c_str(), groups_text(p.phases[0]).c_str(),
                        format_duration(p.predicted.total_s).c_str(), p.predicted.total_s / 3600, gb(peak).c_str());
        } catch (const PlanInfeasible& e) {
          row["infeasible"] = e.what();
          if (!as_json) std::printf("%-11s out of memory (tightest: %s)\n", st.c_str(), e.tightest_device.c_str());
        }
        rows.push_back(row);
      }
      if (as_json) std::printf("%s\n", rows.dump(1).c_str());
      return 0;
    }
    if (strategy.empty()) strategy = s.strategy;
    Plan p;
    try {
      p = plan_make(s, strategy);
    } catch (const PlanInfeasible& e) {
      throw RuntimeError(error_where(scenario_file, "", e.what()));
    }
    plan_validate(p, out_file.empty() ? "<plan>" : out_file);
    if (!out_file.empty()) plan_save(p, out_file);
    if (as_json) std::printf("%s\n", summary_json(p).dump(1).c_str());
    else summary_print(p);
    return 0;
  });
}
