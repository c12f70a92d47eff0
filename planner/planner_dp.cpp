// The dynamic programs over layer ranges x contiguous device slices, and the
// pipeline latency model they are judged by. docs/planner.md explains both.
#include <algorithm>
#include <cmath>
#include <map>
#include <memory>

#include "planner/planner_internal.h"
#include "src/core/profile.h"
#include "src/core/rows.h"

namespace pac {

PlanCtx plan_ctx_make(const Scenario& s, const MethodSpec& method) {
  PlanCtx c;
  c.s = &s;
  c.mc = cost_model_build(s.model, method, s.data);
  c.n = (int)s.devices.size();
  c.L = s.model.total_layers();
  c.M = s.data.micro_batches;
  c.inflight_cap = c.M;
  c.batch = s.data.mini_batch;
  c.shared_medium = s.network.kind == "shared";
  c.medium_bps = s.network.bandwidth_bps;
  int beta = std::max(1, (int)std::lround(c.batch / c.M));
  for (const DeviceSpec& d : s.devices) {
    c.dev_bw_bps.push_back(std::min(s.network.bandwidth_bps, d.profile.nic_bandwidth_bps));
    // A message pays the runtime's per-message cost at both ends (link_latency_s);
    // here both ends are taken to be this device's kind.
    c.dev_lat_s.push_back(s.network.latency_s + d.profile.nic_latency_s + 2 * d.profile.message_overhead_s);
    c.rate_layer.push_back(device_rate(d.profile, method.dtype, "layer", beta));
    c.rate_side.push_back(device_rate(d.profile, method.dtype, "side", beta));
    c.rate_layer_bwd.push_back(device_rate(d.profile, method.dtype, "layer_bwd", beta));
    c.rate_side_bwd.push_back(device_rate(d.profile, method.dtype, "side_bwd", beta));
    // The timed AdamW rate (one, whatever the micro-batch), through device_rate like the
    // others (it applies cpu_work_factor); 0 = not timed.
    c.rate_opt.push_back(profile_has_kind(d.profile, "optimizer") ? device_rate(d.profile, method.dtype, "optimizer", 1)
                                                                  : 0.0);
    c.mem.push_back(d.profile.memory_bytes);
  }
  return c;
}

double allreduce_s(const PlanCtx& c, const std::vector<int>& group, double bytes) {
  int g = (int)group.size();
  if (g <= 1 || bytes <= 0) return 0;
  double per_device = 2.0 * (g - 1) / g * bytes * 8;
  // On a shared medium all g devices transmit their part over the one channel.
  if (c.shared_medium) {
    double lat = 0;
    for (int d : group) lat = std::max(lat, c.dev_lat_s[d]);
    return per_device * g / c.medium_bps + 2.0 * (g - 1) * lat;
  }
  // A ring: each device sends to the next in the group's order over that pair's link, so
  // the slowest ring edge paces every step. Per pair, not per device: a scenario's
  // `links` can make one device's links slow (all of them pass through it) while the
  // others' stay fast, which is what the simulator and the runtime's Gloo ring see.
  double step = 0, lat = 0;
  for (int i = 0; i < g; i++) {
    int a = group[i], b = group[(i + 1) % g];
    step = std::max(step, per_device / link_bandwidth_bps(*c.s, a, b));
    lat = std::max(lat, link_latency_s(*c.s, a, b));
  }
  return step + 2.0 * (g - 1) * lat;
}

// Per-sample compute seconds of layers [x, y) on device d (forward + backward).
static double sample_s(const PlanCtx& c, const LayerCost& lc, int d) {
  return lc.fwd_flops / c.rate_layer[d] + lc.bwd_flops / c.rate_layer_bwd[d] + lc.side_fwd_flops / c.rate_side[d] +
         lc.side_bwd_flops / c.rate_side_bwd[d];
}

// Cost of one stage and the most micro-batches in flight its devices can hold.
struct StageEval {
  double time = kInf;
  int kfit = 0;
};

// What a layer range costs independent of the group: computed once per [x, y) so the
// dynamic program's table costs O(group) per entry.
struct RangeInfo {
  int x = 0, y = 0;
  LayerCost lc;
  double fixed_bytes = 0;       // weights, grads, optimizer state
  double buffer_per_sample = 0; // message and cache-write buffers per micro-batch sample
  std::vector<double> sample_s; // per device id: compute seconds per sample
};

static RangeInfo range_info_make(const PlanCtx& c, int x, int y) {
  RangeInfo r;
  r.x = x;
  r.y = y;
  r.lc = cost_range(c.mc, x, y);
  StageMemory fixed = stage_memory(c.mc, x, y, 0, 0);
  r.fixed_bytes = fixed.total();
  r.buffer_per_sample = stage_memory(c.mc, x, y, 0, 1).total() - r.fixed_bytes;
  r.sample_s.resize(c.n);
  for (int d = 0; d < c.n; d++) r.sample_s[d] = sample_s(c, r.lc, d);
  return r;
}

// Range infos do not depend on the device order: the search over orders shares them.
static const RangeInfo& range_info(const PlanCtx& c, int x, int y) {
  auto& cache = c.range_cache;
  size_t L1 = c.L + 1;
  if (cache.empty()) cache.resize(L1 * L1);
  std::shared_ptr<void>& slot = cache[x * L1 + y];
  if (!slot) slot = std::make_shared<RangeInfo>(range_info_make(c, x, y));
  return *static_cast<RangeInfo*>(slot.get());
}

// What a group's stage cost needs from its devices, accumulated one device at a time
// so that the DP table grows a group [i0, i1) by one device per step in O(1). With
// speed-proportional shares (share_i = (1/t_i) / sum 1/t) every per-device maximum
// becomes a maximum of a per-device ratio divided by the sum.
struct GroupAcc {
  int g = 0;
  double inv = 0;          // sum of 1/t_i (t_i: seconds per sample)
  double max_t = 0;        // slowest t_i (even shares)
  double min_mem = kInf;   // smallest memory (even shares)
  double max_w = 0;        // max w_i / t_i (w_i: seconds to write one sample's cache record)
  double max_bw = 0;       // max 1/(t_i * NIC rate)
  double lat = 0;          // max latency
  double task_ovh = 0;     // max runtime cost of a forward + a backward task
  double min_room_t = kInf;  // min (mem_i - fixed) * t_i
  std::vector<double> ts;    // every t_i, in group order (whole-row pricing)

  void add(const PlanCtx& c, const RangeInfo& ri, int d) {
    double t = ri.sample_s[d];
    ts.push_back(t);
    g++;
    inv += 1.0 / t;
    max_t = std::max(max_t, t);
    min_mem = std::min(min_mem, c.mem[d]);
    max_w = std::max(max_w, cache_io_s(c.s->devices[d].profile, true, 1, ri.lc.tap_bytes) / t);
    max_bw = std::max(max_bw, 1.0 / (t * c.dev_bw_bps[d]));
    lat = std::max(lat, c.dev_lat_s[d]);
    task_ovh = std::max(task_ovh, 2 * c.s->devices[d].profile.task_overhead_s);
    min_room_t = std::min(min_room_t, (c.mem[d] - ri.fixed_bytes) * t);
  }

  StageEval eval(const PlanCtx& c, StageCostKind kind, const RangeInfo& ri) const {
    const ModelCost& mc = c.mc;
    const double beta = c.batch / c.M;
    const double act = ri.lc.act_bytes;
    StageEval ev;
    // Most micro-batches in flight that every device can hold: k * share * beta * act
    // + share * beta * buffers + fixed <= mem.
    double kmax;
    if (kind == StageCostKind::Paper) {
      double micro = beta / g;
      kmax = (min_mem - ri.fixed_bytes - micro * ri.buffer_per_sample) / (micro * act);
      ev.time = micro * max_t;
    } else {
      kmax = min_room_t * inv / (beta * act) - ri.buffer_per_sample / act;
      // Whole rows, as the runtime deals them (speed-proportional shares): a
      // micro-batch of beta rows waits for its slowest part, so a group larger than
      // the rows it gets is priced by its idle devices too, not as beta / sum(1/t_i).
      // The search prices each device at the most rows the rule gives it in one
      // micro-batch (stage_rows_bound_s), or, when the stage is the whole model and no
      // neighbour waits, over the mini-batch / M: O(g) per group, where dealing the
      // rows (what pipeline_times and the task graphs do for the chosen plan) costs
      // O(batch x g) per evaluation and made pac-opt 60x slower.
      const bool alone = ri.x == 0 && ri.y == c.L;
      double t = alone ? stage_rows_bound_s(std::round(c.batch), ts, inv) / c.M : stage_rows_bound_s(beta, ts, inv);
      t += task_ovh;  // every device of the group runs its forward and backward per micro-batch
      if (mc.cache) t = std::max(t, beta * max_w / inv);
      for (int cut : {ri.x - 1, ri.y - 1}) {
        if (cut < 0 || cut == c.L - 1) continue;
        const LayerCost& lc = mc.layers[cut];
        double bits = beta * (lc.out_bytes + lc.grad_bytes) * 8;
        double comm = c.shared_medium ? bits / c.medium_bps : bits * max_bw / inv;
        t = std::max(t, comm + lat);
      }
      ev.time = t;
    }
    ev.kfit = kmax < 1 ? 0 : (int)std::min<double>(c.inflight_cap, std::floor(kmax));
    return ev;
  }
};

static StageEval stage_eval_range(const PlanCtx& c, StageCostKind kind, const std::vector<int>& order,
                                  const RangeInfo& ri, int i0, int i1, std::vector<double>* shares_out) {
  GroupAcc acc;
  for (int i = i0; i < i1; i++) acc.add(c, ri, order[i]);
  if (shares_out) {
    shares_out->clear();
    for (int i = i0; i < i1; i++)
      shares_out->push_back(kind == StageCostKind::Paper ? 1.0 / acc.g : 1.0 / ri.sample_s[order[i]] / acc.inv);
  }
  return acc.eval(c, kind, ri);
}

static StageEval stage_eval(const PlanCtx& c, StageCostKind kind, const std::vector<int>& order, int x, int y,
                            int i0, int i1, std::vector<double>* shares_out) {
  return stage_eval_range(c, kind, order, range_info(c, x, y), i0, i1, shares_out);
}

double stage_cost(const PlanCtx& c, StageCostKind kind, const std::vector<int>& order, int x, int y, int i0, int i1,
                  int k, std::vector<double>* shares_out) {
  StageEval ev = stage_eval(c, kind, order, x, y, i0, i1, shares_out);
  return ev.kfit >= std::min(k, c.inflight_cap) ? ev.time : kInf;
}

DpResult dp_partition(const PlanCtx& c, StageCostKind kind, const std::vector<int>& order, int max_stages,
                      bool single_device_stages, bool use_all) {
  const int L = c.L, n = (int)order.size();
  const int N1 = n + 1, L1 = L + 1;
  max_stages = std::min(max_stages, std::min(L, n));
  // Every stage's cost, computed once, laid out [x][i0][y][i1] so that the DP's inner
  // loops (over y and i1) walk memory in order.
  auto idx = [&](int x, int y, int i0, int i1) { return (((size_t)x * N1 + i0) * L1 + y) * N1 + i1; };
  std::vector<double> time((size_t)L1 * L1 * N1 * N1, kInf);
  std::vector<int> kfit(time.size(), 0);
  for (int x = 0; x < L; x++) {
    for (int y = x + 1; y <= L; y++) {
      const RangeInfo& ri = range_info(c, x, y);
      for (int i0 = 0; i0 < n; i0++) {
        int i1_max = single_device_stages ? i0 + 1 : n;
        GroupAcc acc;  // grows by one device per i1: the same sums stage_eval_range makes
        for (int i1 = i0 + 1; i1 <= i1_max; i1++) {
          acc.add(c, ri, order[i1 - 1]);
          StageEval ev = acc.eval(c, kind, ri);
          time[idx(x, y, i0, i1)] = ev.time;
          kfit[idx(x, y, i0, i1)] = ev.kfit;
        }
      }
    }
  }
  // Suffix form: W[k][x][i] = least bottleneck of layers [x, L) on devices order[i..)
  // as k stages. Going from the end makes k the stage's distance from the last stage,
  // which fixes its 1F1B in-flight count min(k, M) and so its memory.
  auto widx = [&](int k, int x, int i) { return ((size_t)k * L1 + x) * N1 + i; };
  std::vector<double> W((size_t)(max_stages + 1) * L1 * N1, kInf);
  std::vector<int> arg_y(W.size(), -1), arg_i(W.size(), -1);
  for (int i = 0; i <= n; i++) {
    if (!use_all || i == n) W[widx(0, L, i)] = 0;
  }
  for (int k = 1; k <= max_stages; k++) {
    int need = std::min(k, c.inflight_cap);
    // k stages need k layers and k devices: the rest of the loops cannot fit them.
    for (int x = 0; x + k <= L; x++) {
      for (int i = 0; i + k <= n; i++) {
        double best = kInf;
        int by = -1, bi = -1;
        int i1_max = single_device_stages ? i + 1 : n - (k - 1);
        for (int y = x + 1; y + (k - 1) <= L; y++) {
          const double* rest_row = &W[widx(k - 1, y, 0)];
          const double* time_row = &time[idx(x, y, i, 0)];
          const int* kfit_row = &kfit[idx(x, y, i, 0)];
          for (int i1 = i + 1; i1 <= i1_max; i1++) {
            double rest = rest_row[i1];
            if (rest >= best || kfit_row[i1] < need) continue;
            double v = std::max(rest, time_row[i1]);
            if (v < best) {
              best = v;
              by = y;
              bi = i1;
            }
          }
        }
        W[widx(k, x, i)] = best;
        arg_y[widx(k, x, i)] = by;
        arg_i[widx(k, x, i)] = bi;
      }
    }
  }
  DpResult r;
  r.best.assign(max_stages + 1, kInf);
  r.parts.resize(max_stages + 1);
  for (int s = 1; s <= max_stages; s++) {
    r.best[s] = W[widx(s, 0, 0)];
    if (r.best[s] == kInf) continue;
    int x = 0, i = 0;
    for (int k = s; k >= 1; k--) {
      int y = arg_y[widx(k, x, i)], i1 = arg_i[widx(k, x, i)];
      r.parts[s].push_back({y, i1});
      x = y;
      i = i1;
    }
  }
  return r;
}

std::vector<StagePlan> partition_stages(const PlanCtx& c, StageCostKind kind, const std::vector<int>& order,
                                        const std::vector<std::pair<int, int>>& part) {
  std::vector<StagePlan> stages;
  int x = 0, i = 0;
  for (auto& pe : part) {
    StagePlan st;
    st.layer_begin = x;
    st.layer_end = pe.first;
    for (int k = i; k < pe.second; k++) st.devices.push_back(order[k]);
    stage_eval(c, kind, order, x, pe.first, i, pe.second, &st.shares);
    stages.push_back(st);
    x = pe.first;
    i = pe.second;
  }
  return stages;
}

// Messages across the cut after stage j, forward (`grad` false) or backward.
static double stage_cut_s(const PlanCtx& c, const Layout& lay, int j, double beta, bool grad) {
  const StagePlan& a = lay.stages[j];
  const StagePlan& b = lay.stages[j + 1];
  const LayerCost& cut = c.mc.layers[a.layer_end - 1];
  double bytes = beta * (grad ? cut.grad_bytes : cut.out_bytes);
  double lat = 0, t = 0;
  if (c.shared_medium) {
    for (int d : a.devices) lat = std::max(lat, c.dev_lat_s[d]);
    return bytes * 8 / c.medium_bps + lat;
  }
  // Each sender's bytes go to every receiver in proportion to the receiver's share;
  // the busiest NIC on either side sets the time.
  for (size_t p = 0; p < a.devices.size(); p++) {
    double send = 0;
    for (size_t q = 0; q < b.devices.size(); q++) {
      int d = a.devices[p], e = b.devices[q];
      send += a.shares[p] * b.shares[q] * bytes * 8 / link_bandwidth_bps(*c.s, d, e);
      lat = std::max(lat, link_latency_s(*c.s, d, e));
    }
    t = std::max(t, send);
  }
  for (size_t q = 0; q < b.devices.size(); q++) {
    double recv = 0;
    for (size_t p = 0; p < a.devices.size(); p++)
      recv += a.shares[p] * b.shares[q] * bytes * 8 / link_bandwidth_bps(*c.s, a.devices[p], b.devices[q]);
    t = std::max(t, recv);
  }
  return t + lat;
}

// Period per micro-batch that a 1F1B pipeline's dependency cycles force. Stage j holds
// k_j = min(S - j, M) micro-batches in flight, so between its forward of micro-batch m
// and that of m + k_j, m has to travel down to the last stage and its gradient back up:
//   k_j x period >= sum_{i>=j} (F_i + B_i) + sum_{j<=i<S-1} (Cf_i + Cb_i).
// With slow links this, not the busiest device or NIC, sets the pace: on
// tests/quality/q09 (3 Orins, 200 Mbit/s) pac-opt predicted 40.2 s without it and 53.7 s
// with it; the simulator gives 53.7 s. On a shared medium a message also shares the
// channel with the other cuts' traffic: processor sharing at utilisation
// rho = medium / period stretches it by 1 / (1 - rho), so the period is the least
// fixed point above `lo`, found by bisection (the need falls as the period grows).
static double cycle_need_s(const std::vector<double>& comp, const std::vector<double>& msg, int M, double slow) {
  const int S = (int)comp.size();
  double w = 0;
  for (int j = 0; j < S; j++) w = std::max(w, (comp[j] + msg[j] * slow) / std::min(S - j, M));
  return w;
}

static double medium_slowdown(double medium, double period) {
  if (period <= 0) return 1;
  return 1 / std::max(0.05, 1 - medium / period);  // at most 20x
}

static double cycle_period_s(const std::vector<double>& F, const std::vector<double>& B,
                             const std::vector<double>& Cf, const std::vector<double>& Cb, int M, bool shared,
                             double medium, double lo) {
  const int S = (int)F.size();
  std::vector<double> comp(S, 0), msg(S, 0);  // suffix sums from stage j to the last
  for (int j = S - 1; j >= 0; j--) {
    comp[j] = F[j] + B[j] + (j + 1 < S ? comp[j + 1] : 0);
    msg[j] = j + 1 < S ? Cf[j] + Cb[j] + msg[j + 1] : 0;
  }
  if (!shared) return std::max(lo, cycle_need_s(comp, msg, M, 1));
  double hi = cycle_need_s(comp, msg, M, medium_slowdown(medium, lo));
  if (hi <= lo) return lo;
  for (int it = 0; it < 50; it++) {
    double mid = 0.5 * (lo + hi);
    if (cycle_need_s(comp, msg, M, medium_slowdown(medium, mid)) > mid) lo = mid;
    else hi = mid;
  }
  return hi;
}

std::vector<std::vector<int>> stage_rows(const Layout& lay, const StagePlan& st) {
  return stage_rows_per_micro_batch(static_cast<int>(std::lround(lay.batch)), lay.micro_batches, st.shares);
}

StageTime stage_time_whole_rows(const PlanCtx& c, const Layout& lay, const StagePlan& st) {
  const std::string& dtype = c.s->method.dtype;
  std::vector<std::vector<int>> rows = stage_rows(lay, st);
  // The only stage: its devices run their rows back to back (the busiest device's
  // total); otherwise each micro-batch waits for its slowest part (src/core/rows.h).
  const bool alone = lay.stages.size() == 1;
  // stage_time per (device, row count), computed once: counts differ by at most a few.
  std::vector<std::map<int, StageTime>> memo(st.devices.size());
  std::vector<StageTime> busy(st.devices.size());
  StageTime sum;
  for (const std::vector<int>& count : rows) {
    StageTime worst;
    for (size_t k = 0; k < count.size(); k++) {
      if (count[k] <= 0) continue;
      auto it = memo[k].find(count[k]);
      if (it == memo[k].end())
        it = memo[k].emplace(count[k], stage_time(c.mc, c.s->devices[st.devices[k]].profile, dtype, st.layer_begin,
                                                  st.layer_end, count[k])).first;
      worst.fwd = std::max(worst.fwd, it->second.fwd);
      worst.bwd = std::max(worst.bwd, it->second.bwd);
      worst.cache_write = std::max(worst.cache_write, it->second.cache_write);
      busy[k].fwd += it->second.fwd;
      busy[k].bwd += it->second.bwd;
      busy[k].cache_write += it->second.cache_write;
    }
    sum.fwd += worst.fwd;
    sum.bwd += worst.bwd;
    sum.cache_write += worst.cache_write;
  }
  if (alone) {
    sum = StageTime();
    for (const StageTime& b : busy)
      if (b.total() > sum.total()) sum = b;
  }
  double M = rows.empty() ? 1.0 : static_cast<double>(rows.size());
  sum.fwd /= M;
  sum.bwd /= M;
  sum.cache_write /= M;
  return sum;
}

PipelineTimes pipeline_times(const PlanCtx& c, const Layout& lay, bool paper_model) {
  const int S = (int)lay.stages.size();
  const double beta = lay.batch / lay.micro_batches;
  const std::string& dtype = c.s->method.dtype;
  std::vector<double> F(S, 0), B(S, 0), Wr(S, 0), Cf(S, 0), Cb(S, 0), tail_local(S, 0);
  for (int j = 0; j < S; j++) {
    const StagePlan& st = lay.stages[j];
    if (paper_model) {  // the paper's model: every device a fluid share of every micro-batch
      for (size_t k = 0; k < st.devices.size(); k++) {
        const DeviceProfile& p = c.s->devices[st.devices[k]].profile;
        StageTime t = stage_time(c.mc, p, dtype, st.layer_begin, st.layer_end, st.shares[k] * beta);
        F[j] = std::max(F[j], t.fwd);
        B[j] = std::max(B[j], t.bwd);
        Wr[j] = std::max(Wr[j], t.cache_write);
      }
    } else {
      StageTime t = stage_time_whole_rows(c, lay, st);
      F[j] = t.fwd;
      B[j] = t.bwd;
      Wr[j] = t.cache_write;
    }
    if (j + 1 < S) {
      Cf[j] = stage_cut_s(c, lay, j, beta, false);
      Cb[j] = stage_cut_s(c, lay, j, beta, true);
    }
    LayerCost lc = cost_range(c.mc, st.layer_begin, st.layer_end);
    double opt = 0;
    for (int d : st.devices) opt = std::max(opt, optimizer_s(c, d, lc.trainable, c.rate_layer[d]));
    tail_local[j] = allreduce_s(c, st.devices, lc.trainable * c.mc.grad_bytes) + opt;
  }
  PipelineTimes r;
  double bottleneck = 0, medium = 0;
  for (int j = 0; j + 1 < S; j++) {
    r.warm += F[j] + Cf[j];
    r.drain += B[j] + Cb[j];
    medium += Cf[j] + Cb[j];
  }
  for (int j = 0; j < S; j++) {
    double b = F[j] + B[j];
    if (!paper_model) {
      b = std::max(b, Wr[j]);
      if (j + 1 < S) b = std::max(b, Cf[j] + Cb[j]);
    }
    bottleneck = std::max(bottleneck, b);
    r.tail = std::max(r.tail, tail_local[j]);
  }
  if (!paper_model)
    bottleneck = cycle_period_s(F, B, Cf, Cb, lay.micro_batches, c.shared_medium, medium,
                                std::max(bottleneck, c.shared_medium ? medium : 0.0));
  r.steady = lay.micro_batches * bottleneck;
  if (!paper_model && c.shared_medium) r.steady = std::max(r.steady, lay.micro_batches * medium);
  return r;
}

double pipeline_iter_s(const PlanCtx& c, const Layout& lay, bool paper_model) {
  PipelineTimes t = pipeline_times(c, lay, paper_model);
  // An asynchronous pipeline fills and drains once per epoch, not per mini-batch.
  if (lay.async) return t.steady + t.tail;
  return t.warm + t.steady + t.drain + t.tail;
}

}  // namespace pac
