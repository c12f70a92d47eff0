#include "sim/study.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "planner/planner.h"
#include "sim/report.h"
#include "src/common/error.h"
#include "src/common/progress.h"

namespace pac {

StudyRow study_run(const Scenario& s, const std::string& strategy, const std::string& label) {
  StudyRow row;
  row.label = label;
  row.strategy = strategy;
  row.method = method_text(s.method);
  Plan plan;
  try {
    plan = plan_make(s, strategy);
  } catch (const PlanInfeasible& e) {
    row.status = "oom";
    char buf[160];
    std::snprintf(buf, sizeof buf, "planner: no placement fits; tightest %s needs %s, has %s",
                  e.tightest_device.c_str(), bytes_text(e.need_bytes).c_str(), bytes_text(e.have_bytes).c_str());
    row.note = buf;
    return row;
  }
  row.groups = plan_groups_text(plan);
  row.predicted_s = plan.predicted.total_s;
  SimResult r = sim_run(plan);
  row.total_s = r.makespan_s;
  row.epoch_s = r.epoch_s;
  row.energy_j = r.energy_j();
  for (const SimDeviceStats& d : r.devices) row.peak_memory_bytes.push_back(d.peak_memory_bytes);
  row.status = r.ok ? "ok" : r.failure.kind;
  if (!r.ok) row.note = "sim: " + r.failure.message;
  return row;
}

std::vector<StudyRow> study_compare(const Scenario& s, const StudyOptions& opt) {
  struct Combo {
    std::string strategy, method;
  };
  std::vector<Combo> combos;
  const char* baseline_methods[] = {"full", "lora", "adapters"};
  for (const std::string& st : planner_strategies()) {
    if (st == "pac" || st == "pac-opt") {
      combos.push_back({st, "parallel_adapters"});
    } else {
      for (const char* m : baseline_methods) combos.push_back({st, m});
    }
  }
  Progress progress("compare", static_cast<long>(combos.size()), 0);
  progress.set_quiet(!opt.progress);
  std::vector<StudyRow> rows;
  for (size_t i = 0; i < combos.size(); i++) {
    Scenario sc = s;
    sc.method.kind = combos[i].method;
    if (sc.method.kind != "parallel_adapters") sc.method.cache = false;
    else sc.method.cache = true;
    StudyRow row;
    try {
      row = study_run(sc, combos[i].strategy, combos[i].strategy + " " + method_text(sc.method));
    } catch (const InputError& e) {
      // The strategy cannot express this method on this scenario: not applicable.
      row.label = combos[i].strategy + " " + method_text(sc.method);
      row.strategy = combos[i].strategy;
      row.method = method_text(sc.method);
      row.status = "n/a";
      row.note = e.what();
    }
    rows.push_back(row);
    progress.update(static_cast<long>(i + 1), row.label);
  }
  // Speedup against the fastest standalone configuration that runs (the paper's
  // reference); without one, against the slowest runnable row.
  double ref = 0;
  bool ref_marked = false;
  for (const StudyRow& r : rows)
    if (r.status == "ok" && r.strategy == "standalone" && (ref == 0 || r.total_s < ref)) ref = r.total_s;
  if (ref == 0)
    for (const StudyRow& r : rows)
      if (r.status == "ok" && r.total_s > ref) ref = r.total_s;
  for (StudyRow& r : rows) {
    if (r.status == "ok" && r.total_s > 0 && ref > 0) r.speedup = ref / r.total_s;
    if (r.status == "ok" && r.total_s == ref && !ref_marked) r.reference = ref_marked = true;
  }
  return rows;
}

static std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t b = 0;
  while (true) {
    size_t e = s.find(sep, b);
    out.push_back(s.substr(b, e == std::string::npos ? std::string::npos : e - b));
    if (e == std::string::npos) break;
    b = e + 1;
  }
  return out;
}

static double sweep_number(const std::string& spec, const std::string& v, double lo) {
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || !(x >= lo)) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "expected numbers >= %g, got \"", lo);
    throw_input("--sweep", spec, buf + v + "\"");
  }
  return x;
}

// Applies one sweep value to a copy of the scenario.
static void sweep_apply(Scenario& sc, const std::string& spec, const std::string& key, const std::string& v,
                        std::string* strategy) {
  if (key == "bandwidth_mbps" || key == "bandwidth") {
    sc.network.bandwidth_bps = sweep_number(spec, v, 1e-3) * 1e6;
  } else if (key == "latency_ms") {
    sc.network.latency_s = sweep_number(spec, v, 0) / 1e3;
  } else if (key == "devices") {
    // The first n devices; more than the scenario has repeats its devices in order.
    int n = static_cast<int>(sweep_number(spec, v, 1));
    std::vector<DeviceSpec> devs;
    for (int i = 0; i < n; i++) {
      DeviceSpec d = sc.devices[i % sc.devices.size()];
      if (i >= static_cast<int>(sc.devices.size())) d.id += "-" + std::to_string(i / sc.devices.size());
      devs.push_back(d);
    }
    sc.devices = devs;
    std::vector<FaultSpec> kept;
    for (const FaultSpec& f : sc.faults)
      if (sc.device_index(f.device) >= 0 && (f.peer.empty() || sc.device_index(f.peer) >= 0)) kept.push_back(f);
    sc.faults = kept;
  } else if (key == "epochs") {
    sc.epochs = static_cast<int>(sweep_number(spec, v, 1));
  } else if (key == "micro_batches") {
    sc.data.micro_batches = static_cast<int>(sweep_number(spec, v, 1));
  } else if (key == "mini_batch") {
    sc.data.mini_batch = static_cast<int>(sweep_number(spec, v, 1));
  } else if (key == "samples") {
    sc.data.samples = static_cast<int64_t>(sweep_number(spec, v, 1));
  } else if (key == "seq_len") {
    sc.data.seq_len = static_cast<int>(sweep_number(spec, v, 1));
  } else if (key == "strategy") {
    *strategy = v;
  } else if (key == "network") {
    if (v != "shared" && v != "switched")
      throw_input("--sweep", spec, "expected network values \"shared\" or \"switched\", got \"" + v + "\"");
    sc.network.kind = v;
  } else {
    throw_input("--sweep", spec,
                "unknown key \"" + key +
                    "\"; expected one of bandwidth_mbps, latency_ms, devices, epochs, micro_batches, mini_batch, "
                    "samples, seq_len, strategy, network");
  }
}

std::vector<StudyRow> study_sweep(const Scenario& s, const std::string& spec, const std::string& strategy,
                                  const StudyOptions& opt) {
  size_t eq = spec.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
    throw_input("--sweep", spec, "expected key=v1,v2,... (e.g. bandwidth_mbps=100,300,1000)");
  std::string key = spec.substr(0, eq);
  std::vector<std::string> values = split(spec.substr(eq + 1), ',');
  // Validate every value before the first (possibly long) simulation.
  std::vector<Scenario> scs;
  std::vector<std::string> strategies;
  for (const std::string& v : values) {
    Scenario sc = s;
    std::string st = strategy.empty() ? s.strategy : strategy;
    sweep_apply(sc, spec, key, v, &st);
    scs.push_back(sc);
    strategies.push_back(st);
  }
  Progress progress("sweep", static_cast<long>(values.size()), 0);
  progress.set_quiet(!opt.progress);
  std::vector<StudyRow> rows;
  for (size_t i = 0; i < values.size(); i++) {
    rows.push_back(study_run(scs[i], strategies[i], key + "=" + values[i]));
    progress.update(static_cast<long>(i + 1), rows.back().label);
  }
  // Speedup against the first value that runs.
  double ref = 0;
  for (StudyRow& r : rows)
    if (r.status == "ok" && ref == 0) {
      ref = r.total_s;
      r.reference = true;
    }
  for (StudyRow& r : rows)
    if (r.status == "ok" && r.total_s > 0 && ref > 0) r.speedup = ref / r.total_s;
  return rows;
}

static std::string hours(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f h", s / 3600);
  return buf;
}

std::string study_table(const std::vector<StudyRow>& rows, const std::string& speedup_title) {
  std::string out;
  char buf[512];
  size_t w = 13, gw = 6;
  for (const StudyRow& r : rows) {
    w = std::max(w, r.label.size());
    gw = std::max(gw, r.groups.size());
  }
  const int W = static_cast<int>(w), G = static_cast<int>(gw);
  std::snprintf(buf, sizeof buf, "%-*s  %-*s  %9s  %11s  %9s  %8s  %9s  %14s  %9s\n", W, "configuration", G,
                "groups", "epoch 1", "later epoch", "total", "vs plan", "speedup", "peak mem/dev", "energy");
  out += buf;
  std::snprintf(buf, sizeof buf, "%-*s  %-*s  %9s  %11s  %9s  %8s  %9s  %14s  %9s\n", W, "", G, "", "", "(mean)", "",
                "", speedup_title.c_str(), "(max)", "");
  out += buf;
  for (const StudyRow& r : rows) {
    if (r.status != "ok") {
      std::string what = r.status == "oom" ? "OOM" : r.status == "fault" ? "FAULT" : "n/a";
      std::snprintf(buf, sizeof buf, "%-*s  %-*s  %9s  %11s  %9s  %8s  %9s  %14s  %9s   %s\n", W, r.label.c_str(), G,
                    r.groups.c_str(), what.c_str(), "", what.c_str(), "", "", "", "",
                    r.status == "n/a" ? "" : r.note.c_str());
      out += buf;
      continue;
    }
    double later = 0;
    for (size_t e = 1; e < r.epoch_s.size(); e++) later += r.epoch_s[e];
    std::string later_s = r.epoch_s.size() > 1 ? hours(later / (r.epoch_s.size() - 1)) : "-";
    double peak = 0;
    for (double p : r.peak_memory_bytes) peak = std::max(peak, p);
    char sp[32];
    if (r.speedup > 0) std::snprintf(sp, sizeof sp, "%.2fx", r.speedup);
    else std::snprintf(sp, sizeof sp, "-");
    // Simulated against the planner's own prediction: where the closed-form cost model
    // and the event-by-event replay disagree.
    char vp[32];
    if (r.predicted_s > 0) std::snprintf(vp, sizeof vp, "%+.0f%%", 100 * (r.total_s / r.predicted_s - 1));
    else std::snprintf(vp, sizeof vp, "-");
    std::snprintf(buf, sizeof buf, "%-*s  %-*s  %9s  %11s  %9s  %8s  %9s  %14s  %6.0f kJ\n", W, r.label.c_str(), G,
                  r.groups.c_str(), hours(r.epoch_s.empty() ? 0 : r.epoch_s[0]).c_str(), later_s.c_str(),
                  hours(r.total_s).c_str(), vp, sp, bytes_text(peak).c_str(), r.energy_j / 1e3);
    out += buf;
  }
  for (const StudyRow& r : rows)
    if (r.reference) out += "\nspeedup is relative to " + r.label + "\n";
  // The paper's headline number: PAC against the fastest baseline that runs.
  const StudyRow* pac = nullptr;
  const StudyRow* best = nullptr;
  for (const StudyRow& r : rows) {
    if (r.status != "ok") continue;
    if (r.strategy == "pac") pac = &r;
    else if (r.strategy != "pac-opt" && (!best || r.total_s < best->total_s)) best = &r;
  }
  if (pac && best) {
    std::snprintf(buf, sizeof buf, "pac vs the fastest runnable baseline (%s): %.2fx\n", best->label.c_str(),
                  best->total_s / pac->total_s);
    out += buf;
  }
  return out;
}

json study_to_json(const std::vector<StudyRow>& rows, const std::string& kind) {
  json arr = json::array();
  for (const StudyRow& r : rows) {
    json j = {{"label", r.label}, {"strategy", r.strategy}, {"method", r.method}, {"status", r.status}};
    if (!r.note.empty()) j["note"] = r.note;
    if (r.status == "ok" || !r.groups.empty()) j["groups"] = r.groups;
    if (r.status == "ok") {
      j["total_s"] = r.total_s;
      j["epoch_s"] = r.epoch_s;
      j["predicted_s"] = r.predicted_s;
      j["peak_memory_bytes"] = r.peak_memory_bytes;
      j["energy_j"] = r.energy_j;
      if (r.speedup > 0) j["speedup"] = r.speedup;
    }
    arr.push_back(j);
  }
  return json{{"format", "pac-study"}, {"format_version", 1}, {"kind", kind}, {"rows", arr}};
}

}  // namespace pac
