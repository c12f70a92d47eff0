// Planner strategies: each turns the scenario into a Layout, and plan_assemble turns
// the layout into a complete plan. docs/planner.md describes every strategy.
#include "planner/planner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <map>

#include "planner/planner_internal.h"
#include "src/core/profile.h"

namespace pac {

const std::vector<std::string>& planner_strategies() { return strategy_names(); }

static std::vector<int> order_identity(int n) {
  std::vector<int> o(n);
  for (int i = 0; i < n; i++) o[i] = i;
  return o;
}

static std::string mb(double bytes) { return std::to_string((long long)std::llround(bytes / 1e6)) + " MB"; }

// Nothing fits: name the device that came closest to fitting. Its need is the memory of the
// smallest piece a strategy could give it: its even slice of the layers with one
// micro-batch in flight (pipelines), or the whole model (single device / data parallel).
[[noreturn]] static void infeasible_throw(const PlanCtx& c, const std::string& strategy, bool whole_model,
                                          double samples) {
  const Scenario& s = *c.s;
  int slice = whole_model ? c.L : (c.L + c.n - 1) / c.n;
  int best = 0;
  double best_gap = kInf, best_need = 0;
  for (int d = 0; d < c.n; d++) {
    double worst = 0;
    for (int x = 0; x + slice <= c.L; x += slice) {
      worst = std::max(worst, stage_memory(c.mc, x, x + slice, samples, samples).total());
    }
    // Devices that fit their piece are not the problem: among those that do not, the
    // one with the smallest shortfall (if all fit, the closest call).
    double gap = worst - c.mem[d];
    if (gap <= 0) gap = 1e30 - (c.mem[d] - worst);
    if (gap < best_gap) {
      best_gap = gap;
      best = d;
      best_need = worst;
    }
  }
  throw PlanInfeasible("no feasible plan for strategy \"" + strategy + "\" (" + s.method.kind + ", " + s.model.name +
                           "): nothing fits the devices' memory; the tightest device is " + s.devices[best].id + " (" +
                           s.devices[best].profile.name + "), which needs at least " + mb(best_need) + " and has " +
                           mb(c.mem[best]),
                       s.devices[best].id, best_need, c.mem[best]);
}

// Candidate stage counts: the forced one, or all.
static std::vector<int> stage_counts(const PlanCtx& c, int max_s) {
  std::vector<int> v;
  int forced = c.s->stages;
  for (int s = 1; s <= max_s; s++) {
    if (forced == 0 || s == forced) v.push_back(s);
  }
  return v;
}

static Layout layout_from_part(const PlanCtx& c, StageCostKind kind, const std::vector<int>& order,
                               const std::vector<std::pair<int, int>>& part) {
  Layout lay;
  lay.order = order;
  lay.stages = partition_stages(c, kind, order, part);
  lay.micro_batches = c.M;
  lay.batch = c.batch;
  return lay;
}

// Even data-parallel shares over all devices for the cached phase (the paper's).
static std::vector<double> shares_even(int n) { return std::vector<double>(n, 1.0 / n); }

static bool cached_phase_fits(const PlanCtx& c, const std::vector<double>& shares) {
  for (int d = 0; d < c.n; d++) {
    if (shares[d] > 0 && cached_memory(c.mc, shares[d] * c.batch).total() > c.mem[d]) return false;
  }
  return true;
}

// ---- pac: the paper's planner ---------------------------------------------------------

// The paper: fixed device order, DP over layer ranges x contiguous groups with the
// compute-only stage cost and all devices used, stage count by warm-up + steady + tail.
static bool pac_layout(const PlanCtx& c, Layout* out) {
  std::vector<int> order = order_identity(c.n);
  DpResult dp = dp_partition(c, StageCostKind::Paper, order, c.n, false, true);
  double best = kInf;
  for (int s : stage_counts(c, (int)dp.best.size() - 1)) {
    if (dp.best[s] == kInf) continue;
    Layout lay = layout_from_part(c, StageCostKind::Paper, order, dp.parts[s]);
    double t = pipeline_iter_s(c, lay, true);
    if (t < best) {
      best = t;
      *out = lay;
    }
  }
  if (best == kInf) return false;
  out->cached = c.mc.cache;
  out->dp_shares = shares_even(c.n);
  if (out->cached && !cached_phase_fits(c, out->dp_shares)) out->cached = false;
  return true;
}

// ---- pac-opt ---------------------------------------------------------------------------

// Device orders to search. Devices that look the same to the cost model (profile and
// bandwidth) are interchangeable, so only distinct arrangements of the classes count.
// All of them when few (exact search); otherwise a few seeds improved by swaps.
static std::vector<int> device_classes(const PlanCtx& c) {
  std::vector<int> cls(c.n);
  std::map<std::string, int> ids;
  for (int d = 0; d < c.n; d++) {
    std::string key = device_profile_to_json(c.s->devices[d].profile).dump();
    for (const LinkSpec& l : c.s->network.links) {
      if (l.a == c.s->devices[d].id || l.b == c.s->devices[d].id) key += "|" + c.s->devices[d].id;  // unique
    }
    auto it = ids.emplace(key, (int)ids.size()).first;
    cls[d] = it->second;
  }
  return cls;
}

static double count_arrangements(const std::vector<int>& cls) {
  std::map<int, int> cnt;
  for (int x : cls) cnt[x]++;
  double r = 1;
  int k = 0;
  for (auto& kv : cnt) {
    for (int i = 1; i <= kv.second; i++) {
      k++;
      r = r * k / i;
    }
  }
  return r;
}

// Searches layouts over device orders; keeps the one with the least `score`.
struct OptSearch {
  const PlanCtx* c;
  StageCostKind kind;
  bool single;  // one device per stage (Eco-FL)
  std::function<double(Layout&)> score;
  Layout best;
  double best_t = kInf;
  int evaluated = 0;
  std::vector<double> bottleneck;  // per stage count: least DP bottleneck over the orders tried

  double try_order(const std::vector<int>& order) {
    evaluated++;
    DpResult dp = dp_partition(*c, kind, order, c->n, single, false);
    if (bottleneck.size() < dp.best.size()) bottleneck.resize(dp.best.size(), kInf);
    for (size_t s = 1; s < dp.best.size(); s++) bottleneck[s] = std::min(bottleneck[s], dp.best[s]);
    double order_best = kInf;
    for (int s : stage_counts(*c, (int)dp.best.size() - 1)) {
      if (dp.best[s] == kInf) continue;
      Layout lay = layout_from_part(*c, kind, order, dp.parts[s]);
      double t = score(lay);
      order_best = std::min(order_best, t);
      if (t < best_t) {
        best_t = t;
        best = lay;
      }
    }
    return order_best;
  }
};

bool search_layout(const PlanCtx& c, StageCostKind kind, bool single, bool search_orders,
                   const std::function<double(Layout&)>& score, Layout* out, std::vector<double>* bottleneck_by_s) {
  OptSearch os{&c, kind, single, score, Layout(), kInf, 0, {}};
  std::vector<int> order = order_identity(c.n);
  if (!search_orders) {
    os.try_order(order);
  } else {
    std::vector<int> cls = device_classes(c);
    // Exact: every distinct arrangement of the classes, while the work stays small.
    double work = count_arrangements(cls) * c.L * c.L * c.n * c.n * c.n;
    if (work <= 3e8) {
      // Permute the class sequence; map back to devices in index order within a class.
      std::vector<int> seq = cls;
      std::sort(seq.begin(), seq.end());
      do {
        std::map<int, std::vector<int>> pool;
        for (int d = c.n - 1; d >= 0; d--) pool[cls[d]].push_back(d);
        std::vector<int> o;
        for (int x : seq) {
          o.push_back(pool[x].back());
          pool[x].pop_back();
        }
        os.try_order(o);
      } while (std::next_permutation(seq.begin(), seq.end()));
    } else {
      // Seeds: as given, fastest first, slowest first, most memory first; then swap
      // neighbours of different classes while it helps (a bounded number of DP runs).
      std::vector<std::vector<int>> seeds = {order};
      std::vector<int> o = order;
      std::stable_sort(o.begin(), o.end(), [&](int a, int b) { return c.rate_layer[a] > c.rate_layer[b]; });
      seeds.push_back(o);
      std::reverse(o.begin(), o.end());
      seeds.push_back(o);
      std::stable_sort(o.begin(), o.end(), [&](int a, int b) { return c.mem[a] > c.mem[b]; });
      seeds.push_back(o);
      std::vector<int> cur;
      double cur_t = kInf;
      for (auto& sd : seeds) {
        double t = os.try_order(sd);
        if (t < cur_t) {
          cur_t = t;
          cur = sd;
        }
      }
      const int budget = 8;
      bool improved = !cur.empty();
      while (improved && os.evaluated < budget) {
        improved = false;
        for (int i = 0; i + 1 < c.n && os.evaluated < budget; i++) {
          if (cls[cur[i]] == cls[cur[i + 1]]) continue;
          std::vector<int> nb = cur;
          std::swap(nb[i], nb[i + 1]);
          double t = os.try_order(nb);
          if (t < cur_t) {
            cur_t = t;
            cur = nb;
            improved = true;
          }
        }
      }
    }
  }
  if (bottleneck_by_s) *bottleneck_by_s = os.bottleneck;
  if (os.best_t == kInf) return false;
  *out = os.best;
  return true;
}

static double score_iteration(const PlanCtx& c, Layout& lay) { return pipeline_iter_s(c, lay, false); }

// pac-opt's cached phase: which devices train the side network in epochs 2+ and with
// which shares. On a slow shared medium the all-reduce over every device can cost more
// than it saves, so the k fastest devices (k = 1..n, shares by speed) are all priced
// with the whole run and the best kept. Sets lay.cached / lay.dp_shares; returns the
// predicted total.
static double score_total_cached(const PlanCtx& c, Layout& lay) {
  lay.cached = c.mc.cache && c.s->epochs > 1;
  if (!lay.cached) {
    lay.dp_shares = shares_even(c.n);
    return layout_predict(c, lay).total_s;
  }
  std::vector<double> speed(c.n);
  std::vector<int> by_speed = order_identity(c.n);
  for (int d = 0; d < c.n; d++) {
    StageTime t = cached_time(c.mc, c.s->devices[d].profile, c.s->method.dtype, 1.0);
    speed[d] = 1.0 / std::max(t.total(), t.cache_read);
  }
  std::stable_sort(by_speed.begin(), by_speed.end(), [&](int a, int b) { return speed[a] > speed[b]; });
  double best = kInf;
  std::vector<double> best_shares;
  for (int k = 1; k <= c.n; k++) {
    std::vector<double> sh(c.n, 0);
    double sum = 0;
    for (int i = 0; i < k; i++) sum += speed[by_speed[i]];
    for (int i = 0; i < k; i++) sh[by_speed[i]] = speed[by_speed[i]] / sum;
    if (!cached_phase_fits(c, sh)) continue;
    lay.dp_shares = sh;
    double t = layout_predict(c, lay).total_s;
    if (t < best) {
      best = t;
      best_shares = sh;
    }
  }
  if (best_shares.empty()) {  // the side network fits nowhere alone: stay in the pipeline
    lay.cached = false;
    lay.dp_shares = shares_even(c.n);
    return kInf;
  }
  lay.dp_shares = best_shares;
  return best;
}

// ---- strategies -----------------------------------------------------------------------

static MethodSpec method_without_cache(const MethodSpec& m) {
  MethodSpec r = m;
  r.cache = false;
  return r;
}

static Plan plan_standalone(const Scenario& s) {
  PlanCtx c = plan_ctx_make(s, method_without_cache(s.method));
  const double micro = c.batch / c.M;  // gradient accumulation over the micro-batches
  Layout best;
  double best_t = kInf;
  if (s.stages > 1) throw_input(s.file, "$.stages", "strategy standalone runs one stage on one device, got stages " + std::to_string(s.stages));
  for (int d = 0; d < c.n; d++) {
    Layout lay;
    lay.order = {d};
    lay.micro_batches = c.M;
    lay.batch = c.batch;
    StagePlan st;
    st.layer_begin = 0;
    st.layer_end = c.L;
    st.devices = {d};
    st.shares = {1.0};
    lay.stages = {st};
    if (stage_memory(c.mc, 0, c.L, micro, micro).total() > c.mem[d]) continue;
    double t = layout_predict(c, lay).total_s;
    if (t < best_t) {
      best_t = t;
      best = lay;
    }
  }
  if (best_t == kInf) infeasible_throw(c, "standalone", true, micro);
  return plan_assemble(c, best, "standalone");
}

// EDDL: every device holds the whole model and takes an even part of each
// mini-batch in one pass; gradients are all-reduced after every mini-batch.
static Plan plan_eddl(const Scenario& s) {
  PlanCtx c = plan_ctx_make(s, method_without_cache(s.method));
  c.M = 1;
  const double local = c.batch / c.n;
  Layout lay;
  lay.order = order_identity(c.n);
  lay.micro_batches = 1;
  lay.batch = c.batch;
  StagePlan st;
  st.layer_begin = 0;
  st.layer_end = c.L;
  st.devices = lay.order;
  st.shares = shares_even(c.n);
  lay.stages = {st};
  if (s.stages > 1) throw_input(s.file, "$.stages", "strategy eddl runs one stage (pure data parallel), got stages " + std::to_string(s.stages));
  for (int d = 0; d < c.n; d++) {
    if (stage_memory(c.mc, 0, c.L, local, local).total() > c.mem[d]) infeasible_throw(c, "eddl", true, local);
  }
  return plan_assemble(c, lay, "eddl");
}

// Eco-FL: one device per stage, asynchronous 1F1B (PipeDream-style weight stashing: no
// flush between mini-batches, so up to S micro-batches in flight on the first stage).
// Asteroid: groups with speed-proportional shares, synchronous 1F1B, no cache.
static Plan plan_pipeline_baseline(const Scenario& s, const std::string& strategy) {
  PlanCtx c = plan_ctx_make(s, method_without_cache(s.method));
  Layout lay;
  bool single = strategy == "ecofl";
  if (single) {
    c.M = (int)c.batch;
    c.inflight_cap = c.n;
  }
  auto score = [&](Layout& l) {
    l.async = single;
    return score_iteration(c, l);
  };
  if (!search_layout(c, StageCostKind::Network, single, false, score, &lay))
    infeasible_throw(c, strategy, false, c.batch / c.M);
  return plan_assemble(c, lay, strategy);
}

static Plan plan_pac(const Scenario& s) {
  PlanCtx c = plan_ctx_make(s, s.method);
  Layout lay;
  if (!pac_layout(c, &lay)) infeasible_throw(c, "pac", false, c.batch / c.M);
  return plan_assemble(c, lay, "pac");
}

// pac-opt: searches device orders with the network-aware stage cost (groups, and one
// device per stage), speed-based shares, decides whether the cache pays off and which
// devices train from it, and also prices pac's own plan: the best of all by predicted
// total time, so it is never worse than pac under the same cost model.
static Plan plan_pac_opt(const Scenario& s) {
  std::vector<MethodSpec> variants = {s.method};
  if (s.method.cache) variants.push_back(method_without_cache(s.method));
  Plan best;
  double best_t = kInf;
  for (const MethodSpec& m : variants) {
    PlanCtx c = plan_ctx_make(s, m);
    // Micro-batch counts: the scenario's, and one sample per micro-batch (a smaller
    // 1F1B bubble, more messages). The latter only where the search stays cheap.
    std::vector<int> micro_counts = {c.M};
    if ((int)c.batch != c.M) micro_counts.push_back((int)c.batch);
    for (int M : micro_counts) {
      c.M = M;
      c.inflight_cap = M;
      c.range_cache.clear();
      auto score = [&](Layout& l) { return score_total_cached(c, l); };
      std::vector<Layout> cands;
      Layout lay;
      bool cheap = M == s.data.micro_batches || c.n <= 8;
      if (cheap && search_layout(c, StageCostKind::Network, false, true, score, &lay)) cands.push_back(lay);
      if (search_layout(c, StageCostKind::Network, true, true, score, &lay)) cands.push_back(lay);
      if (M == s.data.micro_batches && pac_layout(c, &lay)) cands.push_back(lay);
      for (Layout& cand : cands) {
        double t = layout_predict(c, cand).total_s;
        if (t < best_t) {
          best_t = t;
          best = plan_assemble(c, cand, "pac-opt");
        }
      }
    }
  }
  if (best_t == kInf) {
    PlanCtx c = plan_ctx_make(s, s.method);
    infeasible_throw(c, "pac-opt", false, c.batch / c.M);
  }
  return best;
}

// A model whose weights alone exceed the whole cluster's memory is bad input: no
// strategy and no stage count can help.
static void fits_somewhere_check(const Scenario& s) {
  double total_mem = 0;
  for (const DeviceSpec& d : s.devices) total_mem += d.profile.memory_bytes;
  ModelCost mc = cost_model_build(s.model, s.method, s.data);
  double weights = mc.total_params * mc.weight_bytes;
  if (weights > total_mem)
    throw_input(s.file, "$.cluster.devices",
                "the model " + s.model.name + " needs " + mb(weights) + " for its weights alone but the " +
                    std::to_string(s.devices.size()) + " devices have " + mb(total_mem) +
                    " together (expected a cluster that can hold the model)");
}

Plan plan_make(const Scenario& s, const std::string& strategy) {
  auto t0 = std::chrono::steady_clock::now();
  if (std::find(planner_strategies().begin(), planner_strategies().end(), strategy) == planner_strategies().end())
    throw InputError("unknown strategy \"" + strategy + "\" (expected pac, pac-opt, standalone, eddl, ecofl or asteroid)");
  fits_somewhere_check(s);
  Plan p;
  if (strategy == "pac") p = plan_pac(s);
  else if (strategy == "pac-opt") p = plan_pac_opt(s);
  else if (strategy == "standalone") p = plan_standalone(s);
  else if (strategy == "eddl") p = plan_eddl(s);
  else p = plan_pipeline_baseline(s, strategy);
  p.scenario.strategy = strategy;
  p.predicted.planning_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return p;
}

}  // namespace pac
