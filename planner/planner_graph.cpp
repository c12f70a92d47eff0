// From a layout (stages, groups, shares) to a complete plan: the task graph of one
// iteration per segment, resident memory, and the predicted times, memory and energy.
#include <algorithm>
#include <cmath>
#include <map>
#include <queue>

#include "planner/planner_internal.h"
#include "src/core/profile.h"
#include "src/core/rows.h"

namespace pac {

// ---- the cache redistribution at the switch -----------------------------------------

// Bytes each device receives (in) and sends (out) so that it ends up holding the taps
// of every layer for its data-parallel share of the samples. A device keeps the taps
// it wrote for as many of its new samples as possible (it wrote layers of its own
// stage for `share` of every micro-batch).
struct SwitchFlow {
  std::vector<double> in, out;
  std::vector<double> records;  // cache records each device writes (one per new sample)
};

static SwitchFlow switch_flow(const PlanCtx& c, const Layout& lay) {
  SwitchFlow f;
  f.in.assign(c.n, 0);
  f.out.assign(c.n, 0);
  f.records.assign(c.n, 0);
  double N = (double)c.s->data.samples;
  double tap_total = c.mc.prefix.back().tap_bytes;
  std::vector<double> held_share(c.n, 0), held_tap(c.n, 0);
  for (const StagePlan& st : lay.stages) {
    double tap = cost_range(c.mc, st.layer_begin, st.layer_end).tap_bytes;
    for (size_t k = 0; k < st.devices.size(); k++) {
      held_share[st.devices[k]] = st.shares[k];
      held_tap[st.devices[k]] = tap;
    }
  }
  for (int d = 0; d < c.n; d++) {
    double keep = std::min(lay.dp_shares[d], held_share[d]) * N * held_tap[d];
    f.in[d] = lay.dp_shares[d] * N * tap_total - keep;
    f.out[d] = held_share[d] * N * held_tap[d] - keep;
    // A sample whose taps it held whole is moved, not rewritten; every other sample of
    // its share gets a new record (its own taps plus those it receives).
    f.records[d] = lay.dp_shares[d] * N - (held_tap[d] >= tap_total ? std::min(lay.dp_shares[d], held_share[d]) * N : 0);
  }
  return f;
}

// Cache records receiver e writes for `bytes` of what it receives (its new records
// spread over its incoming bytes).
static double switch_records(const SwitchFlow& f, int e, double bytes) {
  return f.in[e] > 0 ? f.records[e] * bytes / f.in[e] : 0;
}

// Each transfer of the switch is cut into this many chunks, sent one after another; a
// receiver writes a chunk as soon as it has arrived, so network and storage overlap.
constexpr int kSwitchChunks = 8;

// Bytes each sender ships to each receiver, by content: receiver e needs stage j's taps
// for its new samples (less what it kept, when e was in stage j); the devices of stage j
// supply them in proportion to their surplus (what they wrote but do not keep). So e
// receives exactly f.in[e] and d sends exactly f.out[d].
static std::vector<std::vector<double>> switch_pairs(const PlanCtx& c, const Layout& lay, const SwitchFlow& f) {
  std::vector<std::vector<double>> pair(c.n, std::vector<double>(c.n, 0));
  double N = (double)c.s->data.samples;
  for (const StagePlan& st : lay.stages) {
    double tap = cost_range(c.mc, st.layer_begin, st.layer_end).tap_bytes;
    double supply = 0;
    for (int d : st.devices) supply += f.out[d];
    if (supply <= 0) continue;
    for (int e = 0; e < c.n; e++) {
      double need = lay.dp_shares[e] * N * tap;
      for (size_t k = 0; k < st.devices.size(); k++) {
        if (st.devices[k] == e) need -= std::min(lay.dp_shares[e], st.shares[k]) * N * tap;
      }
      if (need <= 0) continue;
      for (int d : st.devices) {
        if (d != e) pair[d][e] += need * f.out[d] / supply;
      }
    }
  }
  return pair;
}

// The side network's trainable tensors with AdamW's two moments, one float each per
// trainable parameter: what pac-run ships of a stage at the switch.
constexpr int kSideStateCopies = 3;

// Side-state bytes each device sends each other device at the switch: the first device
// of every stage ships its stage's tensors and moments to every data-parallel device
// outside the stage's group. The group's members hold the same ones already (the same
// all-reduced gradient and optimizer step every iteration), so a phase 1 that is
// already data parallel over the same devices moves nothing.
static std::vector<std::vector<double>> switch_side_pairs(const PlanCtx& c, const Layout& lay) {
  std::vector<std::vector<double>> pair(c.n, std::vector<double>(c.n, 0));
  for (const StagePlan& st : lay.stages) {
    if (st.devices.empty()) continue;
    double bytes = cost_range(c.mc, st.layer_begin, st.layer_end).trainable * kSideStateCopies * c.mc.grad_bytes;
    for (int e = 0; e < c.n; e++) {
      if (lay.dp_shares[e] <= 0) continue;
      if (std::find(st.devices.begin(), st.devices.end(), e) != st.devices.end()) continue;
      pair[st.devices[0]][e] += bytes;
    }
  }
  return pair;
}

// Network time of moving pair[d][e] bytes from every d to every e: each device sends
// its pairs one after another and receives likewise, each pair at that pair's link rate
// (the scenario's `links` override, else switch and NICs); a shared medium carries all
// of it at its capacity.
static double switch_net_s(const PlanCtx& c, const std::vector<std::vector<double>>& pair) {
  std::vector<double> send_t(c.n, 0), recv_t(c.n, 0);
  double net = 0, total = 0;
  for (int d = 0; d < c.n; d++)
    for (int e = 0; e < c.n; e++) {
      if (d == e || pair[d][e] <= 0) continue;
      double t = pair[d][e] * 8 / link_bandwidth_bps(*c.s, d, e);
      send_t[d] += t;
      recv_t[e] += t;
      total += pair[d][e];
    }
  for (int d = 0; d < c.n; d++) net = std::max(net, std::max(send_t[d], recv_t[d]));
  if (c.shared_medium) net = total * 8 / c.medium_bps;
  return net;
}

// The devices that hold a stage of phase 1: each does the switch's local work.
static std::vector<int> phase1_devices(const Layout& lay) {
  std::vector<int> out;
  for (const StagePlan& st : lay.stages)
    for (size_t k = 0; k < st.devices.size(); k++)
      if (st.shares[k] > 0) out.push_back(st.devices[k]);
  return out;
}

// The switch's local work (the profile's switch_local_s) on the slowest phase-1 device:
// each starts with it, before sending (switch_graph).
static double switch_local_max_s(const PlanCtx& c, const Layout& lay) {
  double t = 0;
  for (int d : phase1_devices(lay)) t = std::max(t, c.s->devices[d].profile.switch_local_s);
  return t;
}

static double switch_time_s(const PlanCtx& c, const Layout& lay) {
  SwitchFlow f = switch_flow(c, lay);
  std::vector<std::vector<double>> pair = switch_pairs(c, lay, f);
  double net = switch_net_s(c, pair), disk = 0, lat = 0, last_chunk = 0;
  for (int d = 0; d < c.n; d++) {
    disk = std::max(disk, cache_io_s(c.s->devices[d].profile, true, f.records[d], f.in[d]));
    lat = std::max(lat, c.dev_lat_s[d]);
    for (int e = 0; e < c.n; e++) {
      double chunk = pair[d][e] / kSwitchChunks;
      if (chunk <= 0) continue;
      last_chunk = std::max(last_chunk, cache_io_s(c.s->devices[e].profile, true, switch_records(f, e, chunk), chunk));
    }
  }
  // Streaming: the network bound plus the write of the last chunk to arrive, or the
  // storage bound plus the wait for the first chunks.
  double stream = net > 0 || disk > 0 ? std::max(net + lat + last_chunk, net / kSwitchChunks + lat + disk) : 0;
  // Then the side state (pac-run's senders ship it after their cached taps).
  double side = switch_net_s(c, switch_side_pairs(c, lay));
  return switch_local_max_s(c, lay) + stream + (side > 0 ? side + lat : 0);
}

// A phase's first use on a device: the activation memory its first compute task of the
// phase allocates (`bytes`, that task's mem_alloc_bytes) at the profile's first-touch
// rate (first_step_bytes_per_s, or cached_first_step_bytes_per_s after the switch);
// 0 where the profile has none. pipeline_graph and dp_graph put it on that task as
// first_extra_s; layout_predict adds it to the phase's first epoch.
static double first_use_s(const DeviceProfile& p, bool cached, double bytes) {
  double rate = cached ? p.cached_first_step_bytes_per_s : p.first_step_bytes_per_s;
  return rate > 0 ? bytes / rate : 0;
}

// The pipeline's first micro-batch passes the stages one after another, so epoch 1
// takes each stage's slowest first use, summed over the stages (each device's first
// forward: its rows of its first micro-batch x the stage's activation bytes).
static double pipeline_first_use_s(const PlanCtx& c, const Layout& lay) {
  double t = 0;
  for (const StagePlan& st : lay.stages) {
    double act = cost_range(c.mc, st.layer_begin, st.layer_end).act_bytes, most = 0;
    std::vector<std::vector<int>> rows = stage_rows(lay, st);
    for (size_t k = 0; k < st.devices.size(); k++)
      for (const std::vector<int>& count : rows)
        if (count[k] > 0) {
          most = std::max(most, first_use_s(c.s->devices[st.devices[k]].profile, false, count[k] * act));
          break;
        }
    t += most;
  }
  return t;
}

// ---- the cached data-parallel phase --------------------------------------------------

static std::vector<int> dp_group(const Layout& lay) {
  std::vector<int> g;
  for (size_t d = 0; d < lay.dp_shares.size(); d++) {
    if (lay.dp_shares[d] > 0) g.push_back((int)d);
  }
  return g;
}

// One cached data-parallel iteration in steady state. The segment overlaps iterations
// (dp_graph): a device reads the next mini-batch's taps as soon as its forward has
// consumed the current ones (double buffering), so the read overlaps the backward, the
// gradient all-reduce and the optimizer step; the next forward needs both its taps and
// the updated weights. Period: the longer of the read loop (forward + read) and the
// compute loop (forward + backward + all-reduce + optimizer step).
static double dp_iter_s(const PlanCtx& c, const Layout& lay) {
  double read_loop = 0, compute = 0, opt = 0;
  const std::string& dtype = c.s->method.dtype;
  for (int d : dp_group(lay)) {
    StageTime st = cached_time(c.mc, c.s->devices[d].profile, dtype, lay.dp_shares[d] * c.batch);
    read_loop = std::max(read_loop, st.fwd + st.cache_read);
    compute = std::max(compute, st.fwd + st.bwd);
    opt = std::max(opt, optimizer_s(c, d, c.mc.total_trainable, c.rate_side[d]));
  }
  double ar = allreduce_s(c, dp_group(lay), c.mc.total_trainable * c.mc.grad_bytes);
  return std::max(read_loop, compute + ar + opt);
}

// The first cached iteration cannot prefetch: its read is charged once per segment.
static double dp_first_read_s(const PlanCtx& c, const Layout& lay) {
  double r = 0;
  for (int d : dp_group(lay))
    r = std::max(r, cached_time(c.mc, c.s->devices[d].profile, c.s->method.dtype, lay.dp_shares[d] * c.batch).cache_read);
  return r;
}

// The cached phase's first use: its devices start together, so the slowest one's (each
// one's side forward over its share of the mini-batch).
static double dp_first_use_s(const PlanCtx& c, const Layout& lay) {
  double t = 0;
  for (int d : dp_group(lay))
    t = std::max(t, first_use_s(c.s->devices[d].profile, true, lay.dp_shares[d] * c.batch * c.mc.prefix.back().side_act_bytes));
  return t;
}

static int64_t iterations(const PlanCtx& c, double batch) {
  return (int64_t)std::ceil((double)c.s->data.samples / batch);
}

static bool uses_cache_phase(const PlanCtx& c, const Layout& lay) { return lay.cached && c.s->epochs > 1; }

LayoutTimes layout_predict(const PlanCtx& c, const Layout& lay) {
  LayoutTimes r;
  const Scenario& s = *c.s;
  const int E = s.epochs;
  r.iters = iterations(c, lay.batch);
  r.iter_s = pipeline_iter_s(c, lay, false);
  r.peak_memory.assign(c.n, 0);
  r.busy_s.assign(c.n, 0);
  const int S = (int)lay.stages.size();
  int pipeline_epochs = uses_cache_phase(c, lay) ? 1 : E;
  for (int j = 0; j < S; j++) {
    const StagePlan& st = lay.stages[j];
    int inflight = std::min(S - j, lay.async ? S : lay.micro_batches);
    std::vector<std::vector<int>> rows = stage_rows(lay, st);  // whole rows, as the runtime deals them
    for (size_t k = 0; k < st.devices.size(); k++) {
      int d = st.devices[k];
      double micro = 0, busy = 0;
      for (const std::vector<int>& count : rows) {
        micro = std::max(micro, (double)count[k]);
        if (count[k] > 0)
          busy += stage_time(c.mc, s.devices[d].profile, s.method.dtype, st.layer_begin, st.layer_end, count[k]).total();
      }
      StageMemory m = stage_memory(c.mc, st.layer_begin, st.layer_end, inflight * micro, micro);
      r.peak_memory[d] = std::max(r.peak_memory[d], m.total());
      r.busy_s[d] += (double)r.iters * pipeline_epochs * busy;
    }
  }
  double per_epoch = 0;  // an asynchronous pipeline fills and drains once per epoch
  if (lay.async) {
    PipelineTimes pt = pipeline_times(c, lay, false);
    per_epoch = pt.warm + pt.drain;
  }
  for (int e = 0; e < pipeline_epochs; e++)
    r.epoch_s.push_back(r.iters * r.iter_s + per_epoch + (e == 0 ? pipeline_first_use_s(c, lay) : 0));
  if (uses_cache_phase(c, lay)) {
    r.switch_s = switch_time_s(c, lay);
    r.dp_iter_s = dp_iter_s(c, lay);
    int64_t it = iterations(c, c.batch);
    for (int e = 1; e < E; e++)
      r.epoch_s.push_back(it * r.dp_iter_s + (e == 1 ? dp_first_read_s(c, lay) + dp_first_use_s(c, lay) : 0));
    for (int d : dp_group(lay)) {
      double samples = lay.dp_shares[d] * c.batch;
      r.peak_memory[d] = std::max(r.peak_memory[d], cached_memory(c.mc, samples).total());
      StageTime t = cached_time(c.mc, s.devices[d].profile, s.method.dtype, samples);
      r.busy_s[d] += (double)it * (E - 1) * t.total();
    }
  }
  r.total_s = r.switch_s;
  for (double t : r.epoch_s) r.total_s += t;
  return r;
}

// ---- task graphs ---------------------------------------------------------------------

// Collects tasks with dependencies in any order, then numbers them topologically
// (Kahn's algorithm, lowest creation index first, so the numbering is deterministic).
struct GraphBuilder {
  std::vector<Task> tasks;
  int add(TaskKind kind, int device, const std::string& label) {
    Task t;
    t.id = (int)tasks.size();
    t.kind = kind;
    t.device = device;
    t.label = label;
    tasks.push_back(t);
    return t.id;
  }
  void dep(int task, int on) {
    if (task >= 0 && on >= 0) tasks[task].deps.push_back(on);
  }
  TaskGraph finish() {
    int n = (int)tasks.size();
    std::vector<int> indeg(n, 0), rank(n, -1);
    std::vector<std::vector<int>> next(n);
    for (const Task& t : tasks) {
      for (int d : t.deps) {
        next[d].push_back(t.id);
        indeg[t.id]++;
      }
    }
    std::priority_queue<int, std::vector<int>, std::greater<int>> ready;
    for (int i = 0; i < n; i++) {
      if (indeg[i] == 0) ready.push(i);
    }
    int k = 0;
    std::vector<int> order;
    while (!ready.empty()) {
      int i = ready.top();
      ready.pop();
      rank[i] = k++;
      order.push_back(i);
      for (int j : next[i]) {
        if (--indeg[j] == 0) ready.push(j);
      }
    }
    TaskGraph g;
    for (int i : order) {
      Task t = tasks[i];
      t.id = rank[i];
      for (int& d : t.deps) d = rank[d];
      for (int& d : t.prev_deps) d = rank[d];
      std::sort(t.deps.begin(), t.deps.end());
      if (t.mem_free_task >= 0) t.mem_free_task = rank[t.mem_free_task];
      g.tasks.push_back(t);
    }
    return g;
  }
};

static double send_s(const PlanCtx& c, int a, int b, double bytes) {
  return bytes * 8 / link_bandwidth_bps(*c.s, a, b) + link_latency_s(*c.s, a, b);
}

static std::string mb_label(const char* what, int stage, int mb) {
  return std::string(what) + " s" + std::to_string(stage) + " mb" + std::to_string(mb);
}

// One pipeline iteration under 1F1B: forward/backward per micro-batch share, sends
// between every pair of devices of adjacent groups, cache writes after forwards, an
// all-reduce per group and the optimizer step.
static TaskGraph pipeline_graph(const PlanCtx& c, const Layout& lay, bool write_cache) {
  const Scenario& s = *c.s;
  const int S = (int)lay.stages.size(), M = lay.micro_batches;
  const int n = (int)std::lround(lay.batch);
  GraphBuilder gb;
  // Ids by [stage][device slot][micro-batch]; -1 where the device has no rows of that
  // micro-batch (the runtime deals whole rows, src/core/rows.h, and a device without
  // rows skips the micro-batch).
  std::vector<std::vector<std::vector<int>>> F(S), B(S);
  // Each device's contiguous rows of each micro-batch: split[j][m][k].
  std::vector<std::vector<std::vector<RowRange>>> split(S);
  for (int j = 0; j < S; j++)
    for (int m = 0; m < M; m++) split[j].push_back(stage_split(micro_batch_rows(n, M, m), lay.stages[j].shares));
  for (int j = 0; j < S; j++) {
    const StagePlan& st = lay.stages[j];
    LayerCost lc = cost_range(c.mc, st.layer_begin, st.layer_end);
    F[j].assign(st.devices.size(), std::vector<int>(M, -1));
    B[j] = F[j];
    for (size_t k = 0; k < st.devices.size(); k++) {
      int d = st.devices[k];
      std::map<int, StageTime> memo;  // per row count
      int last_w = -1;
      for (int m = 0; m < M; m++) {
        int rows = split[j][m][k].size();
        if (rows <= 0) continue;
        auto it = memo.find(rows);
        if (it == memo.end())
          it = memo.emplace(rows, stage_time(c.mc, s.devices[d].profile, s.method.dtype, st.layer_begin,
                                             st.layer_end, rows)).first;
        const StageTime& t = it->second;
        int f = gb.add(TaskKind::Forward, d, mb_label("F", j, m));
        int b = gb.add(TaskKind::Backward, d, mb_label("B", j, m));
        for (int id : {f, b}) {
          Task& x = gb.tasks[id];
          x.stage = j;
          x.micro_batch = m;
          x.layer_begin = st.layer_begin;
          x.layer_end = st.layer_end;
          x.samples = rows;
        }
        gb.tasks[f].flops = rows * (lc.fwd_flops + lc.side_fwd_flops);
        gb.tasks[f].seconds = t.fwd;
        gb.tasks[f].mem_alloc_bytes = rows * lc.act_bytes;
        gb.tasks[f].mem_free_task = b;
        gb.tasks[b].flops = rows * (lc.bwd_flops + lc.side_bwd_flops);
        gb.tasks[b].seconds = t.bwd;
        F[j][k][m] = f;
        B[j][k][m] = b;
        if (write_cache && lc.tap_bytes > 0) {
          int w = gb.add(TaskKind::CacheWrite, d, mb_label("W", j, m));
          gb.tasks[w].stage = j;
          gb.tasks[w].micro_batch = m;
          gb.tasks[w].layer_begin = st.layer_begin;
          gb.tasks[w].layer_end = st.layer_end;
          gb.tasks[w].samples = rows;
          gb.tasks[w].bytes = rows * lc.tap_bytes;
          gb.tasks[w].seconds = t.cache_write;
          gb.dep(w, f);
          if (last_w >= 0) gb.dep(w, last_w);  // storage writes one at a time
          last_w = w;
        }
      }
      // 1F1B on this device: warm-up forwards, then one forward one backward, then
      // the remaining backwards, over the micro-batches it has rows of (the runtime's
      // loop over all M, where a micro-batch without rows is a no-op); each compute
      // task waits for the previous one.
      int warm = std::min(S - 1 - j, M);
      std::vector<int> seq;
      for (int m = 0; m < warm; m++) seq.push_back(F[j][k][m]);
      for (int m = warm; m < M; m++) {
        seq.push_back(F[j][k][m]);
        seq.push_back(B[j][k][m - warm]);
      }
      for (int m = M - warm; m < M; m++) seq.push_back(B[j][k][m]);
      seq.erase(std::remove(seq.begin(), seq.end(), -1), seq.end());
      for (size_t q = 1; q < seq.size(); q++) gb.dep(seq[q], seq[q - 1]);
      // The phase's first use of this device's buffers, in the segment's first iteration.
      if (!seq.empty())
        gb.tasks[seq[0]].first_extra_s = first_use_s(s.devices[d].profile, false, gb.tasks[seq[0]].mem_alloc_bytes);
      // Asynchronous (no flush): 1F1B continues across mini-batches, so forward m of the
      // next iteration waits only for backward M+m-warm-1 of this one; that keeps the
      // stage at warm+1 micro-batches in flight, the memory the planner charges.
      if (lay.async) {
        for (int m = 0; m <= warm && m < M; m++) {
          int bb = B[j][k][std::max(0, M + m - warm - 1)];
          if (F[j][k][m] >= 0 && bb >= 0) gb.tasks[F[j][k][m]].prev_deps.push_back(bb);
        }
      }
    }
  }
  // Messages between adjacent groups: the rows both devices hold of each micro-batch.
  for (int j = 0; j + 1 < S; j++) {
    const StagePlan& a = lay.stages[j];
    const StagePlan& b = lay.stages[j + 1];
    const LayerCost& cut = c.mc.layers[a.layer_end - 1];
    for (size_t p = 0; p < a.devices.size(); p++) {
      for (size_t q = 0; q < b.devices.size(); q++) {
        int d = a.devices[p], e = b.devices[q];
        for (int m = 0; m < M; m++) {
          const RowRange &ra = split[j][m][p], &rb = split[j + 1][m][q];
          int part = std::min(ra.end, rb.end) - std::max(ra.begin, rb.begin);
          if (part <= 0) continue;
          int sf = gb.add(TaskKind::Send, d, mb_label("act", j, m));
          gb.tasks[sf].peer = e;
          gb.tasks[sf].stage = j;
          gb.tasks[sf].micro_batch = m;
          gb.tasks[sf].bytes = part * cut.out_bytes;
          gb.tasks[sf].seconds = send_s(c, d, e, gb.tasks[sf].bytes);
          gb.dep(sf, F[j][p][m]);
          gb.dep(F[j + 1][q][m], sf);
          int sb = gb.add(TaskKind::Send, e, mb_label("grad", j + 1, m));
          gb.tasks[sb].peer = d;
          gb.tasks[sb].stage = j + 1;
          gb.tasks[sb].micro_batch = m;
          gb.tasks[sb].bytes = part * cut.grad_bytes;
          gb.tasks[sb].seconds = send_s(c, e, d, gb.tasks[sb].bytes);
          gb.dep(sb, B[j + 1][q][m]);
          gb.dep(B[j][p][m], sb);
        }
      }
    }
  }
  // Gradient all-reduce inside each group, then the optimizer step on every device.
  for (int j = 0; j < S; j++) {
    const StagePlan& st = lay.stages[j];
    LayerCost lc = cost_range(c.mc, st.layer_begin, st.layer_end);
    int ar = -1;
    std::vector<int> members;
    // A device's last backward of the mini-batch (-1: it had no rows at all).
    std::vector<int> last_b(st.devices.size(), -1);
    for (size_t k = 0; k < st.devices.size(); k++)
      for (int m = 0; m < M; m++)
        if (B[j][k][m] >= 0) last_b[k] = B[j][k][m];
    // Every device of the group joins the all-reduce and steps, rows or not (the
    // runtime's group calls it on all of them).
    for (size_t k = 0; k < st.devices.size(); k++) {
      if (st.shares[k] > 0) members.push_back(st.devices[k]);
    }
    if (members.size() > 1 && lc.trainable > 0) {
      ar = gb.add(TaskKind::AllReduce, members[0], "allreduce s" + std::to_string(j));
      gb.tasks[ar].group = members;
      gb.tasks[ar].stage = j;
      gb.tasks[ar].bytes = lc.trainable * c.mc.grad_bytes;
      gb.tasks[ar].seconds = allreduce_s(c, members, gb.tasks[ar].bytes);
      for (size_t k = 0; k < st.devices.size(); k++) {
        if (last_b[k] >= 0) gb.dep(ar, last_b[k]);
      }
    }
    for (size_t k = 0; k < st.devices.size(); k++) {
      if (st.shares[k] <= 0) continue;
      int d = st.devices[k];
      int o = gb.add(TaskKind::Optimizer, d, "opt s" + std::to_string(j));
      gb.tasks[o].stage = j;
      gb.tasks[o].flops = 12 * lc.trainable;
      gb.tasks[o].seconds = optimizer_s(c, d, lc.trainable, c.rate_layer[d]);
      if (ar >= 0) gb.dep(o, ar);
      if (last_b[k] >= 0) gb.dep(o, last_b[k]);
    }
  }
  return gb.finish();
}

static TaskGraph switch_graph(const PlanCtx& c, const Layout& lay) {
  SwitchFlow f = switch_flow(c, lay);
  GraphBuilder gb;
  // Each phase-1 device first drops its part of phase 1 and packs its side state
  // (pac-run's switch does that before it sends): one Local task of its profile's
  // switch_local_s, which its sends wait for.
  std::vector<int> local(c.n, -1);
  for (int d : phase1_devices(lay)) {
    double secs = c.s->devices[d].profile.switch_local_s;
    if (secs <= 0) continue;
    local[d] = gb.add(TaskKind::Local, d, "switch local " + c.s->devices[d].id);
    gb.tasks[local[d]].seconds = secs;
  }
  std::vector<std::vector<double>> pair = switch_pairs(c, lay, f);
  std::vector<std::vector<int>> sent(c.n);  // each sender's cache chunks
  for (int d = 0; d < c.n; d++) {
    for (int e = 0; e < c.n; e++) {
      double bytes = pair[d][e] / kSwitchChunks;
      if (bytes <= 0) continue;
      std::string pair = c.s->devices[d].id + "->" + c.s->devices[e].id;
      int prev = -1;
      for (int k = 0; k < kSwitchChunks; k++) {
        std::string part = " " + std::to_string(k + 1) + "/" + std::to_string(kSwitchChunks);
        int sd = gb.add(TaskKind::Send, d, "cache " + pair + part);
        gb.tasks[sd].peer = e;
        gb.tasks[sd].bytes = bytes;
        gb.tasks[sd].seconds = send_s(c, d, e, bytes);
        gb.dep(sd, prev >= 0 ? prev : local[d]);
        int w = gb.add(TaskKind::CacheWrite, e, "cache in " + pair + part);
        gb.tasks[w].bytes = bytes;
        gb.tasks[w].samples = switch_records(f, e, bytes);
        gb.tasks[w].seconds = cache_io_s(c.s->devices[e].profile, true, gb.tasks[w].samples, bytes);
        gb.dep(w, sd);
        gb.dep(w, local[e]);  // the receiver writes records after its own local work
        prev = sd;
        sent[d].push_back(sd);
      }
    }
  }
  std::vector<std::vector<double>> side = switch_side_pairs(c, lay);
  for (int d = 0; d < c.n; d++)
    for (int e = 0; e < c.n; e++) {
      if (side[d][e] <= 0) continue;
      int sd = gb.add(TaskKind::Send, d, "side state " + c.s->devices[d].id + "->" + c.s->devices[e].id);
      gb.tasks[sd].peer = e;
      gb.tasks[sd].bytes = side[d][e];
      gb.tasks[sd].seconds = send_s(c, d, e, side[d][e]);
      for (int k : sent[d]) gb.dep(sd, k);
      gb.dep(sd, local[d]);
    }
  return gb.finish();
}

static TaskGraph dp_graph(const PlanCtx& c, const Layout& lay) {
  GraphBuilder gb;
  std::vector<int> group = dp_group(lay);
  std::vector<int> backs;
  int ar = -1;
  if (group.size() > 1) {
    ar = gb.add(TaskKind::AllReduce, group[0], "allreduce side");
    gb.tasks[ar].group = group;
    gb.tasks[ar].bytes = c.mc.total_trainable * c.mc.grad_bytes;
    gb.tasks[ar].seconds = allreduce_s(c, group, gb.tasks[ar].bytes);
  }
  const LayerCost& all = c.mc.prefix.back();
  for (int d : group) {
    double samples = lay.dp_shares[d] * c.batch;
    StageTime t = cached_time(c.mc, c.s->devices[d].profile, c.s->method.dtype, samples);
    int r = gb.add(TaskKind::CacheRead, d, "R " + c.s->devices[d].id);
    gb.tasks[r].bytes = samples * all.tap_bytes;
    gb.tasks[r].seconds = t.cache_read;
    gb.tasks[r].samples = samples;
    int f = gb.add(TaskKind::Forward, d, "F side " + c.s->devices[d].id);
    int b = gb.add(TaskKind::Backward, d, "B side " + c.s->devices[d].id);
    for (int id : {f, b}) {
      gb.tasks[id].layer_begin = 0;
      gb.tasks[id].layer_end = c.L;
      gb.tasks[id].samples = samples;
      gb.tasks[id].stage = 0;
      gb.tasks[id].micro_batch = 0;
    }
    gb.tasks[f].flops = samples * (all.side_fwd_flops + c.mc.cached_head_flops);
    gb.tasks[f].seconds = t.fwd;
    gb.tasks[f].mem_alloc_bytes = samples * all.side_act_bytes;
    // The first step after the switch touches this memory first (its mem_alloc_bytes).
    gb.tasks[f].first_extra_s = first_use_s(c.s->devices[d].profile, true, gb.tasks[f].mem_alloc_bytes);
    gb.tasks[f].mem_free_task = b;
    gb.tasks[b].flops = samples * all.side_bwd_flops;
    gb.tasks[b].seconds = t.bwd;
    gb.dep(f, r);
    gb.dep(b, f);
    gb.dep(ar, b);
    int o = gb.add(TaskKind::Optimizer, d, "opt side");
    gb.tasks[o].flops = 12 * c.mc.total_trainable;
    gb.tasks[o].seconds = optimizer_s(c, d, c.mc.total_trainable, c.rate_side[d]);
    gb.dep(o, ar >= 0 ? ar : b);
    // Overlapped segment (prefetch): the next iteration's read may start once this
    // forward has consumed its taps (one spare buffer); its forward needs the weights
    // this optimizer step writes.
    gb.tasks[r].prev_deps.push_back(f);
    gb.tasks[f].prev_deps.push_back(o);
  }
  return gb.finish();
}

Plan plan_assemble(const PlanCtx& c, const Layout& lay, const std::string& strategy) {
  const Scenario& s = *c.s;
  Plan p;
  p.strategy = strategy;
  p.scenario = s;
  p.device_order = lay.order;
  LayoutTimes t = layout_predict(c, lay);
  bool cached = uses_cache_phase(c, lay);
  const int E = s.epochs;

  Phase first;
  first.kind = lay.stages.size() == 1 ? "data_parallel" : "pipeline";
  first.epoch_first = 1;
  first.epoch_last = cached ? 1 : E;
  first.stages = lay.stages;
  first.micro_batches = lay.micro_batches;
  p.phases.push_back(first);

  Segment seg;
  seg.name = first.kind;
  seg.epoch_first = 1;
  seg.epoch_last = first.epoch_last;
  seg.repeat = t.iters * (first.epoch_last - first.epoch_first + 1);
  seg.resident_bytes.assign(c.n, 0);
  for (const StagePlan& st : lay.stages) {
    std::vector<std::vector<int>> rows = stage_rows(lay, st);
    for (size_t k = 0; k < st.devices.size(); k++) {
      int most = 0;  // the largest micro-batch part this device computes (its buffers)
      for (const std::vector<int>& count : rows) most = std::max(most, count[k]);
      seg.resident_bytes[st.devices[k]] = stage_memory(c.mc, st.layer_begin, st.layer_end, 0, most).total();
    }
  }
  seg.graph = pipeline_graph(c, lay, c.mc.cache);
  seg.overlap = lay.async;
  p.segments.push_back(seg);

  if (cached) {
    Segment sw;
    sw.name = "switch";
    sw.epoch_first = sw.epoch_last = 1;
    sw.repeat = 1;
    sw.resident_bytes.assign(c.n, 0);
    StageMemory side = cached_memory(c.mc, 0);
    for (int d = 0; d < c.n; d++) sw.resident_bytes[d] = side.weights;
    sw.graph = switch_graph(c, lay);
    p.segments.push_back(sw);

    Phase dp;
    dp.kind = "data_parallel";
    dp.epoch_first = 2;
    dp.epoch_last = E;
    dp.micro_batches = 1;
    StagePlan all;
    all.layer_begin = 0;
    all.layer_end = c.L;
    for (int d : dp_group(lay)) {
      all.devices.push_back(d);
      all.shares.push_back(lay.dp_shares[d]);
    }
    dp.stages.push_back(all);
    p.phases.push_back(dp);

    Segment ds;
    ds.name = "data_parallel";
    ds.epoch_first = 2;
    ds.epoch_last = E;
    ds.repeat = iterations(c, c.batch) * (E - 1);
    ds.resident_bytes.assign(c.n, 0);
    for (int d : dp_group(lay)) {
      StageMemory m = cached_memory(c.mc, lay.dp_shares[d] * c.batch);
      ds.resident_bytes[d] = m.total() - m.activations;
    }
    ds.graph = dp_graph(c, lay);
    ds.overlap = true;  // synchronous training; only the taps are prefetched (dp_graph)
    p.segments.push_back(ds);
  }

  p.predicted.epoch_s = t.epoch_s;
  p.predicted.switch_s = t.switch_s;
  p.predicted.total_s = t.total_s;
  p.predicted.peak_memory_bytes = t.peak_memory;
  for (int d = 0; d < c.n; d++) {
    const DeviceProfile& prof = s.devices[d].profile;
    double busy = std::min(t.busy_s[d], t.total_s);
    p.predicted.energy_j.push_back(busy * prof.power_busy_w + (t.total_s - busy) * prof.power_idle_w);
  }
  return p;
}

}  // namespace pac
