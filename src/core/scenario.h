// The resolved scenario: everything a plan is made from. Loaded and validated from
// scenario.json (docs/scenario-format.md) by scenario_load(); embedded whole in every
// plan so that a plan is self-contained.
//
// Units: bytes, seconds, FLOP/s, bits per second for links (as network people quote
// them), watts. Names end in their unit where it is not obvious.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "src/common/json_in.h"

namespace pac {

// One device kind (profiles/devices/*.json).
struct DeviceProfile {
  std::string name;                 // "jetson-nano-4gb"
  std::string source;               // where the public figures come from
  double peak_flops_fp32 = 0;       // FLOP/s, datasheet
  double peak_flops_fp16 = 0;
  // Effective (achieved) rate for transformer layers, FLOP/s. `by_kind` refines it per
  // kind of work once calibrated by pac-profile ("layer", "side", "layer_bwd",
  // "side_bwd"; see device_rate() in profile.h), keyed "<kind>" or "<kind>@<micro_batch>".
  std::map<std::string, double> eff_flops;   // dtype ("fp32","fp16","bf16") -> FLOP/s
  std::map<std::string, double> eff_flops_by_kind;
  double memory_bytes = 0;          // usable by the job (OS share already taken off)
  double power_idle_w = 0;
  double power_busy_w = 0;
  double nic_bandwidth_bps = 0;     // bits per second
  double nic_latency_s = 0;
  // Local storage for the activation cache (microSD, eMMC, NVMe), bytes per second.
  double storage_read_bytes_per_s = 0;
  double storage_write_bytes_per_s = 0;
  // The activation cache's fixed cost per record (one sample's taps: file create,
  // fsync, rename on write; open, stat, checksum set-up on read), wall seconds beyond
  // bytes / rate, fitted by pac-profile (cache_measure at two record sizes). A cache
  // task of n samples and B bytes takes n x record_s + B / rate (cache_io_s). 0 = bytes
  // alone (datasheet profiles).
  double storage_write_record_s = 0;
  double storage_read_record_s = 0;
  // The runtime's own cost beyond the kernels, wall seconds on this device (testbed
  // profiles: at their CPU quota), fitted by bench/calibrate_overhead.py. Per compute
  // task (a forward, backward or optimizer step: dispatch, autograd set-up, tensor
  // bookkeeping) and per message at each end (framing, copies, the receive thread's
  // hand-over). 0 = not calibrated: the kernels alone (datasheet profiles).
  double task_overhead_s = 0;
  double message_overhead_s = 0;
  // Per training step: the step's command and result between the coordinator and this
  // device (parse, tensors from the JSON, the reply), wall seconds in which no plan task
  // runs; measured by bench/calibrate_overhead.py from pac-run's step_gap_s and charged
  // with the device's optimizer task (optimizer_s). 0 = not measured.
  double step_overhead_s = 0;
  // Testbed profiles: the CPU quota q (cores, < 1) under which the rates above are
  // sustained (the unthrottled 1-thread rates x q, docs/profiling.md). The simulator
  // then models the CFS period: bursts of work run at 1/q the rate while the period's
  // budget lasts (sim/engine.cpp, cpu_work_end). 0 = rates are what every task gets.
  double sustained_quota = 0;
  // With sustained_quota: the time a throttled device loses at the start of the next
  // period before it runs again. Fitted by earlier bench/calibrate_overhead.py runs
  // (where a device that computes all the time ran 9-23% slower than its sustained
  // rate); what that measured is now cpu_work_factor, and the fit no longer sets it.
  double throttle_delay_s = 0;
  // CPU seconds the runtime spends per second of work at the rates above (>= 1; every
  // rate is divided by it, device_rate). Testbed profiles under a quota: measured by
  // bench/calibrate_overhead.py as the one-device plan's worker CPU time over the plan's
  // work at the rates: the same work took 1.1-1.3x the CPU under a cgroup quota as
  // without one (docs/profiling.md, "Runtime overhead"). 1 = the rates as timed.
  double cpu_work_factor = 1;
  // The first use of a phase on this device: the bytes of activation memory its first
  // step touches for the first time per second of extra wall time (page faults and
  // zeroing), measured by bench/calibrate_overhead.py on the profile's one-device cached
  // plan; 0 = not measured. first_step_bytes_per_s: the backbone phase's first step;
  // cached_first_step_bytes_per_s: the first step after the switch (the switch gave
  // phase 1's memory back). The device's first compute task of the phase's first
  // iteration takes its mem_alloc_bytes / the rate longer (Task::first_extra_s).
  double first_step_bytes_per_s = 0;
  double cached_first_step_bytes_per_s = 0;
  // The switch's local work on this device, wall seconds: dropping the backbone, packing
  // and loading the side network with its AdamW state, freeing phase 1 (memory, the
  // phase-1 cache). Measured as the one-device cached plan's switch, where nothing is
  // sent; priced as one Local task per phase-1 device before its sends. 0 = free.
  double switch_local_s = 0;
  // Step-to-step jitter of this device's compute: the coefficient of variation of its
  // compute time from one training step to the next, independent of other devices' (a
  // shared, oversubscribed host: steal, cache and CFS contention). A barrier among
  // devices (an all-reduce, a stage waiting for its input) waits for the slowest, so
  // jitter costs time on several devices that it does not cost on one. Measured by
  // bench/calibrate_overhead.py on the profile's 4-device data-parallel plan (the
  // spread of the devices' compute in a step beyond what the simulation already has);
  // the simulator draws each device's multiplier per iteration (sim/engine.cpp,
  // jitter_of). 0 = none (datasheet profiles).
  double compute_jitter_cv = 0;
  // Shared host only (Scenario::host_cores > 0, the testbed): how much longer this
  // device's compute takes while the host's other cores compute too, by micro-batch
  // size (samples per task). The testbed's devices are processes on one machine whose
  // cores may slow each other (shared caches, memory bandwidth, a hypervisor's vCPU
  // placement); the rates above are timed alone. Measured by pac-profile --corun (on
  // the EPYC VM within its noise, so calibrate_testbed.sh adds it only with CORUN=1:
  // docs/profiling.md, "Co-run slowdown"); the simulator applies it in proportion to how
  // busy the other cores are (sim/engine.cpp, cpu_reschedule). Empty = 1 (real devices
  // do not share a host).
  std::map<int, double> corun_slowdown;
};

// Architecture (profiles/models/*.json). Per-layer FLOPs and bytes are derived by the
// cost model from these numbers, never typed in.
struct ModelConfig {
  std::string name;                 // "t5-base"
  std::string family;               // "llama" | "t5" | "bart"
  int encoder_layers = 0;           // 0 for decoder-only
  int decoder_layers = 0;
  int hidden = 0;
  int heads = 0;
  int kv_heads = 0;                 // == heads unless grouped-query attention
  int ffn = 0;
  int vocab = 0;
  int max_seq = 0;
  bool tied_embeddings = true;
  bool gated_ffn = false;           // SwiGLU (llama) / gated-GELU (t5 v1.1): 3 FFN matrices
  int total_layers() const { return encoder_layers + decoder_layers; }
};

struct MethodSpec {
  std::string kind = "parallel_adapters";  // "full" | "lora" | "adapters" | "parallel_adapters"
  int reduction_k = 8;              // parallel adapters: side width = hidden / k
  int lora_rank = 8;
  double lora_alpha = 16;
  bool lora_mlp = false;
  int adapter_bottleneck = 64;      // Houlsby adapters
  bool cache = true;                // activation cache (parallel adapters only)
  std::string cache_dtype = "fp16"; // "fp32" | "fp16" | "bf16"
  std::string dtype = "fp32";       // compute dtype
  std::string optimizer = "adamw";
};

struct DataSpec {
  std::string task;                 // "mrpc", "personal", ...
  int64_t samples = 0;              // training samples per epoch
  int seq_len = 128;
  int mini_batch = 16;
  int micro_batches = 4;            // per mini-batch (pipeline phase)
  // Encoder-decoder models: tokens the decoder runs on (T5 on GLUE decodes a short
  // label, BART feeds the whole input to its decoder). 0 = seq_len.
  int target_len = 0;
  int decoder_len() const { return target_len > 0 ? target_len : seq_len; }
};

struct DeviceSpec {
  std::string id;                   // unique within the scenario: "nano0"
  DeviceProfile profile;
  std::string address;              // "host:port" for real runs; empty = local
  double cpu_quota = 0;             // testbed: cores (0 = unlimited)
};

struct LinkSpec {                   // overrides the network default for one pair
  std::string a, b;                 // device ids
  double bandwidth_bps = 0;
  double latency_s = 0;
};

struct NetworkSpec {
  std::string kind = "switched";    // "switched": each NIC limits itself; "shared": one medium (Wi-Fi)
  double bandwidth_bps = 1e9;       // per NIC (switched) or the medium's capacity (shared)
  double latency_s = 0.0002;
  std::vector<LinkSpec> links;
};

struct FaultSpec {
  std::string kind;                 // "leave" | "fail" | "slowdown" | "link_degrade"
  std::string device;
  std::string peer;                 // link_degrade: the other end ("" = all links of device)
  double at_time_s = -1;            // one of at_time_s / at_iteration is set
  int64_t at_iteration = -1;
  double factor = 1;                // slowdown: compute time x factor; link_degrade: bandwidth / factor
};

struct Scenario {
  std::string file;                 // where it was loaded from (for messages)
  std::string name;
  ModelConfig model;
  MethodSpec method;
  DataSpec data;
  int epochs = 1;
  std::vector<DeviceSpec> devices;
  // > 0: every device is a process on one machine with this many cores (the testbed of
  // exec/testbed.h: workers under cgroup CPU quotas on this host), so their compute
  // shares those cores when more devices compute at once than it has. The simulator
  // models it (docs/simulator.md, "Shared host"); the planner plans for the devices and
  // ignores it. 0: each device has its own hardware (a real cluster).
  double host_cores = 0;
  // Where each quota device's CFS periods begin (docs/simulator.md, "CFS phases"). false
  // ("spread", the default): cgroups' period timers start independently, so device d's
  // periods are offset by frac(d x 0.618..) of a period (device 0 by none), and a
  // barrier among quota devices waits for the one throttled last. true ("aligned"):
  // every device's periods begin together (closed-form tests, A/B comparisons).
  bool cfs_phases_aligned = false;
  NetworkSpec network;
  std::string strategy = "pac";     // planner strategy
  int stages = 0;                   // force this many pipeline stages (0: the planner chooses)
  std::vector<FaultSpec> faults;

  int device_index(const std::string& id) const;  // -1 when absent
};

// Every planner strategy name, in the order tools list them.
const std::vector<std::string>& strategy_names();

// Loads and validates scenario.json; profile/model references are resolved relative to
// `profiles_dir` (default: the repository's profiles/). Throws InputError naming file,
// JSON path and expectation.
Scenario scenario_load(const std::string& file, const std::string& profiles_dir = "");
Scenario scenario_from_json(const JsonIn& doc, const std::string& profiles_dir = "");
json scenario_to_json(const Scenario& s);   // fully resolved (profiles inlined)

// Bandwidth (bits/s) and latency between two devices under the network spec. The
// latency includes both ends' message_overhead_s.
double link_bandwidth_bps(const Scenario& s, int a, int b);
double link_latency_s(const Scenario& s, int a, int b);

}  // namespace pac
