// pac-testbed: the emulated edge testbed from the command line (docs/testbed.md).
//
//   pac-testbed up SCENARIO|PLAN [--tag T] [--worker EXE] [--key-file F] [--port P]
//                                [--out FILE] [--no-memory-limit] [-v]
//       brings the testbed up, prints "device <id> <address>" per worker, writes the
//       scenario (or plan) with the addresses filled in to --out, and keeps it up until
//       SIGINT/SIGTERM, then tears it down.
//   pac-testbed down TAG      removes the run with that tag (a crashed `up`)
//   pac-testbed cleanup       removes every testbed leftover (all tags)
//   pac-testbed list          lists what exists
//   pac-testbed check         prints why the testbed cannot run here (exit 1), or "ok"
//
// Probes the tests and the link benchmark start inside device namespaces:
//   pac-testbed probe-recv --listen ADDR   receives tensor frames, answers each
//                                          end-of-stream frame and heartbeat
//   pac-testbed probe-send --connect ADDR --mib M --count N [--reps R] [--pings P]
//       P heartbeat round trips, then R bursts of N tensors of M MiB
//       (Connection::send_tensor), each timed until the receiver's answer; prints
//       {"bytes":<per burst>,"seconds":<last>,"burst_s":[..],"rtt_s":[..],"mono_start":..,
//       "mono_end":..} on stdout (CLOCK_MONOTONIC s). --go-file F: print "connected", wait
//       for F to exist, then send (lines up concurrent senders)
//   pac-testbed busy --seconds S   spins S wall seconds, prints the loop's CPU and wall
//                                  seconds {"cpu_s":..,"wall_s":..}
//   pac-testbed alloc --mib M      touches M MiB (a memory limit below that kills it)
#include <signal.h>
#include <time.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <thread>

#include <CLI/CLI.hpp>

#include "exec/testbed.h"
#include "exec/transport.h"
#include "src/common/cli.h"
#include "src/common/fs.h"
#include "src/core/plan.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

int cmd_up(const std::string& input, pac::TestbedOptions opt, const std::string& out_file) {
  // A plan embeds its scenario: accept either, write back the same kind.
  pac::json doc = pac::json::parse(pac::file_read(input), nullptr, false);
  bool is_plan = doc.is_object() && doc.contains("phases");
  pac::Plan plan;
  pac::Scenario scenario;
  if (is_plan) {
    plan = pac::plan_load(input);
    scenario = plan.scenario;
  } else {
    scenario = pac::scenario_load(input);
  }
  // Block the stop signals before any thread starts, then wait for them with sigwait.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  pac::Testbed tb(scenario, opt);
  std::vector<pac::WorkerAddress> w = tb.workers();
  for (size_t i = 0; i < w.size(); i++) scenario.devices[i].address = w[i].address;
  if (!out_file.empty()) {
    if (is_plan) {
      plan.scenario = scenario;
      pac::file_write_atomic(out_file, pac::plan_to_json(plan).dump(2) + "\n");
    } else {
      pac::file_write_atomic(out_file, pac::scenario_to_json(scenario).dump(2) + "\n");
    }
  }
  std::printf("testbed %s up: bridge %s, %zu devices\n", tb.tag().c_str(), tb.bridge_ip().c_str(), w.size());
  for (const pac::WorkerAddress& a : w) std::printf("device %s %s\n", a.id.c_str(), a.address.c_str());
  for (const std::string& l : tb.limitations()) std::printf("limitation: %s\n", l.c_str());
  if (!out_file.empty()) std::printf("wrote %s\n", out_file.c_str());
  std::printf("Ctrl-C (or kill %d) tears it down\n", (int)getpid());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop, &sig);
  std::fprintf(stderr, "pac-testbed: signal %d, tearing down %s\n", sig, tb.tag().c_str());
  tb.teardown();
  return 0;
}

int cmd_probe_recv(const std::string& listen) {
  std::string host;
  uint16_t port = 0;
  pac::address_parse(listen, "--listen", &host, &port);
  pac::Listener l(host, port);
  std::printf("listening on %s\n", l.address().c_str());
  std::fflush(stdout);
  pac::ConnOptions o;
  o.tag = "probe";
  o.timeout = pac::Millis(60000);
  std::unique_ptr<pac::Connection> c = l.accept(pac::Millis(60000), o);
  if (!c) throw pac::RuntimeError("probe-recv: nobody connected to " + listen + " within 60 s");
  pac::Frame f;
  long frames = 0;
  for (;;) {
    c->recv_into(f);
    frames++;
    // A heartbeat is echoed at once (round-trip probe); each end-of-stream frame is
    // answered so the sender's clock stops when the burst's last byte arrived here;
    // Shutdown ends the probe.
    if (f.header.type == pac::MsgType::Shutdown) break;
    if (f.header.type == pac::MsgType::Heartbeat) {
      c->send(pac::MsgType::HeartbeatAck, f.payload);
      continue;
    }
    if (f.header.flags & pac::kFlagEndOfStream) c->send(pac::MsgType::HeartbeatAck, "done");
  }
  std::printf("received %ld frames\n", frames);
  return 0;
}

// CLOCK_MONOTONIC is one clock for the whole machine (namespaces share it), so probes in
// different devices can be lined up.
double mono_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int cmd_probe_send(const std::string& addr, double mib, int count, int pings, int reps, const std::string& go_file) {
  pac::ConnOptions o;
  o.tag = "probe";
  o.timeout = pac::Millis(120000);
  o.connect_attempts = 100;
  std::unique_ptr<pac::Connection> c = pac::Connection::connect(addr, "probe-recv", o);
  pac::Frame f;
  // Round trips first, on an idle link.
  std::vector<double> rtt;
  for (int i = 0; i < pings; i++) {
    auto t0 = Clock::now();
    c->send(pac::MsgType::Heartbeat, "ping");
    c->recv_into(f);
    rtt.push_back(seconds_since(t0));
  }
  size_t floats = (size_t)(mib * 1024 * 1024 / 4);
  std::vector<float> data(floats, 1.0f);
  pac::TensorHeader h;
  h.dims = {(int64_t)floats};
  if (!go_file.empty()) {
    // Connected: say so, then wait for the go (several senders start together).
    std::printf("connected\n");
    std::fflush(stdout);
    auto t0 = Clock::now();
    while (!pac::file_exists(go_file)) {
      if (seconds_since(t0) > 60) throw pac::RuntimeError("probe-send: no " + go_file + " within 60 s");
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  std::vector<double> burst_s;
  double mono_start = mono_s();
  for (int r = 0; r < reps; r++) {
    auto t0 = Clock::now();
    for (int i = 0; i < count; i++)
      c->send_tensor(pac::MsgType::Activation, h, data.data(), floats * 4, i + 1 == count ? pac::kFlagEndOfStream : 0);
    c->recv_into(f);
    burst_s.push_back(seconds_since(t0));
  }
  c->send(pac::MsgType::Shutdown, "{}");
  pac::json j;
  j["bytes"] = (double)floats * 4 * count;  // per burst
  j["seconds"] = burst_s.back();
  j["burst_s"] = burst_s;
  j["mono_start"] = mono_start;
  j["mono_end"] = mono_s();
  j["rtt_s"] = rtt;
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

double process_cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// CPU seconds used by the loop alone (the process start, LibTorch's loading included,
// is left out).
int cmd_busy(double seconds) {
  double cpu0 = process_cpu_s();
  auto t0 = Clock::now();
  volatile unsigned long x = 0;
  while (seconds_since(t0) < seconds)
    for (int i = 0; i < 100000; i++) x = x + i;
  pac::json j;
  j["cpu_s"] = process_cpu_s() - cpu0;
  j["wall_s"] = seconds_since(t0);
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

// Touches `mib` MiB page by page (so they are really charged to our memory cgroup),
// prints {"touched_mib":..}. Under a smaller memory limit the kernel kills it (SIGKILL).
int cmd_alloc(double mib) {
  size_t bytes = (size_t)(mib * 1048576);
  std::vector<char> v(bytes);
  for (size_t i = 0; i < bytes; i += 4096) v[i] = 1;
  pac::json j;
  j["touched_mib"] = mib;
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return pac::run_main("pac-testbed", [&]() -> int {
    CLI::App app{"PAC emulated edge testbed: network namespaces, tc shaping, cgroups, pac-worker per device"};
    app.require_subcommand(1);
    pac::TestbedOptions opt;
    std::string input, out_file, tag, addr, go_file;
    bool no_mem = false;
    double mib = 4, seconds = 1;
    int count = 8, pings = 0, reps = 1;
    CLI::App* up = app.add_subcommand("up", "bring a scenario's (or plan's) devices up until SIGINT/SIGTERM");
    up->add_option("input", input, "scenario.json or plan.json")->required();
    up->add_option("--tag", opt.tag, "run tag, [a-z0-9]{1,6} (default: random)");
    up->add_option("--worker", opt.worker_exe, "pac-worker executable (default: next to pac-testbed)");
    up->add_option("--key-file", opt.key_file, "cluster key file for the workers");
    up->add_option("--port", opt.port, "port every worker listens on in its namespace")->check(CLI::Range(1, 65535));
    up->add_option("--log-dir", opt.log_dir, "worker logs (default: /tmp/pactb<tag>-logs, removed at teardown)");
    up->add_option("--out", out_file, "write the scenario/plan with the worker addresses filled in");
    up->add_flag("--no-memory-limit", no_mem, "no cgroup memory limit from the device profiles");
    up->add_flag("-v,--verbose", opt.verbose, "print every ip/tc command");
    CLI::App* down = app.add_subcommand("down", "remove the run with this tag");
    down->add_option("tag", tag, "the tag (with or without the pactb prefix)")->required();
    app.add_subcommand("cleanup", "remove every testbed leftover");
    app.add_subcommand("list", "list testbed namespaces, links and cgroups");
    app.add_subcommand("check", "can the testbed run here?");
    CLI::App* recv = app.add_subcommand("probe-recv", "link probe: receive tensor frames");
    recv->add_option("--listen", addr, "HOST:PORT")->required();
    CLI::App* send = app.add_subcommand("probe-send", "link probe: send tensor frames, print JSON");
    send->add_option("--connect", addr, "HOST:PORT")->required();
    send->add_option("--mib", mib, "MiB per tensor")->check(CLI::Range(0.001, 1024.0));
    send->add_option("--count", count, "tensors")->check(CLI::Range(1, 100000));
    send->add_option("--reps", reps, "bursts of --count tensors, each timed")->check(CLI::Range(1, 1000));
    send->add_option("--pings", pings, "heartbeat round trips measured first")->check(CLI::Range(0, 100000));
    send->add_option("--go-file", go_file, "after connecting, print \"connected\" and wait for this file");
    CLI::App* busy = app.add_subcommand("busy", "spin, print CPU seconds used");
    busy->add_option("--seconds", seconds, "wall seconds")->check(CLI::PositiveNumber);
    double alloc_mib = 1;
    CLI::App* alloc = app.add_subcommand("alloc", "touch MiB of memory, print JSON");
    alloc->add_option("--mib", alloc_mib, "MiB to touch")->check(CLI::Range(0.001, 1e6));
    if (int rc = pac::cli_parse(app, argc, argv); rc >= 0) return rc;

    if (up->parsed()) {
      if (opt.worker_exe.empty()) {
        std::string self = argv[0];
        size_t cut = self.rfind('/');
        opt.worker_exe = (cut == std::string::npos ? std::string(".") : self.substr(0, cut)) + "/pac-worker";
      }
      if (!pac::file_exists(opt.worker_exe)) throw pac::InputError("--worker: " + opt.worker_exe + ": no such file");
      opt.memory_limit = !no_mem;
      return cmd_up(input, opt, out_file);
    }
    if (down->parsed() || app.got_subcommand("cleanup") || app.got_subcommand("list")) {
      std::string prefix = pac::kTestbedPrefix;
      if (down->parsed()) prefix = tag.rfind(prefix, 0) == 0 ? tag : prefix + tag;
      bool remove = !app.got_subcommand("list");
      std::vector<std::string> v = remove ? pac::testbed_cleanup(prefix) : pac::testbed_list(prefix);
      for (const std::string& s : v) std::printf("%s%s\n", remove ? "removed " : "", s.c_str());
      if (v.empty()) std::printf("nothing with prefix %s\n", prefix.c_str());
      return 0;
    }
    if (app.got_subcommand("check")) {
      std::string why = pac::testbed_unavailable_reason();
      if (!why.empty()) {
        std::printf("unavailable: %s\n", why.c_str());
        return 1;
      }
      std::printf("ok%s\n", pac::testbed_netem_available() ? "" : " (no tc netem: rates only, latency not emulated)");
      return 0;
    }
    if (recv->parsed()) return cmd_probe_recv(addr);
    if (send->parsed()) return cmd_probe_send(addr, mib, count, pings, reps, go_file);
    if (busy->parsed()) return cmd_busy(seconds);
    if (alloc->parsed()) return cmd_alloc(alloc_mib);
    return 2;
  });
}
