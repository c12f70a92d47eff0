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
// headers are overhead the target has to absorb.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>

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

static Testbed& testbed_at(double bps) {
  if (!g_tb || g_tb_rate != bps) {
    g_tb.reset();
    Scenario s;
    s.file = "testbed_link_bench";
    for (int i = 0; i < 2; i++) {
      DeviceSpec d;
      d.id = "dev" + std::to_string(i);
      d.profile.nic_bandwidth_bps = 100e9;
      s.devices.push_back(d);
    }
    s.network.bandwidth_bps = bps;
    s.network.latency_s = kLatencyS;
    g_tb = std::make_unique<Testbed>(s, TestbedOptions{});
    g_tb_rate = bps;
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
    Testbed& tb = testbed_at(bps);
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

static void register_all() {
  for (int mbps : {50, 100, 500, 1000})
    for (int mib : {1, 4, 16})
      benchmark::RegisterBenchmark("testbed_link", BM_testbed_link)
          ->Args({mbps, mib})
          ->ArgNames({"rate_mbps", "tensor_mib"})
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
