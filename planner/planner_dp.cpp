// The dynamic programs over layer ranges x contiguous device slices, and the
// pipeline latency model they are judged by. docs/planner.md explains both.
#include <algorithm>
#include <cmath>

#include "planner/planner_internal.h"
#include "src/core/profile.h"

namespace pac {

PlanCtx plan_ctx_make(const Scenario& s, const MethodSpec& method) {
  PlanCtx c;
  c.s = &s;
  c.mc = cost_model_build(s.model, method, s.data);
  c.n = (int)s.devices.size();
  c.L = s.model.total_layers();
  c.M = s.data.micro_batches;
  c.batch = s.data.mini_batch;
  c.shared_medium = s.network.kind == "shared";
  c.medium_bps = s.network.bandwidth_bps;
  int beta = std::max(1, (int)std::lround(c.batch / c.M));
  for (const DeviceSpec& d : s.devices) {
    c.dev_bw_bps.push_back(std::min(s.network.bandwidth_bps, d.profile.nic_bandwidth_bps));
    c.dev_lat_s.push_back(s.network.latency_s + d.profile.nic_latency_s);
    c.rate_layer.push_back(device_rate(d.profile, method.dtype, "layer", beta));
    c.rate_side.push_back(device_rate(d.profile, method.dtype, "side", beta));
    c.mem.push_back(d.profile.memory_bytes);
  }
  return c;
}

double allreduce_s(const PlanCtx& c, const std::vector<int>& group, double bytes) {
  int g = (int)group.size();
  if (g <= 1 || bytes <= 0) return 0;
  double bw = kInf, lat = 0;
  for (int d : group) {
    bw = std::min(bw, c.dev_bw_bps[d]);
    lat = std::max(lat, c.dev_lat_s[d]);
  }
  double per_device = 2.0 * (g - 1) / g * bytes * 8;
  // On a shared medium all g devices transmit their part over the one channel.
  double t = c.shared_medium ? per_device * g / c.medium_bps : per_device / bw;
  return t + 2.0 * (g - 1) * lat;
}

// Per-sample compute seconds of layers [x, y) on device d (forward + backward).
static double sample_s(const PlanCtx& c, const LayerCost& lc, int d) {
  return (lc.fwd_flops + lc.bwd_flops) / c.rate_layer[d] + (lc.side_fwd_flops + lc.side_bwd_flops) / c.rate_side[d];
}

// Seconds to move the messages of a cut (per sample `bytes`) into or out of a group
// whose devices carry `share` of each micro-batch.
static double cut_comm_s(const PlanCtx& c, const std::vector<int>& order, int i0, int i1,
                         const std::vector<double>& shares, double beta, double bytes) {
  double lat = 0;
  for (int i = i0; i < i1; i++) lat = std::max(lat, c.dev_lat_s[order[i]]);
  if (c.shared_medium) return beta * bytes * 8 / c.medium_bps + lat;
  double t = 0;
  for (int i = i0; i < i1; i++) t = std::max(t, shares[i - i0] * beta * bytes * 8 / c.dev_bw_bps[order[i]]);
  return t + lat;
}

// Cost of one stage and the most micro-batches in flight its devices can hold.
struct StageEval {
  double time = kInf;
  int kfit = 0;
};

static StageEval stage_eval(const PlanCtx& c, StageCostKind kind, const std::vector<int>& order, int x, int y,
                            int i0, int i1, std::vector<double>* shares_out) {
  const ModelCost& mc = c.mc;
  LayerCost lc = cost_range(mc, x, y);
  int g = i1 - i0;
  double beta = c.batch / c.M;
  std::vector<double> shares(g, 1.0 / g);
  StageEval ev;
  if (kind == StageCostKind::Paper) {
    double t = 0;
    for (int i = i0; i < i1; i++) t = std::max(t, beta / g * sample_s(c, lc, order[i]));
    ev.time = t;
  } else {
    // Shares proportional to speed (Asteroid): every device then finishes together.
    double inv = 0;
    for (int i = i0; i < i1; i++) inv += 1.0 / sample_s(c, lc, order[i]);
    for (int i = i0; i < i1; i++) shares[i - i0] = 1.0 / sample_s(c, lc, order[i]) / inv;
    double t = beta / inv;
    if (mc.cache) {
      for (int i = i0; i < i1; i++)
        t = std::max(t, shares[i - i0] * beta * lc.tap_bytes / c.s->devices[order[i]].profile.storage_write_bytes_per_s);
    }
    if (x > 0) {
      const LayerCost& cut = mc.layers[x - 1];
      t = std::max(t, cut_comm_s(c, order, i0, i1, shares, beta, cut.out_bytes + cut.grad_bytes));
    }
    if (y < c.L) {
      const LayerCost& cut = mc.layers[y - 1];
      t = std::max(t, cut_comm_s(c, order, i0, i1, shares, beta, cut.out_bytes + cut.grad_bytes));
    }
    ev.time = t;
  }
  // Memory: fixed part (weights, grads, optimizer, message and cache buffers) plus k
  // micro-batch shares of activations.
  int kfit = c.M;
  for (int i = i0; i < i1; i++) {
    int d = order[i];
    double micro = shares[i - i0] * beta;
    StageMemory m = stage_memory(mc, x, y, 0, micro);
    double room = c.mem[d] - m.total();
    double per_mb = micro * lc.act_bytes;
    int k = room < per_mb ? 0 : (per_mb > 0 ? (int)std::min<double>(c.M, std::floor(room / per_mb)) : c.M);
    kfit = std::min(kfit, k);
  }
  ev.kfit = kfit;
  if (shares_out) *shares_out = shares;
  return ev;
}

double stage_cost(const PlanCtx& c, StageCostKind kind, const std::vector<int>& order, int x, int y, int i0, int i1,
                  int k, std::vector<double>* shares_out) {
  StageEval ev = stage_eval(c, kind, order, x, y, i0, i1, shares_out);
  return ev.kfit >= std::min(k, c.M) ? ev.time : kInf;
}

DpResult dp_partition(const PlanCtx& c, StageCostKind kind, const std::vector<int>& order, int max_stages,
                      bool single_device_stages, bool use_all) {
  const int L = c.L, n = (int)order.size();
  const int N1 = n + 1, L1 = L + 1;
  max_stages = std::min(max_stages, std::min(L, n));
  // Every stage's cost, computed once: [x][y][i0][i1].
  auto idx = [&](int x, int y, int i0, int i1) { return (((size_t)x * L1 + y) * N1 + i0) * N1 + i1; };
  std::vector<double> time((size_t)L1 * L1 * N1 * N1, kInf);
  std::vector<int> kfit(time.size(), 0);
  for (int x = 0; x < L; x++) {
    for (int y = x + 1; y <= L; y++) {
      for (int i0 = 0; i0 < n; i0++) {
        int i1_max = single_device_stages ? i0 + 1 : n;
        for (int i1 = i0 + 1; i1 <= i1_max; i1++) {
          StageEval ev = stage_eval(c, kind, order, x, y, i0, i1, nullptr);
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
    int need = std::min(k, c.M);
    for (int x = 0; x < L; x++) {
      for (int i = 0; i < n; i++) {
        double best = kInf;
        int by = -1, bi = -1;
        int i1_max = single_device_stages ? i + 1 : n;
        for (int y = x + 1; y <= L; y++) {
          for (int i1 = i + 1; i1 <= i1_max; i1++) {
            double rest = W[widx(k - 1, y, i1)];
            if (rest >= best) continue;
            size_t id = idx(x, y, i, i1);
            if (kfit[id] < need) continue;
            double v = std::max(rest, time[id]);
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

double pipeline_iter_s(const PlanCtx& c, const Layout& lay, bool paper_model) {
  const int S = (int)lay.stages.size();
  const double beta = lay.batch / lay.micro_batches;
  const std::string& dtype = c.s->method.dtype;
  std::vector<double> F(S, 0), B(S, 0), Wr(S, 0), Cf(S, 0), Cb(S, 0), tail_local(S, 0);
  for (int j = 0; j < S; j++) {
    const StagePlan& st = lay.stages[j];
    for (size_t k = 0; k < st.devices.size(); k++) {
      const DeviceProfile& p = c.s->devices[st.devices[k]].profile;
      StageTime t = stage_time(c.mc, p, dtype, st.layer_begin, st.layer_end, st.shares[k] * beta);
      F[j] = std::max(F[j], t.fwd);
      B[j] = std::max(B[j], t.bwd);
      Wr[j] = std::max(Wr[j], t.cache_write);
    }
    if (j + 1 < S) {
      Cf[j] = stage_cut_s(c, lay, j, beta, false);
      Cb[j] = stage_cut_s(c, lay, j, beta, true);
    }
    LayerCost lc = cost_range(c.mc, st.layer_begin, st.layer_end);
    double opt = 0;
    for (int d : st.devices) opt = std::max(opt, 12 * lc.trainable / c.rate_layer[d]);  // AdamW: ~12 FLOP/param
    tail_local[j] = allreduce_s(c, st.devices, lc.trainable * c.mc.grad_bytes) + opt;
  }
  double warm = 0, drain = 0, bottleneck = 0, medium = 0, tail = 0;
  for (int j = 0; j + 1 < S; j++) {
    warm += F[j] + Cf[j];
    drain += B[j] + Cb[j];
    medium += Cf[j] + Cb[j];
  }
  for (int j = 0; j < S; j++) {
    double b = F[j] + B[j];
    if (!paper_model) {
      b = std::max(b, Wr[j]);
      if (j + 1 < S) b = std::max(b, Cf[j] + Cb[j]);
    }
    bottleneck = std::max(bottleneck, b);
    tail = std::max(tail, tail_local[j]);
  }
  double steady = lay.micro_batches * bottleneck;
  if (!paper_model && c.shared_medium) steady = std::max(steady, lay.micro_batches * medium);
  return warm + steady + drain + tail;
}

}  // namespace pac
