// The simulator's network: a fluid model in the style of SimGrid. Every transfer is a
// flow with remaining bytes and a rate; flows cross resources (a sender's uplink, a
// receiver's downlink, and on a shared medium the medium itself) and each flow may have
// its own cap (a per-pair link override, a degraded link). Whenever a flow starts or
// ends, or a capacity changes, rates are recomputed max-min fairly (progressive
// filling): the most constrained resource is saturated first, its flows are frozen at
// their fair share, and the rest keep rising.
//
// The model knows nothing of tasks: a flow carries an opaque `owner` and `tag` that the
// engine uses to find out what finished. All arrays are preallocated; starting and
// ending flows does not allocate once the pool has grown to the run's peak.
#pragma once
#include <cstdint>
#include <vector>

namespace pac {

struct NetFlow {
  int src = -1, dst = -1;
  double bytes = 0;           // total size
  double remaining = 0;       // bytes still to move
  double rate = 0;            // bytes/s, from the last recompute
  double cap = 0;             // bytes/s upper bound of this flow alone (<= 0: none)
  int res[3] = {-1, -1, -1};  // resources crossed
  int nres = 0;
  int owner = -1;             // engine's task index
  int tag = 0;                // engine's extra info (collective step)
  double t_begin = 0;         // when the flow became active (after latency)
  bool active = false;
  bool fixed = false;         // scratch for progressive filling
  bool tag_round = false;     // scratch: frozen in the current round
};

class FluidNet {
 public:
  // `n_devices` uplinks and downlinks (bytes/s, <= 0 means unlimited) and, when
  // `shared_medium_Bps` > 0, one medium all flows cross.
  void init(const std::vector<double>& uplink_Bps, const std::vector<double>& downlink_Bps,
            double shared_medium_Bps);

  // Adds an active flow at time `now` (the caller has already waited the latency).
  // Rates are recomputed. Returns the flow's index (stable until it ends).
  int flow_start(double now, int src, int dst, double bytes, double cap_Bps, int owner, int tag);
  // Removes a finished flow (rates are recomputed).
  void flow_end(double now, int flow);

  // Moves every active flow forward to `now` at its current rate.
  void advance(double now);
  // Changes one flow's own cap (link degradation) and recomputes.
  void flow_set_cap(double now, int flow, double cap_Bps);

  // Earliest completion among active flows: time and flow index; {inf, -1} when none.
  double next_completion(int* flow) const;

  const NetFlow& flow(int i) const { return flows_[i]; }
  int flow_capacity() const { return static_cast<int>(flows_.size()); }
  int active_count() const { return n_active_; }
  int uplink(int d) const { return d; }
  int downlink(int d) const { return n_dev_ + d; }
  int medium() const { return medium_; }
  double capacity(int res) const { return cap_[res]; }

  void rates_recompute();

 private:
  int n_dev_ = 0;
  int medium_ = -1;
  double now_ = 0;                 // time the remaining bytes refer to
  std::vector<double> cap_;        // per resource, bytes/s (<= 0: unlimited)
  std::vector<NetFlow> flows_;     // pool; inactive entries are free
  std::vector<int> free_;          // free pool slots
  std::vector<int> active_;        // indices of active flows
  int n_active_ = 0;
  // scratch for rates_recompute
  std::vector<double> res_left_;
  std::vector<int> res_users_;
};

}  // namespace pac
