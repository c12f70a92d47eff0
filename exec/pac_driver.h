// The coordinator's side of a PAC run (pac-run and the runtime tests): assign every
// device its part of a phase, drive mini-batches through the pipeline, collect the
// trained side network. No torch: the workers do the tensor work.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "exec/assignment.h"
#include "exec/coordinator.h"
#include "src/llm/dataset.h"

namespace pac {

// A free TCP port on `host` right now (bind to port 0, read it, close). c10d's TCPStore
// cannot take port 0, so the coordinator picks one for each stage group's store. When
// `host` is not an address of this machine (remote devices, testbed namespaces) it
// hands out ports 29500-30499 (20 per coordinator process, by pid), one per call.
int tcp_free_port(const std::string& host);

// "host" of "host:port" (the whole string when it has no colon).
std::string address_host(const std::string& address);

// Sends every worker (coordinator index w = scenario device w) its "pac-pipeline"
// fragment: `settings` (model, seed, side_init, reduction_k, lr, weight_decay, threads,
// timeout_ms; docs/runtime.md) plus its assignment and, for groups of more than one
// device, the group's rendezvous store (hosted by the group's rank 0). Devices the
// phase does not use are skipped. settings["executor"] names the executor (default
// "pac-pipeline"; the baselines' executors take the same fragment). Returns the acks.
std::vector<json> pac_assign_phase(Coordinator& c, const std::vector<Assignment>& as, const json& settings);

// Every assigned device joins its collective groups (stage group, tied-embedding group)
// now, all at once, so that the store connects and Gloo pair setup happen before the
// timed training (as model loading does) rather than inside the first step. `next`
// (optional): the data-parallel phase after the switch; its devices join that group now
// too, instead of during the switch. Returns each worker's CPU seconds so far (its
// result's `cpu_s`; -1 for a worker without a stage or an answer without it), the
// baseline of the report's per-device `cpu_s`.
std::vector<double> pac_join_groups(Coordinator& c, const std::vector<Assignment>& as, Millis wait,
                                    const std::vector<Assignment>& next = {});

struct PacStepResult {
  double loss = 0;        // the mini-batch's masked mean loss (sum of the slices' parts)
  double max_seconds = 0; // slowest device's step time
  std::vector<json> results;
  std::vector<int> workers;  // coordinator index of each result's device
};

// One mini-batch on every assigned device: Start is sent to all of them first (the
// pipeline needs them all running), then every Result is awaited for at most `wait`.
// `trace`: the devices return their timed events (exec/run_trace.h) with the Result.
// `next` (phase 2 only): the mini-batch after this one; the devices read their rows of
// it from their caches while this step all-reduces (the "next" field, docs/runtime.md).
PacStepResult pac_train_step(Coordinator& c, const std::vector<Assignment>& as, int step, double lr,
                             const std::vector<const Example*>& batch, Millis wait, bool trace = false,
                             const std::vector<const Example*>* next = nullptr);

// Which devices hold cached taps of which samples after phase 1, from the step results
// "cached" lists (sample id -> coordinator indices of the devices that wrote its taps).
using CacheHolders = std::map<int64_t, std::vector<int>>;
void pac_note_cached(const PacStepResult& r, CacheHolders* holders);

// The owner (data-parallel rank) of every sample in `samples` for phase 2. Rank g owns
// exactly its share of the samples (share_rows over [0, n)); a device keeps the samples
// it already holds taps of where it can, those with the most taps first, so the
// switch moves as few bytes as it must (the planner's switch model assumes the same).
// taps[w] = number of taps device w's phase-1 records hold.
std::vector<int> switch_owners(const std::vector<int64_t>& samples, const CacheHolders& holders,
                               const std::vector<int>& dp_devices, const std::vector<double>& dp_shares,
                               const std::vector<int>& taps);

struct SwitchResult {
  double seconds = 0;
  std::vector<json> results;
  std::vector<int> workers;
  std::vector<int> owners;  // per sample passed to pac_switch: the DP rank holding its record
};

// The phase switch: every device of `phase1` ships its cached taps to their owners and
// its stage's side tensors (with AdamW state) to every device of `phase2` (one
// data-parallel stage); returns when all of them are done. Devices of phase 2 must have
// been in phase 1 (they hold the side network's shape and the head).
SwitchResult pac_switch(Coordinator& c, const std::vector<Assignment>& phase1, const std::vector<Assignment>& phase2,
                        const std::vector<const Example*>& samples, const CacheHolders& holders, Millis wait,
                        bool trace = false);

// Asks the first device of every stage to write its trained side tensors to
// `dir`/side-stage<j>.safetensors; returns those paths in stage order.
std::vector<std::string> pac_save_parts(Coordinator& c, const std::vector<Assignment>& as, const std::string& dir,
                                        Millis wait);

}  // namespace pac
