#include "sim/network.h"

#include <cmath>
#include <limits>

namespace pac {

static const double kInf = std::numeric_limits<double>::infinity();

void FluidNet::init(const std::vector<double>& uplink_Bps, const std::vector<double>& downlink_Bps,
                    double shared_medium_Bps) {
  n_dev_ = static_cast<int>(uplink_Bps.size());
  cap_.assign(2 * n_dev_, 0);
  for (int d = 0; d < n_dev_; d++) {
    cap_[uplink(d)] = uplink_Bps[d];
    cap_[downlink(d)] = downlink_Bps[d];
  }
  medium_ = -1;
  if (shared_medium_Bps > 0) {
    medium_ = static_cast<int>(cap_.size());
    cap_.push_back(shared_medium_Bps);
  }
  flows_.clear();
  free_.clear();
  active_.clear();
  n_active_ = 0;
  now_ = 0;
  res_left_.assign(cap_.size(), 0);
  res_users_.assign(cap_.size(), 0);
}

int FluidNet::flow_start(double now, int src, int dst, double bytes, double cap_Bps, int owner, int tag) {
  advance(now);
  int i;
  if (!free_.empty()) {
    i = free_.back();
    free_.pop_back();
  } else {
    i = static_cast<int>(flows_.size());
    flows_.emplace_back();
  }
  NetFlow& f = flows_[i];
  f = NetFlow();
  f.src = src;
  f.dst = dst;
  f.bytes = bytes;
  f.remaining = bytes;
  f.cap = cap_Bps;
  f.owner = owner;
  f.tag = tag;
  f.t_begin = now;
  f.active = true;
  // Only resources with a finite capacity constrain the flow.
  if (cap_[uplink(src)] > 0) f.res[f.nres++] = uplink(src);
  if (cap_[downlink(dst)] > 0) f.res[f.nres++] = downlink(dst);
  if (medium_ >= 0) f.res[f.nres++] = medium_;
  active_.push_back(i);
  n_active_++;
  rates_recompute();
  return i;
}

void FluidNet::flow_end(double now, int flow) {
  advance(now);
  NetFlow& f = flows_[flow];
  f.active = false;
  f.remaining = 0;
  for (size_t k = 0; k < active_.size(); k++) {
    if (active_[k] == flow) {
      active_[k] = active_.back();
      active_.pop_back();
      break;
    }
  }
  n_active_--;
  free_.push_back(flow);
  rates_recompute();
}

void FluidNet::advance(double now) {
  double dt = now - now_;
  if (dt > 0) {
    for (int i : active_) {
      NetFlow& f = flows_[i];
      f.remaining -= f.rate * dt;
      if (f.remaining < 0) f.remaining = 0;
    }
  }
  now_ = now;
}

void FluidNet::flow_set_cap(double now, int flow, double cap_Bps) {
  advance(now);
  flows_[flow].cap = cap_Bps;
  rates_recompute();
}

// Progressive filling (max-min fairness). Each round finds the smallest fair share
// offered by any resource (capacity left / unfrozen users) or any flow's own cap, freezes
// the flows held back by it at that share, and takes their rate off their resources.
// Rounds <= flows; each round is O(flows x 3 + resources). Flows are few (tens), so this
// is cheaper than any incremental scheme would be to get right.
void FluidNet::rates_recompute() {
  if (active_.empty()) return;
  for (size_t r = 0; r < cap_.size(); r++) {
    res_left_[r] = cap_[r];
    res_users_[r] = 0;
  }
  for (int i : active_) {
    NetFlow& f = flows_[i];
    f.fixed = false;
    f.rate = 0;
    for (int k = 0; k < f.nres; k++) res_users_[f.res[k]]++;
  }
  size_t left = active_.size();
  while (left > 0) {
    double share = kInf;
    for (size_t r = 0; r < cap_.size(); r++) {
      if (res_users_[r] > 0) {
        double s = res_left_[r] / res_users_[r];
        if (s < share) share = s;
      }
    }
    for (int i : active_) {
      const NetFlow& f = flows_[i];
      if (!f.fixed && f.cap > 0 && f.cap < share) share = f.cap;
    }
    if (share == kInf) {
      // Nothing limits the remaining flows (no finite capacity anywhere): give them a
      // huge rate (the transfer costs only its latency) rather than dividing by zero.
      for (int i : active_) {
        NetFlow& f = flows_[i];
        if (!f.fixed) {
          f.rate = 1e30;
          f.fixed = true;
        }
      }
      break;
    }
    if (share < 0) share = 0;
    // Freeze every flow whose bottleneck offers this share; a relative tolerance keeps
    // floating-point noise from splitting a tie over two rounds. The bound test uses
    // the shares as they were at the start of the round (resources are updated after).
    double lim = share * (1 + 1e-12);
    size_t frozen = 0;
    for (int i : active_) {
      NetFlow& f = flows_[i];
      if (f.fixed) continue;
      bool bound = f.cap > 0 && f.cap <= lim;
      for (int k = 0; k < f.nres && !bound; k++) {
        int r = f.res[k];
        if (res_left_[r] / res_users_[r] <= lim) bound = true;
      }
      if (bound) {
        f.rate = share;
        f.tag_round = 1;
        frozen++;
      }
    }
    for (int i : active_) {
      NetFlow& f = flows_[i];
      if (f.fixed || !f.tag_round) continue;
      f.tag_round = 0;
      f.fixed = true;
      for (int k = 0; k < f.nres; k++) {
        int r = f.res[k];
        res_left_[r] -= share;
        if (res_left_[r] < 0) res_left_[r] = 0;
        res_users_[r]--;
      }
    }
    if (frozen == 0) break;  // cannot happen: the minimum share is always attained
    left -= frozen;
  }
}

double FluidNet::next_completion(int* flow) const {
  double best = kInf;
  int who = -1;
  for (int i : active_) {
    const NetFlow& f = flows_[i];
    double t = f.rate > 0 ? now_ + f.remaining / f.rate : kInf;
    if (t < best || (t == best && i < who)) {
      best = t;
      who = i;
    }
  }
  if (flow) *flow = who;
  return best;
}

}  // namespace pac
