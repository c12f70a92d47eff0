// pac-profile: times the real LibTorch layers of a model config on this machine and
// turns the times into a calibrated device profile (docs/profiling.md).
//
// The conversion is the inverse of the cost model: for each kind of work and micro-batch
// size mb, rate = mb * (cost-model FLOPs of one sample of that work) / (measured median
// seconds for mb samples). The planner's stage_time() then divides the same FLOPs by this
// rate and gets back exactly the measured median, so the profile reproduces the times it
// came from.
//
// This header does not include LibTorch (the tests and the tool include it; only
// profiler.cpp pulls torch).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "src/common/json_in.h"
#include "src/core/scenario.h"

namespace pac {

// What is timed and how.
struct ProfileOptions {
  ModelConfig model;                   // as read from profiles/models/*.json
  std::string model_file;              // for messages and the profile's notes
  int seq_len = 128;                   // tokens per sample
  int reduction_k = 8;                 // Parallel Adapters' side width = hidden / k
  std::vector<int> micro_batches = {1, 2, 4, 8};
  // Sizes at which only "cached_step" is timed besides micro_batches: the cached epochs'
  // step runs a device's share of the whole mini-batch, which can be larger than any
  // micro-batch (a one-device cached plan runs all of it): timed there rather than
  // taken from the largest micro-batch's rate.
  std::vector<int> cached_batches;
  std::vector<int> threads = {1};      // LibTorch intra-op thread counts to time
  int warmup = 2;                      // untimed runs before each measurement
  int repeats = 5;                     // timed runs at least; the median is kept
  double min_time_s = 0;               // ... and more (up to 1000) until they add up to this
  // The timed runs of every kind and micro-batch of one thread count are spread over
  // this many rounds, each visiting every measurement in turn (profile_measure): the
  // host's speed drifts over seconds, and a measurement taken in one burst carries the
  // moment it ran, so two micro-batch sizes timed a minute apart were up to 25% apart
  // per sample where interleaved runs put them within a few per cent (docs/profiling.md,
  // "Interleaved rounds"). 1 = every measurement in one burst after one timed run of
  // each (close to the design before 12-07). Every micro-batch's inputs stay alive
  // while its thread count is timed (the sum of the sizes, not the largest).
  int rounds = 6;
  bool quiet = false;                  // no progress lines
};

// Cost-model FLOPs of one sample (seq_len tokens) of each timed piece of work, taken
// from cost_model_build() for the timed (llama-equivalent) config: a middle layer's
// backbone forward and full-fine-tuning backward, its side block's forward/backward
// (Parallel Adapters, reduction k), and the output head's forward (2 * vocab * d * t).
// cached_step: one sample of a cached epoch's step on the whole model (every side
// block's forward and backward, the frozen head's forward and the loss's way back
// through it): the cost model's side_fwd + side_bwd over all layers + cached_head_flops.
struct ProfileFlops {
  double layer_fwd = 0, layer_bwd = 0;
  double side_fwd = 0, side_bwd = 0;
  double head_fwd = 0, head_bwd = 0;
  double cached_step = 0;
};

// --model: a .json path, a name in <profiles_dir>/models/, or (when no such file) a
// LibTorch preset of model.h ("llama-d768-l12", "tiny", ...). InputError naming the
// reference and what was looked for.
ModelConfig profile_model_resolve(const std::string& ref, const std::string& profiles_dir);

// The LLaMA-style config that is actually timed for `m`: llama as is; t5/bart become a
// decoder-only llama layer of the same hidden/ffn/heads/vocab (SwiGLU, RMSNorm, RoPE),
// because the runtime only has the LLaMA layer (docs/profiling.md).
ModelConfig profile_timed_config(const ModelConfig& m);
ProfileFlops profile_flops(const ModelConfig& timed, int seq_len, int reduction_k);

// One measurement: `kind` at `micro_batch` samples with `threads` threads.
// Kinds: "layer" (backbone layer forward under no-grad: the frozen backbone of Parallel
// Adapters), "layer_fwd_grad" (the same forward recording autograd: full fine-tuning),
// "layer_bwd" (its backward, weight + activation gradients), "side", "side_bwd" (one
// side block incl. its ladder down-projection), "embed" (token lookup, 0 FLOPs),
// "head", "head_bwd" (final norm + classifier, weight + activation gradients),
// "cached_step" (a cached epoch's step as the runtime runs it: the whole side network
// of all layers over taps [mb, L+1, T, d], the frozen head, the masked cross-entropy
// and its backward; the sum of the per-kind rates misses what lies between the pieces:
// ~1.6x on the d512 testbed model, docs/profiling.md), "optimizer" (once per thread count).
struct ProfileTiming {
  std::string kind;
  int threads = 1;
  int micro_batch = 1;
  double flops = 0;                    // cost-model FLOPs of the whole micro-batch
  double median_s = 0, min_s = 0, max_s = 0;
  int repeats = 0;
  double rate() const { return median_s > 0 ? flops / median_s : 0; }  // FLOP/s
};

// Times every kind for every (threads, micro-batch). Prints progress to stderr.
std::vector<ProfileTiming> profile_time_layers(const ProfileOptions& o);

// One measurement: prepare() (untimed) then run() (timed), `release` (optional) after
// each round's runs, to drop what run() left alive.
struct ProfileCase {
  std::string kind;
  int micro_batch = 1;
  double flops = 0;
  std::function<void()> prepare, run, release;
};

// Times `cases` (all at `threads`) in interleaved rounds: `o.warmup` untimed runs of each,
// then round 0 times each once; that first time sets how many runs the case needs (at
// least o.repeats, and enough to add up to o.min_time_s, at most 1000), spread evenly
// over o.rounds further rounds that each visit every case, in order in even rounds and
// in reverse in odd ones (an even count cancels a linear drift). Cases that still fall short
// (their first run was slower than the rest) get further passes until they meet both
// bounds, so every result keeps the contract "at least repeats, and until the timed
// runs add up to min_time". Each timing is the median of the case's runs. `now` is the
// clock in seconds (default: steady_clock; the tests pass a simulated one); `progress`
// is told every finished run count.
std::vector<ProfileTiming> profile_measure(std::vector<ProfileCase>& cases, int threads, const ProfileOptions& o,
                                           const std::function<double()>& now = {},
                                           const std::function<void(long done, long total)>& progress = {});

// Co-run slowdown (DeviceProfile::corun_slowdown): how much longer a backbone layer's
// forward takes at each micro-batch size while a second core of this host runs the same
// work, against the time alone. The testbed's devices are processes on one host, and
// the rates above are timed alone (docs/profiling.md, "Co-run slowdown").
struct CorunTiming {
  int micro_batch = 1;
  double solo_s = 0, corun_s = 0;    // medians of all runs alone / with the co-runner
  double factor = 1;                 // median over the rounds of their ratio corun / solo
  std::vector<double> round_ratios;  // each round's median corun / median solo
  int runs = 0;                      // timed runs per side and round
};

// The measurement, its work injected (the tests pass a simulated one): `warmup` untimed
// runs of each size, then `rounds` rounds, each visiting every size (in reverse in odd
// rounds) and timing `runs` runs alone and `runs` with the co-runner on, alone first in
// even rounds and co-run first in odd ones, so that a drift of the host's speed hits
// both sides alike. `run_once(mb)` does one run and returns its seconds; `corunner(mb,
// on)` starts or stops the load on the other core. Each size's factor is the median of
// its rounds' ratios of medians.
std::vector<CorunTiming> corun_measure(const std::vector<int>& micro_batches, int rounds, int runs, int warmup,
                                       const std::function<double(int mb)>& run_once,
                                       const std::function<void(int mb, bool on)>& corunner);

// corun_measure on this host: the model's backbone layer forward (one thread, no
// autograd, as the "layer" kind), the co-runner the same layer on its own copy of the
// weights in a second thread, neither pinned (as the testbed's workers). o.rounds
// rounds, o.repeats runs per side (more for short layers, up to o.min_time_s per side
// and round). `cpus`: the first two CPUs this process may use (recorded). Throws
// InputError when it may use fewer than 2.
std::vector<CorunTiming> profile_corun(const ProfileOptions& o, std::vector<int>* cpus = nullptr);
json corun_json(const ProfileOptions& o, const std::vector<CorunTiming>& t, const std::vector<int>& cpus);

// Speed sentinel (pac-profile --sentinel): this VM's per-core speed swings by a fifth
// within a minute, so a probe taken before and after a run misses what the host did
// during it (docs/fidelity.md, "Speed during the run"). The sentinel runs beside the
// run and times one backbone layer forward (the "layer" kind: one thread, no autograd)
// once per period, in the thread's CPU time: what the kernel cost while it ran, not the
// time it waited for a core the devices hold.
struct SentinelSample {
  double t = 0;       // start, seconds since the Unix epoch (the harness's clock)
  double cpu_s = 0;   // the run's CPU seconds (CLOCK_THREAD_CPUTIME_ID)
  double wall_s = 0;  // its wall seconds
};

// The loop, its work and clocks injected (the tests pass simulated ones): one
// `run_once()` per `period_s`, each start one period after the previous one (a start
// missed while a run overran is skipped, never made up in a burst), until `stop()` says
// so or `max_s` of `now()` have passed. `sleep_for(s)` waits; the loop sleeps in slices
// of at most 20 ms so that a stop is seen within one slice of an idle period.
std::vector<SentinelSample> sentinel_loop(double period_s, double max_s, const std::function<SentinelSample()>& run_once,
                                          const std::function<bool()>& stop, const std::function<double()>& now,
                                          const std::function<void(double)>& sleep_for);

// sentinel_loop on this host: the model's layer at the first of o.micro_batches, o.warmup
// untimed runs, then `ready()`, then one timed run per period until stop() or max_s.
std::vector<SentinelSample> profile_sentinel(const ProfileOptions& o, double period_s, double max_s,
                                             const std::function<bool()>& stop, const std::function<void()>& ready);
json sentinel_json(const ProfileOptions& o, double period_s, const std::vector<SentinelSample>& s);

// The activation cache's own cost: records written and read back through ActCache
// (cache_write_sample: dtype conversion, SHA-256, atomic file write with fsync;
// cache_read_sample: file read from the page cache, checksum, copy) in a fresh folder
// under `dir`, removed afterwards. This, not the raw device rate of storage_measure, is
// what a cache task costs: the records of an epoch are read back from the page cache,
// and the time goes to the work around the bytes (docs/profiling.md, "Storage"). Two
// record sizes (1 tap and `n_taps`) give a fixed cost per record (file create, fsync,
// rename; open, stat) and a rate for the bytes beyond it.
struct CacheCost {
  double write_bytes_per_s = 0, read_bytes_per_s = 0;  // stored record bytes per second
  double write_record_s = 0, read_record_s = 0;        // fixed seconds per record
  // What the fit was made from: median seconds per record of each size.
  int samples = 0;
  double small_record_bytes = 0, large_record_bytes = 0;
  double small_write_s = 0, large_write_s = 0, small_read_s = 0, large_read_s = 0;
};
CacheCost cache_measure(const std::string& dir, int n_taps, int seq_len, int dim, int samples);
json cache_cost_json(const CacheCost& c);  // the measurements, for calibration.cache_records
// t = record_s + bytes / rate through two points (a small and a large record). Noise
// can make the small record as slow as the large one: then the rate is the large
// record's alone and the fixed cost 0, never a negative or infinite figure; likewise a
// fixed cost the line puts below 0 is 0.
void cache_cost_fit(double small_bytes, double small_s, double large_bytes, double large_s, double* rate,
                    double* record_s);

// Host figures that are not timed by profile_time_layers.
struct HostFigures {
  std::string name;                    // profile name, e.g. "host-2core"
  double cpu_quota = 0;                // cores (0 = none applied)
  double memory_bytes = 0;
  double memory_total_bytes = 0;
  double peak_flops_fp32 = 0;          // informational
  double power_idle_w = 0, power_busy_w = 0;
  double nic_bandwidth_bps = 0, nic_latency_s = 0;
  double storage_read_bytes_per_s = 0, storage_write_bytes_per_s = 0;
  bool storage_measured = false;
  CacheCost cache;                     // cache_measure's figures (samples 0: not measured)
  // Raw device rates (storage_measure) when the storage rates above are the cache's own
  // (cache_measure); 0 = not measured. Kept in calibration.storage_device.
  double device_read_bytes_per_s = 0, device_write_bytes_per_s = 0;
  // 1-minute load average before and after timing (/proc/loadavg): on a shared machine
  // it says how much the numbers were disturbed. -1 = unknown.
  double load_before = -1, load_after = -1;
  std::string notes;                   // appended to the generated notes
};

// The calibrated device profile in the planner's format (docs/profile-format.md):
// eff_flops_by_kind "<kind>@<mb>" for layer, layer_bwd, side, side_bwd, cached_step at the largest
// thread count timed, "<kind>" = the largest micro-batch's rate (fallback for sizes not
// timed), eff_flops.fp32 = the "layer" fallback. The whole timing table goes under
// "calibration". The result is checked by loading it through device_profile_from_json.
json profile_build(const ProfileOptions& o, const std::vector<ProfileTiming>& timings, const HostFigures& host);

// The raw timing table as JSON rows (what --json prints).
json profile_timings_json(const std::vector<ProfileTiming>& timings);

// Storage rates for the activation cache: writes `bytes` to a temporary file in `dir`
// (fsync included), drops it from the page cache and reads it back. RuntimeError naming
// the folder when it cannot.
void storage_measure(const std::string& dir, long long bytes, double* read_bytes_per_s, double* write_bytes_per_s);


// Physical memory and what a job may use (MemTotal, or the cgroup memory limit when
// lower, minus `reserve_bytes` for the OS and runtime).
void host_memory(double reserve_bytes, double* usable_bytes, double* total_bytes);
// The 1-minute load average, -1 when /proc/loadavg is unreadable.
double host_load_average();
// Datasheet-style fp32 peak of this CPU: cores x MHz x FLOP/cycle (AVX-512 64, AVX2+FMA
// 32, else 8). Informational only; 0 when /proc/cpuinfo says nothing.
double host_peak_flops_fp32(int cores);

// A CPU quota for this process (and the threads it starts later): a fresh cgroup with
// cpu.max (v2) or cpu.cfs_quota_us (v1). apply() returns false and sets `why` when not
// root or no cpu controller is mounted; the caller decides whether to go on.
class CpuQuota {
 public:
  bool apply(double cores, std::string* why);
  ~CpuQuota();  // moves the process back and removes the cgroup
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;         // the cgroup we created
  std::string parent_dir_;  // where the process goes back to
};

}  // namespace pac
