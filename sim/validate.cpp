#include "sim/validate.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>

#include "sim/engine.h"
#include "sim/report.h"
#include "src/common/error.h"
#include "src/common/fs.h"

namespace pac {

double ValidateItem::error_pct() const { return has_error() ? (predicted - measured) / measured * 100.0 : 0.0; }

std::string validate_plan_file(const JsonIn& measured, const std::string& explicit_plan) {
  if (!explicit_plan.empty()) return explicit_plan;
  std::optional<JsonIn> pf = measured.find("plan_file");
  if (!pf)
    measured.fail_at("plan_file",
                     "the report does not name the plan it ran: pass --plan plan.json (pac-run writes "
                     "plan_file, docs/report-format.md)");
  std::string p = pf->as_string();
  if (p.empty()) pf->fail("expected the path of the plan the run executed, got an empty string");
  if (std::filesystem::path(p).is_relative()) {
    std::string dir = std::filesystem::path(measured.file()).parent_path().string();
    if (!dir.empty()) p = path_join(dir, p);
  }
  return p;
}

// What validation reads from one pac-report document; the measured and the simulated
// report go through the same reader, so both are checked the same way.
struct ReportView {
  std::vector<double> epoch_s;
  double total_s = 0;
  struct Dev {
    double busy_s = 0, bubble_s = -1, peak_memory_bytes = 0, peak_tensor_bytes = -1;
  };
  std::map<std::string, Dev> devices;
  std::vector<std::string> device_order;
  std::map<std::pair<std::string, std::string>, double> links;
};

static ReportView report_view(const JsonIn& r, const Plan& plan, const std::string& plan_file) {
  if (r.string("format") != "pac-report") r.fail_at("format", "expected \"pac-report\"");
  r.integer("format_version", 1, 1);
  std::string status = r.string("status");
  if (status != "ok")
    r.fail_at("status", "expected \"ok\": only a finished run can be compared, got \"" + status + "\"");
  const Scenario& sc = plan.scenario;
  std::string scenario = r.string("scenario");
  if (scenario != sc.name)
    r.fail_at("scenario", "the report is a run of scenario \"" + scenario + "\", " + plan_file + " plans \"" +
                              sc.name + "\"");
  std::string strategy = r.string("strategy");
  if (strategy != plan.strategy)
    r.fail_at("strategy", "the report ran strategy \"" + strategy + "\", " + plan_file + " is a \"" +
                              plan.strategy + "\" plan");
  // The run's own settings (pac-run's --epochs, --batch-size, ... may override the
  // plan's): a run that did not follow the plan cannot be compared with its simulation.
  if (std::optional<JsonIn> run = r.find("run")) {
    run->check_keys({"epochs", "samples", "mini_batch", "seq_len", "reduction_k", "max_steps", "threads", "testbed",
                     "pipeline_flush"});
    auto same = [&](const char* key, int64_t planned) {
      if (!run->has(key)) return;
      int64_t v = run->integer(key, 0);
      if (v != planned)
        run->fail_at(key, "the run used " + std::to_string(v) + ", " + plan_file + " plans " +
                              std::to_string(planned) + ": re-plan with the run's settings to compare");
    };
    same("epochs", sc.epochs);
    // Examples per epoch: a text paragraph longer than seq_len+1 tokens becomes several
    // examples, so a run can silently train on more than the scenario's samples.
    same("samples", sc.data.samples);
    same("mini_batch", sc.data.mini_batch);
    same("seq_len", sc.data.seq_len);
    same("reduction_k", sc.method.reduction_k);
    if (run->integer_or("max_steps", 0, 0) > 0)
      run->fail_at("max_steps", "the run stopped after --max-steps mini-batches, so its epochs are partial: "
                                "only whole runs can be compared");
  }
  ReportView v;
  JsonIn epochs = r.at("epochs");
  if (!epochs.is_array() || epochs.size() == 0) epochs.fail("expected a non-empty array of {epoch, time_s}");
  for (const JsonIn& e : epochs.items()) {
    int64_t n = e.integer("epoch", 1);
    if (n != static_cast<int64_t>(v.epoch_s.size()) + 1)
      e.fail_at("epoch", "expected epoch " + std::to_string(v.epoch_s.size() + 1) + " (epochs in order from 1)");
    double t = e.number("time_s", 0);
    if (t <= 0) e.fail_at("time_s", "expected a time > 0 s");
    v.epoch_s.push_back(t);
  }
  v.total_s = r.number("total_s", 0);
  JsonIn devs = r.at("devices");
  if (!devs.is_array()) devs.fail("expected an array of devices");
  for (const JsonIn& d : devs.items()) {
    std::string id = d.string("id");
    if (sc.device_index(id) < 0) d.fail_at("id", "device \"" + id + "\" is not in " + plan_file);
    if (v.devices.count(id)) d.fail_at("id", "device \"" + id + "\" appears twice");
    ReportView::Dev dv;
    dv.busy_s = d.number("busy_s", 0);
    dv.bubble_s = d.number_or("bubble_s", -1, 0);
    dv.peak_memory_bytes = d.number("peak_memory_bytes", 0);
    dv.peak_tensor_bytes = d.number_or("peak_tensor_bytes", -1, 0);
    v.devices[id] = dv;
    v.device_order.push_back(id);
  }
  for (const DeviceSpec& ds : sc.devices)
    if (!v.devices.count(ds.id))
      devs.fail("device \"" + ds.id + "\" of " + plan_file + " is missing (one entry per plan device)");
  JsonIn links = r.at("links");
  if (!links.is_array()) links.fail("expected an array of {src, dst, bytes}");
  for (const JsonIn& l : links.items()) {
    std::string a = l.string("src"), b = l.string("dst");
    if (sc.device_index(a) < 0) l.fail_at("src", "device \"" + a + "\" is not in " + plan_file);
    if (sc.device_index(b) < 0) l.fail_at("dst", "device \"" + b + "\" is not in " + plan_file);
    v.links[{a, b}] += l.number("bytes", 0);
  }
  return v;
}

static ValidateItem item(const std::string& name, double m, bool has_m, double p, bool has_p) {
  ValidateItem it;
  it.name = name;
  it.measured = m;
  it.predicted = p;
  it.has_measured = has_m;
  it.has_predicted = has_p;
  return it;
}

Validation validate_reports(const JsonIn& measured, const JsonIn& simulated, const Plan& plan,
                            const std::string& plan_file) {
  ReportView m = report_view(measured, plan, plan_file);
  ReportView s = report_view(simulated, plan, plan_file);
  Validation v;
  v.measured_file = measured.file();
  v.plan_file = plan_file;
  v.measured_source = measured.string_or("source", "run");
  v.scenario = plan.scenario.name;
  v.strategy = plan.strategy;
  v.groups = plan_groups_text(plan);
  if (m.epoch_s.size() != s.epoch_s.size())
    measured.fail_at("epochs", "the run has " + std::to_string(m.epoch_s.size()) + " epoch(s), the simulation of " +
                                   plan_file + " " + std::to_string(s.epoch_s.size()));
  double sum = 0;
  for (size_t e = 0; e < m.epoch_s.size(); e++) {
    v.epochs.push_back(item(std::to_string(e + 1), m.epoch_s[e], true, s.epoch_s[e], true));
    double err = std::fabs(v.epochs.back().error_pct());
    sum += err;
    v.epoch_max_error_pct = std::max(v.epoch_max_error_pct, err);
  }
  v.epoch_mape_pct = sum / static_cast<double>(m.epoch_s.size());
  v.total = item("total", m.total_s, true, s.total_s, true);
  // Memory on tensors when the run counted them on every device (the simulator counts
  // tensors; a worker's RSS adds LibTorch's ~160 MB of code and allocator).
  // A simulated report's peak_memory_bytes are tensors already.
  bool tensors = !m.devices.empty();
  for (const auto& kv : m.devices) tensors = tensors && kv.second.peak_tensor_bytes >= 0;
  v.peak_memory_basis = tensors || v.measured_source == "sim" ? "tensors" : "resident";
  // Devices in the plan's order.
  for (const DeviceSpec& ds : plan.scenario.devices) {
    const ReportView::Dev& md = m.devices.at(ds.id);
    const ReportView::Dev& sd = s.devices.at(ds.id);
    v.busy.push_back(item(ds.id, md.busy_s, true, sd.busy_s, true));
    v.bubble.push_back(item(ds.id, md.bubble_s, md.bubble_s >= 0, sd.bubble_s, sd.bubble_s >= 0));
    v.peak_memory.push_back(
        item(ds.id, tensors ? md.peak_tensor_bytes : md.peak_memory_bytes, true, sd.peak_memory_bytes, true));
  }
  // Links: the union of both sides (a link one side never used shows as missing there).
  std::map<std::pair<std::string, std::string>, int> all;
  for (auto& kv : m.links) all[kv.first] |= 1;
  for (auto& kv : s.links) all[kv.first] |= 2;
  for (auto& kv : all) {
    double mb = (kv.second & 1) ? m.links.at(kv.first) : 0;
    double sb = (kv.second & 2) ? s.links.at(kv.first) : 0;
    // A pair neither side is missing from is compared; a pair only one side used counts
    // as 0 bytes on the other (reports leave 0-byte pairs out).
    v.links.push_back(item(kv.first.first + "->" + kv.first.second, mb, true, sb, true));
  }
  return v;
}

static std::string num(const char* f, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, x);
  return buf;
}

static std::string err_text(const ValidateItem& it) {
  if (!it.has_measured || !it.has_predicted) return "n/a";
  if (!it.has_error()) return it.predicted == 0 ? "0.0%" : "inf";
  return num("%+.1f%%", it.error_pct());
}

static void row(std::string* out, const std::string& a, const std::string& b, const std::string& c,
                const std::string& d) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "  %-16s %16s %16s %10s\n", a.c_str(), b.c_str(), c.c_str(), d.c_str());
  *out += buf;
}

std::string validate_table(const Validation& v) {
  std::string out;
  out += "validate  " + v.measured_file + " (source " + v.measured_source + ") against pac-sim of " + v.plan_file +
         "\n";
  out += "plan      " + v.scenario + ", " + v.strategy + ", groups " + v.groups + "\n";
  if (v.flushed_segments > 0)
    out += "simulated as run: " + std::to_string(v.flushed_segments) +
           " overlapped pipeline segment(s) with a flush per mini-batch (run.pipeline_flush)\n";
  out += "\n";
  row(&out, "epoch", "measured s", "predicted s", "error");
  for (const ValidateItem& e : v.epochs)
    row(&out, e.name, num("%.3f", e.measured), num("%.3f", e.predicted), err_text(e));
  row(&out, "total", num("%.3f", v.total.measured), num("%.3f", v.total.predicted), err_text(v.total));
  out += "\n";
  row(&out, "device busy", "measured s", "predicted s", "error");
  for (const ValidateItem& d : v.busy) row(&out, d.name, num("%.3f", d.measured), num("%.3f", d.predicted), err_text(d));
  out += "\n";
  row(&out, v.peak_memory_basis == "tensors" ? "device peak tensors" : "device peak RSS", "measured", "predicted",
      "error");
  for (const ValidateItem& d : v.peak_memory)
    row(&out, d.name, bytes_text(d.measured), bytes_text(d.predicted), err_text(d));
  out += "\n";
  row(&out, "link", "measured", "predicted", "error");
  if (v.links.empty()) out += "  (no link carried data on either side)\n";
  for (const ValidateItem& l : v.links)
    row(&out, l.name, bytes_text(l.measured), bytes_text(l.predicted), err_text(l));
  out += "\n" + num("epoch time MAPE %.2f%%", v.epoch_mape_pct) + num(" (largest epoch error %.2f%%, ", v.epoch_max_error_pct) +
         std::to_string(v.epochs.size()) + " epoch(s))\n";
  return out;
}

static json item_json(const ValidateItem& it, const char* unit) {
  json j = {{"name", it.name}};
  j[std::string("measured") + unit] = it.has_measured ? json(it.measured) : json(nullptr);
  j[std::string("predicted") + unit] = it.has_predicted ? json(it.predicted) : json(nullptr);
  j["error_pct"] = it.has_error() ? json(it.error_pct()) : json(nullptr);
  return j;
}

static json items_json(const std::vector<ValidateItem>& items, const char* unit) {
  json a = json::array();
  for (const ValidateItem& it : items) a.push_back(item_json(it, unit));
  return a;
}

json validate_to_json(const Validation& v, double max_error_pct) {
  json j;
  j["format"] = "pac-validation";
  j["format_version"] = 1;
  j["measured_file"] = v.measured_file;
  j["measured_source"] = v.measured_source;
  j["flushed_segments"] = v.flushed_segments;
  j["plan_file"] = v.plan_file;
  j["scenario"] = v.scenario;
  j["strategy"] = v.strategy;
  j["groups"] = v.groups;
  j["epochs"] = items_json(v.epochs, "_s");
  j["total"] = item_json(v.total, "_s");
  j["busy"] = items_json(v.busy, "_s");
  j["bubble"] = items_json(v.bubble, "_s");
  j["peak_memory"] = items_json(v.peak_memory, "_bytes");
  j["peak_memory_basis"] = v.peak_memory_basis;
  j["links"] = items_json(v.links, "_bytes");
  j["epoch_mape_pct"] = v.epoch_mape_pct;
  j["epoch_max_error_pct"] = v.epoch_max_error_pct;
  j["max_error_pct"] = max_error_pct >= 0 ? json(max_error_pct) : json(nullptr);
  j["pass"] = max_error_pct < 0 || v.epoch_mape_pct <= max_error_pct;
  return j;
}

int validate_main(const ValidateOptions& o) {
  JsonIn measured = JsonIn::load_file(o.measured_file);
  std::string plan_file = validate_plan_file(measured, o.plan_file);
  Plan plan = plan_load(plan_file);
  // Simulate what the run executed: pac-run flushes an overlapped pipeline every
  // mini-batch (docs/baselines-runtime.md), and says so in run.pipeline_flush; its reports
  // from before that field ran the same way, so a run report without it counts as true.
  // Compared with the asynchronous schedule, Eco-FL's rows set one schedule's prediction
  // against the other's measurement (docs/fidelity.md, "Eco-FL as the runtime runs it").
  bool flush = measured.string_or("source", "run") == "run";
  if (auto run = measured.find("run"))
    if (run->is_object()) flush = run->boolean_or("pipeline_flush", flush);
  int flushed = flush ? plan_flush_pipelines(plan) : 0;
  SimOptions so;
  so.progress = o.progress;
  so.trace = !o.trace_file.empty();
  SimResult r = sim_run(plan, so);
  if (!r.ok) throw RuntimeError(plan_file + ": the simulation of the plan does not finish: " + r.failure.message);
  JsonIn simulated = JsonIn::from(report_to_json(plan, r), "<pac-sim of " + plan_file + ">");
  Validation v = validate_reports(measured, simulated, plan, plan_file);
  v.flushed_segments = flushed;
  std::fputs(validate_table(v).c_str(), stdout);
  if (!o.json_file.empty()) file_write_atomic(o.json_file, validate_to_json(v, o.max_error_pct).dump(1) + "\n");
  if (!o.trace_file.empty()) file_write_atomic(o.trace_file, trace_to_chrome_json(plan, r));
  if (o.max_error_pct >= 0 && v.epoch_mape_pct > o.max_error_pct) {
    std::printf("FAIL: epoch time MAPE %.2f%% exceeds --max-error %.2f%%\n", v.epoch_mape_pct, o.max_error_pct);
    return 3;
  }
  return 0;
}

}  // namespace pac
