#include "sim/report.h"

#include <cstdio>
#include <cstdlib>
#include <map>

#include "src/common/progress.h"

namespace pac {

std::string bytes_text(double b) {
  char buf[32];
  if (b >= 1e9) std::snprintf(buf, sizeof buf, "%.2f GB", b / 1e9);
  else if (b >= 1e6) std::snprintf(buf, sizeof buf, "%.1f MB", b / 1e6);
  else if (b >= 1e3) std::snprintf(buf, sizeof buf, "%.1f kB", b / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f B", b);
  return buf;
}

std::string method_text(const MethodSpec& m) {
  std::string s = m.kind;
  if (m.kind == "parallel_adapters" && m.cache) s += "+cache(" + m.cache_dtype + ")";
  return s;
}

std::string plan_groups_text(const Plan& plan) {
  for (const Phase& ph : plan.phases) {
    if (ph.stages.empty()) continue;
    std::string s = "[";
    for (size_t i = 0; i < ph.stages.size(); i++) {
      if (i) s += "-";
      s += std::to_string(ph.stages[i].devices.size());
    }
    return s + "]";
  }
  return "-";
}

// Rounds to 9 significant digits so the report does not carry floating-point noise
// (1.2060000000000002) that would make equal runs on other compilers differ.
static double r9(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return std::strtod(buf, nullptr);
}

json report_to_json(const Plan& plan, const SimResult& r) {
  const Scenario& sc = plan.scenario;
  const int n = static_cast<int>(sc.devices.size());
  json j;
  j["format"] = "pac-report";
  j["format_version"] = 1;
  j["source"] = "sim";
  j["scenario"] = sc.name;
  j["strategy"] = plan.strategy;
  j["method"] = method_text(sc.method);
  j["groups"] = plan_groups_text(plan);
  j["status"] = r.ok ? "ok" : r.failure.kind;
  if (!r.ok) {
    const SimFailure& f = r.failure;
    json fj = {{"kind", f.kind}, {"device", f.device}, {"task", f.task}, {"segment", f.segment},
               {"iteration", f.iteration}, {"time_s", r9(f.time_s)}, {"message", f.message}};
    if (f.kind == "oom") {
      fj["need_bytes"] = r9(f.need_bytes);
      fj["have_bytes"] = r9(f.have_bytes);
    }
    j["failure"] = fj;
  }
  j["total_s"] = r9(r.makespan_s);
  json epochs = json::array();
  for (size_t e = 0; e < r.epoch_s.size(); e++) epochs.push_back({{"epoch", e + 1}, {"time_s", r9(r.epoch_s[e])}});
  j["epochs"] = epochs;
  json segs = json::array();
  for (const SimSegmentStats& s : r.segments)
    segs.push_back({{"name", s.name}, {"epoch_first", s.epoch_first}, {"epoch_last", s.epoch_last},
                    {"iterations", s.repeat}, {"iterations_done", s.iterations_done}, {"overlap", s.overlap},
                    {"start_s", r9(s.start_s)}, {"end_s", r9(s.end_s)}});
  j["segments"] = segs;
  json devs = json::array();
  for (int d = 0; d < n; d++) {
    const SimDeviceStats& st = r.devices[d];
    devs.push_back({{"id", sc.devices[d].id}, {"profile", sc.devices[d].profile.name}, {"used", st.used},
                    {"busy_s", r9(st.busy_s)}, {"bubble_s", r9(st.bubble_s)}, {"idle_s", r9(st.idle_s)},
                    {"comm_s", r9(st.comm_s)}, {"storage_s", r9(st.storage_s)},
                    {"peak_memory_bytes", r9(st.peak_memory_bytes)},
                    {"memory_bytes", r9(sc.devices[d].profile.memory_bytes)}, {"energy_j", r9(st.energy_j)}});
  }
  j["devices"] = devs;
  json links = json::array();
  for (int a = 0; a < n; a++)
    for (int b = 0; b < n; b++)
      if (r.link_bytes[a * n + b] > 0)
        links.push_back({{"src", sc.devices[a].id}, {"dst", sc.devices[b].id}, {"bytes", r9(r.link_bytes[a * n + b])}});
  j["links"] = links;
  j["energy_j"] = r9(r.energy_j());
  json faults = json::array();
  for (const SimFaultApplied& f : r.faults) faults.push_back({{"time_s", r9(f.time_s)}, {"what", f.text}});
  j["faults"] = faults;
  json pred = {{"total_s", r9(plan.predicted.total_s)}, {"switch_s", r9(plan.predicted.switch_s)}};
  json pe = json::array();
  for (double v : plan.predicted.epoch_s) pe.push_back(r9(v));
  pred["epoch_s"] = pe;
  json pm = json::array();
  for (double v : plan.predicted.peak_memory_bytes) pm.push_back(r9(v));
  pred["peak_memory_bytes"] = pm;
  j["predicted"] = pred;
  j["events"] = r.events;
  j["tasks"] = r.tasks;
  return j;
}

static std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// "1:02:03 (3723.4 s)"
static std::string time_text(double s) { return format_duration(s) + " (" + fmt("%.1f s", s) + ")"; }

std::string report_summary(const Plan& plan, const SimResult& r) {
  const Scenario& sc = plan.scenario;
  const int n = static_cast<int>(sc.devices.size());
  std::string out;
  char buf[512];
  // Devices grouped by profile: "8 x jetson-nano-4gb".
  std::map<std::string, int> kinds;
  for (const DeviceSpec& d : sc.devices) kinds[d.profile.name]++;
  std::string kinds_s;
  for (const auto& k : kinds) kinds_s += (kinds_s.empty() ? "" : ", ") + std::to_string(k.second) + " x " + k.first;
  std::snprintf(buf, sizeof buf, "scenario  %s: %s, %s, %d epoch(s)\n", sc.name.c_str(), sc.model.name.c_str(),
                sc.data.task.c_str(), sc.epochs);
  out += buf;
  std::snprintf(buf, sizeof buf, "cluster   %s; %s network %.0f Mbps, %.2f ms\n", kinds_s.c_str(),
                sc.network.kind.c_str(), sc.network.bandwidth_bps / 1e6, sc.network.latency_s * 1e3);
  out += buf;
  std::snprintf(buf, sizeof buf, "plan      %s, %s, groups %s\n", plan.strategy.c_str(), method_text(sc.method).c_str(),
                plan_groups_text(plan).c_str());
  out += buf;
  if (!r.ok) {
    out += "result    FAILED (" + r.failure.kind + "): " + r.failure.message + "\n";
  } else {
    out += "result    OK, total " + time_text(r.makespan_s);
    if (plan.predicted.total_s > 0)
      out += fmt(", planner predicted %.1f s", plan.predicted.total_s) +
             fmt(" (%+.1f%%)", 100 * (r.makespan_s / plan.predicted.total_s - 1));
    out += "\n";
  }
  for (size_t e = 0; e < r.epoch_s.size(); e++) {
    bool cut = !r.ok && e + 1 == r.epoch_s.size();
    std::snprintf(buf, sizeof buf, "epoch %-3zu %s%s\n", e + 1, time_text(r.epoch_s[e]).c_str(),
                  cut ? " until the failure" : "");
    out += buf;
  }
  for (size_t i = 0; i < r.segments.size(); i++) {
    const SimSegmentStats& s = r.segments[i];
    bool reached = r.ok || i == 0 || s.end_s > 0 || s.iterations_done > 0;
    std::snprintf(buf, sizeof buf, "segment   %-14s epochs %d-%d  %lld/%lld iterations%s  ", s.name.c_str(),
                  s.epoch_first, s.epoch_last, static_cast<long long>(s.iterations_done),
                  static_cast<long long>(s.repeat), s.overlap ? " (overlapped)" : "");
    out += buf;
    out += reached ? fmt("%.1f s\n", s.end_s - s.start_s) : "not reached\n";
  }
  for (const SimFaultApplied& f : r.faults)
    out += (f.time_s >= 0 ? fmt("fault     t=%.3f s: ", f.time_s) : std::string("fault     ")) + f.text + "\n";
  out += "\ndevice        busy%   bubble%   comm%   peak memory / capacity     energy\n";
  double span = r.makespan_s > 0 ? r.makespan_s : 1;
  for (int d = 0; d < n; d++) {
    const SimDeviceStats& st = r.devices[d];
    if (!st.used) {
      std::snprintf(buf, sizeof buf, "%-12s  (not used)\n", sc.devices[d].id.c_str());
    } else {
      std::snprintf(buf, sizeof buf, "%-12s  %5.1f   %7.1f   %5.1f   %9s / %-9s   %8.1f kJ\n", sc.devices[d].id.c_str(),
                    100 * st.busy_s / span, 100 * st.bubble_s / span, 100 * st.comm_s / span,
                    bytes_text(st.peak_memory_bytes).c_str(), bytes_text(sc.devices[d].profile.memory_bytes).c_str(),
                    st.energy_j / 1e3);
    }
    out += buf;
  }
  double total_bytes = 0, top = 0;
  int ta = -1, tb = -1;
  for (int a = 0; a < n; a++)
    for (int b = 0; b < n; b++) {
      double v = r.link_bytes[a * n + b];
      total_bytes += v;
      if (v > top) {
        top = v;
        ta = a;
        tb = b;
      }
    }
  out += "\nnetwork   " + bytes_text(total_bytes) + " moved";
  if (ta >= 0) out += ", busiest link " + sc.devices[ta].id + "->" + sc.devices[tb].id + " " + bytes_text(top);
  out += "\n";
  out += fmt("energy    %.1f kJ", r.energy_j() / 1e3) + fmt(" (%.3f kWh)\n", r.energy_j() / 3.6e6);
  return out;
}

static void json_escape_append(std::string& out, const std::string& s) {
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      out += b;
    } else {
      out += c;
    }
  }
}

// Written by hand (not through nlohmann::json) because a trace holds up to millions of
// events and building a DOM for them would need several times the memory.
std::string trace_to_chrome_json(const Plan& plan, const SimResult& r) {
  const Scenario& sc = plan.scenario;
  const int n = static_cast<int>(sc.devices.size());
  std::string out = "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"source\":\"pac-sim\",\"truncated\":";
  out += r.trace_truncated ? "true" : "false";
  out += "},\"traceEvents\":[\n";
  char buf[256];
  // Track names: pid 1 = devices (tid d: compute, tid n+d: storage), pid 2 = links.
  std::snprintf(buf, sizeof buf, "{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":1,\"args\":{\"name\":\"devices\"}},\n"
                                 "{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":2,\"args\":{\"name\":\"links\"}}");
  out += buf;
  std::vector<char> storage_used(n, 0), link_used(static_cast<size_t>(n) * n, 0);
  for (const SimTraceEvent& e : r.trace) {
    if (e.kind == SimTraceKind::Storage) storage_used[e.a] = 1;
    if (e.kind == SimTraceKind::Send || e.kind == SimTraceKind::Collective) link_used[e.a * n + e.b] = 1;
  }
  for (int d = 0; d < n; d++) {
    out += ",\n{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":1,\"tid\":" + std::to_string(d) + ",\"args\":{\"name\":\"";
    json_escape_append(out, sc.devices[d].id);
    out += "\"}}";
    if (storage_used[d]) {
      out += ",\n{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":1,\"tid\":" + std::to_string(n + d) + ",\"args\":{\"name\":\"";
      json_escape_append(out, sc.devices[d].id + " storage");
      out += "\"}}";
    }
  }
  for (int a = 0; a < n; a++)
    for (int b = 0; b < n; b++) {
      if (!link_used[a * n + b]) continue;
      out += ",\n{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":2,\"tid\":" + std::to_string(a * n + b) + ",\"args\":{\"name\":\"";
      json_escape_append(out, sc.devices[a].id + " -> " + sc.devices[b].id);
      out += "\"}}";
    }
  for (const SimTraceEvent& e : r.trace) {
    if (e.kind == SimTraceKind::Memory) {
      // A counter track per device: Perfetto draws the memory held over time.
      out += ",\n{\"ph\":\"C\",\"pid\":1,\"name\":\"memory ";
      json_escape_append(out, sc.devices[e.a].id);
      std::snprintf(buf, sizeof buf, "\",\"ts\":%.3f,\"args\":{\"GB\":%.6f}}", e.t0 * 1e6, e.value / 1e9);
      out += buf;
      continue;
    }
    const Segment& seg = plan.segments[e.segment];
    const Task& t = seg.graph.tasks[e.task];
    int pid = 1, tid = e.a;
    const char* cat = "compute";
    if (e.kind == SimTraceKind::Storage) {
      tid = n + e.a;
      cat = "storage";
    } else if (e.kind == SimTraceKind::Send || e.kind == SimTraceKind::Collective) {
      pid = 2;
      tid = e.a * n + e.b;
      cat = e.kind == SimTraceKind::Send ? "send" : "collective";
    }
    out += ",\n{\"ph\":\"X\",\"cat\":\"";
    out += cat;
    out += "\",\"name\":\"";
    json_escape_append(out, t.label.empty() ? "task " + std::to_string(t.id) : t.label);
    std::snprintf(buf, sizeof buf, "\",\"pid\":%d,\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f,\"args\":{\"segment\":\"", pid, tid,
                  e.t0 * 1e6, (e.t1 - e.t0) * 1e6);
    out += buf;
    json_escape_append(out, seg.name);
    std::snprintf(buf, sizeof buf, "\",\"iteration\":%lld", static_cast<long long>(e.iteration));
    out += buf;
    if (e.step >= 0) out += ",\"ring_step\":" + std::to_string(e.step);
    out += "}}";
  }
  out += "\n]}\n";
  return out;
}

}  // namespace pac
