#include "src/common/blas.h"
#include "src/llm/threads.h"
#include "src/llm/profiler.h"

#include "src/common/cgroup.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <thread>

#include <torch/torch.h>

#include "src/common/error.h"
#include "src/common/fs.h"
#include "src/common/progress.h"
#include "src/core/cost_model.h"
#include "src/core/profile.h"
#include "src/llm/act_cache.h"
#include "src/llm/model.h"
#include "src/llm/side_network.h"
#include "src/llm/trainer.h"

namespace pac {

// ---------------------------------------------------------------- FLOP counts

ModelConfig profile_model_resolve(const std::string& ref, const std::string& profiles_dir) {
  bool is_path = ref.size() > 5 && ref.compare(ref.size() - 5, 5, ".json") == 0;
  std::string file = path_join(path_join(profiles_dir, "models"), ref + ".json");
  if (is_path || file_exists(file)) {
    if (is_path && !file_exists(ref)) throw InputError(ref + ": cannot open the model config (no such file)");
    return model_config_from_json(JsonIn::load_file(is_path ? ref : file));
  }
  std::vector<std::string> presets = llama_config_preset_names();
  if (std::find(presets.begin(), presets.end(), ref) == presets.end()) {
    std::string known;
    for (const std::string& p : presets) known += (known.empty() ? "" : ", ") + p;
    throw InputError("--model \"" + ref + "\": no model config " + file + " and not a preset (" + known + ")");
  }
  LlamaConfig c = llama_config_preset(ref);
  ModelConfig m;
  m.name = ref;
  m.family = "llama";
  m.decoder_layers = c.n_layers;
  m.hidden = c.dim;
  m.heads = c.n_heads;
  m.kv_heads = c.n_kv_heads;
  m.ffn = c.hidden_dim;
  m.vocab = c.vocab_size;
  m.max_seq = c.max_seq_len;
  m.tied_embeddings = c.tied_classifier;
  m.gated_ffn = true;
  return m;
}

ModelConfig profile_timed_config(const ModelConfig& m) {
  ModelConfig t = m;
  t.family = "llama";
  t.encoder_layers = 0;
  t.decoder_layers = m.total_layers();
  t.gated_ffn = true;  // the runtime's layer is SwiGLU: time and count 3 FFN matrices
  return t;
}

ProfileFlops profile_flops(const ModelConfig& timed, int seq_len, int reduction_k) {
  // Three layers so that layer 1 carries neither the embedding nor the head: its
  // numbers are one plain block; the head is what layer 2 has on top of it.
  ModelConfig m = timed;
  m.decoder_layers = 3;
  DataSpec data;
  data.seq_len = seq_len;
  MethodSpec full;
  full.kind = "full";
  MethodSpec pa;
  pa.kind = "parallel_adapters";
  pa.reduction_k = reduction_k;
  ModelCost mf = cost_model_build(m, full, data);
  ModelCost mp = cost_model_build(m, pa, data);
  ProfileFlops f;
  f.layer_fwd = mf.layers[1].fwd_flops;
  f.layer_bwd = mf.layers[1].bwd_flops;
  f.head_fwd = mf.layers[2].fwd_flops - mf.layers[1].fwd_flops;
  f.head_bwd = mf.layers[2].bwd_flops - mf.layers[1].bwd_flops;
  f.side_fwd = mp.layers[1].side_fwd_flops;
  f.side_bwd = mp.layers[1].side_bwd_flops;
  ModelCost whole = cost_model_build(timed, pa, data);
  f.cached_step = whole.prefix.back().side_fwd_flops + whole.prefix.back().side_bwd_flops + whole.cached_head_flops;
  return f;
}

// ---------------------------------------------------------------- timing

static double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n == 0 ? 0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The interleaved rounds of ProfileOptions::rounds. A case's runs are not taken in one
// burst: this VM's speed moves by 20-40% over seconds, and a burst catches one moment
// of it. Spread over rounds that visit every case in turn, every case samples the same
// stretch of the host's drift, so their ratios (micro-batch 2 against 4, a layer against
// its backward) hold even where the absolute level moves; the median of each case's
// runs keeps one slow run (a page fault storm, another process) from moving it. The
// minimum time is for the sub-millisecond kinds (stories260K's layers): a median of 5
// of those moved by 40% between calibrations on a shared host (docs/profiling.md).
static const int kMaxRepeats = 1000;

std::vector<ProfileTiming> profile_measure(std::vector<ProfileCase>& cases, int threads, const ProfileOptions& o,
                                           const std::function<double()>& now_in,
                                           const std::function<void(long, long)>& progress) {
  auto t_start = std::chrono::steady_clock::now();
  std::function<double()> now = now_in ? now_in : [t_start] { return seconds_since(t_start); };
  const int rounds = std::max(1, o.rounds);
  const size_t n = cases.size();
  std::vector<std::vector<double>> ts(n);
  std::vector<double> timed(n, 0.0);
  std::vector<int> want(n, 0);
  long done = 0, total = (long)(n * (rounds + 1));
  auto time_runs = [&](size_t c, int runs) {
    ProfileCase& pc = cases[c];
    for (int i = 0; i < runs; i++) {
      if (pc.prepare) pc.prepare();
      double t0 = now();
      pc.run();
      double dt = now() - t0;
      ts[c].push_back(dt);
      timed[c] += dt;
    }
    if (pc.release) pc.release();
  };
  for (size_t c = 0; c < n; c++) {
    for (int i = 0; i < o.warmup; i++) {
      if (cases[c].prepare) cases[c].prepare();
      cases[c].run();
    }
    if (cases[c].release) cases[c].release();
  }
  // Round 0: one timed run each, which sizes the case's count.
  for (size_t c = 0; c < n; c++) {
    time_runs(c, 1);
    double t1 = std::max(ts[c][0], 1e-9);
    double need = o.min_time_s > 0 ? std::ceil(o.min_time_s / t1) : 1.0;
    want[c] = (int)std::min<double>(kMaxRepeats, std::max<double>(o.repeats, need));
    if (progress) progress(++done, total);
  }
  // Rounds 1..R: each brings the case to its share of `want` (cumulative, so the rounds'
  // counts differ by at most one and add up to `want`; round 0's run counts in round 1).
  // Odd rounds visit the cases in reverse order: with an even R every case's runs sit,
  // on average, at the same point of the whole span, so a linear drift of the host's
  // speed moves every case alike (in one order the last case would always run later).
  for (int r = 1; r <= rounds; r++) {
    for (size_t i = 0; i < n; i++) {
      size_t c = r % 2 ? n - 1 - i : i;
      int target = (int)(((long)want[c] * r + rounds - 1) / rounds);
      int runs = target - (int)ts[c].size();
      if (runs > 0) time_runs(c, runs);
      if (progress) progress(++done, total);
    }
  }
  // Passes for the cases still short of the contract (a first run faster than the rest
  // asked for too few): each pass asks for what the case's mean run says it lacks.
  for (;;) {
    bool any = false;
    for (size_t c = 0; c < n; c++) {
      int have = (int)ts[c].size();
      bool short_repeats = have < std::min(o.repeats, kMaxRepeats);
      bool short_time = o.min_time_s > 0 && timed[c] < o.min_time_s && have < kMaxRepeats;
      if (!short_repeats && !short_time) continue;
      double mean = std::max(timed[c] / have, 1e-9);
      int runs = std::max(1, std::min(o.repeats, kMaxRepeats) - have);
      if (short_time) runs = std::max(runs, (int)std::ceil((o.min_time_s - timed[c]) / mean));
      time_runs(c, std::min(runs, kMaxRepeats - have));
      any = true;
    }
    if (!any) break;
  }
  std::vector<ProfileTiming> out;
  for (size_t c = 0; c < n; c++) {
    std::vector<double>& v = ts[c];
    std::sort(v.begin(), v.end());
    ProfileTiming t;
    t.kind = cases[c].kind;
    t.threads = threads;
    t.micro_batch = cases[c].micro_batch;
    t.flops = cases[c].flops;
    t.median_s = median(v);
    t.min_s = v.front();
    t.max_s = v.back();
    t.repeats = (int)v.size();
    out.push_back(t);
  }
  return out;
}

static LlamaConfig llama_config_of(const ModelConfig& m, int seq_len) {
  LlamaConfig c;
  c.dim = m.hidden;
  c.hidden_dim = m.ffn;
  c.n_layers = 1;  // one block is timed; the others are the same shape
  c.n_heads = m.heads;
  c.n_kv_heads = m.kv_heads;
  c.vocab_size = m.vocab;
  c.max_seq_len = std::max(m.max_seq, seq_len);
  c.tied_classifier = m.tied_embeddings;
  return c;
}

static const char* kKinds[] = {"layer", "layer_fwd_grad", "layer_bwd", "side", "side_bwd", "embed", "head", "head_bwd",
                               "cached_step"};
static const int kKindCount = sizeof(kKinds) / sizeof(kKinds[0]);

std::vector<ProfileTiming> profile_time_layers(const ProfileOptions& o) {
  if (o.micro_batches.empty() || o.threads.empty()) throw InputError("pac-profile: no micro-batch sizes or thread counts to time");
  if (o.repeats < 1 || o.warmup < 0 || !(o.min_time_s >= 0) || o.rounds < 1)
    throw InputError("pac-profile: repeats and rounds must be >= 1, warmup and min-time >= 0");
  ModelConfig timed = profile_timed_config(o.model);
  ProfileFlops f = profile_flops(timed, o.seq_len, o.reduction_k);
  LlamaConfig lc = llama_config_of(timed, o.seq_len);
  llama_config_validate(lc, o.model_file);
  SideConfig sc = side_config_make(lc, o.reduction_k);

  torch::manual_seed(1);
  Llama model(lc);
  model->init_random(1);
  SideBlock side(sc);
  // The side block's RoPE tables: same construction as the backbone's with the side
  // block's head size.
  LlamaConfig side_rope = lc;
  side_rope.dim = sc.width;
  side_rope.n_heads = sc.n_heads;
  side_rope.n_kv_heads = sc.n_heads;
  torch::Tensor cos, sin;
  rope_tables(side_rope, o.seq_len, &cos, &sin);

  // The whole side network with its frozen head, for "cached_step" (random weights: the
  // time does not depend on them).
  LlamaConfig lc_all = lc;
  lc_all.n_layers = timed.decoder_layers;
  SideNetwork net(side_config_make(lc_all, o.reduction_k));
  net->init_random(1);
  net->set_head(torch::ones({lc.dim}), torch::randn({(int64_t)lc.vocab_size, lc.dim}) * 0.02);

  const int64_t T = o.seq_len, d = lc.dim, r = sc.width;
  std::vector<ProfileTiming> out;
  const int rounds = o.rounds;
  Progress progress("timing " + o.model.name,
                    (long)(o.threads.size() * (o.micro_batches.size() * kKindCount + o.cached_batches.size() + 1) * (rounds + 1)),
                    2.0);
  progress.set_quiet(o.quiet);
  long before = 0;  // progress units of the thread counts already timed

  // One micro-batch's inputs, alive while its cases are timed (all sizes at once with
  // interleaved rounds: ProfileOptions::rounds). `y` is kept between prepare() and run()
  // and dropped after each round's runs.
  struct MbState {
    torch::Tensor x, xg, gy, b, a, ga, tokens, gl, y;
  };
  struct CachedState {
    torch::Tensor taps, targets, mask;
  };
  // The optimizer's own copy of one side block's parameters (AdamW with weight decay, as
  // the trainer takes it), so its steps do not move the weights the side kinds time.
  SideBlock opt_side(sc);
  std::vector<torch::Tensor> opt_params = opt_side->parameters();
  double opt_n = 0;
  for (torch::Tensor& p : opt_params) {
    p.mutable_grad() = torch::randn_like(p) * 1e-3;
    opt_n += (double)p.numel();
  }
  torch::optim::AdamW opt(opt_params, torch::optim::AdamWOptions(1e-4).weight_decay(0.01));

  for (int th : o.threads) {
    const int threads = th;
    compute_threads_set(threads);
    std::vector<ProfileCase> cases;
    auto add = [&](const char* kind, int mb, double flops, std::function<void()> prepare, std::function<void()> run,
                   std::function<void()> release) {
      cases.push_back(ProfileCase{kind, mb, flops, std::move(prepare), std::move(run), std::move(release)});
    };
    // As PacExecutor::dp_train_step and Trainer::train_step compute a cached step.
    auto add_cached_step = [&](int mb) {
      auto c = std::make_shared<CachedState>();
      c->taps = torch::randn({mb, lc_all.n_layers + 1, T, d});
      c->targets = torch::randint(0, lc.vocab_size, {mb, T}, torch::kInt64);
      c->mask = torch::ones({mb, T});
      add("cached_step", mb, mb * f.cached_step, [&net] { net->zero_grad(); },
          [c, &net] { masked_lm_loss(net->forward(c->taps), c->targets, c->mask).backward(); }, nullptr);
    };
    for (int mb : o.micro_batches) {
      auto m = std::make_shared<MbState>();
      m->x = torch::randn({mb, T, d});
      m->xg = m->x.clone().requires_grad_(true);  // a stage input: its gradient goes upstream
      m->gy = torch::randn({mb, T, d}) * 1e-3;
      m->b = torch::randn({mb, T, d});          // tapped backbone state: frozen, no grad
      m->a = torch::randn({mb, T, r}).requires_grad_(true);
      m->ga = torch::randn({mb, T, r}) * 1e-3;
      m->tokens = torch::randint(0, lc.vocab_size, {mb, T}, torch::kInt64);
      m->gl = torch::randn({mb, T, (int64_t)lc.vocab_size}) * 1e-3;
      auto drop = [m] { m->y = torch::Tensor(); };
      add("layer", mb, mb * f.layer_fwd, drop, [m, &model] {
        torch::NoGradGuard ng;
        m->y = model->layer_forward(0, m->x);
      }, drop);
      add("layer_fwd_grad", mb, mb * f.layer_fwd, drop, [m, &model] { m->y = model->layer_forward(0, m->xg); }, drop);
      add("layer_bwd", mb, mb * f.layer_bwd, [m, &model] { m->y = model->layer_forward(0, m->xg); },
          [m] { m->y.backward(m->gy); }, drop);
      add("side", mb, mb * f.side_fwd, drop, [m, &side, &cos, &sin] { m->y = side->forward(m->a + side->down(m->b), cos, sin); },
          drop);
      add("side_bwd", mb, mb * f.side_bwd, [m, &side, &cos, &sin] { m->y = side->forward(m->a + side->down(m->b), cos, sin); },
          [m] { m->y.backward(m->ga); }, drop);
      add("embed", mb, 0, drop, [m, &model] {
        torch::NoGradGuard ng;
        m->y = model->embed(m->tokens);
      }, drop);
      add("head", mb, mb * f.head_fwd, drop, [m, &model] { m->y = model->classify(model->final_norm(m->xg)); }, drop);
      add("head_bwd", mb, mb * f.head_bwd, [m, &model] { m->y = model->classify(model->final_norm(m->xg)); },
          [m] { m->y.backward(m->gl); }, drop);
      add_cached_step(mb);
    }
    for (int mb : o.cached_batches) {
      if (std::find(o.micro_batches.begin(), o.micro_batches.end(), mb) == o.micro_batches.end()) add_cached_step(mb);
    }
    // The optimizer step over one side block's parameters. Its time is mostly per-tensor
    // dispatch, not the 12 FLOPs per parameter the cost model counts, so it has a rate of
    // its own ("optimizer", FLOPs = 12 x parameters); on the small models it is
    // milliseconds per step where the side rate would say microseconds. Recorded at the
    // largest micro-batch (it has none).
    int mb_max = *std::max_element(o.micro_batches.begin(), o.micro_batches.end());
    add("optimizer", mb_max, 12 * opt_n, nullptr, [&opt] { opt.step(); }, nullptr);

    std::vector<ProfileTiming> ts = profile_measure(cases, threads, o, {}, [&](long done, long) {
      char buf[96];
      std::snprintf(buf, sizeof buf, "threads %d round %ld/%d", threads, (done - 1) / (long)cases.size(), rounds);
      progress.update(before + done, buf);
    });
    out.insert(out.end(), ts.begin(), ts.end());
    before += (long)cases.size() * (rounds + 1);
  }
  return out;
}

// ---------------------------------------------------------------- the profile

std::vector<CorunTiming> corun_measure(const std::vector<int>& micro_batches, int rounds, int runs, int warmup,
                                       const std::function<double(int mb)>& run_once,
                                       const std::function<void(int mb, bool on)>& corunner) {
  if (micro_batches.empty() || rounds < 1 || runs < 1 || warmup < 0)
    throw InputError("pac-profile --corun: no micro-batch sizes, or rounds / repeats below 1");
  const size_t n = micro_batches.size();
  std::vector<CorunTiming> out(n);
  std::vector<std::vector<double>> solo_all(n), co_all(n);
  for (size_t i = 0; i < n; i++) {
    out[i].micro_batch = micro_batches[i];
    out[i].runs = runs;
    for (int w = 0; w < warmup; w++) run_once(micro_batches[i]);
  }
  for (int r = 0; r < rounds; r++) {
    for (size_t k = 0; k < n; k++) {
      const size_t i = r % 2 ? n - 1 - k : k;
      const int mb = micro_batches[i];
      std::vector<double> solo, co;
      for (int side = 0; side < 2; side++) {
        const bool on = (side == 0) == (r % 2 == 1);  // ABBA: alone first in even rounds
        if (on) corunner(mb, true);
        std::vector<double>& v = on ? co : solo;
        for (int j = 0; j < runs; j++) v.push_back(run_once(mb));
        if (on) corunner(mb, false);
      }
      out[i].round_ratios.push_back(median(co) / median(solo));
      solo_all[i].insert(solo_all[i].end(), solo.begin(), solo.end());
      co_all[i].insert(co_all[i].end(), co.begin(), co.end());
    }
  }
  for (size_t i = 0; i < n; i++) {
    out[i].solo_s = median(solo_all[i]);
    out[i].corun_s = median(co_all[i]);
    out[i].factor = median(out[i].round_ratios);
  }
  return out;
}

std::vector<CorunTiming> profile_corun(const ProfileOptions& o, std::vector<int>* cpus_out) {
  if (o.micro_batches.empty() || o.repeats < 1 || o.rounds < 1 || o.warmup < 0 || !(o.min_time_s >= 0))
    throw InputError("pac-profile --corun: no micro-batch sizes, or repeats / rounds below 1");
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) throw RuntimeError("pac-profile --corun: sched_getaffinity failed");
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE && cpus.size() < 2; c++)
    if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
  if (cpus.size() < 2)
    throw InputError("pac-profile --corun: needs 2 CPUs (one for the timed layer, one for the co-runner); this process may use " +
                     std::to_string(cpus.size()));
  if (cpus_out) *cpus_out = cpus;
  ModelConfig timed = profile_timed_config(o.model);
  LlamaConfig lc = llama_config_of(timed, o.seq_len);
  llama_config_validate(lc, o.model_file);
  compute_threads_set(1);
  torch::manual_seed(1);
  Llama model(lc), other(lc);
  model->init_random(1);
  other->init_random(2);
  const int64_t T = o.seq_len, d = lc.dim;
  std::map<int, torch::Tensor> x, x_other;
  for (int mb : o.micro_batches) {
    x[mb] = torch::randn({mb, T, d});
    x_other[mb] = torch::randn({mb, T, d});
  }
  auto run_once = [&](int mb) {
    torch::NoGradGuard ng;
    auto t0 = std::chrono::steady_clock::now();
    torch::Tensor y = model->layer_forward(0, x[mb]);
    return seconds_since(t0);
  };
  // The co-runner: the same layer at the same size on its own weights, until stopped;
  // started and stopped around every co-run batch of runs, and the timed runs wait for
  // its first pass so that they never start beside an idle core. Neither thread is
  // pinned: the testbed's workers are not, and the kernel places them as it places
  // those (pinned to a CPU each, the same layers measured 0.98-1.00 on 12-07, unpinned
  // 0.93-1.28 by size: both within this VM's noise; docs/profiling.md, "Co-run slowdown").
  std::atomic<bool> stop{false};
  std::atomic<long> passes{0};
  std::thread co;
  auto corunner = [&](int mb, bool on) {
    if (on) {
      stop = false;
      passes = 0;
      co = std::thread([&, mb] {
        torch::NoGradGuard ng;
        while (!stop) {
          torch::Tensor y = other->layer_forward(0, x_other[mb]);
          passes++;
        }
      });
      while (passes == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
    } else {
      stop = true;
      co.join();
    }
  };
  // Runs per side and round: o.repeats, more for short layers (up to o.min_time_s).
  int runs = o.repeats;
  {
    double t = run_once(o.micro_batches.front());
    if (t > 0 && o.min_time_s > 0) runs = std::max(runs, (int)std::ceil(o.min_time_s / t));
    runs = std::min(runs, kMaxRepeats);
  }
  try {
    return corun_measure(o.micro_batches, o.rounds, runs, o.warmup, run_once, corunner);
  } catch (...) {
    if (co.joinable()) {
      stop = true;
      co.join();
    }
    throw;
  }
}

json corun_json(const ProfileOptions& o, const std::vector<CorunTiming>& t, const std::vector<int>& cpus) {
  json j;
  j["format"] = "pac-corun";
  j["format_version"] = 1;
  j["model"] = o.model.name;
  j["seq_len"] = o.seq_len;
  j["kind"] = "layer";
  j["cpu"] = host_cpu_id();
  j["blas_core"] = blas_core_name();
  j["cpus"] = cpus;
  j["rounds"] = o.rounds;
  json f = json::object(), rows = json::array();
  for (const CorunTiming& c : t) {
    f[std::to_string(c.micro_batch)] = c.factor;
    rows.push_back({{"micro_batch", c.micro_batch}, {"solo_s", c.solo_s}, {"corun_s", c.corun_s}, {"factor", c.factor},
                    {"round_ratios", c.round_ratios}, {"runs", c.runs}});
  }
  j["corun_slowdown"] = f;
  j["timings"] = rows;
  return j;
}

std::vector<SentinelSample> sentinel_loop(double period_s, double max_s, const std::function<SentinelSample()>& run_once,
                                          const std::function<bool()>& stop, const std::function<double()>& now,
                                          const std::function<void(double)>& sleep_for) {
  if (!(period_s > 0) || !(max_s > 0)) throw InputError("pac-profile --sentinel: the period and the time limit must be > 0");
  std::vector<SentinelSample> out;
  const double start = now();
  double next = start;
  while (!stop() && now() - start < max_s) {
    double t = now();
    if (t < next) {
      sleep_for(std::min(next - t, 0.02));
      continue;
    }
    out.push_back(run_once());
    // The next start is one period after this one's planned start; starts a long run
    // overran are dropped, so the samples stay one per period.
    next += period_s;
    t = now();
    if (next <= t) next += std::ceil((t - next) / period_s) * period_s;
  }
  return out;
}

static double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::vector<SentinelSample> profile_sentinel(const ProfileOptions& o, double period_s, double max_s,
                                             const std::function<bool()>& stop, const std::function<void()>& ready) {
  if (o.micro_batches.empty()) throw InputError("pac-profile --sentinel: no micro-batch size");
  ModelConfig timed = profile_timed_config(o.model);
  LlamaConfig lc = llama_config_of(timed, o.seq_len);
  llama_config_validate(lc, o.model_file);
  compute_threads_set(1);
  torch::manual_seed(1);
  Llama model(lc);
  model->init_random(1);
  torch::Tensor x = torch::randn({o.micro_batches[0], (int64_t)o.seq_len, (int64_t)lc.dim});
  auto run_once = [&] {
    torch::NoGradGuard ng;
    SentinelSample s;
    s.t = unix_seconds();
    // One untimed run first: a run right after the idle period is 20-30% slower than the
    // next one on this VM (measured 12-08: 17-19 ms against 13-16 for the d512 layer at
    // one sample, pac-profile's interleaved runs); the devices it stands for are computing.
    { torch::Tensor w = model->layer_forward(0, x); }
    const double c0 = thread_cpu_seconds();
    auto t0 = std::chrono::steady_clock::now();
    torch::Tensor y = model->layer_forward(0, x);
    s.wall_s = seconds_since(t0);
    s.cpu_s = thread_cpu_seconds() - c0;
    return s;
  };
  for (int w = 0; w < o.warmup; w++) run_once();
  if (ready) ready();
  auto mono = [] { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); };
  auto sleep_for = [](double s) { std::this_thread::sleep_for(std::chrono::duration<double>(s)); };
  return sentinel_loop(period_s, max_s, run_once, stop, mono, sleep_for);
}

json sentinel_json(const ProfileOptions& o, double period_s, const std::vector<SentinelSample>& s) {
  json j;
  j["format"] = "pac-sentinel";
  j["format_version"] = 1;
  j["model"] = o.model.name;
  j["model_file"] = o.model_file;
  j["seq_len"] = o.seq_len;
  j["kind"] = "layer";
  j["micro_batch"] = o.micro_batches.empty() ? 0 : o.micro_batches[0];
  j["threads"] = 1;
  j["period_s"] = period_s;
  json rows = json::array();
  for (const SentinelSample& x : s) rows.push_back({{"t", x.t}, {"cpu_s", x.cpu_s}, {"wall_s", x.wall_s}});
  j["samples"] = rows;
  return j;
}

json profile_timings_json(const std::vector<ProfileTiming>& timings) {
  json rows = json::array();
  for (const ProfileTiming& t : timings) {
    json r = {{"kind", t.kind}, {"threads", t.threads}, {"micro_batch", t.micro_batch}, {"flops", t.flops},
              {"median_s", t.median_s}, {"min_s", t.min_s}, {"max_s", t.max_s}, {"repeats", t.repeats}};
    r["flops_per_s"] = t.flops > 0 ? json(t.rate()) : json(nullptr);
    rows.push_back(r);
  }
  return rows;
}

static std::string utc_now() {
  std::time_t now = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return buf;
}

json profile_build(const ProfileOptions& o, const std::vector<ProfileTiming>& timings, const HostFigures& host) {
  int threads = *std::max_element(o.threads.begin(), o.threads.end());
  int mb_max = *std::max_element(o.micro_batches.begin(), o.micro_batches.end());
  DeviceProfile p;
  p.name = host.name;
  p.source = "measured by pac-profile on this machine (" + utc_now() + ")";
  p.peak_flops_fp32 = host.peak_flops_fp32;
  for (const ProfileTiming& t : timings) {
    if (t.threads != threads) continue;
    if (t.kind == "optimizer") {  // one rate: the step does not depend on the micro-batch
      p.eff_flops_by_kind["optimizer"] = t.rate();
      continue;
    }
    if (t.kind != "layer" && t.kind != "layer_bwd" && t.kind != "side" && t.kind != "side_bwd" &&
        t.kind != "cached_step")
      continue;
    p.eff_flops_by_kind[t.kind + "@" + std::to_string(t.micro_batch)] = t.rate();
    if (t.micro_batch == mb_max) p.eff_flops_by_kind[t.kind] = t.rate();
  }
  if (!p.eff_flops_by_kind.count("layer")) throw RuntimeError("pac-profile: no layer timing at " + std::to_string(threads) + " threads");
  p.eff_flops["fp32"] = p.eff_flops_by_kind["layer"];
  p.memory_bytes = host.memory_bytes;
  p.power_idle_w = host.power_idle_w;
  p.power_busy_w = host.power_busy_w;
  p.nic_bandwidth_bps = host.nic_bandwidth_bps;
  p.nic_latency_s = host.nic_latency_s;
  p.storage_read_bytes_per_s = host.storage_read_bytes_per_s;
  p.storage_write_bytes_per_s = host.storage_write_bytes_per_s;
  p.storage_read_record_s = host.cache.read_record_s;
  p.storage_write_record_s = host.cache.write_record_s;

  ModelConfig timed = profile_timed_config(o.model);
  std::ostringstream notes;
  notes << "eff_flops_by_kind: cost-model FLOPs / median measured time of one LibTorch layer of " << o.model.name
        << (o.model.family == "llama" ? "" : " (timed as the llama-style layer of the same hidden/ffn/heads)")
        << ", seq " << o.seq_len << ", side reduction k " << o.reduction_k << ", " << threads << " thread(s)"
        << (host.cpu_quota > 0 ? ", CPU quota " + std::to_string(host.cpu_quota).substr(0, 4) + " cores" : ", no CPU quota")
        << "; 'layer' is the no-grad forward (the frozen backbone), '<kind>' without @ is the rate at micro-batch "
        << mb_max << ". Power: not measurable here (no RAPL), taken from options. NIC: from options (the testbed sets "
        << "links with tc). Storage: " << (host.device_read_bytes_per_s > 0 ? "the activation cache's own write and read costs, a fixed cost per record and a rate (ActCache records of two sizes through the page cache, calibration.cache_records; raw device rates in calibration.storage_device)" : host.storage_measured ? "measured (fsync'd write, uncached read)" : "from options")
        << ". Memory: usable = physical (or cgroup limit) minus a reserve.";
  if (!host.notes.empty()) notes << " " << host.notes;

  json j = device_profile_to_json(p);
  j["notes"] = notes.str();
  if (host.memory_total_bytes > 0) j["memory_total_bytes"] = host.memory_total_bytes;
  j["calibration"] = {{"tool", "pac-profile"},
                      {"date", utc_now()},
                      {"model", o.model.name},
                      {"model_file", o.model_file},
                      {"timed_as", model_config_to_json(timed)},
                      {"seq_len", o.seq_len},
                      {"reduction_k", o.reduction_k},
                      {"threads", o.threads},
                      {"profile_threads", threads},
                      {"micro_batches", o.micro_batches},
                      {"cached_batches", o.cached_batches},
                      {"cpu_quota", host.cpu_quota},
                      {"cpu", host_cpu_id()},
                      {"blas_core", blas_core_name()},
                      {"load_average_before", host.load_before},
                      {"load_average_after", host.load_after},
                      {"warmup", o.warmup},
                      {"repeats", o.repeats},
                      {"min_time_s", o.min_time_s},
                      {"rounds", o.rounds},
                      {"timings", profile_timings_json(timings)}};
  if (host.device_read_bytes_per_s > 0)
    j["calibration"]["storage_device"] = {{"read_bytes_per_s", host.device_read_bytes_per_s},
                                          {"write_bytes_per_s", host.device_write_bytes_per_s}};
  if (host.cache.samples > 0) j["calibration"]["cache_records"] = cache_cost_json(host.cache);
  // What we write must load: the planner's own loader is the check.
  device_profile_from_json(JsonIn::from(j, host.name));
  return j;
}

// ---------------------------------------------------------------- host figures

void storage_measure(const std::string& dir, long long bytes, double* read_bps, double* write_bps) {
  std::string path = path_join(dir, ".pac-profile-storage." + std::to_string(getpid()));
  const size_t chunk = 4 << 20;
  std::vector<char> buf(chunk);
  for (size_t i = 0; i < chunk; i++) buf[i] = (char)(i * 2654435761u >> 24);  // not all zeros (no sparse tricks)
  int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
  if (fd < 0) throw RuntimeError("storage measurement: cannot create a file in " + dir + ": " + std::strerror(errno));
  auto t0 = std::chrono::steady_clock::now();
  long long left = bytes;
  bool ok = true;
  while (left > 0 && ok) {
    size_t n = (size_t)std::min<long long>(left, (long long)chunk);
    ok = write(fd, buf.data(), n) == (ssize_t)n;
    left -= (long long)n;
  }
  ok = ok && fsync(fd) == 0;
  double tw = seconds_since(t0);
  int err = errno;
  // Drop the pages so the read comes from the device, as a cache read of an epoch does
  // for a cache larger than memory.
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
  if (!ok) {
    unlink(path.c_str());
    throw RuntimeError("storage measurement: writing " + path + " failed: " + std::strerror(err));
  }
  fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) throw RuntimeError("storage measurement: cannot reopen " + path);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  t0 = std::chrono::steady_clock::now();
  long long got = 0;
  ssize_t n;
  while ((n = read(fd, buf.data(), chunk)) > 0) got += n;
  double tr = seconds_since(t0);
  close(fd);
  unlink(path.c_str());
  if (got != bytes) throw RuntimeError("storage measurement: read back " + std::to_string(got) + " of " + std::to_string(bytes) + " bytes from " + path);
  *write_bps = bytes / std::max(tw, 1e-9);
  *read_bps = bytes / std::max(tr, 1e-9);
}

// Seconds per record to write and to read back `samples` records of [n_taps, seq_len,
// dim] through a fresh ActCache in `folder`; the stored bytes of one record in *record.
static void cache_pass(const std::string& folder, int n_taps, int seq_len, int dim, int samples, double* write_s,
                       double* read_s, double* record) {
  CacheKey key;
  key.weights_sha256 = "pac-profile";
  key.tokenizer_sha256 = "pac-profile";
  key.seq_len = seq_len;
  key.dtype = CacheDtype::F32;
  key.dim = dim;
  key.n_taps = n_taps;
  torch::Tensor taps = torch::randn({n_taps, seq_len, dim});
  {
    ActCache cache(folder, key);
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < samples; i++) cache.cache_write_sample("train", i, 1000 + i, taps);
    *write_s = seconds_since(t0) / samples;
    t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < samples; i++) {
      CacheRead r = cache.cache_read_sample("train", i, 1000 + i);
      if (r.status != CacheStatus::Hit) {
        std::filesystem::remove_all(folder);
        throw RuntimeError("cache measurement: record " + std::to_string(i) + " in " + folder + " did not read back: " +
                           r.problem);
      }
    }
    *read_s = seconds_since(t0) / samples;
    *record = (double)cache.bytes_written / samples;
  }
  std::filesystem::remove_all(folder);
}

void cache_cost_fit(double small_bytes, double small_s, double large_bytes, double large_s, double* rate,
                      double* record_s) {
  if (large_s > small_s && large_bytes > small_bytes) {
    *rate = (large_bytes - small_bytes) / (large_s - small_s);
    *record_s = std::max(0.0, small_s - small_bytes / *rate);
  } else {
    *rate = large_bytes / std::max(large_s, 1e-12);
    *record_s = 0;
  }
}

CacheCost cache_measure(const std::string& dir, int n_taps, int seq_len, int dim, int samples) {
  std::string folder = path_join(dir, ".pac-profile-cache." + std::to_string(getpid()));
  // Whole records of this model and one-tap records, in three alternating rounds: the
  // medians of per-record times, so a slow stretch of the disk moves one round only.
  std::vector<double> ws, rs, wl, rl;
  double small = 0, large = 0;
  for (int round = 0; round < 3; round++) {
    double w, r;
    cache_pass(folder, 1, seq_len, dim, samples, &w, &r, &small);
    ws.push_back(w);
    rs.push_back(r);
    cache_pass(folder, n_taps, seq_len, dim, samples, &w, &r, &large);
    wl.push_back(w);
    rl.push_back(r);
  }
  CacheCost c;
  c.small_record_bytes = small;
  c.large_record_bytes = large;
  c.small_write_s = median(ws);
  c.small_read_s = median(rs);
  c.large_write_s = median(wl);
  c.large_read_s = median(rl);
  c.samples = samples;
  cache_cost_fit(small, c.small_write_s, large, c.large_write_s, &c.write_bytes_per_s, &c.write_record_s);
  cache_cost_fit(small, c.small_read_s, large, c.large_read_s, &c.read_bytes_per_s, &c.read_record_s);
  return c;
}

json cache_cost_json(const CacheCost& c) {
  return {{"method", "ActCache records of 1 tap and of all taps, 3 alternating rounds, median seconds per record; "
                     "t = record_s + bytes / rate through the two sizes"},
          {"samples", c.samples},
          {"small_record_bytes", c.small_record_bytes},
          {"large_record_bytes", c.large_record_bytes},
          {"small_write_s", c.small_write_s},
          {"large_write_s", c.large_write_s},
          {"small_read_s", c.small_read_s},
          {"large_read_s", c.large_read_s}};
}

static double read_number_file(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  if (!(in >> s) || s == "max") return 0;
  try {
    return std::stod(s);
  } catch (...) {
    return 0;
  }
}

void host_memory(double reserve_bytes, double* usable, double* total) {
  std::ifstream in("/proc/meminfo");
  std::string key;
  double kb = 0;
  std::string unit;
  *total = 0;
  while (in >> key >> kb >> unit) {
    if (key == "MemTotal:") {
      *total = kb * 1024;
      break;
    }
  }
  double limit = *total;
  // A cgroup limit (a testbed device or a container) is the real ceiling when lower.
  std::string v1 = cgroup_own("memory");
  double l1 = read_number_file("/sys/fs/cgroup/memory" + v1 + "/memory.limit_in_bytes");
  double l2 = read_number_file("/sys/fs/cgroup" + cgroup_own("") + "/memory.max");
  if (l1 > 0 && l1 < limit) limit = l1;
  if (l2 > 0 && l2 < limit) limit = l2;
  *usable = std::max(limit - reserve_bytes, limit * 0.5);
}

double host_load_average() {
  std::ifstream in("/proc/loadavg");
  double l = -1;
  if (!(in >> l)) return -1;
  return l;
}

double host_peak_flops_fp32(int cores) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  double mhz = 0;
  std::string flags;
  while (std::getline(in, line)) {
    if (mhz == 0 && line.compare(0, 7, "cpu MHz") == 0) mhz = std::atof(line.substr(line.find(':') + 1).c_str());
    if (flags.empty() && line.compare(0, 5, "flags") == 0) flags = line + " ";
  }
  double per_cycle = 8;  // SSE: 4-wide add + 4-wide mul
  if (flags.find(" avx2 ") != std::string::npos && flags.find(" fma ") != std::string::npos) per_cycle = 32;
  if (flags.find(" avx512f ") != std::string::npos) per_cycle = 64;
  return cores * mhz * 1e6 * per_cycle;
}

// ---------------------------------------------------------------- CPU quota

bool CpuQuota::apply(double cores, std::string* why) {
  if (geteuid() != 0) {
    *why = "not root: a CPU quota needs a cgroup";
    return false;
  }
  const long period = 100000;
  const long quota = std::max(1000L, (long)std::lround(cores * period));
  std::string pid = std::to_string(getpid());
  std::string name = "/pac-profile-" + pid;
  std::ifstream v2("/sys/fs/cgroup/cgroup.controllers");
  std::string ctrls((std::istreambuf_iterator<char>(v2)), std::istreambuf_iterator<char>());
  std::istringstream words(ctrls);
  std::string w;
  bool v2_cpu = false;
  while (words >> w) v2_cpu = v2_cpu || w == "cpu";
  if (v2_cpu) {
    // cgroup v2: the parent must delegate the cpu controller to its children.
    std::string own = cgroup_own("");
    parent_dir_ = "/sys/fs/cgroup" + own;
    cgroup_write(parent_dir_ + "/cgroup.subtree_control", "+cpu", nullptr);
    dir_ = parent_dir_ + name;
    if (mkdir(dir_.c_str(), 0755) != 0 && errno != EEXIST) {
      *why = "cannot create cgroup " + dir_ + ": " + std::strerror(errno);
      dir_.clear();
      return false;
    }
    if (!cgroup_write(dir_ + "/cpu.max", std::to_string(quota) + " " + std::to_string(period), why) ||
        !cgroup_write(dir_ + "/cgroup.procs", pid, why)) {
      rmdir(dir_.c_str());
      dir_.clear();
      return false;
    }
    return true;
  }
  // cgroup v1: the cpu controller's own hierarchy.
  std::string base;
  for (const char* b : {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"}) {
    if (file_exists(std::string(b) + "/cpu.cfs_quota_us")) {
      base = b;
      break;
    }
  }
  if (base.empty()) {
    *why = "no cgroup cpu controller mounted (neither v2 cpu.max nor v1 cpu.cfs_quota_us under /sys/fs/cgroup)";
    return false;
  }
  std::string own = cgroup_own("cpu");
  if (own == "/") own = "";
  parent_dir_ = base + own;
  dir_ = parent_dir_ + name;
  if (mkdir(dir_.c_str(), 0755) != 0 && errno != EEXIST) {
    *why = "cannot create cgroup " + dir_ + ": " + std::strerror(errno);
    dir_.clear();
    return false;
  }
  if (!cgroup_write(dir_ + "/cpu.cfs_period_us", std::to_string(period), why) ||
      !cgroup_write(dir_ + "/cpu.cfs_quota_us", std::to_string(quota), why) ||
      !cgroup_write(dir_ + "/cgroup.procs", pid, why)) {
    rmdir(dir_.c_str());
    dir_.clear();
    return false;
  }
  return true;
}

CpuQuota::~CpuQuota() {
  if (dir_.empty()) return;
  // Every thread of the process moves with cgroup.procs; then the group is empty.
  cgroup_write(parent_dir_ + "/cgroup.procs", std::to_string(getpid()), nullptr);
  rmdir(dir_.c_str());
}

}  // namespace pac
