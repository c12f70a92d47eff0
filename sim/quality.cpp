#include "sim/quality.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>

#include "planner/planner.h"
#include "sim/study.h"
#include "src/common/error.h"
#include "src/common/fs.h"
#include "src/common/progress.h"

namespace pac {

// Improvements smaller than this are float noise or too small to be worth a baseline
// update; they pass without a message.
static const double kImprovementPrinted = 0.001;
// pac-opt against the other strategies of the same run: no tolerance beyond rounding.
static const double kOrderSlack = 1e-9;

double quality_time(const QualityEntry& e) {
  if (e.status != "ok") return std::numeric_limits<double>::infinity();
  return e.total_s;
}

std::vector<QualityEntry> quality_run_scenario(const Scenario& s, const std::string& name) {
  std::vector<QualityEntry> out;
  for (const std::string& st : planner_strategies()) {
    QualityEntry e;
    e.scenario = name;
    e.strategy = st;
    try {
      StudyRow r = study_run(s, st, st);
      e.status = r.status;
      e.note = r.note;
      e.groups = r.groups;
      if (r.status == "ok") {
        e.total_s = r.total_s;
        e.epoch_s = r.epoch_s;
        e.predicted_s = r.predicted_s;
      }
    } catch (const InputError& err) {
      // The strategy cannot express this scenario: not applicable, infinitely slow.
      e.status = "n/a";
      e.note = err.what();
    }
    out.push_back(e);
  }
  return out;
}

static std::string seconds_text(double t) {
  if (std::isinf(t)) return "infeasible";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", t);
  return buf;
}

// "+5.3%" of b relative to a; "" when either cannot run.
static std::string percent_text(double now, double base) {
  if (std::isinf(now) || std::isinf(base) || base <= 0) return "";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%+.2f%%", 100 * (now / base - 1));
  return buf;
}

static const QualityEntry* entry_find(const std::vector<QualityEntry>& v, const std::string& scenario,
                                      const std::string& strategy) {
  for (const QualityEntry& e : v)
    if (e.scenario == scenario && e.strategy == strategy) return &e;
  return nullptr;
}

static const QualityExcuse* excuse_find(const QualityBaseline& b, const std::string& scenario,
                                        const std::string& strategy) {
  for (const QualityExcuse& x : b.excused)
    if (x.scenario == scenario && x.strategy == strategy) return &x;
  return nullptr;
}

QualityVerdict quality_check(const std::vector<QualityEntry>& now, const QualityBaseline& base) {
  QualityVerdict v;
  char buf[512];
  std::vector<std::string> scenarios;
  for (const QualityEntry& e : now)
    if (std::find(scenarios.begin(), scenarios.end(), e.scenario) == scenarios.end()) scenarios.push_back(e.scenario);

  for (const std::string& sc : scenarios) {
    // Rule 1: pac and pac-opt against their own baselines.
    for (const char* st : {"pac", "pac-opt"}) {
      const QualityEntry* n = entry_find(now, sc, st);
      if (!n) {
        v.failures.push_back(sc + ": " + st + " was not run");
        continue;
      }
      const QualityEntry* b = entry_find(base.entries, sc, st);
      if (!b) {
        v.failures.push_back(sc + ": " + st + " has no baseline (new scenario? run with PAC_QUALITY_UPDATE=1 " +
                             "PAC_QUALITY_REASON=\"...\" or pac-quality --update --reason \"...\")");
        continue;
      }
      double tn = quality_time(*n), tb = quality_time(*b);
      if (std::isinf(tn) && std::isinf(tb)) continue;
      if (tn > tb * (1 + base.tolerance)) {
        if (std::isinf(tn))
          std::snprintf(buf, sizeof buf, "%s: %s regressed: baseline %s, now cannot run (%s: %s)", sc.c_str(), st,
                        seconds_text(tb).c_str(), n->status.c_str(), n->note.c_str());
        else
          std::snprintf(buf, sizeof buf, "%s: %s regressed: baseline %s, now %s (%s, limit +%.1f%%)", sc.c_str(), st,
                        seconds_text(tb).c_str(), seconds_text(tn).c_str(), percent_text(tn, tb).c_str(),
                        100 * base.tolerance);
        v.failures.push_back(buf);
      } else if (tn < tb * (1 - kImprovementPrinted)) {
        if (std::isinf(tb))
          std::snprintf(buf, sizeof buf, "%s now runs on %s (%s; baseline: cannot run); update the baseline", st,
                        sc.c_str(), seconds_text(tn).c_str());
        else
          std::snprintf(buf, sizeof buf, "%s improved by %.1f%% on %s (%s -> %s); update the baseline", st,
                        100 * (1 - tn / tb), sc.c_str(), seconds_text(tb).c_str(), seconds_text(tn).c_str());
        v.improvements.push_back(buf);
      }
    }
    // Rule 2: pac-opt prices pac's own plan and every variant it searches, so it should
    // never lose to pac; losing to a baseline strategy is a planner weakness.
    const QualityEntry* opt = entry_find(now, sc, "pac-opt");
    if (opt) {
      double to = quality_time(*opt);
      for (const QualityEntry& o : now) {
        if (o.scenario != sc || o.strategy == "pac-opt") continue;
        double t = quality_time(o);
        if (!(to > t * (1 + kOrderSlack))) continue;
        std::string gap = std::isinf(t) ? "" : percent_text(to, t);
        if (std::isinf(to))
          std::snprintf(buf, sizeof buf, "%s: pac-opt cannot run (%s: %s) but %s can (%s)", sc.c_str(),
                        opt->status.c_str(), opt->note.c_str(), o.strategy.c_str(), seconds_text(t).c_str());
        else
          std::snprintf(buf, sizeof buf, "%s: pac-opt (%s, %s) is slower than %s (%s, %s) by %s", sc.c_str(),
                        seconds_text(to).c_str(), opt->groups.c_str(), o.strategy.c_str(), seconds_text(t).c_str(),
                        o.groups.c_str(), gap.c_str());
        const QualityExcuse* x = excuse_find(base, sc, o.strategy);
        if (x && to <= t * (1 + x->max_gap)) {
          v.notes.push_back(std::string("excused: ") + buf + " -- " + x->reason);
        } else if (x) {
          char lim[64];
          std::snprintf(lim, sizeof lim, " (excused only up to +%.2f%%)", 100 * x->max_gap);
          v.failures.push_back(buf + std::string(lim));
        } else {
          v.failures.push_back(buf);
        }
      }
    }
    // Baseline strategies are not gated (they are the yardstick), but drift is shown.
    for (const QualityEntry& n : now) {
      if (n.scenario != sc || n.strategy == "pac" || n.strategy == "pac-opt") continue;
      const QualityEntry* b = entry_find(base.entries, sc, n.strategy);
      if (!b) continue;
      double tn = quality_time(n), tb = quality_time(*b);
      if (std::isinf(tn) && std::isinf(tb)) continue;
      if (std::isinf(tn) != std::isinf(tb) || std::fabs(tn / tb - 1) > base.tolerance) {
        std::snprintf(buf, sizeof buf, "%s: %s moved from %s to %s %s (not gated; update the baseline)", sc.c_str(),
                      n.strategy.c_str(), seconds_text(tb).c_str(), seconds_text(tn).c_str(),
                      percent_text(tn, tb).c_str());
        v.notes.push_back(buf);
      }
    }
  }
  // A scenario dropped from the suite must be dropped from the baseline on purpose.
  for (const QualityEntry& b : base.entries) {
    if (b.strategy != "pac") continue;
    if (std::find(scenarios.begin(), scenarios.end(), b.scenario) == scenarios.end())
      v.failures.push_back(b.scenario + ": in the baseline but not in the suite (update the baseline)");
  }
  return v;
}

QualityBaseline quality_baseline_from_json(const JsonIn& doc) {
  doc.check_keys({"format", "format_version", "tolerance", "reason", "excused", "scenarios"});
  if (doc.string("format") != "pac-quality-baseline")
    doc.fail_at("format", "expected \"pac-quality-baseline\"");
  doc.integer("format_version", 1, 1);
  QualityBaseline b;
  b.tolerance = doc.number_or("tolerance", 0.01, 0, 1);
  b.reason = doc.string("reason");
  if (auto ex = doc.find("excused")) {
    for (const JsonIn& x : ex->items()) {
      x.check_keys({"scenario", "strategy", "reason", "max_gap"});
      b.excused.push_back({x.string("scenario"), x.string("strategy"), x.string("reason"), x.number("max_gap", 0, 10)});
    }
  }
  JsonIn scs = doc.at("scenarios");
  for (const std::string& sc : scs.keys()) {
    JsonIn per = scs.at(sc);
    for (const std::string& st : per.keys()) {
      JsonIn j = per.at(st);
      j.check_keys({"status", "note", "groups", "total_s", "epoch_s"});
      QualityEntry e;
      e.scenario = sc;
      e.strategy = st;
      e.status = j.choice("status", {"ok", "oom", "fault", "n/a"});
      e.note = j.string_or("note", "");
      e.groups = j.string_or("groups", "");
      if (e.status == "ok") {
        e.total_s = j.number("total_s", 0);
        for (const JsonIn& t : j.at("epoch_s").items()) e.epoch_s.push_back(t.as_number(0));
      }
      b.entries.push_back(e);
    }
  }
  return b;
}

QualityBaseline quality_baseline_load(const std::string& file) {
  return quality_baseline_from_json(JsonIn::load_file(file));
}

json quality_baseline_to_json(const QualityBaseline& b) {
  json scs = json::object();
  for (const QualityEntry& e : b.entries) {
    json j = {{"status", e.status}};
    if (!e.note.empty()) j["note"] = e.note;
    if (!e.groups.empty()) j["groups"] = e.groups;
    if (e.status == "ok") {
      j["total_s"] = e.total_s;
      j["epoch_s"] = e.epoch_s;
    }
    scs[e.scenario][e.strategy] = j;
  }
  json ex = json::array();
  for (const QualityExcuse& x : b.excused)
    ex.push_back({{"scenario", x.scenario}, {"strategy", x.strategy}, {"max_gap", x.max_gap}, {"reason", x.reason}});
  return json{{"format", "pac-quality-baseline"}, {"format_version", 1}, {"tolerance", b.tolerance},
              {"reason", b.reason}, {"excused", ex}, {"scenarios", scs}};
}

std::string quality_table(const std::vector<QualityEntry>& now) {
  const std::vector<std::string>& strategies = planner_strategies();
  std::vector<std::string> scenarios;
  size_t w = 8, gw = 13;
  for (const QualityEntry& e : now) {
    if (std::find(scenarios.begin(), scenarios.end(), e.scenario) == scenarios.end()) scenarios.push_back(e.scenario);
    w = std::max(w, e.scenario.size());
    if (e.strategy == "pac-opt") gw = std::max(gw, e.groups.size());
  }
  std::string out;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-*s", (int)w, "scenario");
  out += buf;
  for (const std::string& st : strategies) {
    std::snprintf(buf, sizeof buf, "  %10s", st.c_str());
    out += buf;
  }
  std::snprintf(buf, sizeof buf, "  %-*s  %s\n", (int)gw, "pac-opt shape", "pac-opt vs best other");
  out += buf;
  for (const std::string& sc : scenarios) {
    std::snprintf(buf, sizeof buf, "%-*s", (int)w, sc.c_str());
    out += buf;
    double best_other = std::numeric_limits<double>::infinity();
    std::string best_name;
    for (const std::string& st : strategies) {
      const QualityEntry* e = entry_find(now, sc, st);
      std::string cell = !e ? "-" : e->status == "ok" ? seconds_text(e->total_s) : e->status == "oom" ? "OOM" : e->status;
      std::snprintf(buf, sizeof buf, "  %10s", cell.c_str());
      out += buf;
      if (e && st != "pac-opt" && quality_time(*e) < best_other) {
        best_other = quality_time(*e);
        best_name = st;
      }
    }
    const QualityEntry* opt = entry_find(now, sc, "pac-opt");
    std::string cmp = "-";
    if (opt && !std::isinf(quality_time(*opt)) && !std::isinf(best_other)) {
      std::snprintf(buf, sizeof buf, "%.2fx (%s)", best_other / opt->total_s, best_name.c_str());
      cmp = buf;
    }
    std::snprintf(buf, sizeof buf, "  %-*s  %s\n", (int)gw, opt ? opt->groups.c_str() : "-", cmp.c_str());
    out += buf;
  }
  return out;
}

static std::vector<std::string> suite_files(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec);
  if (ec) throw InputError(error_where(dir, "", "cannot list the quality suite folder: " + ec.message()));
  const std::string suffix = ".scenario.json";
  for (const auto& de : it) {
    std::string name = de.path().filename().string();
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      files.push_back(name);
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) throw InputError(error_where(dir, "", "expected *.scenario.json files, found none"));
  return files;
}

QualityVerdict quality_gate(const QualityGateOptions& opt, std::string* report) {
  std::string baseline_file = opt.baseline_file.empty() ? path_join(opt.suite_dir, "baseline.json") : opt.baseline_file;
  std::string profiles = opt.profiles_dir;
  if (profiles.empty() && file_exists(path_join(opt.suite_dir, "../../profiles/models/t5-base.json")))
    profiles = path_join(opt.suite_dir, "../../profiles");
  if (opt.update && opt.reason.empty())
    throw InputError("updating the quality baseline needs a reason (--reason / PAC_QUALITY_REASON)");

  // Load (and so validate) everything before the first simulation.
  std::vector<std::string> files = suite_files(opt.suite_dir);
  std::vector<Scenario> scs;
  for (const std::string& f : files) scs.push_back(scenario_load(path_join(opt.suite_dir, f), profiles));
  QualityBaseline base;
  if (file_exists(baseline_file)) base = quality_baseline_load(baseline_file);
  else if (!opt.update)
    throw InputError(error_where(baseline_file, "", "no baseline file; create it with PAC_QUALITY_UPDATE=1 "
                                                    "PAC_QUALITY_REASON=\"...\" or pac-quality --update --reason \"...\""));

  Progress progress("quality", static_cast<long>(files.size()), 0);
  progress.set_quiet(!opt.progress);
  std::vector<QualityEntry> now;
  for (size_t i = 0; i < files.size(); i++) {
    std::string name = files[i].substr(0, files[i].size() - std::string(".scenario.json").size());
    std::vector<QualityEntry> rows = quality_run_scenario(scs[i], name);
    now.insert(now.end(), rows.begin(), rows.end());
    progress.update(static_cast<long>(i + 1), name);
  }

  std::string out = quality_table(now);
  if (opt.update) {
    // Tolerance and excuses are policy, edited by hand: an update keeps them.
    base.entries = now;
    base.reason = opt.reason;
    file_write_atomic(baseline_file, quality_baseline_to_json(base).dump(1) + "\n");
    out += "baseline rewritten: " + baseline_file + " (reason: " + opt.reason + ")\n";
  }
  QualityVerdict v = quality_check(now, base);
  for (const std::string& s : v.notes) out += "note: " + s + "\n";
  for (const std::string& s : v.improvements) out += "improved: " + s + "\n";
  for (const std::string& s : v.failures) out += "FAIL: " + s + "\n";
  char buf[160];
  std::snprintf(buf, sizeof buf, "quality gate: %zu scenarios x %zu strategies: %s (%zu failures)\n", files.size(),
                planner_strategies().size(), v.ok() ? "PASS" : "FAIL", v.failures.size());
  out += buf;
  if (report) *report = out;
  return v;
}

}  // namespace pac
