// Achieved throughput of our tensor frames between two emulated devices vs the tc rate
// (issue 5 target: activation transfers >= 80% of the rate), and the measured round
// trip vs the configured latency. docs/testbed.md has the table.
//
//   sudo build/bench/testbed_link_bench     (JSON -> bench/results/testbed_link.json)
//
// Each case brings up a 2-device switched testbed at the rate (kept for the rate's
// tensor sizes), starts `pac-testbed probe-recv` in device 1 and `probe-send` in device
// 0: 20 heartbeat round trips on the idle link, then 5 timed bursts of tensor frames
// (Connection::send_tensor, each burst about 1 s of link time, at least one tensor).
// Reported: medians. Payload bytes only count as achieved; frame, TCP/IP and Ethernet
// headers are overhead the target has to absorb. testbed_shared: the aggregate of two
// concurrent transfers on a shared medium vs its capacity.
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <thread>

#include "bench/exec_bench_main.h"
#include "exec/testbed.h"

using namespace pac;

static std::string g_bin_dir;
static std::unique_ptr<Testbed> g_tb;
static double g_tb_rate = 0;
static const double kLatencyS = 0.001;  // configured one-way latency (netem when present)

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n == 0 ? 0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static Testbed& testbed_at(double bps, const std::string& kind, int devices) {
  static std::string g_kind;
  if (!g_tb || g_tb_rate != bps || g_kind != kind || (int)g_tb->workers().size() != devices) {
    g_tb.reset();
    Scenario s;
    s.file = "testbed_link_bench";
    for (int i = 0; i < devices; i++) {
      DeviceSpec d;
      d.id = "dev" + std::to_string(i);
      d.profile.nic_bandwidth_bps = 100e9;
      s.devices.push_back(d);
    }
    s.network.kind = kind;
    s.network.bandwidth_bps = bps;
    s.network.latency_s = kLatencyS;
    g_tb = std::make_unique<Testbed>(s, TestbedOptions{});
    g_tb_rate = bps;
    g_kind = kind;
  }
  return *g_tb;
}

static std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

static void BM_testbed_link(benchmark::State& state) {
  const double mbps = (double)state.range(0), mib = (double)state.range(1);
  if (std::string why = testbed_unavailable_reason(); !why.empty()) {
    state.SkipWithError(("testbed unavailable: " + why).c_str());
    return;
  }
  const double bps = mbps * 1e6;
  const int count = std::max(1, (int)std::lround(bps / 8 / (mib * 1048576)));
  const int reps = 5, pings = 20;
  json j;
  for (auto _ : state) {
    Testbed& tb = testbed_at(bps, "switched", 2);
    std::string exe = g_bin_dir + "/pac-testbed";
    std::string addr = tb.device_ip(1) + ":9200";
    std::string log = "/tmp/" + tb.tag() + "-bench-send.log";
    pid_t r = tb.spawn(1, {exe, "probe-recv", "--listen", addr}, "");
    pid_t s = tb.spawn(0,
                       {exe, "probe-send", "--connect", addr, "--mib", std::to_string(mib), "--count",
                        std::to_string(count), "--reps", std::to_string(reps), "--pings", std::to_string(pings)},
                       log);
    int rc = tb.wait_exit(s, std::chrono::seconds(300));
    tb.wait_exit(r, std::chrono::seconds(10));
    std::string out = slurp(log);
    std::remove(log.c_str());
    size_t a = out.rfind("{\"");
    if (rc != 0 || a == std::string::npos) {
      state.SkipWithError(("probe-send failed: " + out).c_str());
      return;
    }
    j = json::parse(out.substr(a, out.find('\n', a) - a));
    state.SetIterationTime(median(j["burst_s"].get<std::vector<double>>()));
  }
  double burst_s = median(j["burst_s"].get<std::vector<double>>());
  double achieved = j["bytes"].get<double>() * 8 / burst_s;
  state.counters["tc_rate_mbps"] = mbps;
  state.counters["tensor_mib"] = mib;
  state.counters["tensors_per_burst"] = count;
  state.counters["achieved_mbps"] = achieved / 1e6;
  state.counters["ratio"] = achieved / bps;
  state.counters["rtt_ms_median"] = median(j["rtt_s"].get<std::vector<double>>()) * 1e3;
  state.counters["rtt_ms_configured"] = testbed_netem_available() ? 2 * kLatencyS * 1e3 : 0;
  state.counters["netem"] = testbed_netem_available() ? 1 : 0;
}

static json last_json(const std::string& text) {
  size_t a = text.rfind("{\"");
  if (a == std::string::npos) return json();
  return json::parse(text.substr(a, text.find('\n', a) - a));
}

// A shared medium: two transfers (dev0 -> dev1, dev2 -> dev3) started together on a
// go file, each of about 2 s at half the capacity. Reported: their aggregate payload
// rate over the whole span (first start to last end) / capacity, which a shared medium
// keeps <= 1 (a switched network would give each the full rate: 2).
static void BM_testbed_shared(benchmark::State& state) {
  const double mbps = (double)state.range(0), mib = 4;
  if (std::string why = testbed_unavailable_reason(); !why.empty()) {
    state.SkipWithError(("testbed unavailable: " + why).c_str());
    return;
  }
  const double bps = mbps * 1e6;
  const int count = std::max(1, (int)std::lround(bps / 8 / (mib * 1048576)));
  json ja, jb;
  for (auto _ : state) {
    Testbed& tb = testbed_at(bps, "shared", 4);
    std::string exe = g_bin_dir + "/pac-testbed";
    std::string go = "/tmp/" + tb.tag() + "-bench-go";
    std::remove(go.c_str());
    pid_t recv[2], send[2];
    std::string log[2];
    for (int k = 0; k < 2; k++) {
      std::string addr = tb.device_ip(2 * k + 1) + ":9300";
      log[k] = "/tmp/" + tb.tag() + "-bench-send" + std::to_string(k) + ".log";
      recv[k] = tb.spawn(2 * k + 1, {exe, "probe-recv", "--listen", addr}, "");
      send[k] = tb.spawn(2 * k, {exe, "probe-send", "--connect", addr, "--mib", std::to_string(mib), "--count",
                                 std::to_string(count), "--go-file", go},
                         log[k]);
    }
    for (int k = 0; k < 2; k++)
      while (slurp(log[k]).find("connected") == std::string::npos) {
        int st;
        if (waitpid(send[k], &st, WNOHANG) == send[k]) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    file_write_atomic(go, "go");
    for (int k = 0; k < 2; k++) {
      tb.wait_exit(send[k], std::chrono::seconds(300));
      tb.wait_exit(recv[k], std::chrono::seconds(10));
    }
    ja = last_json(slurp(log[0]));
    jb = last_json(slurp(log[1]));
    std::remove(go.c_str());
    std::remove(log[0].c_str());
    std::remove(log[1].c_str());
    if (ja.is_null() || jb.is_null()) {
      state.SkipWithError("probe-send failed");
      return;
    }
    double span = std::max(ja["mono_end"].get<double>(), jb["mono_end"].get<double>()) -
                  std::min(ja["mono_start"].get<double>(), jb["mono_start"].get<double>());
    state.SetIterationTime(span);
    double aggregate = (ja["bytes"].get<double>() + jb["bytes"].get<double>()) * 8 / span;
    state.counters["capacity_mbps"] = mbps;
    state.counters["aggregate_mbps"] = aggregate / 1e6;
    state.counters["aggregate_ratio"] = aggregate / bps;
    state.counters["transfer0_mbps"] = ja["bytes"].get<double>() * 8 / ja["seconds"].get<double>() / 1e6;
    state.counters["transfer1_mbps"] = jb["bytes"].get<double>() * 8 / jb["seconds"].get<double>() / 1e6;
  }
}

static void register_all() {
  for (int mbps : {50, 100, 500, 1000})
    for (int mib : {1, 4, 16})
      benchmark::RegisterBenchmark("testbed_link", BM_testbed_link)
          ->Args({mbps, mib})
          ->ArgNames({"rate_mbps", "tensor_mib"})
          ->UseManualTime()
          ->Iterations(1)
          ->Unit(benchmark::kMillisecond);
  for (int mbps : {100, 500})
    benchmark::RegisterBenchmark("testbed_shared", BM_testbed_shared)
        ->Args({mbps})
        ->ArgNames({"capacity_mbps"})
        ->UseManualTime()
        ->Iterations(1)
        ->Unit(benchmark::kMillisecond);
}

int main(int argc, char** argv) {
  std::string self = argv[0];
  size_t cut = self.rfind('/');
  g_bin_dir = (cut == std::string::npos ? std::string(".") : self.substr(0, cut)) + "/../bin";
  int rc = exec_bench_main(argc, argv, "testbed_link.json", register_all);
  g_tb.reset();
  return rc;
}
