// The emulated edge testbed (exec/testbed.h) on this machine: link rates from tc, a
// shared medium, netem latency, CPU quota, teardown (also after a half-way failure) and
// a pac-worker inside a namespace that authenticates. Needs root, ip netns, tc and
// cgroups; every test skips with the reason when they are missing. Bounds are
// generous: these check that the shaping happens, the benchmark measures how well.
#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "exec/coordinator.h"
#include "exec/testbed.h"
#include "src/common/fs.h"

using namespace pac;

static const char* kKeyText = "testbed-test-key-0123456789abcdef";

#define SKIP_WITHOUT_TESTBED()                                                  \
  do {                                                                          \
    std::string why_ = testbed_unavailable_reason();                            \
    if (!why_.empty()) GTEST_SKIP() << "testbed unavailable here: " << why_;    \
  } while (0)

static std::string bin_dir() {
  const char* d = std::getenv("PAC_BIN_DIR");
  return d ? d : std::string(PAC_BINARY_DIR) + "/bin";
}

// A tag unique to this process and test, so parallel ctest runs never clash.
static std::string unique_tag(char test) {
  return std::string(1, test) + std::to_string(getpid() % 100000);
}

// n devices with fast NICs (the network spec alone sets the rates).
static Scenario scenario_make(int n, const std::string& kind, double bps, double latency_s) {
  Scenario s;
  s.file = "testbed-test";
  for (int i = 0; i < n; i++) {
    DeviceSpec d;
    d.id = "dev" + std::to_string(i);
    d.profile.name = "test";
    d.profile.nic_bandwidth_bps = 100e9;
    s.devices.push_back(d);
  }
  s.network.kind = kind;
  s.network.bandwidth_bps = bps;
  s.network.latency_s = latency_s;
  return s;
}

static std::string file_text(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The JSON line a probe printed into its log.
static json probe_json(const std::string& log) {
  std::string s = file_text(log);
  size_t a = s.rfind("{\"");
  if (a == std::string::npos) throw RuntimeError("no JSON in " + log + ": " + s);
  return json::parse(s.substr(a, s.find('\n', a) - a));
}

static std::string log_path(const std::string& name) {
  std::string dir = testing::TempDir() + "exec_testbed";
  dir_create(dir);
  return path_join(dir, name + "." + std::to_string(getpid()) + ".log");
}

// Starts probe-recv in `to`, then probe-send in `from`; returns the sender's JSON.
// The sender is waited for by the caller (several may run at once).
struct Transfer {
  pid_t recv = -1, send = -1;
  std::string send_log;
};

static Transfer transfer_start(Testbed& tb, int from, int to, double mib, int count, int pings, int port,
                               const std::string& go_file = "") {
  Transfer t;
  std::string exe = bin_dir() + "/pac-testbed";
  std::string addr = tb.device_ip(to) + ":" + std::to_string(port);
  t.recv = tb.spawn(to, {exe, "probe-recv", "--listen", addr}, log_path("recv" + std::to_string(to)));
  t.send_log = log_path("send" + std::to_string(from));
  std::vector<std::string> argv = {exe, "probe-send", "--connect", addr, "--mib", std::to_string(mib), "--count",
                                   std::to_string(count), "--pings", std::to_string(pings)};
  if (!go_file.empty()) {
    argv.push_back("--go-file");
    argv.push_back(go_file);
  }
  t.send = tb.spawn(from, argv, t.send_log);
  return t;
}

// Waits (bounded) until a --go-file sender printed "connected".
static void transfer_wait_connected(const Transfer& t) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (file_text(t.send_log).find("connected") == std::string::npos) {
    if (std::chrono::steady_clock::now() > deadline) throw RuntimeError("sender never connected: " + t.send_log);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

static json transfer_finish(Testbed& tb, const Transfer& t) {
  EXPECT_EQ(tb.wait_exit(t.send, std::chrono::seconds(30)), 0) << file_text(t.send_log);
  EXPECT_EQ(tb.wait_exit(t.recv, std::chrono::seconds(10)), 0);
  return probe_json(t.send_log);
}

// The RuntimeError the constructor throws ("" when it succeeds).
static std::string construct_error(const Scenario& s, const TestbedOptions& o) {
  try {
    Testbed tb(s, o);
  } catch (const RuntimeError& e) {
    return e.what();
  }
  return "";
}

TEST(Testbed, SwitchedLinkMovesDataAtTheTcRate) {
  SKIP_WITHOUT_TESTBED();
  const double rate = 50e6;
  Testbed tb(scenario_make(2, "switched", rate, 0), TestbedOptions{});
  // 8 MiB at 50 Mbit/s: 8 * 2^20 * 8 / 50e6 = 1.34 s. The achieved rate (payload bits /
  // s, frame headers and TCP/IP overhead count against us) must lie in [0.6, 1.05] x rate:
  // above it means no shaping, far below means broken shaping.
  json j = transfer_finish(tb, transfer_start(tb, 0, 1, 4, 2, 0, 9100));
  double achieved = j["bytes"].get<double>() * 8 / j["seconds"].get<double>();
  EXPECT_GE(achieved, 0.6 * rate) << j.dump();
  EXPECT_LE(achieved, 1.05 * rate) << j.dump();
}

TEST(Testbed, PerPairLinkOverridesTheNetworkRate) {
  SKIP_WITHOUT_TESTBED();
  Scenario s = scenario_make(3, "switched", 400e6, 0);
  s.network.links.push_back({"dev0", "dev2", 40e6, 0});
  Testbed tb(s, TestbedOptions{});
  // dev0 -> dev2 is overridden to 40 Mbit/s: 4 MiB take 4 * 2^20 * 8 / 40e6 = 0.84 s,
  // ten times slower than the 400 Mbit/s default (dev0 -> dev1 would take 0.084 s).
  json j = transfer_finish(tb, transfer_start(tb, 0, 2, 2, 2, 0, 9110));
  double achieved = j["bytes"].get<double>() * 8 / j["seconds"].get<double>();
  EXPECT_GE(achieved, 0.6 * 40e6) << j.dump();
  EXPECT_LE(achieved, 1.05 * 40e6) << j.dump();
}

TEST(Testbed, SharedMediumSplitsItsCapacity) {
  SKIP_WITHOUT_TESTBED();
  const double cap = 50e6;
  Testbed tb(scenario_make(4, "shared", cap, 0), TestbedOptions{});
  // Two concurrent transfers 0->1 and 2->3 of 4 MiB each share one 50 Mbit/s medium:
  // together 8 MiB, so the later one ends after >= 8 * 2^20 * 8 / 50e6 = 1.34 s and
  // the sum of both rates stays <= the capacity (on a switched network each would get
  // 50 Mbit/s, 2x the capacity in total).
  // Process start-up under load varies by seconds: both senders connect first, then
  // start together on a go file, and the span runs from the first start to the last end.
  std::string go = log_path("go");
  std::remove(go.c_str());
  Transfer a = transfer_start(tb, 0, 1, 2, 2, 0, 9120, go);
  Transfer b = transfer_start(tb, 2, 3, 2, 2, 0, 9121, go);
  transfer_wait_connected(a);
  transfer_wait_connected(b);
  file_write_atomic(go, "go");
  json ja = transfer_finish(tb, a), jb = transfer_finish(tb, b);
  std::remove(go.c_str());
  double bytes = ja["bytes"].get<double>() + jb["bytes"].get<double>();
  double span = std::max(ja["mono_end"].get<double>(), jb["mono_end"].get<double>()) -
                std::min(ja["mono_start"].get<double>(), jb["mono_start"].get<double>());
  double aggregate = bytes * 8 / span;
  EXPECT_LE(aggregate, 1.05 * cap) << ja.dump() << " " << jb.dump();
  EXPECT_GE(aggregate, 0.5 * cap) << ja.dump() << " " << jb.dump();
}

TEST(Testbed, NetemLatencyShowsInRoundTrips) {
  SKIP_WITHOUT_TESTBED();
  if (!testbed_netem_available()) GTEST_SKIP() << "tc netem missing from this kernel: latency is not emulated here";
  const double lat = 0.02;
  Testbed tb(scenario_make(2, "switched", 100e6, lat), TestbedOptions{});
  // Each direction is delayed by the one-way latency: a round trip >= 2 x 20 ms = 40 ms.
  json j = transfer_finish(tb, transfer_start(tb, 0, 1, 0.01, 1, 5, 9130));
  for (double r : j["rtt_s"]) EXPECT_GE(r, 2 * lat) << j.dump();
}

TEST(Testbed, CpuQuotaLimitsABusyLoop) {
  SKIP_WITHOUT_TESTBED();
  Scenario s = scenario_make(1, "switched", 100e6, 0);
  s.devices[0].cpu_quota = 0.5;
  Testbed tb(s, TestbedOptions{});
  std::string log = log_path("busy");
  pid_t p = tb.spawn(0, {bin_dir() + "/pac-testbed", "busy", "--seconds", "1"}, log);
  ASSERT_EQ(tb.wait_exit(p, std::chrono::seconds(20)), 0) << file_text(log);
  json j = probe_json(log);
  // 0.5 core = 50 ms of CPU per 100 ms period: the loop gets <= 0.5 s per wall second
  // (0.6 allows for the first period's slack and accounting granularity).
  double share = j["cpu_s"].get<double>() / j["wall_s"].get<double>();
  EXPECT_LE(share, 0.6) << j.dump();
  EXPECT_GT(share, 0.05) << j.dump();  // it did run
}

TEST(Testbed, MemoryLimitKillsAProcessAboveIt) {
  SKIP_WITHOUT_TESTBED();
  Scenario s = scenario_make(1, "switched", 100e6, 0);
  s.devices[0].profile.memory_bytes = 384.0 * 1048576;
  Testbed tb(s, TestbedOptions{});
  std::string exe = bin_dir() + "/pac-testbed", log = log_path("alloc");
  // 32 MiB fit under the 384 MiB limit (with the process's own start-up footprint).
  pid_t small = tb.spawn(0, {exe, "alloc", "--mib", "32"}, log);
  EXPECT_EQ(tb.wait_exit(small, std::chrono::seconds(30)), 0) << file_text(log);
  // 1 GiB does not: the kernel's OOM killer ends it with SIGKILL (exit 128 + 9). Swap
  // is capped at the same limit by the testbed, so it cannot spill there either.
  pid_t big = tb.spawn(0, {exe, "alloc", "--mib", "1024"}, log);
  EXPECT_EQ(tb.wait_exit(big, std::chrono::seconds(30)), 128 + SIGKILL) << file_text(log);
}

TEST(Testbed, TeardownLeavesNothing) {
  SKIP_WITHOUT_TESTBED();
  TestbedOptions o;
  o.tag = unique_tag('t');
  std::string prefix = kTestbedPrefix + o.tag;
  Scenario s = scenario_make(3, "shared", 100e6, 0);
  s.devices[1].cpu_quota = 1;
  s.devices[2].profile.memory_bytes = 512e6;
  {
    Testbed tb(s, o);
    // 3 namespaces, bridge, ifb, 3 root veths, cgroups: all named with the tag.
    std::vector<std::string> up = testbed_list(prefix);
    EXPECT_GE(up.size(), 3u + 1 + 1 + 3 + 3);
    int netns = 0;
    for (const std::string& l : up) netns += l.rfind("netns ", 0) == 0;
    EXPECT_EQ(netns, 3);
    // The limits as written: cpu_quota 1 core = 100000 us per 100000 us period; memory
    // 512e6 bytes (a whole number of 4 KiB pages, so the kernel keeps it exactly).
    int checked = 0;
    for (const std::string& l : up) {
      if (l.rfind("cgroup ", 0) != 0) continue;
      std::string dir = l.substr(7), dev = dir.substr(dir.rfind('-'));
      // v1 files, else v2's.
      if (dev == "-1" && file_exists(dir + "/cpu.cfs_quota_us")) {
        EXPECT_EQ(std::stol(file_text(dir + "/cpu.cfs_quota_us")), 100000);
        checked++;
      }
      if (dev == "-1" && file_exists(dir + "/cpu.max")) {
        EXPECT_EQ(file_text(dir + "/cpu.max"), "100000 100000\n");
        checked++;
      }
      if (dev == "-2" && file_exists(dir + "/memory.limit_in_bytes")) {
        EXPECT_EQ(std::stoll(file_text(dir + "/memory.limit_in_bytes")), 512000000LL);
        checked++;
      }
      if (dev == "-2" && file_exists(dir + "/memory.max")) {
        EXPECT_EQ(std::stoll(file_text(dir + "/memory.max")), 512000000LL);
        checked++;
      }
    }
    EXPECT_EQ(checked, 2);
  }
  EXPECT_EQ(testbed_list(prefix), std::vector<std::string>{});
}

TEST(Testbed, HalfWayFailureCleansUp) {
  SKIP_WITHOUT_TESTBED();
  TestbedOptions o;
  o.tag = unique_tag('h');
  std::string prefix = kTestbedPrefix + o.tag;
  // An invalid rate on the dev1-dev2 pair: dev0's namespace, shaping and all veths exist
  // when dev1's shaping fails.
  Scenario s = scenario_make(3, "switched", 100e6, 0);
  s.network.links.push_back({"dev1", "dev2", -5, 0});
  std::string err = construct_error(s, o);
  EXPECT_NE(err.find("testbed: device dev1: link rate to device dev2"), std::string::npos) << err;
  EXPECT_EQ(testbed_list(prefix), std::vector<std::string>{});
  // A worker that cannot start: everything (network, cgroups) was up by then.
  o.worker_exe = "/nonexistent/pac-worker";
  err = construct_error(scenario_make(2, "switched", 100e6, 0), o);
  EXPECT_NE(err.find("testbed: device dev0: worker `/nonexistent/pac-worker` exited"), std::string::npos) << err;
  EXPECT_EQ(testbed_list(prefix), std::vector<std::string>{});
}

TEST(Testbed, CleanupRemovesLeftoversOfACrashedRun) {
  SKIP_WITHOUT_TESTBED();
  TestbedOptions o;
  o.tag = unique_tag('c');
  std::string prefix = kTestbedPrefix + o.tag;
  // A crashed run: its objects outlive it (the Testbed's destructor never ran).
  auto* leaked = new Testbed(scenario_make(2, "shared", 100e6, 0), o);
  (void)leaked;
  std::vector<std::string> before = testbed_list(prefix);
  EXPECT_FALSE(before.empty());
  // A second run with the same tag is refused and leaves the first run's objects alone.
  std::string err = construct_error(scenario_make(1, "switched", 100e6, 0), o);
  EXPECT_NE(err.find("tag " + prefix + " is in use"), std::string::npos) << err;
  EXPECT_EQ(testbed_list(prefix), before);
  // A tag is not a mere prefix: the tag one character shorter names nothing of this run.
  EXPECT_EQ(testbed_list(prefix.substr(0, prefix.size() - 1)), std::vector<std::string>{});
  std::vector<std::string> removed = testbed_cleanup(prefix);
  // Both namespaces were found and removed (their veths went with them).
  EXPECT_NE(std::find(removed.begin(), removed.end(), "netns " + prefix + "-0"), removed.end());
  EXPECT_NE(std::find(removed.begin(), removed.end(), "netns " + prefix + "-1"), removed.end());
  EXPECT_EQ(testbed_list(prefix), std::vector<std::string>{});
}

TEST(Testbed, WorkerInsideIsReachableAndAuthenticates) {
  SKIP_WITHOUT_TESTBED();
  setenv("PAC_CLUSTER_KEY", kKeyText, 1);  // the workers inherit it
  TestbedOptions o;
  o.worker_exe = bin_dir() + "/pac-worker";
  o.start_timeout = std::chrono::seconds(30);
  Testbed tb(scenario_make(2, "switched", 100e6, 0), o);
  std::vector<WorkerAddress> w = tb.workers();
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[1].id, "dev1");
  EXPECT_EQ(w[1].address, tb.device_ip(1) + ":7070");
  ClusterKey key{kKeyText, "test"};
  // Over the bridge from the root namespace: authenticate, then a heartbeat whose
  // payload comes back unchanged.
  ConnOptions co;
  co.timeout = Millis(5000);
  std::unique_ptr<Connection> c = Connection::connect(w[1].address, w[1].id, co);
  handshake_client(*c, key, "coordinator", "test");
  EXPECT_EQ(c->peer().id, "dev1");
  c->send(MsgType::Heartbeat, "ping-42");
  Frame f = c->recv();
  EXPECT_EQ(f.header.type, MsgType::HeartbeatAck);
  EXPECT_EQ(f.payload, "ping-42");
  c->close();
  // The coordinator reaches both and they authenticate it.
  Coordinator coord(w, key);
  coord.connect_all();
  coord.shutdown(true);
  // A wrong key is refused.
  std::unique_ptr<Connection> bad = Connection::connect(w[0].address, w[0].id, co);
  EXPECT_THROW(handshake_client(*bad, ClusterKey{"wrong-key-wrong-key-wrong", "test"}, "coordinator", "x"),
               PeerError);
}

// A worker's start is CPU, handed out at q of a core under a quota: its timeout is the
// one-core value / q (no root needed: plain arithmetic). 15 s at one core -> 60 s at
// 0.25 core, 20 s at 0.75 (15 / 0.75), 15 s without a quota or at or above one core.
TEST(Testbed, StartTimeoutScalesWithTheQuota) {
  using ms = std::chrono::milliseconds;
  EXPECT_EQ(testbed_start_timeout(ms(15000), 0.25), ms(60000));
  EXPECT_EQ(testbed_start_timeout(ms(15000), 0.75), ms(20000));
  EXPECT_EQ(testbed_start_timeout(ms(15000), 0.5), ms(30000));
  EXPECT_EQ(testbed_start_timeout(ms(15000), 0), ms(15000));
  EXPECT_EQ(testbed_start_timeout(ms(15000), 1.0), ms(15000));
  EXPECT_EQ(testbed_start_timeout(ms(15000), 2.0), ms(15000));
}
