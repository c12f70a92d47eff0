// The Chrome trace of a real run (pac-run --trace): the workers time what they do
// during each step (Result "events": cat, name, ts, dur in wall-clock microseconds,
// peer for sends) and the coordinator lays them out exactly like pac-sim's trace
// (docs/report-format.md, "Trace"), so a simulated and a measured run open side by
// side in Perfetto: pid 1 "devices" (tid d = device d's compute, with its waits and
// collectives; tid n + d = its storage), pid 2 "links" (tid a * n + b = sends a -> b).
// No torch.
#pragma once
#include <string>
#include <vector>

#include "src/common/json_in.h"

namespace pac {

// Wall-clock microseconds: what workers stamp their events with and the run's origin
// (comparable across the processes of one machine; across devices only as far as their
// clocks agree).
double wall_clock_us();

struct RunTraceEvent {
  int device = 0;
  std::string cat;     // compute | wait | collective | storage | send
  std::string name;    // "F mb3", "wait activation mb3", "opt", ...
  double ts_us = 0;    // since the run's origin
  double dur_us = 0;
  int peer = -1;       // sends: the receiving device
  int step = -1;
};

class RunTrace {
 public:
  // `origin_us`: wall-clock microseconds of the run's start (ts 0 in the trace).
  RunTrace(std::vector<std::string> device_ids, double origin_us, size_t max_events = 2000000);
  // Adds the "events" of device d's Result for mini-batch `step` (-1: the switch).
  // Events of unknown peers keep peer -1 (drawn on the device's own track).
  void add_result(int d, int step, const json& result);
  const std::vector<RunTraceEvent>& events() const { return events_; }
  bool truncated() const { return truncated_; }
  std::string to_chrome_json() const;

 private:
  std::vector<std::string> ids_;
  double origin_us_ = 0;
  size_t max_events_ = 0;
  bool truncated_ = false;
  std::vector<RunTraceEvent> events_;
};

}  // namespace pac
