// pac-profile: times the real LibTorch layers of a model config on this machine and
// writes a calibrated device profile the planner reads (docs/profiling.md).
//   pac-profile --model llama-d768 --micro-batches 1,2,4,8 --threads 2 -o profiles/devices/host-2core.json
//   pac-profile --model stories260K --cpu-quota 1 --json
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <thread>

#include "src/common/blas.h"
#include "src/common/heap.h"
#include "src/common/cli.h"
#include "src/common/error.h"
#include "src/common/fs.h"
#include "src/common/json_in.h"
#include "src/core/profile.h"
#include "src/llm/profiler.h"

using namespace pac;

// --sentinel runs until the harness stops it (SIGTERM) or the user does (SIGINT).
static volatile std::sig_atomic_t g_sentinel_stop = 0;
static void sentinel_signal(int) { g_sentinel_stop = 1; }

int main(int argc, char** argv) {
  pac::blas_kernel_fix(argv);
  pac::compute_heap_pin();
  return run_main("pac-profile", [&]() -> int {
    CLI::App app{"Time real LibTorch layers of a model config and write a calibrated device profile"};
    std::string model_ref, profiles_dir, name, output, storage_dir = "/tmp";
    ProfileOptions o;
    o.threads.clear();
    double cpu_quota = 0, storage_mb = 64, memory_bytes = 0, memory_reserve = 2.0 * (1 << 30);
    double power_idle = 5, power_busy_per_core = 10, power_busy = 0;
    double nic_bps = 1e9, nic_latency = 1e-4, storage_read = 200e6, storage_write = 100e6;
    bool json_out = false, host_info = false, corun = false, sentinel = false;
    double sentinel_period = 1.0, sentinel_max = 3600;
    app.add_option("--model", model_ref, "model config: a name in <profiles>/models/, a .json path, or a model.h preset (llama-d768-l12, tiny, ...)");
    app.add_flag("--host-info", host_info, "print this machine's CPU and BLAS kernel (what calibration.cpu / blas_core record) as JSON and exit");
    app.add_option("--profiles-dir", profiles_dir, "folder with devices/ and models/ (default: the repository's profiles/)");
    app.add_option("--name", name, "profile name (default host-<cores>core)");
    app.add_option("-o,--output", output, "write the device profile here (atomically); without -o and --json it goes to stdout");
    app.add_option("--seq", o.seq_len, "tokens per sample")->check(CLI::Range(1, 1 << 20));
    app.add_option("--k", o.reduction_k, "Parallel Adapters reduction factor (side width = hidden / k)")->check(CLI::Range(1, 1 << 20));
    app.add_option("--micro-batches", o.micro_batches, "micro-batch sizes to time, comma separated")
        ->delimiter(',')->check(CLI::Range(1, 4096));
    app.add_option("--cached-batches", o.cached_batches,
                   "extra batch sizes at which only the cached step is timed (a data-parallel device's rows of a "
                   "mini-batch, up to the whole of it), comma separated")
        ->delimiter(',')->check(CLI::Range(1, 4096));
    app.add_option("--threads", o.threads, "LibTorch thread counts to time, comma separated; the profile uses the largest "
                                           "(default: the quota's cores rounded up, else all cores)")
        ->delimiter(',')->check(CLI::Range(1, 1024));
    app.add_option("--warmup", o.warmup, "untimed runs before each measurement")->check(CLI::Range(0, 1000));
    app.add_option("--repeats", o.repeats, "timed runs per measurement at least (the median is kept)")->check(CLI::Range(1, 1000));
    o.min_time_s = 0.2;
    app.add_option("--min-time", o.min_time_s,
                   "seconds of timed runs per measurement at least: short kinds repeat more (up to 1000 runs)")
        ->capture_default_str()->check(CLI::Range(0.0, 60.0));
    app.add_option("--rounds", o.rounds,
                   "interleaved rounds: each measurement's runs are spread over this many passes that visit every "
                   "kind and micro-batch in turn, so the host's drift hits them alike (1 = one burst each)")
        ->capture_default_str()->check(CLI::Range(1, 1000));
    app.add_option("--cpu-quota", cpu_quota, "run under a cgroup CPU quota of this many cores (needs root)")
        ->check(CLI::Range(0.01, 1024.0));
    app.add_option("--storage-dir", storage_dir, "folder whose storage rate is measured (activation cache)");
    app.add_option("--storage-mb", storage_mb, "MiB written and read back to measure storage; 0 = use --storage-read/write-bps")
        ->check(CLI::Range(0.0, 1e6));
    app.add_option("--storage-read-bps", storage_read, "storage read bytes/s when not measured")->check(CLI::PositiveNumber);
    app.add_option("--storage-write-bps", storage_write, "storage write bytes/s when not measured")->check(CLI::PositiveNumber);
    app.add_option("--memory-bytes", memory_bytes, "usable memory (default: physical or cgroup limit minus the reserve)")
        ->check(CLI::PositiveNumber);
    app.add_option("--memory-reserve-bytes", memory_reserve, "taken off physical memory for the OS and runtime")
        ->check(CLI::NonNegativeNumber);
    app.add_option("--power-idle-w", power_idle, "idle power, W (not measurable here; default 5)")->check(CLI::NonNegativeNumber);
    app.add_option("--power-busy-w", power_busy, "busy power, W (default: idle + 10 W per core used)")->check(CLI::NonNegativeNumber);
    app.add_option("--nic-bandwidth-bps", nic_bps, "NIC rate, bits/s (default 1e9)")->check(CLI::PositiveNumber);
    app.add_option("--nic-latency-s", nic_latency, "NIC added latency, s (default 1e-4)")->check(CLI::Range(0.0, 10.0));
    app.add_flag("--json", json_out, "print the raw timing table (JSON) on stdout");
    app.add_flag("--corun", corun,
                 "measure the co-run slowdown instead of a profile: the backbone layer's forward at each micro-batch size "
                 "alone and with the same work on a second CPU, in interleaved rounds (needs 2 CPUs, no quota); writes "
                 "the pac-corun JSON (docs/profiling.md, \"Co-run slowdown\") to -o or stdout");
    app.add_flag("--sentinel", sentinel,
                 "run as a speed sentinel beside other work: time the backbone layer's forward at the first micro-batch "
                 "size (one thread) once per --sentinel-period in CPU time, say \"ready\" on stdout after the warmup, "
                 "and on SIGTERM / SIGINT write the pac-sentinel JSON to -o (docs/fidelity.md, \"Speed during the run\")");
    app.add_option("--sentinel-period", sentinel_period, "seconds between the sentinel's timed runs")
        ->capture_default_str()->check(CLI::Range(0.01, 3600.0));
    app.add_option("--sentinel-max-s", sentinel_max, "the sentinel stops by itself after this many seconds")
        ->capture_default_str()->check(CLI::Range(1.0, 1e6));
    app.add_flag("--quiet", o.quiet, "no progress lines");
    if (int rc = cli_parse(app, argc, argv); rc >= 0) return rc;
    if (host_info) {
      json h = {{"cpu", host_cpu_id()}, {"blas_core", blas_core_name()},
                {"cores", (int)std::max(1u, std::thread::hardware_concurrency())}};
      std::printf("%s\n", h.dump().c_str());
      return 0;
    }
    if (model_ref.empty()) throw InputError("--model is required (a model config to time)");

    // Bad input fails before any timing.
    std::string dir = profiles_dir_resolve(profiles_dir, "");
    if (profiles_dir.empty() && !file_exists(path_join(dir, "models"))) {
      if (const char* src = std::getenv("PAC_SOURCE_DIR")) dir = path_join(src, "profiles");
    }
    o.model = profile_model_resolve(model_ref, dir);
    o.model_file = model_ref;
    if (o.seq_len > o.model.max_seq)
      throw InputError("--seq " + std::to_string(o.seq_len) + ": longer than the model's max_seq " + std::to_string(o.model.max_seq) +
                       " (" + model_ref + ")");
    if (o.model.hidden % o.reduction_k != 0)
      throw InputError("--k " + std::to_string(o.reduction_k) + ": must divide the model's hidden size " +
                       std::to_string(o.model.hidden) + " (" + model_ref + ")");
    if (sentinel) {
      if (output.empty()) throw InputError("--sentinel: needs -o (stdout carries the ready line)");
      if (cpu_quota > 0 || corun) throw InputError("--sentinel: times without a quota and without --corun");
      std::signal(SIGTERM, sentinel_signal);
      std::signal(SIGINT, sentinel_signal);
      // An orphaned sentinel (its harness killed) stops too: the parent changes.
      const pid_t parent = getppid();
      std::vector<SentinelSample> s = profile_sentinel(
          o, sentinel_period, sentinel_max, [&] { return g_sentinel_stop != 0 || getppid() != parent; },
          [] {
            std::printf("ready\n");
            std::fflush(stdout);
          });
      file_write_atomic(output, sentinel_json(o, sentinel_period, s).dump(1) + "\n");
      if (!o.quiet) std::fprintf(stderr, "pac-profile: sentinel: %zu samples -> %s\n", s.size(), output.c_str());
      return 0;
    }
    if (corun) {
      if (cpu_quota > 0) throw InputError("--corun: times without a quota (the layer and its co-runner each on a CPU of its own)");
      std::vector<int> cpus;
      std::vector<CorunTiming> t = profile_corun(o, &cpus);
      json j = corun_json(o, t, cpus);
      if (!o.quiet)
        for (const CorunTiming& c : t)
          std::fprintf(stderr, "pac-profile: co-run micro-batch %d: %.2f ms alone, %.2f ms beside the co-runner: x%.3f\n",
                       c.micro_batch, c.solo_s * 1e3, c.corun_s * 1e3, c.factor);
      if (!output.empty()) file_write_atomic(output, j.dump(2) + "\n");
      else std::printf("%s\n", j.dump(2).c_str());
      return 0;
    }
    int hw = (int)std::max(1u, std::thread::hardware_concurrency());
    int cores = cpu_quota > 0 ? std::min(hw, (int)std::ceil(cpu_quota)) : hw;
    if (o.threads.empty()) o.threads = {cores};
    if (name.empty()) name = "host-" + std::to_string(cores) + "core";

    CpuQuota quota;
    HostFigures host;
    host.name = name;
    if (cpu_quota > 0) {
      std::string why;
      if (quota.apply(cpu_quota, &why)) {
        host.cpu_quota = cpu_quota;
        std::fprintf(stderr, "pac-profile: CPU quota %.2f cores (cgroup %s)\n", cpu_quota, quota.dir().c_str());
      } else {
        std::fprintf(stderr, "pac-profile: warning: CPU quota skipped, timing without it: %s\n", why.c_str());
        host.notes = "A CPU quota of " + std::to_string(cpu_quota) + " cores was asked for but NOT applied (" + why + ").";
      }
    }
    double used_cores = host.cpu_quota > 0 ? host.cpu_quota : cores;
    host.memory_bytes = memory_bytes;
    double usable = 0;
    host_memory(memory_reserve, &usable, &host.memory_total_bytes);
    if (host.memory_bytes <= 0) host.memory_bytes = usable;
    host.peak_flops_fp32 = host_peak_flops_fp32((int)std::ceil(used_cores));
    host.power_idle_w = power_idle;
    host.power_busy_w = power_busy > 0 ? power_busy : power_idle + power_busy_per_core * used_cores;
    host.nic_bandwidth_bps = nic_bps;
    host.nic_latency_s = nic_latency;
    host.storage_read_bytes_per_s = storage_read;
    host.storage_write_bytes_per_s = storage_write;
    if (storage_mb > 0) {
      storage_measure(storage_dir, (long long)(storage_mb * (1 << 20)), &host.storage_read_bytes_per_s,
                      &host.storage_write_bytes_per_s);
      host.storage_measured = true;
      if (!o.quiet)
        std::fprintf(stderr, "pac-profile: storage %s: write %.0f MB/s, read %.0f MB/s\n", storage_dir.c_str(),
                     host.storage_write_bytes_per_s / 1e6, host.storage_read_bytes_per_s / 1e6);
      // What a cache task costs is the cache's own path, not the device's raw rate: time
      // ActCache records of this model (one per sample: n_layers + 1 taps) over the same bytes.
      host.device_read_bytes_per_s = host.storage_read_bytes_per_s;
      host.device_write_bytes_per_s = host.storage_write_bytes_per_s;
      const int n_taps = o.model.total_layers() + 1;
      const double record = (double)n_taps * o.seq_len * o.model.hidden * 4;
      const int samples = std::max(4, (int)std::ceil(storage_mb * (1 << 20) / record));
      host.cache = cache_measure(storage_dir, n_taps, o.seq_len, o.model.hidden, samples);
      const CacheCost& cc = host.cache;
      host.storage_read_bytes_per_s = cc.read_bytes_per_s;
      host.storage_write_bytes_per_s = cc.write_bytes_per_s;
      if (!o.quiet)
        std::fprintf(stderr,
                     "pac-profile: activation cache (%d records of %.1f MB and of 1 tap): write %.2f ms/record + %.0f MB/s, "
                     "read %.2f ms/record + %.0f MB/s\n",
                     samples, record / 1e6, cc.write_record_s * 1e3, cc.write_bytes_per_s / 1e6, cc.read_record_s * 1e3,
                     cc.read_bytes_per_s / 1e6);
    }

    host.load_before = host_load_average();
    // Other runnable processes steal the cores and stall multi-threaded barriers: say so
    // (the profile records the load too).
    if (host.load_before > hw)
      std::fprintf(stderr, "pac-profile: warning: load average %.1f on %d cores: other processes will slow the timings\n",
                   host.load_before, hw);
    std::vector<ProfileTiming> timings = profile_time_layers(o);
    host.load_after = host_load_average();
    json profile = profile_build(o, timings, host);
    if (!output.empty()) {
      file_write_atomic(output, profile.dump(2) + "\n");
      if (!o.quiet) std::fprintf(stderr, "pac-profile: wrote %s\n", output.c_str());
    }
    if (json_out) {
      std::printf("%s\n", profile_timings_json(timings).dump(2).c_str());
    } else if (output.empty()) {
      std::printf("%s\n", profile.dump(2).c_str());
    }
    return 0;
  });
}
