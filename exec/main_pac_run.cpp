// pac-run: the coordinator of a real PAC run (docs/runtime.md, "pac-run").
//
//   pac-run plan.json --data train.txt --tokenizer tok.bin [--local] [--model NAME|PATH]
//           [--out side.safetensors] [--report report.json]
//
// Starts one local pac-worker per plan device on 127.0.0.1 (when the plan names no
// addresses, or with --local), or connects to the addresses in the plan; assigns every
// device its part of the plan's first phase (pac-pipeline for parallel adapters,
// pipeline-train for full/lora/adapters), drives the mini-batches in the trainer's data
// order (parallel adapters with a cache: epoch 1 pipelined, then the switch, then data
// parallel from the workers' caches), then writes the trained result (safetensors,
// loadable by pac-generate/pac-train --adapter), a report JSON and optionally a trace.
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <random>

#include <CLI/CLI.hpp>

#include "src/common/blas.h"
#include "src/common/heap.h"
#include "exec/pac_driver.h"
#include "exec/run_trace.h"
#include "exec/testbed.h"
#include "exec/train_driver.h"
#include "exec/train_executor.h"
#include "src/common/cgroup.h"
#include "src/common/cli.h"
#include "src/common/error.h"
#include "src/common/fs.h"
#include "src/common/progress.h"
#include "src/llm/checkpoint.h"
#include "src/llm/safetensors.h"
#include "src/llm/side_network.h"
#include "src/llm/tokenizer.h"
#include "src/llm/trainer.h"

extern char** environ;

namespace {

using namespace pac;

// A pac-worker child on 127.0.0.1:<free port>. Its stdout is a pipe we read the
// "listening on HOST:PORT" line from; stderr (its log) stays ours.
struct LocalWorker {
  pid_t pid = -1;
  int out_fd = -1;
  std::string id, address;
  ~LocalWorker() {
    if (out_fd >= 0) ::close(out_fd);
    if (pid > 0) {
      // Normally it exited on Shutdown; a worker still there after 3 s is killed.
      for (int i = 0; i < 60; i++) {
        if (::waitpid(pid, nullptr, WNOHANG) == pid) return;
        ::usleep(50000);
      }
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
};

void local_spawn(LocalWorker& w, const std::string& exe, const std::string& id) {
  int fds[2];
  if (::pipe(fds) != 0) throw RuntimeError("pac-run: cannot create a pipe for worker " + id);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  std::vector<std::string> args = {exe, "--listen", "127.0.0.1:0", "--device-id", id, "--idle-exit-s", "60"};
  std::vector<char*> argv;
  for (auto& s : args) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    throw RuntimeError("pac-run: cannot start " + exe + " for device " + id + ": " + std::strerror(rc));
  }
  w.pid = pid;
  w.out_fd = fds[0];
  w.id = id;
}

// Reads the child's "pac-worker ID listening on HOST:PORT" line, at most `wait`.
void local_wait_ready(LocalWorker& w, std::chrono::milliseconds wait) {
  std::string line;
  auto deadline = std::chrono::steady_clock::now() + wait;
  while (line.find('\n') == std::string::npos) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      throw PeerError("pac-run: local worker " + w.id + " did not report its address within " +
                          std::to_string(wait.count()) + " ms",
                      w.id, true);
    pollfd p{w.out_fd, POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r <= 0) continue;
    char buf[256];
    ssize_t n = ::read(w.out_fd, buf, sizeof buf);
    if (n <= 0) throw PeerError("pac-run: local worker " + w.id + " exited before listening", w.id, false);
    line.append(buf, static_cast<size_t>(n));
  }
  size_t at = line.find(" on ");
  if (at == std::string::npos) throw RuntimeError("pac-run: worker " + w.id + " printed an unexpected line: " + line);
  w.address = line.substr(at + 4, line.find('\n') - at - 4);
}

std::string exe_dir() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : p.parent_path().string();
}

// The key of workers this process starts: --key-file's, or a fresh random one; either
// way passed on through the environment the children inherit.
ClusterKey children_key(const std::string& key_file, const std::string& whose);

volatile std::sig_atomic_t g_stop_signal = 0;
void on_stop_signal(int sig) { g_stop_signal = sig; }

std::string random_key() {
  std::random_device rd;
  std::string k;
  const char* hex = "0123456789abcdef";
  for (int i = 0; i < 48; i++) k.push_back(hex[rd() % 16]);
  return k;
}

// Masked mean loss per token over `ex` (as Trainer::evaluate), logits from `logits_of`.
double heldout_loss(const std::vector<Example>& ex, int batch,
                    const std::function<torch::Tensor(const torch::Tensor&)>& logits_of, double* tokens) {
  torch::NoGradGuard ng;
  double sum = 0, count = 0;
  for (size_t st = 0; st < ex.size(); st += static_cast<size_t>(batch)) {
    std::vector<const Example*> eb;
    for (size_t i = st; i < std::min(ex.size(), st + batch); i++) eb.push_back(&ex[i]);
    torch::Tensor inputs, targets, mask;
    examples_to_tensors(eb, &inputs, &targets, &mask);
    torch::Tensor logits = logits_of(inputs);
    double nt = mask.sum().item<double>();
    sum += masked_lm_loss(logits, targets, mask).item<double>() * nt;
    count += nt;
  }
  if (tokens) *tokens = count;
  return count > 0 ? sum / count : 0;
}

ClusterKey children_key(const std::string& key_file, const std::string& whose) {
  if (!key_file.empty()) {
    ::setenv("PAC_CLUSTER_KEY_FILE", key_file.c_str(), 1);
    return cluster_key_load(key_file);
  }
  std::string kk = random_key();
  ::setenv("PAC_CLUSTER_KEY", kk.c_str(), 1);
  ::unsetenv("PAC_CLUSTER_KEY_FILE");
  return ClusterKey{kk, "a fresh key for " + whose};
}

int run(int argc, char** argv) {
  CLI::App app{"pac-run: fine-tune with Parallel Adapters across the plan's devices"};
  std::string plan_file, model, tokenizer, data, out, report, key_file, worker_exe, side_init = "random", cache_dir, eval_data, trace_file;
  bool local = false, quiet = false, testbed = false;
  int epochs = 0, batch = 0, seq_len = 0, k = 0, threads = 1, max_steps = 0, warmup = 0, samples = -1;
  std::string lr_schedule = "constant";
  double lr = 1e-3, wd = 0, timeout_s = 60, eval_fraction = 0.1;
  uint64_t seed = 42;
  app.add_option("plan", plan_file, "plan.json from pac-plan")->required();
  app.add_flag("--local", local, "start the workers here on 127.0.0.1 even when the plan names addresses");
  app.add_flag("--testbed", testbed,
               "emulate the plan's devices on this machine (netns + tc + cgroups, root; docs/testbed.md) and run there");
  app.add_option("--model", model, "checkpoint path or preset (default: the plan's model name)");
  app.add_option("--tokenizer", tokenizer, "tokenizer.bin (llama2.c) or SentencePiece .model")->required();
  app.add_option("--data", data, "training data: text (one sample per paragraph) or .jsonl")->required();
  app.add_option("--eval-fraction", eval_fraction, "held out of --data (when no --eval-data)")->capture_default_str();
  app.add_option("--eval-data", eval_data, "held-out data file (default: --eval-fraction of --data)");
  app.add_option("--samples", samples,
                 "train on the first N examples of --data per epoch (0 = the plan's data.samples; default: all). "
                 "A paragraph longer than seq_len+1 tokens makes several examples");
  app.add_option("--epochs", epochs, "default: the plan's epochs");
  app.add_option("--batch-size", batch, "default: the plan's mini-batch");
  app.add_option("--seq-len", seq_len, "default: the plan's sequence length");
  app.add_option("--k", k, "side network reduction factor (default: the plan's)");
  app.add_option("--side-init", side_init, "random | pruned")->capture_default_str();
  app.add_option("--lr", lr)->capture_default_str();
  app.add_option("--lr-schedule", lr_schedule, "constant | cosine (both after --warmup steps)")->capture_default_str();
  app.add_option("--warmup", warmup, "linear warm-up steps")->capture_default_str();
  app.add_option("--weight-decay", wd)->capture_default_str();
  app.add_option("--seed", seed)->capture_default_str();
  app.add_option("--threads", threads, "LibTorch threads per worker")->capture_default_str();
  app.add_option("--max-steps", max_steps, "stop after this many mini-batches (0 = all)")->capture_default_str();
  app.add_option("--timeout-s", timeout_s, "longest wait for any device")->capture_default_str();
  app.add_option("--cache-dir", cache_dir,
                 "activation cache folder on each worker (<dir>/<device id>; default: a private temp folder)");
  app.add_option("--out", out, "trained side network (.safetensors)");
  app.add_option("--report", report, "report JSON (docs/report-format.md)");
  app.add_option("--trace", trace_file, "Chrome trace of the run (same layout as pac-sim --trace; Perfetto)");
  app.add_option("--key-file", key_file, "cluster key (default with --local: a fresh random key)");
  app.add_option("--worker-exe", worker_exe, "pac-worker binary (default: next to pac-run)");
  app.add_flag("--quiet", quiet, "no progress lines");
  bool no_prefetch = false;
  app.add_flag("--no-prefetch", no_prefetch,
               "cached epochs read each step's rows when it starts instead of during the step before "
               "(one read buffer instead of two: docs/runtime.md, Prefetch)");
  if (int rc = cli_parse(app, argc, argv); rc >= 0) return rc;
  Plan plan = plan_load(plan_file);
  const Scenario& sc = plan.scenario;
  // Parallel adapters run on "pac-pipeline" (cache, switch, phase 2); full, lora and
  // adapters on "pipeline-train" over the plan's first phase for every epoch (the
  // baselines: standalone, eddl, ecofl, asteroid; docs/baselines-runtime.md).
  const bool pa = sc.method.kind == "parallel_adapters";
  if (lr_schedule != "constant" && lr_schedule != "cosine")
    throw InputError("--lr-schedule: expected constant or cosine, got \"" + lr_schedule + "\"");
  if (warmup < 0) throw InputError("--warmup: expected >= 0, got " + std::to_string(warmup));
  if (side_init != "random" && side_init != "pruned")
    throw InputError("--side-init: expected random or pruned, got \"" + side_init + "\"");
  if (model.empty()) model = sc.model.name;
  if (epochs <= 0) epochs = sc.epochs;
  if (batch <= 0) batch = sc.data.mini_batch;
  if (seq_len <= 0) seq_len = sc.data.seq_len;
  if (k <= 0) k = sc.method.reduction_k;
  bool any_address = false;
  for (auto& d : sc.devices) any_address = any_address || !d.address.empty();
  local = !testbed && (local || !any_address);
  std::chrono::milliseconds timeout(static_cast<int64_t>(timeout_s * 1000));

  // Data, tokenized here once; the workers receive each mini-batch's tokens.
  auto tok = tokenizer_load(tokenizer);
  DataOptions dopt;
  dopt.seq_len = seq_len;
  dopt.bos_id = tok->bos_id();
  dopt.eos_id = tok->eos_id();
  std::vector<Example> train, heldout;
  data_prepare(data, eval_data, eval_fraction, *tok, dopt, seed, &train, &heldout);
  if (samples == 0) samples = static_cast<int>(sc.data.samples);
  if (samples > 0) {
    if (static_cast<int>(train.size()) < samples)
      throw InputError("--samples " + std::to_string(samples) + ": " + data + " gives only " +
                       std::to_string(train.size()) + " training examples of " + std::to_string(seq_len) + " tokens");
    train.resize(samples);
  }
  // The plan (and pac-sim) price an epoch of the scenario's data.samples: say so when this
  // run's epoch is a different size, or measured and simulated epochs are compared wrongly.
  if (static_cast<int64_t>(train.size()) != sc.data.samples)
    std::fprintf(stderr,
                 "pac-run: note: training on %zu examples per epoch, the plan was made for %lld (%s: $.data.samples); "
                 "epoch times are not comparable with the plan's (use --samples 0 to train on the plan's count)\n",
                 train.size(), static_cast<long long>(sc.data.samples), sc.file.c_str());
  double eval_before = -1;
  if (!out.empty() && !heldout.empty()) {
    // The backbone alone (what the side network starts from: its gate is 0).
    Llama base = llama_open(model, seed);
    eval_before = heldout_loss(heldout, batch, [&](const torch::Tensor& inputs) { return base->forward(inputs); },
                               nullptr);
    std::printf("held-out loss before fine-tuning %.4f, perplexity %.3f\n", eval_before, std::exp(eval_before));
    std::fflush(stdout);
  }

  ClusterKey key;
  std::vector<std::unique_ptr<LocalWorker>> locals;
  std::vector<WorkerAddress> addrs;
  std::unique_ptr<Testbed> bed;
  if (testbed) {
    std::string why = testbed_unavailable_reason();
    if (!why.empty()) throw InputError("--testbed: this machine cannot emulate devices: " + why);
    key = children_key(key_file, "the testbed's workers");
    TestbedOptions to;
    to.worker_exe = worker_exe.empty() ? exe_dir() + "/pac-worker" : worker_exe;
    to.key_file = key_file;
    to.worker_args = {"--idle-exit-s", "120"};
    // SIGINT/SIGTERM end the run between steps so the testbed is torn down (RAII).
    std::signal(SIGINT, on_stop_signal);
    std::signal(SIGTERM, on_stop_signal);
    bed = std::make_unique<Testbed>(sc, to);
    addrs = bed->workers();
    if (!quiet)
      for (const std::string& l : bed->limitations()) std::fprintf(stderr, "pac-run --testbed: %s\n", l.c_str());
  } else if (local) {
    key = children_key(key_file, "the local workers");
    if (worker_exe.empty()) worker_exe = exe_dir() + "/pac-worker";
    // Start them all first (each start maps LibTorch, ~1.5 s), then read their ports.
    for (auto& d : sc.devices) {
      locals.push_back(std::make_unique<LocalWorker>());
      local_spawn(*locals.back(), worker_exe, d.id);
    }
    for (auto& w : locals) {
      local_wait_ready(*w, timeout);
      addrs.push_back({w->id, w->address});
    }
  } else {
    key = cluster_key_load(key_file);
    for (auto& d : sc.devices) {
      if (d.address.empty()) throw InputError(plan_file + ": device " + d.id + " has no address (or run with --local)");
      addrs.push_back({d.id, d.address});
    }
  }

  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::string> ids;
  for (auto& d : sc.devices) ids.push_back(d.id);
  RunTrace trace(ids, wall_clock_us());
  bool tracing = !trace_file.empty();
  Coordinator c(addrs, key, CoordinatorOptions{"pac-run", timeout, std::chrono::milliseconds(500), 50});
  c.connect_all();
  std::vector<Assignment> as = assignments_make(plan, 0);
  // The workers cache activations only when the plan does (its tasks write the cache):
  // a baseline's plan (standalone, eddl, ecofl, asteroid) has no cache tasks even when
  // the scenario's method says cache, and caching anyway would be work the plan and
  // pac-sim do not have (CPU on a one-core device, and a cached epoch 2 for standalone).
  const bool cache = sc.method.cache && plan_writes_cache(plan);
  json settings = {{"seed", seed}, {"side_init", side_init}, {"reduction_k", k}, {"lr", lr},
                   {"weight_decay", wd}, {"threads", threads}, {"timeout_ms", timeout.count()},
                   {"cache", cache}, {"cache_dtype", sc.method.cache_dtype}};
  settings["model"] = model;
  if (!cache_dir.empty()) settings["cache_dir"] = std::filesystem::absolute(cache_dir).string();
  if (!pa) settings.update(train_settings(sc.method, c, as));
  pac_assign_phase(c, as, settings);
  // Phase 2 (data parallel from the activation cache) when the plan has one: the
  // switch runs before its first epoch. Without a cache the pipeline runs every epoch.
  int p2 = -1;
  if (pa && cache && plan.phases.size() > 1 && plan.phases[1].kind == "data_parallel") p2 = 1;
  std::vector<Assignment> as2 = p2 >= 0 ? assignments_make(plan, p2) : std::vector<Assignment>();
  std::vector<double> cpu_join = pac_join_groups(c, as, timeout, as2);
  // The run's time starts here, as pac-sim's does: connecting, loading the model parts
  // and joining the groups are setup (reported as setup_s), not training.
  const double setup_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  t0 = std::chrono::steady_clock::now();
  const double coordinator_cpu0 = process_cpu_s();
  const std::vector<Assignment> as1 = as;
  CacheHolders holders;
  double switch_s = -1;
  bool in_dp = false;
  std::vector<int> dp_owners;  // per training sample: the DP rank whose cache holds it

  int64_t n = static_cast<int64_t>(train.size());
  int64_t nb = (n + batch - 1) / batch;
  int64_t total_steps = max_steps > 0 ? std::min<int64_t>(max_steps, nb * epochs) : nb * epochs;  // as Trainer
  json epochs_json = json::array();
  int64_t step = 0;
  bool stop = false;
  // Per device (scenario order), summed over steps from the workers' own timings.
  size_t nd = sc.devices.size();
  std::vector<double> busy(nd, 0), bubble(nd, 0), comm(nd, 0), rss(nd, 0), tensor(nd, 0);
  // Each worker's process CPU seconds in its latest result (cumulative), against its
  // value at the join: the CPU the device used for training, all its threads.
  std::vector<double> cpu_last(nd, -1);
  // Per device, the CPU each of its steps took (its result's cpu_s less the one before,
  // or the join's): the calibration's CPU factor takes the steady steps, without a
  // phase's first (bench/calibrate_overhead.py, cpu_factor).
  std::vector<json> step_cpu(nd, json::array());
  // Peaks of the cached epochs alone (workers restart their peaks at the end of the switch).
  std::vector<double> cached_rss(nd, -1), cached_tensor(nd, -1);
  std::map<std::pair<std::string, std::string>, double> link_bytes;
  // What every result of device d carries, from a switch or a step: bubble, peaks, CPU,
  // bytes to each peer.
  auto note_result = [&](int d, const json& j) {
    bubble[d] += j.value("wait_s", 0.0);
    rss[d] = std::max(rss[d], j.value("rss_peak_bytes", 0.0));
    tensor[d] = std::max(tensor[d], j.value("tensor_peak_bytes", 0.0));
    cpu_last[d] = j.value("cpu_s", cpu_last[d]);
    if (j.contains("bytes_to"))
      for (auto& kv : j["bytes_to"].items()) link_bytes[{sc.devices[d].id, kv.key()}] += kv.value().get<double>();
  };
  // Mini-batch b of an epoch's order.
  auto batch_of = [&](const std::vector<int64_t>& ord, int64_t b) {
    std::vector<const Example*> out;
    for (int64_t i = b * batch; i < std::min(n, (b + 1) * batch); i++) out.push_back(&train[ord[i]]);
    return out;
  };
  for (int e = 1; e <= epochs && !stop; e++) {
    if (p2 >= 0 && e == plan.phases[p2].epoch_first && e > 1) {
      std::vector<const Example*> all;
      for (const Example& x : train) all.push_back(&x);
      if (!quiet) std::fprintf(stderr, "switch: moving cached activations and the side network to %zu devices\n",
                               plan.phases[p2].stages[0].devices.size());
      SwitchResult sw = pac_switch(c, as, as2, all, holders, timeout, tracing);
      for (size_t i = 0; i < sw.results.size(); i++) {
        const json& j = sw.results[i];
        int d = sw.workers[i];
        trace.add_result(d, -1, j);
        comm[d] += j.value("send_s", 0.0);
        note_result(d, j);
      }
      switch_s = sw.seconds;
      dp_owners = sw.owners;
      // The plan puts the switch at the end of the last pipeline epoch (its switch
      // segment has epoch_first = epoch_last = 1), and so does pac-sim: count it there,
      // so measured and simulated epochs compare like with like.
      if (!epochs_json.empty())
        epochs_json.back()["time_s"] = epochs_json.back()["time_s"].get<double>() + sw.seconds;
      if (!quiet) std::fprintf(stderr, "switch: done in %.2f s; epochs %d-%d run data parallel from the cache\n",
                               sw.seconds, e, epochs);
      as = as2;
      in_dp = true;
    }
    auto te = std::chrono::steady_clock::now();
    // The trainer's order; in the cached data-parallel epochs each mini-batch takes its
    // rows from every owner in proportion to what it owns (epoch_order_by_owner), so
    // every device computes its planned share of every step instead of whichever of its
    // samples a plain shuffle puts there.
    std::vector<int64_t> order = in_dp ? epoch_order_by_owner(dp_owners, seed, e) : epoch_order(n, seed, e);
    // Phase 2 prefetches: each step names the mini-batch after it (the next epoch's
    // first one at an epoch's end), whose rows the devices read while it all-reduces.
    std::vector<int64_t> order_next;
    if (in_dp && e < epochs) order_next = epoch_order_by_owner(dp_owners, seed, e + 1);
    double step_gap_s = 0;
    // Each step's wall time and its slowest worker's compute (forward, backward, optimizer):
    // a phase's first step pays the first use of its buffers, which the calibration
    // measures from these (bench/calibrate_overhead.py, first_use_measure).
    json step_s = json::array(), step_compute_s = json::array();
    Progress prog("epoch " + std::to_string(e) + "/" + std::to_string(epochs) + " step", nb);
    prog.set_quiet(quiet);
    for (int64_t b = 0; b < nb; b++) {
      if (max_steps > 0 && step >= max_steps) {
        stop = true;
        break;
      }
      if (g_stop_signal) throw RuntimeError("pac-run: stopped by signal " + std::to_string(g_stop_signal));
      std::vector<const Example*> mb = batch_of(order, b), next;
      double lr_now = lr_schedule_at(lr, lr_schedule, warmup, total_steps, step);
      if (in_dp && !no_prefetch && !(max_steps > 0 && step + 1 >= max_steps)) {
        if (b + 1 < nb) next = batch_of(order, b + 1);
        else if (!order_next.empty()) next = batch_of(order_next, 0);
      }
      auto s0 = std::chrono::steady_clock::now();
      PacStepResult r = pac_train_step(c, as, static_cast<int>(step), lr_now, mb, timeout, tracing, &next);
      // The step's wall time beyond its slowest worker's own: the command, the results
      // and the coordinator's work between steps, which no plan task holds.
      const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();
      step_gap_s += std::max(0.0, wall - r.max_seconds);
      double most_compute = 0;
      for (const json& j : r.results) most_compute = std::max(most_compute, j.value("compute_s", 0.0));
      step_s.push_back(wall);
      step_compute_s.push_back(most_compute);
      if (p2 >= 0) pac_note_cached(r, &holders);
      for (size_t i = 0; i < r.results.size(); i++) trace.add_result(r.workers[i], static_cast<int>(step), r.results[i]);
      for (const json& j : r.results) {
        int d = sc.device_index(j.value("device", std::string()));
        if (d < 0) continue;
        busy[d] += j.value("compute_s", 0.0) + j.value("cache_read_s", 0.0);
        comm[d] += j.value("send_s", 0.0) + j.value("allreduce_s", 0.0);
        const double before = cpu_last[d] >= 0 ? cpu_last[d] : (d < static_cast<int>(cpu_join.size()) ? cpu_join[d] : -1);
        const double now = j.value("cpu_s", -1.0);
        if (before >= 0 && now >= 0) step_cpu[d].push_back(now - before);
        note_result(d, j);
        if (in_dp) {
          cached_rss[d] = std::max(cached_rss[d], j.value("rss_peak_bytes", 0.0));
          cached_tensor[d] = std::max(cached_tensor[d], j.value("tensor_peak_bytes", 0.0));
        }
      }
      step++;
      char extra[64];
      std::snprintf(extra, sizeof extra, "loss %.4f lr %.2e", r.loss, lr_now);
      prog.update(b + 1, extra);
    }
    epochs_json.push_back({{"epoch", e},
                           {"phase", in_dp ? "data_parallel" : plan.phases[0].kind},
                           {"time_s", std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count()},
                           {"step_gap_s", step_gap_s},
                           {"step_s", step_s},
                           {"step_compute_s", step_compute_s}});
  }
  double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double coordinator_cpu_s = process_cpu_s() - coordinator_cpu0;

  double eval_loss = -1, eval_tokens = 0;
  if (!out.empty()) {
    // Parts from every stage (written by the workers next to --out), merged into the
    // trainer's own format so pac-generate / pac-train --adapter load it.
    std::string dir = std::filesystem::absolute(out).parent_path().string();
    std::vector<std::string> parts = pac_save_parts(c, as, dir, timeout);
    // Loaded again rather than kept from the "before" evaluation: the coordinator holds
    // no model while the workers train (it may be one of the small devices).
    Llama shape = llama_open(model, seed);
    if (pa) {
      std::map<std::string, torch::Tensor> all;
      for (const std::string& p : parts)
        for (auto& kv : safetensors_read(p).tensors) all[kv.first] = kv.second;
      SideConfig scfg = side_config_make(shape->config(), k);
      std::map<std::string, std::string> meta{{"format", "pac-finetune"},
                                              {"method", "parallel_adapters"},
                                              {"backbone.dim", std::to_string(shape->config().dim)},
                                              {"backbone.n_layers", std::to_string(shape->config().n_layers)},
                                              {"backbone.vocab_size", std::to_string(shape->config().vocab_size)},
                                              {"k", std::to_string(k)},
                                              {"init", side_init}};
      for (auto& kv : side_config_metadata(scfg)) meta[kv.first] = kv.second;
      safetensors_write(out, all, meta);
    } else {
      train_parts_merge(parts, out);
    }
    for (const std::string& p : parts) std::filesystem::remove(p);
    // Held-out loss of the result, computed here on the whole model the way
    // Trainer::evaluate does (masked mean per token over all held-out examples).
    if (!heldout.empty()) {
      SideNetwork side{nullptr};
      adapter_load(out, shape, pa ? &side : nullptr);
      eval_loss = heldout_loss(heldout, batch, [&](const torch::Tensor& inputs) {
        return pa ? side->forward(torch::stack(shape->forward_taps(inputs).b, 1)) : shape->forward(inputs);
      }, &eval_tokens);
    }
  }
  c.shutdown(true);

  if (!report.empty()) {
    std::string groups = "[";
    for (size_t s = 0; s < plan.phases[0].stages.size(); s++)
      groups += (s ? "-" : "") + std::to_string(plan.phases[0].stages[s].devices.size());
    groups += "]";
    json devs = json::array();
    for (size_t d = 0; d < nd; d++) {
      devs.push_back({{"id", sc.devices[d].id},
                      {"profile", sc.devices[d].profile.name},
                      {"used", as1[d].stage >= 0 || (in_dp && as2[d].stage >= 0)},
                      {"busy_s", busy[d]},
                      {"bubble_s", bubble[d]},
                      {"comm_s", comm[d]},
                      {"idle_s", std::max(0.0, total_s - busy[d] - bubble[d] - comm[d])},
                      {"peak_memory_bytes", rss[d]},
                      {"peak_tensor_bytes", tensor[d]},
                      {"memory_bytes", sc.devices[d].profile.memory_bytes}});
      if (cpu_last[d] >= 0 && d < cpu_join.size() && cpu_join[d] >= 0) devs.back()["cpu_s"] = cpu_last[d] - cpu_join[d];
      if (!step_cpu[d].empty()) devs.back()["step_cpu_s"] = step_cpu[d];
      if (in_dp) {
        devs.back()["cached_peak_memory_bytes"] = std::max(0.0, cached_rss[d]);
        devs.back()["cached_peak_tensor_bytes"] = std::max(0.0, cached_tensor[d]);
      }
    }
    json links = json::array();
    for (auto& kv : link_bytes) links.push_back({{"src", kv.first.first}, {"dst", kv.first.second}, {"bytes", kv.second}});
    json rep = {{"format", "pac-report"},  {"format_version", 1},    {"source", "run"},
                {"scenario", sc.name},     {"strategy", plan.strategy}, {"method", sc.method.kind},
                {"groups", groups},        {"status", "ok"},         {"total_s", total_s},
                {"eval_loss", eval_loss}, {"eval_tokens", eval_tokens}, {"eval_loss_before", eval_before},
                {"perplexity", eval_loss >= 0 ? std::exp(eval_loss) : -1.0},
                {"switch_s", switch_s},    {"setup_s", setup_s},
                {"dp_owners", dp_owners},  {"coordinator_cpu_s", coordinator_cpu_s},
                {"plan_file", std::filesystem::absolute(plan_file).string()},
                {"run", {{"epochs", epochs}, {"samples", train.size()}, {"mini_batch", batch}, {"seq_len", seq_len}, {"reduction_k", k},
                         {"max_steps", max_steps}, {"threads", threads}, {"testbed", testbed},
                         // Overlapped pipeline segments (Eco-FL's asynchronous 1F1B) run
                         // synchronously with a flush per mini-batch; pac-sim --validate
                         // simulates them so (docs/baselines-runtime.md).
                         {"pipeline_flush", true}}},
                {"epochs", epochs_json},   {"devices", devs},        {"links", links},        {"tasks", step},
                {"predicted", {{"total_s", plan.predicted.total_s}, {"switch_s", plan.predicted.switch_s},
                               {"epoch_s", plan.predicted.epoch_s},
                               {"peak_memory_bytes", plan.predicted.peak_memory_bytes}}}};
    file_write_atomic(report, rep.dump(2) + "\n");
  }
  if (tracing) file_write_atomic(trace_file, trace.to_chrome_json());
  if (!quiet) std::fprintf(stderr, "pac-run: %lld steps on %d devices in %.1f s\n", static_cast<long long>(step),
                           c.worker_count(), total_s);
  if (eval_loss >= 0)
    std::printf("held-out loss %.4f, perplexity %.3f (%.0f tokens)\n", eval_loss, std::exp(eval_loss), eval_tokens);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  pac::blas_kernel_fix(argv);
  pac::compute_heap_pin();
  return pac::run_main("pac-run", [&] { return run(argc, argv); });
}
