// The emulated edge testbed (docs/testbed.md): a scenario's devices become network
// namespaces on this machine, each with a veth to one Linux bridge, its link rate (and
// latency, where the kernel has netem) shaped with `tc`, a CPU quota and memory limit in
// a cgroup, and a pac-worker started inside. The coordinator (pac-run) stays in the root
// namespace and reaches the workers over the bridge, which has the address .1.
//
//   if (std::string why = pac::testbed_unavailable_reason(); !why.empty()) refuse(why);
//   pac::TestbedOptions o;  o.worker_exe = bin_dir + "/pac-worker";
//   pac::Testbed tb(scenario, o);          // throws RuntimeError naming device + command
//   Coordinator c(tb.workers(), key);      // ids = scenario device ids
//   ...                                    // ~Testbed kills workers, removes everything
//
// No LibTorch here: this is plain process, `ip` and `tc` plumbing.
#pragma once
#include <chrono>
#include <string>
#include <sys/types.h>
#include <vector>

#include "exec/coordinator.h"
#include "src/core/scenario.h"

namespace pac {

// Every namespace, link, cgroup and temp folder we create starts with this, followed by
// the run's tag: leftovers of any run are found by prefix (testbed_cleanup).
constexpr const char* kTestbedPrefix = "pactb";

// "" when this machine can run a testbed (root, ip netns, veth, bridge, tc htb, a cgroup
// cpu controller), else one line saying what is missing. Probed inside a throw-away
// namespace, so the root namespace is never touched.
std::string testbed_unavailable_reason();
// Whether tc netem exists (latency emulation). Kernels without sch_netem run the testbed
// with rates only; Testbed::limitations() then says latency is not emulated.
bool testbed_netem_available();

struct TestbedOptions {
  std::string worker_exe;            // pac-worker; empty: start no workers (network + cgroups only)
  std::string key_file;              // passed as --key-file; empty: workers read $PAC_CLUSTER_KEY[_FILE]
  std::vector<std::string> worker_args;  // extra pac-worker arguments
  std::string tag;                   // [a-z0-9], <= 6 chars; empty: derived from pid and time
  std::string log_dir;               // worker logs <device>.log; empty: /tmp/pactb<tag>-logs, removed at teardown
  int port = 7070;                   // each worker listens on <its namespace ip>:port
  bool memory_limit = true;          // cgroup memory limit = profile memory_bytes (when > 0)
  std::chrono::milliseconds start_timeout{15000};  // per worker at one core: until it prints "listening on"
                                                   // (testbed_start_timeout scales it by the quota)
  bool verbose = false;              // print each ip/tc command on stderr
};

// How long a worker under a CPU quota of `cpu_quota` cores (0: none) may take to start:
// `at_one_core` / min(1, quota). Its start is CPU (loading LibTorch's libraries, ~1-3 s
// of it here), which the quota hands out at q of a core: a 0.25-core worker once took
// longer than the 15 s allowed and failed its suite run (docs/testbed.md).
std::chrono::milliseconds testbed_start_timeout(std::chrono::milliseconds at_one_core, double cpu_quota);

class Testbed {
 public:
  // Brings everything up; on any failure it removes what it made so far and throws
  // RuntimeError naming the device and the failed command.
  Testbed(const Scenario& scenario, const TestbedOptions& options);
  ~Testbed();  // = teardown()
  Testbed(const Testbed&) = delete;
  Testbed& operator=(const Testbed&) = delete;

  // The workers, ids = the scenario's device ids, addresses "<ns ip>:<port>".
  std::vector<WorkerAddress> workers() const;
  const std::string& tag() const { return tag_; }           // "pactb" + tag
  const std::string& bridge_ip() const { return bridge_ip_; }
  std::string device_ip(int device) const;
  std::string netns(int device) const;                       // the namespace's name
  // What the emulation leaves out on this machine/scenario (one line each), e.g.
  // "latency not emulated: tc netem missing from this kernel".
  const std::vector<std::string>& limitations() const { return limitations_; }

  // Starts argv (argv[0] a path) inside device's namespace and cgroups, stdout+stderr to
  // `log_path` (or /dev/null when empty). Killed at teardown if still running.
  pid_t spawn(int device, const std::vector<std::string>& argv, const std::string& log_path);
  // Waits for a spawned process; returns its exit status (128+signal when killed).
  // Kills it and throws RuntimeError naming the device when `timeout` passes.
  int wait_exit(pid_t pid, std::chrono::milliseconds timeout);

  // Kills every process we started, removes namespaces, links, cgroups and the default
  // log folder. Safe to call twice; never throws (failures go to stderr).
  void teardown();

 private:
  struct Dev {
    std::string id, ns, veth_root, veth_ns, ip;
    std::vector<std::string> cgroups;  // cgroup dirs we made for it
    pid_t worker = -1;
    std::string log;
    double cpu_quota = 0;  // the scenario's (0: none)
  };
  void build(const Scenario& s);
  void shape_device(const Scenario& s, int i);
  void shape_shared_medium(const Scenario& s);
  void make_cgroups(const Scenario& s, int i);
  void start_worker(int i);

  TestbedOptions options_;
  std::string tag_, bridge_, ifb_, bridge_ip_, subnet_, log_dir_;
  bool own_log_dir_ = false, netem_ = false;
  std::vector<Dev> devs_;
  std::vector<pid_t> spawned_;
  std::vector<std::string> limitations_;
  bool torn_down_ = false;
};

// Removes the leftovers of crashed runs: every namespace (and the processes in it),
// link, cgroup and /tmp log folder of the run whose tag is `prefix` ("pactb" + tag), or
// of every run with the default kTestbedPrefix. Returns one line per removed object.
// Never throws.
std::vector<std::string> testbed_cleanup(const std::string& prefix = kTestbedPrefix);

// What exists now with this prefix (namespaces, links, cgroup dirs), for tests and
// `pac-testbed list`.
std::vector<std::string> testbed_list(const std::string& prefix = kTestbedPrefix);

}  // namespace pac
