// pac-profile: FLOP counts against hand-computed numbers, the produced profile through
// the planner's loader, the cost model reproducing the measured medians, the CLI's exit
// codes, and the cgroup CPU quota (skipped where cgroups are not writable).
#include <gtest/gtest.h>

#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "src/common/blas.h"
#include "src/common/error.h"
#include "src/common/fs.h"
#include "src/core/cost_model.h"
#include "src/core/profile.h"
#include "src/llm/profiler.h"

using namespace pac;

// d 32, 4 heads (head size 8), 2 kv heads, ffn 64, vocab 64; three layers so that
// layer 1 holds neither the embedding nor the head.
static ModelConfig tiny_model() {
  ModelConfig m;
  m.name = "tiny-profile";
  m.family = "llama";
  m.decoder_layers = 3;
  m.hidden = 32;
  m.heads = 4;
  m.kv_heads = 2;
  m.ffn = 64;
  m.vocab = 64;
  m.max_seq = 16;
  m.tied_embeddings = true;
  m.gated_ffn = true;
  return m;
}

static std::string tmp_dir() {
  std::string d = "/tmp/pac-profiler-test-" + std::to_string(getpid());
  dir_create(d);
  return d;
}

// Removes this process's temporary folder after the last test.
struct TmpCleanup : ::testing::Environment {
  void TearDown() override { std::system(("rm -rf /tmp/pac-profiler-test-" + std::to_string(getpid())).c_str()); }
};
static ::testing::Environment* const tmp_cleanup = ::testing::AddGlobalTestEnvironment(new TmpCleanup);

static std::string tool() {
  const char* d = std::getenv("PAC_BIN_DIR");
  return std::string(d ? d : PAC_BINARY_DIR "/bin") + "/pac-profile";
}

// Runs a shell command, returns its exit status; stderr+stdout into *out.
static int run(const std::string& cmd, std::string* out) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  char buf[4096];
  size_t n;
  out->clear();
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out->append(buf, n);
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

TEST(Profiler, FlopsMatchHandCount) {
  ProfileFlops f = profile_flops(tiny_model(), /*seq_len=*/8, /*k=*/4);
  // t = 8, d = 32, kv width = 2 heads x 8 = 16, ffn 64.
  // Attention weights 2*d*d + 2*d*kv = 2048 + 1024 = 3072; SwiGLU 3*d*ffn = 6144.
  // Forward: 2 FLOPs per weight per token + scores and their product with V 4*t*t*d:
  //   2*(3072 + 6144)*8 + 4*8*8*32 = 147456 + 8192 = 155648.
  EXPECT_DOUBLE_EQ(f.layer_fwd, 155648.0);
  // Full fine-tuning backward: activation + weight gradients = 2 x forward = 311296.
  EXPECT_DOUBLE_EQ(f.layer_bwd, 311296.0);
  // Head: 2 * vocab * d * t = 2*64*32*8 = 32768; its backward 2x = 65536.
  EXPECT_DOUBLE_EQ(f.head_fwd, 32768.0);
  EXPECT_DOUBLE_EQ(f.head_bwd, 65536.0);
  // Side block, k = 4: r = 8, side ffn 16, 1 head of size 8. Weights: down d*r = 256,
  // attention 4*r*r = 256, SwiGLU 3*r*16 = 384, two norms 2*r = 16 -> 912.
  //   forward 2*912*8 + 4*t*t*r = 14592 + 2048 = 16640; backward 2x = 33280.
  EXPECT_DOUBLE_EQ(f.side_fwd, 16640.0);
  EXPECT_DOUBLE_EQ(f.side_bwd, 33280.0);
}

TEST(Profiler, EncoderDecoderTimedAsLlamaLayer) {
  ModelConfig t5 = tiny_model();
  t5.family = "t5";
  t5.encoder_layers = 2;
  t5.gated_ffn = false;
  ModelConfig t = profile_timed_config(t5);
  EXPECT_EQ(t.family, "llama");
  EXPECT_EQ(t.encoder_layers, 0);
  EXPECT_EQ(t.decoder_layers, 5);  // 2 + 3 layers, one stack
  EXPECT_TRUE(t.gated_ffn);        // the timed layer is SwiGLU
  EXPECT_EQ(t.hidden, 32);
  EXPECT_EQ(t.ffn, 64);
}

// The tiny model timed once per kind at 1 thread, seq 8, k 4, no warm-up.
static ProfileOptions tiny_options(std::vector<int> micro_batches) {
  ProfileOptions o;
  o.model = tiny_model();
  o.model_file = "tiny";
  o.seq_len = 8;
  o.reduction_k = 4;
  o.micro_batches = micro_batches;
  o.threads = {1};
  o.warmup = 0;
  o.repeats = 1;
  o.quiet = true;
  return o;
}

// The main check: a profile written from real timings loads through the planner's
// loader, and the cost model's predicted time of layer 1 equals the medians it came from.
TEST(Profiler, ProfileReproducesMeasuredTimes) {
  ProfileOptions o = tiny_options({1, 2});
  std::vector<ProfileTiming> ts = profile_time_layers(o);
  // 9 kinds x 2 micro-batches x 1 thread count, + the optimizer step once per thread count.
  ASSERT_EQ(ts.size(), 19u);
  for (const ProfileTiming& t : ts) {
    EXPECT_GT(t.median_s, 0) << t.kind;
    // FLOPs of a micro-batch = micro_batch x per-sample FLOPs (layer_bwd: 311296 per sample).
    if (t.kind == "layer_bwd") {
      EXPECT_DOUBLE_EQ(t.flops, t.micro_batch * 311296.0);
    }
    if (t.kind == "embed") {
      EXPECT_EQ(t.flops, 0.0);
    }
    if (t.kind == "optimizer") {  // 12 FLOPs per parameter of one side block, at the largest micro-batch
      EXPECT_EQ(t.micro_batch, 2);
      EXPECT_GT(t.flops, 0);
      EXPECT_DOUBLE_EQ(std::fmod(t.flops, 12.0), 0.0);
    }
  }

  HostFigures host;
  host.name = "test-host";
  host.memory_bytes = 3e9;
  host.memory_total_bytes = 4e9;
  host.power_idle_w = 5;
  host.power_busy_w = 15;
  host.nic_bandwidth_bps = 1e8;
  host.nic_latency_s = 2e-4;
  host.storage_read_bytes_per_s = 3e8;
  host.storage_write_bytes_per_s = 1e8;
  json j = profile_build(o, ts, host);
  std::string file = path_join(tmp_dir(), "test-host.json");
  file_write_atomic(file, j.dump(2));

  // Load as a scenario would: a path reference resolved by the planner's loader.
  DeviceProfile p = device_profile_resolve(JsonIn::from(json(file), "test"), "");
  EXPECT_EQ(p.name, "test-host");
  EXPECT_EQ(p.memory_bytes, 3e9);
  EXPECT_EQ(p.nic_bandwidth_bps, 1e8);
  EXPECT_EQ(p.storage_write_bytes_per_s, 1e8);
  EXPECT_EQ(p.power_busy_w, 15);
  // Keys: 5 kinds (layer, layer_bwd, side, side_bwd, cached_step) x (2 micro-batches +
  // the unqualified fallback) + optimizer = 16.
  EXPECT_EQ(p.eff_flops_by_kind.size(), 16u);
  EXPECT_TRUE(profile_has_kind(p, "cached_step"));
  EXPECT_FALSE(profile_has_kind(p, "cached"));
  for (const ProfileTiming& t : ts)
    if (t.kind == "optimizer") {
      EXPECT_DOUBLE_EQ(p.eff_flops_by_kind.at("optimizer"), t.flops / t.median_s);
    }

  auto median = [&](const std::string& kind, int mb) {
    for (const ProfileTiming& t : ts)
      if (t.kind == kind && t.micro_batch == mb) return t.median_s;
    ADD_FAILURE() << "no timing " << kind << "@" << mb;
    return 0.0;
  };
  DataSpec data;
  data.seq_len = o.seq_len;
  MethodSpec full;
  full.kind = "full";
  MethodSpec pa;
  pa.kind = "parallel_adapters";
  pa.reduction_k = o.reduction_k;
  ModelCost mf = cost_model_build(o.model, full, data);
  ModelCost mp = cost_model_build(o.model, pa, data);
  for (int mb : {1, 2}) {
    // Independent of the profile: the medians measured; predicted = FLOPs / rate.
    StageTime tf = stage_time(mf, p, "fp32", 1, 2, mb);
    EXPECT_NEAR(tf.fwd, median("layer", mb), 1e-12 + 1e-9 * median("layer", mb));
    EXPECT_NEAR(tf.bwd, median("layer_bwd", mb), 1e-12 + 1e-9 * median("layer_bwd", mb));
    // Parallel Adapters: frozen backbone forward + side forward; backward side only.
    StageTime tp = stage_time(mp, p, "fp32", 1, 2, mb);
    double fwd = median("layer", mb) + median("side", mb);
    EXPECT_NEAR(tp.fwd, fwd, 1e-9 * fwd);
    EXPECT_NEAR(tp.bwd, median("side_bwd", mb), 1e-9 * median("side_bwd", mb));
  }
  // A cached epoch's step on the whole model (4 layers here) is priced at the timed
  // cached_step: forward + backward = its median, split in proportion to their FLOPs.
  // Without the kind, the same step is the sum of the per-piece rates instead.
  for (int mb : {1, 2}) {
    StageTime tc = cached_time(mp, p, "fp32", mb);
    EXPECT_NEAR(tc.total(), median("cached_step", mb), 1e-9 * median("cached_step", mb));
    const LayerCost& all = mp.prefix.back();
    double f = all.side_fwd_flops + mp.cached_head_flops;
    EXPECT_NEAR(tc.fwd / tc.total(), f / (f + all.side_bwd_flops), 1e-12);
    for (const ProfileTiming& t : ts)
      if (t.kind == "cached_step" && t.micro_batch == mb) {
        EXPECT_DOUBLE_EQ(t.flops, mb * (f + all.side_bwd_flops));
      }
  }
  {
    DeviceProfile q = p;
    for (const char* key : {"cached_step", "cached_step@1", "cached_step@2"}) q.eff_flops_by_kind.erase(key);
    StageTime tc = cached_time(mp, q, "fp32", 2);
    const LayerCost& all = mp.prefix.back();
    double want = 2 * (all.side_fwd_flops / p.eff_flops_by_kind.at("side@2") +
                       mp.cached_head_flops / p.eff_flops_by_kind.at("layer@2") +
                       all.side_bwd_flops / p.eff_flops_by_kind.at("side_bwd@2"));
    EXPECT_NEAR(tc.total(), want, 1e-9 * want);
  }
  // A micro-batch not timed uses the largest timed one's rate: 4 samples take twice mb 2.
  StageTime t4 = stage_time(mf, p, "fp32", 1, 2, 4);
  EXPECT_NEAR(t4.fwd, 2 * median("layer", 2), 1e-9 * median("layer", 2));
  // eff_flops.fp32 is the "layer" fallback.
  EXPECT_DOUBLE_EQ(p.eff_flops.at("fp32"), p.eff_flops_by_kind.at("layer"));
}

// Short kinds repeat until their timed runs add up to min_time_s (at most 1000 runs):
// the tiny model's kinds take microseconds, so one requested repeat becomes many, and
// repeats x the slowest run covers the minimum time. Without a minimum time every
// measurement keeps its requested count.
TEST(Profiler, MinTimeRepeatsShortKinds) {
  ProfileOptions o = tiny_options({1});
  o.min_time_s = 0.02;
  int many = 0;
  for (const ProfileTiming& t : profile_time_layers(o)) {
    EXPECT_TRUE(t.repeats == 1000 || t.repeats * t.max_s >= o.min_time_s) << t.kind << " " << t.repeats;
    EXPECT_LE(t.repeats, 1000) << t.kind;
    many += t.repeats > 1;
  }
  EXPECT_GE(many, 8);
  o.min_time_s = 0;
  for (const ProfileTiming& t : profile_time_layers(o)) EXPECT_EQ(t.repeats, 1) << t.kind;
  o.min_time_s = -1;
  EXPECT_THROW(profile_time_layers(o), InputError);
  o.min_time_s = 0;
  o.rounds = 0;
  EXPECT_THROW(profile_time_layers(o), InputError);
}

// Interleaved rounds against a host whose speed drifts: two cases of the same work
// (1 ms at speed 1) on a simulated clock whose slowness grows linearly, s(t) = 1 + t /
// 0.1 s. min_time 0.05 s asks for 50 runs each (round 0's 1 ms run sizes them).
// - In one burst (rounds 1: a's run, b's run, then b's 49 and a's 49, since round 1
//   visits in reverse) b's runs sit in the first half and a's in the second: the same
//   work measures 1.29 ms for b and 2.10 ms for a, a ratio of 1.63 (closed form of the
//   schedule: every run takes 1 ms x s(its start)).
// - In 6 rounds they take turns in ABBA order (blocks of 8-17 runs: at each turn of the
//   order a case's runs of two rounds meet) and their medians agree to within 1%
//   (1.6365 / 1.6512 ms, the same closed form).
// Both keep the contract: 50 runs each, adding up to at least min_time.
TEST(Profiler, InterleavedRoundsCancelTheHostsDrift) {
  for (int rounds : {1, 6}) {
    double clock = 0;
    std::vector<int> order;
    auto work = [&](int who) {
      return [&, who] {
        clock += 0.001 * (1 + clock / 0.1);
        order.push_back(who);
      };
    };
    std::vector<ProfileCase> cases(2);
    cases[0].kind = "a";
    cases[0].run = work(0);
    cases[1].kind = "b";
    cases[1].run = work(1);
    ProfileOptions o;
    o.warmup = 0;
    o.repeats = 5;
    o.min_time_s = 0.05;
    o.rounds = rounds;
    std::vector<ProfileTiming> t = profile_measure(cases, 1, o, [&] { return clock; });
    ASSERT_EQ(t.size(), 2u);
    for (const ProfileTiming& x : t) {
      EXPECT_EQ(x.repeats, 50) << x.kind;
      EXPECT_GE(x.repeats * x.median_s, 0.05 * 0.9) << x.kind;
    }
    double ratio = t[0].median_s / t[1].median_s;
    if (rounds == 1) {
      // The schedule: a, b, then b x 49, a x 49.
      ASSERT_EQ(order.size(), 100u);
      EXPECT_EQ(order[0], 0);
      EXPECT_EQ(order[1], 1);
      EXPECT_EQ(order[2], 1);
      EXPECT_EQ(order[50], 1);
      EXPECT_EQ(order[51], 0);
      EXPECT_NEAR(ratio, 2.0987 / 1.2888, 0.01);
    } else {
      // No case runs more than its shares of two rounds (8-9 each) in a row.
      int run_len = 1, longest = 1;
      for (size_t i = 1; i < order.size(); i++) {
        run_len = order[i] == order[i - 1] ? run_len + 1 : 1;
        longest = std::max(longest, run_len);
      }
      EXPECT_LE(longest, 17);
      EXPECT_NEAR(ratio, 1.0, 0.02);
    }
  }
}

// The co-run measurement on a simulated host whose speed drifts (every run takes longer
// as the clock goes on) and whose co-runner makes a run 1.25x longer: alone first in
// even rounds and co-run first in odd ones, the drift cancels in the median of the
// rounds' ratios; in one round (alone, then co-run) it is counted as slowdown.
TEST(Profiler, CorunRoundsCancelTheHostsDrift) {
  for (int rounds : {1, 6}) {
    double clock = 0;
    bool on = false;
    int toggles = 0;
    std::vector<std::pair<int, bool>> order;
    auto run_once = [&](int mb) {
      double t = 0.001 * mb * (1 + clock / 0.1) * (on ? 1.25 : 1.0);
      clock += t;
      order.push_back({mb, on});
      return t;
    };
    auto corunner = [&](int, bool want) {
      EXPECT_NE(on, want);  // started when off, stopped when on
      on = want;
      toggles++;
    };
    std::vector<CorunTiming> t = corun_measure({1, 2}, rounds, 5, 1, run_once, corunner);
    EXPECT_FALSE(on);
    EXPECT_EQ(toggles, 2 * 2 * rounds);
    ASSERT_EQ(t.size(), 2u);
    ASSERT_EQ(order.size(), size_t(2 + 2 * 2 * 5 * rounds));  // warmup of each, then 5 + 5 per size and round
    EXPECT_FALSE(order[0].second);  // the warmup runs alone
    for (const CorunTiming& c : t) {
      EXPECT_EQ(c.round_ratios.size(), size_t(rounds));
      EXPECT_EQ(c.runs, 5);
      if (rounds == 6) EXPECT_NEAR(c.factor, 1.25, 0.02) << c.micro_batch;
    }
    if (rounds == 1) {
      // Round 0: size 1 alone then co-run, then size 2 alone then co-run.
      EXPECT_EQ(order[2], std::make_pair(1, false));
      EXPECT_EQ(order[7], std::make_pair(1, true));
      EXPECT_EQ(order[12], std::make_pair(2, false));
      EXPECT_EQ(order[17], std::make_pair(2, true));
      EXPECT_GT(t[0].factor, 1.25 * 1.02);
    } else {
      // Round 1 visits size 2 first and co-runs first.
      EXPECT_EQ(order[22], std::make_pair(2, true));
      EXPECT_EQ(order[27], std::make_pair(2, false));
    }
  }
  EXPECT_THROW(corun_measure({}, 6, 5, 0, [](int) { return 0.0; }, [](int, bool) {}), InputError);
}

TEST(Profiler, StorageMeasureWritesAndReadsBack) {
  double r = 0, w = 0;
  std::string d = tmp_dir();
  storage_measure(d, 1 << 20, &r, &w);
  EXPECT_GT(r, 0);
  EXPECT_GT(w, 0);
  // The temporary file is gone.
  EXPECT_FALSE(file_exists(path_join(d, ".pac-profile-storage." + std::to_string(getpid()))));
  EXPECT_THROW(storage_measure("/nonexistent-dir-pac", 1 << 20, &r, &w), RuntimeError);
}

TEST(Profiler, CacheCostFitRecoversRecordCostAndRate) {
  // 0.3 ms per record + 500 MB/s: 50 kB in 0.4 ms, 2 MB in 4.3 ms.
  double rate = 0, rec = 0;
  cache_cost_fit(50e3, 0.3e-3 + 50e3 / 500e6, 2e6, 0.3e-3 + 2e6 / 500e6, &rate, &rec);
  EXPECT_NEAR(rate, 500e6, 1e-3);
  EXPECT_NEAR(rec, 0.3e-3, 1e-12);
  // Noise: the small record as slow as the large one -> the large record's rate, no cost.
  cache_cost_fit(50e3, 4e-3, 2e6, 4e-3, &rate, &rec);
  EXPECT_DOUBLE_EQ(rate, 2e6 / 4e-3);
  EXPECT_EQ(rec, 0);
  // A line that would cross below 0 at zero bytes: the cost is 0, the slope stays.
  cache_cost_fit(1e6, 1e-3, 2e6, 3e-3, &rate, &rec);
  EXPECT_NEAR(rate, 1e6 / 2e-3, 1e-6);
  EXPECT_EQ(rec, 0);
}

TEST(Profiler, CacheMeasureFitsBothRecordSizes) {
  std::string d = tmp_dir();
  CacheCost c = cache_measure(d, 4, 16, 32, 6);
  // Records of 1 and 4 taps of 16 x 32 fp32 (+ the same header): 2048 payload bytes apart x 3.
  EXPECT_EQ(c.samples, 6);
  EXPECT_NEAR(c.large_record_bytes - c.small_record_bytes, 3 * 16 * 32 * 4, 1e-9);
  EXPECT_GT(c.write_bytes_per_s, 0);
  EXPECT_GT(c.read_bytes_per_s, 0);
  EXPECT_GE(c.write_record_s, 0);
  EXPECT_GE(c.read_record_s, 0);
  // The fitted line passes through the large record's median (both sizes when the small
  // one is not clamped at a zero fixed cost).
  EXPECT_NEAR(c.write_record_s + c.large_record_bytes / c.write_bytes_per_s, c.large_write_s, 1e-9);
  EXPECT_NEAR(c.read_record_s + c.large_record_bytes / c.read_bytes_per_s, c.large_read_s, 1e-9);
  // Nothing is left behind.
  EXPECT_FALSE(file_exists(path_join(d, ".pac-profile-cache." + std::to_string(getpid()))));
  // A folder that cannot be made (under a plain file, which root cannot get around).
  file_write_atomic(path_join(d, "plain"), std::string("x"));
  EXPECT_THROW(cache_measure(path_join(d, "plain"), 4, 16, 32, 2), std::exception);
}

TEST(Profiler, CliWritesLoadableProfile) {
  std::string d = tmp_dir();
  std::string model = path_join(d, "tiny.json");
  file_write_atomic(model, model_config_to_json(tiny_model()).dump());
  std::string out_file = path_join(d, "cli-host.json");
  std::string out;
  int rc = run(tool() + " --model " + model + " --seq 8 --k 4 --micro-batches 1 --threads 1 --warmup 0 --repeats 1"
                        " --storage-mb 1 --storage-dir " + d + " --name cli-host --power-idle-w 3 --quiet -o " + out_file, &out);
  ASSERT_EQ(rc, 0) << out;
  DeviceProfile p = device_profile_resolve(JsonIn::from(json(out_file), "test"), "");
  EXPECT_EQ(p.name, "cli-host");
  EXPECT_EQ(p.power_idle_w, 3);
  // Default busy power: idle + 10 W per core used (1 thread, no quota: all cores).
  EXPECT_GT(p.power_busy_w, 3);
  EXPECT_TRUE(p.eff_flops_by_kind.count("layer@1"));
  EXPECT_TRUE(p.eff_flops_by_kind.count("side_bwd@1"));
  // The cache's figures are the fit of its two record sizes, whose measurements are kept.
  json rec = json::parse(file_read(out_file))["calibration"]["cache_records"];
  ASSERT_TRUE(rec.is_object()) << out;
  double rate = 0, cost = 0;
  cache_cost_fit(rec["small_record_bytes"], rec["small_write_s"], rec["large_record_bytes"], rec["large_write_s"], &rate,
                 &cost);
  EXPECT_DOUBLE_EQ(p.storage_write_bytes_per_s, rate);
  EXPECT_DOUBLE_EQ(p.storage_write_record_s, cost);
  // The profile says which machine and BLAS kernel it was measured on, as --host-info does.
  json cal = json::parse(file_read(out_file))["calibration"];
  ASSERT_EQ(run(tool() + " --host-info", &out), 0) << out;
  json host = json::parse(out.substr(out.find('{')));
  EXPECT_EQ(cal["cpu"], host["cpu"]);
  EXPECT_EQ(cal["blas_core"], host["blas_core"]);
}

// pac-profile --corun on the tiny model: a factor per micro-batch size from its rounds,
// the two CPUs it may use recorded; under a quota, or with fewer than 2 CPUs, a clear
// error (exit 2).
TEST(Profiler, CliCorunWritesFactorsPerMicroBatch) {
  std::string d = tmp_dir();
  std::string model = path_join(d, "tiny-corun.json");
  file_write_atomic(model, model_config_to_json(tiny_model()).dump());
  std::string out_file = path_join(d, "corun.json"), out;
  const std::string cmd = tool() + " --model " + model + " --seq 8 --k 4 --micro-batches 1,2 --warmup 1 --repeats 3 --rounds 2"
                                   " --min-time 0 --quiet --corun -o " + out_file;
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  ASSERT_EQ(sched_getaffinity(0, sizeof(allowed), &allowed), 0);
  int rc = run(cmd, &out);
  if (CPU_COUNT(&allowed) < 2) {
    EXPECT_EQ(rc, 2) << out;
    EXPECT_NE(out.find("--corun: needs 2 CPUs"), std::string::npos) << out;
    return;
  }
  ASSERT_EQ(rc, 0) << out;
  json j = json::parse(file_read(out_file));
  EXPECT_EQ(j["format"], "pac-corun");
  ASSERT_EQ(j["cpus"].size(), 2u);
  EXPECT_NE(j["cpus"][0], j["cpus"][1]);
  ASSERT_EQ(j["timings"].size(), 2u);
  for (const json& t : j["timings"]) {
    ASSERT_EQ(t["round_ratios"].size(), 2u);
    std::vector<double> r = t["round_ratios"];
    // The factor is the median of the two rounds' ratios (their mean), each a ratio of
    // positive medians.
    EXPECT_NEAR(t["factor"].get<double>(), 0.5 * (r[0] + r[1]), 1e-12);
    EXPECT_GT(t["solo_s"].get<double>(), 0);
    EXPECT_EQ(j["corun_slowdown"][std::to_string(t["micro_batch"].get<int>())], t["factor"]);
  }
  EXPECT_EQ(run(tool() + " --model " + model + " --seq 8 --k 4 --corun --cpu-quota 0.5", &out), 2) << out;
  EXPECT_NE(out.find("--corun: times without a quota"), std::string::npos) << out;
}

// The sentinel's loop on a simulated clock, period 1 s. Runs of 0.3 s: starts at 0, 1,
// 2, 3, 4, 5 until stopped at 5.5 (6 samples). A run of 2.5 s started at 1 ends at 3.5:
// the starts at 2 and 3 are skipped, not made up, and the loop goes on at 4 and 5. The
// time limit ends it the same way (max 3.2 s: starts 0, 1, 2, 3). Sleeps are sliced at
// 20 ms so that a stop is seen within one slice.
TEST(Profiler, SentinelLoopKeepsOneRunPerPeriod) {
  for (int scene = 0; scene < 3; scene++) {
    double clock = 0, longest_sleep = 0;
    std::vector<double> starts;
    auto run_once = [&] {
      SentinelSample s;
      s.t = clock;
      s.wall_s = (scene == 1 && starts.size() == 1) ? 2.5 : 0.3;
      s.cpu_s = 0.9 * s.wall_s;
      starts.push_back(clock);
      clock += s.wall_s;
      return s;
    };
    auto now = [&] { return clock; };
    auto sleep_for = [&](double s) {
      longest_sleep = std::max(longest_sleep, s);
      clock += s;
    };
    auto stop = [&] { return clock >= 5.5; };
    std::vector<SentinelSample> out = sentinel_loop(1.0, scene == 2 ? 3.2 : 100.0, run_once, stop, now, sleep_for);
    std::vector<double> want = scene == 0 ? std::vector<double>{0, 1, 2, 3, 4, 5}
                               : scene == 1 ? std::vector<double>{0, 1, 4, 5}
                                            : std::vector<double>{0, 1, 2, 3};
    ASSERT_EQ(out.size(), want.size()) << "scene " << scene;
    for (size_t i = 0; i < want.size(); i++) {
      EXPECT_NEAR(out[i].t, want[i], 1e-9) << "scene " << scene << " sample " << i;
      EXPECT_NEAR(out[i].cpu_s, 0.9 * out[i].wall_s, 1e-12);
    }
    EXPECT_LE(longest_sleep, 0.02 + 1e-12);
  }
  EXPECT_THROW(sentinel_loop(0, 10, {}, {}, {}, {}), InputError);
}

// pac-profile --sentinel for real: "ready" on stdout after the warmup, samples one
// period apart (the clock is the Unix epoch's, as the harness's), each run's CPU time
// within its wall time; SIGTERM ends it and the JSON is written whole. Without -o it
// refuses with exit 2.
TEST(Profiler, CliSentinelRunsUntilStopped) {
  std::string d = tmp_dir();
  std::string model = path_join(d, "tiny-sentinel.json");
  file_write_atomic(model, model_config_to_json(tiny_model()).dump());
  std::string out_file = path_join(d, "sentinel.json"), out;
  const double before = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  const std::string cmd = tool() + " --model " + model + " --seq 8 --k 4 --micro-batches 2 --warmup 1 --quiet --sentinel"
                                   " --sentinel-period 0.05 -o " + out_file;
  // The shell stays (wait) so that the sentinel keeps its parent: it stops when that goes.
  FILE* p = popen(("exec " + cmd + " & echo $!; wait").c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[256] = {0};
  ASSERT_NE(fgets(buf, sizeof buf, p), nullptr);
  const int pid = std::atoi(buf);
  ASSERT_GT(pid, 0);
  // The ready line comes through the same pipe (the child's stdout).
  ASSERT_NE(fgets(buf, sizeof buf, p), nullptr);
  EXPECT_EQ(std::string(buf), "ready\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  while (fgets(buf, sizeof buf, p)) {
  }
  pclose(p);
  for (int i = 0; i < 100 && !file_exists(out_file); i++) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(file_exists(out_file));
  json j = json::parse(file_read(out_file));
  EXPECT_EQ(j["format"], "pac-sentinel");
  EXPECT_EQ(j["kind"], "layer");
  EXPECT_EQ(j["micro_batch"], 2);
  EXPECT_DOUBLE_EQ(j["period_s"].get<double>(), 0.05);
  const json& s = j["samples"];
  ASSERT_GE(s.size(), 2u);
  for (size_t i = 0; i < s.size(); i++) {
    EXPECT_GE(s[i]["t"].get<double>(), before);
    EXPECT_GT(s[i]["cpu_s"].get<double>(), 0);
    EXPECT_LE(s[i]["cpu_s"].get<double>(), s[i]["wall_s"].get<double>() + 2e-3);
    if (i) {
      EXPECT_GE(s[i]["t"].get<double>() - s[i - 1]["t"].get<double>(), 0.05 - 1e-3);
    }
  }
  EXPECT_EQ(run(tool() + " --model " + model + " --seq 8 --k 4 --sentinel", &out), 2) << out;
  EXPECT_NE(out.find("--sentinel: needs -o"), std::string::npos) << out;
  // Its parent gone (a harness killed), it stops by itself, long before its time limit,
  // and still writes its samples. run() reads until the sentinel closes its stderr.
  std::string orphan = path_join(d, "orphan.json");
  auto t0 = std::chrono::steady_clock::now();
  run("sh -c 'exec " + tool() + " --model " + model + " --seq 8 --k 4 --micro-batches 1 --warmup 1 --quiet --sentinel"
      " --sentinel-period 0.05 --sentinel-max-s 60 -o " + orphan + " > /dev/null & sleep 2'", &out);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(file_exists(orphan)) << out;
  EXPECT_LT(took, 30.0);
  EXPECT_GE(json::parse(file_read(orphan))["samples"].size(), 1u);
}

// The CPU id against /proc/cpuinfo read here, and the kernel fix against what OpenBLAS
// chose in this (unfixed) test process: a pre-AVX kernel on an AVX2 + FMA CPU must be
// replaced, anything else kept; a user's OPENBLAS_CORETYPE and PAC_BLAS_FIX=0 win.
TEST(Profiler, HostInfoAndBlasKernelFix) {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model_name;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      model_name = line.substr(line.find(':') + 2);
      break;
    }
  }
  std::string out;
  ASSERT_EQ(run(tool() + " --host-info", &out), 0) << out;
  json host = json::parse(out.substr(out.find('{')));
  if (!model_name.empty()) {
    EXPECT_EQ(host["cpu"].get<std::string>().rfind(model_name + " (family ", 0), 0u) << out;
  }
  std::string own = blas_core_name();  // OpenBLAS's own pick: nothing fixed this process
  if (own.empty()) GTEST_SKIP() << "LibTorch's BLAS is not OpenBLAS here";
  ASSERT_EQ(run("PAC_BLAS_FIX=0 " + tool() + " --host-info", &out), 0) << out;
  EXPECT_EQ(json::parse(out.substr(out.find('{')))["blas_core"], own);
  const bool pre_avx = own == "Prescott" || own == "Core2" || own == "Nehalem" || own == "Penryn";
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  std::string fixed = host["blas_core"];
  if (pre_avx && avx2) {
    EXPECT_TRUE(fixed == "SkylakeX" || fixed == "Haswell") << "OpenBLAS chose " << own << ", fixed to " << fixed;
  } else {
    EXPECT_EQ(fixed, own);
  }
  if (avx2) {  // the user's choice is kept (Haswell runs on every AVX2 + FMA CPU)
    ASSERT_EQ(run("OPENBLAS_CORETYPE=Haswell " + tool() + " --host-info", &out), 0) << out;
    EXPECT_EQ(json::parse(out.substr(out.find('{')))["blas_core"], "Haswell");
  }
}

TEST(Profiler, CliBadInputExitsTwo) {
  std::string out;
  // A missing config file: exit 2, the message names the file.
  EXPECT_EQ(run(tool() + " --model /nonexistent/model.json --quiet", &out), 2);
  EXPECT_NE(out.find("/nonexistent/model.json"), std::string::npos) << out;
  // An unknown model name: exit 2, names it.
  EXPECT_EQ(run(tool() + " --model no-such-model --quiet", &out), 2);
  EXPECT_NE(out.find("no-such-model"), std::string::npos) << out;
  // Invalid options.
  EXPECT_EQ(run(tool() + " --model stories260K --micro-batches 0", &out), 2);
  EXPECT_EQ(run(tool() + " --model stories260K --repeats 0", &out), 2);
  EXPECT_EQ(run(tool() + " --model stories260K --cpu-quota -1", &out), 2);
  EXPECT_EQ(run(tool() + " --model stories260K --no-such-flag", &out), 2);
  // k must divide hidden (64): 3 does not.
  EXPECT_EQ(run(tool() + " --model stories260K --k 3 --quiet", &out), 2);
  EXPECT_NE(out.find("--k 3"), std::string::npos) << out;
  // A broken config: the file and the JSON path of the bad field.
  std::string bad = path_join(tmp_dir(), "bad.json");
  json m = model_config_to_json(tiny_model());
  m["heads"] = 5;
  file_write_atomic(bad, m.dump());
  EXPECT_EQ(run(tool() + " --model " + bad + " --quiet", &out), 2);
  EXPECT_NE(out.find("bad.json"), std::string::npos) << out;
  EXPECT_NE(out.find("heads"), std::string::npos) << out;
}

// Needs root and a writable cgroup cpu controller (v1 or v2); skipped otherwise.
TEST(Profiler, CpuQuotaCgroup) {
  std::string dir;
  {
    CpuQuota q;
    std::string why;
    if (!q.apply(0.5, &why)) GTEST_SKIP() << "no cgroup CPU quota here: " << why;
    dir = q.dir();
    ASSERT_FALSE(dir.empty());
    std::string quota;
    if (file_exists(dir + "/cpu.max")) {
      quota = file_read(dir + "/cpu.max");
      // 0.5 cores = 50000 us per 100000 us period.
      EXPECT_EQ(quota.substr(0, 12), "50000 100000");
    } else {
      quota = file_read(dir + "/cpu.cfs_quota_us");
      EXPECT_EQ(std::atol(quota.c_str()), 50000);
    }
    // This process is in it.
    std::string procs = file_read(dir + "/cgroup.procs");
    EXPECT_NE(("\n" + procs).find("\n" + std::to_string(getpid()) + "\n"), std::string::npos);
  }
  // Released: the process moved back and the group is gone.
  EXPECT_FALSE(file_exists(dir));
}
