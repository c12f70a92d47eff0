#include "exec/run_trace.h"

#include <chrono>
#include <cstdio>

namespace pac {

double wall_clock_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::system_clock::now().time_since_epoch()).count();
}

RunTrace::RunTrace(std::vector<std::string> device_ids, double origin_us, size_t max_events)
    : ids_(std::move(device_ids)), origin_us_(origin_us), max_events_(max_events) {}

void RunTrace::add_result(int d, int step, const json& result) {
  auto it = result.find("events");
  if (it == result.end() || !it->is_array()) return;
  for (const json& e : *it) {
    if (!e.is_object()) continue;
    if (events_.size() >= max_events_) {
      truncated_ = true;
      return;
    }
    RunTraceEvent ev;
    ev.device = d;
    ev.step = step;
    ev.cat = e.value("cat", std::string("compute"));
    ev.name = e.value("name", std::string());
    ev.ts_us = e.value("ts", 0.0) - origin_us_;
    ev.dur_us = e.value("dur", 0.0);
    std::string peer = e.value("peer", std::string());
    for (size_t i = 0; i < ids_.size() && !peer.empty(); i++)
      if (ids_[i] == peer) ev.peer = static_cast<int>(i);
    events_.push_back(std::move(ev));
  }
}

static void escape_append(std::string& out, const std::string& s) { out += json(s).dump(); }

std::string RunTrace::to_chrome_json() const {
  const int n = static_cast<int>(ids_.size());
  std::string out = "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"source\":\"pac-run\",\"truncated\":";
  out += truncated_ ? "true" : "false";
  out += "},\"traceEvents\":[\n";
  out += "{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":1,\"args\":{\"name\":\"devices\"}},\n"
         "{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":2,\"args\":{\"name\":\"links\"}}";
  std::vector<char> storage(n, 0), link(static_cast<size_t>(n) * n, 0);
  for (const RunTraceEvent& e : events_) {
    if (e.cat == "storage") storage[e.device] = 1;
    if (e.cat == "send" && e.peer >= 0) link[static_cast<size_t>(e.device) * n + e.peer] = 1;
  }
  for (int d = 0; d < n; d++) {
    out += ",\n{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":1,\"tid\":" + std::to_string(d) + ",\"args\":{\"name\":";
    escape_append(out, ids_[d]);
    out += "}}";
    if (storage[d]) {
      out += ",\n{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":1,\"tid\":" + std::to_string(n + d) + ",\"args\":{\"name\":";
      escape_append(out, ids_[d] + " storage");
      out += "}}";
    }
  }
  for (int a = 0; a < n; a++)
    for (int b = 0; b < n; b++) {
      if (!link[static_cast<size_t>(a) * n + b]) continue;
      out += ",\n{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":2,\"tid\":" + std::to_string(a * n + b) +
             ",\"args\":{\"name\":";
      escape_append(out, ids_[a] + " -> " + ids_[b]);
      out += "}}";
    }
  char buf[160];
  for (const RunTraceEvent& e : events_) {
    int pid = 1, tid = e.device;
    if (e.cat == "storage") tid = n + e.device;
    if (e.cat == "send" && e.peer >= 0) {
      pid = 2;
      tid = e.device * n + e.peer;
    }
    out += ",\n{\"ph\":\"X\",\"cat\":";
    escape_append(out, e.cat);
    out += ",\"name\":";
    escape_append(out, e.name);
    std::snprintf(buf, sizeof buf, ",\"pid\":%d,\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f,\"args\":{\"step\":%d}}", pid, tid,
                  e.ts_us, e.dur_us, e.step);
    out += buf;
  }
  out += "\n]}\n";
  return out;
}

}  // namespace pac
