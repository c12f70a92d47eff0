// The emulated edge testbed (testbed.h, docs/testbed.md).
//
// Layout of one run with tag T (T = "pactb" + a short id) and devices 0..N-1:
//   root namespace: bridge Tbr (10.A.B.1/24), veth Tr<i> enslaved to it per device,
//                   (shared medium) ifb Tifb that every bridge port's ingress is
//                   redirected through; cgroups T-<i> under our own cgroup.
//   namespace T-<i>: veth Tn<i> (10.A.B.<i+2>/24) and lo, htb on Tn<i>'s egress.
// Names stay within the kernel's 15-character interface limit (T <= 11 chars).
#include "exec/testbed.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "src/common/cgroup.h"
#include "src/common/error.h"
#include "src/common/fs.h"

namespace pac {

using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- commands

// Runs a shell command line (only names and numbers we generated go into it), returns
// its exit status and puts stdout+stderr into *out.
static int cmd_run(const std::string& cmd, std::string* out) {
  out->clear();
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) {
    *out = std::string("popen: ") + std::strerror(errno);
    return -1;
  }
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out->append(buf, n);
  int st = pclose(p);
  while (!out->empty() && (out->back() == '\n' || out->back() == ' ')) out->pop_back();
  if (st == -1) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// Runs a command that must succeed; the error names the device (or "bridge", ...) and
// the exact command so the user can retry it by hand.
static std::string cmd_check(const std::string& who, const std::string& cmd, bool verbose) {
  if (verbose) std::fprintf(stderr, "[testbed] %s: %s\n", who.c_str(), cmd.c_str());
  std::string out;
  int rc = cmd_run(cmd, &out);
  if (rc != 0)
    throw RuntimeError("testbed: " + who + ": `" + cmd + "` failed (exit " + std::to_string(rc) + ")" +
                       (out.empty() ? "" : ": " + out));
  return out;
}

// Best effort (teardown): failures are reported on stderr, never thrown.
static bool cmd_quiet(const std::string& cmd) {
  std::string out;
  return cmd_run(cmd, &out) == 0;
}

static std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> v;
  std::istringstream in(s);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) v.push_back(line);
  return v;
}

static bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

// ---------------------------------------------------------------- cgroups

// Where we make device cgroups. v2 (a unified mount with a cpu controller): one folder
// holding cpu.max and memory.max. v1: one folder per controller hierarchy.
struct CgroupBases {
  bool v2 = false;
  std::string v2_parent;               // v2: our own cgroup
  std::string cpu_parent, mem_parent;  // v1: our own cgroup in each hierarchy ("" = absent)
};

static bool v2_has_controller(const std::string& dir, const std::string& ctrl) {
  std::ifstream in(dir + "/cgroup.controllers");
  std::string w;
  while (in >> w)
    if (w == ctrl) return true;
  return false;
}

static CgroupBases cgroup_bases() {
  CgroupBases b;
  if (v2_has_controller("/sys/fs/cgroup", "cpu")) {
    b.v2 = true;
    b.v2_parent = "/sys/fs/cgroup" + cgroup_own("");
    return b;
  }
  for (const char* d : {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"})
    if (file_exists(std::string(d) + "/cpu.cfs_quota_us")) {
      b.cpu_parent = d + cgroup_own("cpu");
      break;
    }
  if (file_exists("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
    b.mem_parent = "/sys/fs/cgroup/memory" + cgroup_own("memory");
  return b;
}

// Kills what is left in a cgroup and removes it (a cgroup with tasks cannot be removed).
static bool cgroup_remove(const std::string& dir) {
  for (int attempt = 0; attempt < 50; attempt++) {
    if (rmdir(dir.c_str()) == 0 || errno == ENOENT) return true;
    if (errno != EBUSY) break;
    std::ifstream in(dir + "/cgroup.procs");
    long pid;
    while (in >> pid) kill((pid_t)pid, SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::fprintf(stderr, "[testbed] cannot remove cgroup %s: %s\n", dir.c_str(), std::strerror(errno));
  return false;
}

// ---------------------------------------------------------------- capability probe

struct Probe {
  std::string reason;
  bool netem = false;
};

static Probe probe_run() {
  Probe p;
  if (geteuid() != 0) {
    p.reason = "not root: the testbed needs network namespaces, tc and cgroups";
    return p;
  }
  std::string out;
  if (cmd_run("ip -V", &out) != 0) {
    p.reason = "ip (iproute2) missing: " + out;
    return p;
  }
  if (cmd_run("tc -V", &out) != 0) {
    p.reason = "tc missing: " + out;
    return p;
  }
  // Everything else is tried inside a throw-away namespace.
  std::string ns = std::string(kTestbedPrefix) + "probe" + std::to_string(getpid());
  if (cmd_run("ip netns add " + ns, &out) != 0) {
    p.reason = "ip netns not available: " + out;
    return p;
  }
  struct Step {
    const char* cmd;
    const char* what;
  };
  const Step steps[] = {
      {"ip link add pva type veth peer name pvb", "veth not available"},
      {"ip link add pbr type bridge", "bridge not available"},
      {"tc qdisc add dev pva root handle 1: htb default 1", "tc htb not available"},
      {"tc class add dev pva parent 1: classid 1:1 htb rate 10mbit", "tc htb classes not available"},
      {"tc filter add dev pva parent 1: protocol ip prio 1 u32 match ip dst 10.0.0.1/32 flowid 1:1",
       "tc u32 filter not available"},
  };
  for (const Step& s : steps)
    if (cmd_run("ip netns exec " + ns + " " + s.cmd, &out) != 0) {
      p.reason = std::string(s.what) + ": `" + s.cmd + "`: " + out;
      break;
    }
  if (p.reason.empty())
    p.netem = cmd_run("ip netns exec " + ns + " tc qdisc add dev pva parent 1:1 handle 10: netem delay 1ms", &out) == 0;
  cmd_quiet("ip netns del " + ns);
  if (!p.reason.empty()) return p;
  CgroupBases b = cgroup_bases();
  if (!b.v2 && b.cpu_parent.empty())
    p.reason = "no cgroup cpu controller (neither v2 cpu.max nor v1 cpu.cfs_quota_us under /sys/fs/cgroup)";
  return p;
}

static const Probe& probe() {
  static Probe p;
  static std::once_flag once;
  std::call_once(once, [] { p = probe_run(); });
  return p;
}

std::string testbed_unavailable_reason() { return probe().reason; }
bool testbed_netem_available() { return probe().netem; }

// ---------------------------------------------------------------- Testbed

static std::string tag_make(const std::string& user) {
  std::string t = user;
  if (t.empty()) {
    unsigned h = (unsigned)getpid() * 2654435761u ^ (unsigned)Clock::now().time_since_epoch().count();
    char buf[16];
    std::snprintf(buf, sizeof buf, "%05x", h & 0xfffff);
    t = buf;
  }
  if (t.size() > 6) throw InputError("testbed tag \"" + t + "\": expected at most 6 characters [a-z0-9]");
  for (char c : t)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
      throw InputError("testbed tag \"" + t + "\": expected only characters [a-z0-9]");
  return kTestbedPrefix + t;
}

// tc wants integers: bits per second, microseconds.
static std::string tc_rate(double bps) {
  char b[64];
  std::snprintf(b, sizeof b, "%.0fbit", bps);
  return b;
}

// htb's burst: enough bytes for ~2 ms at the rate (and at least a few full-size GSO
// segments), else at 1 Gbit/s the kernel timer granularity caps throughput below the rate.
static std::string tc_burst(double bps) {
  double bytes = std::max(64.0 * 1024, bps / 8 * 0.002);
  char b[64];
  std::snprintf(b, sizeof b, "%.0fb", bytes);
  return b;
}

static std::string hex(int v) {
  char b[16];
  std::snprintf(b, sizeof b, "%x", v);
  return b;
}

Testbed::Testbed(const Scenario& scenario, const TestbedOptions& options) : options_(options) {
  tag_ = tag_make(options.tag);
  if (scenario.devices.empty()) throw InputError(error_where(scenario.file, "$.cluster.devices", "no devices"));
  if (scenario.devices.size() > 250)
    throw InputError(error_where(scenario.file, "$.cluster.devices", "the testbed takes at most 250 devices"));
  if (std::string why = testbed_unavailable_reason(); !why.empty())
    throw RuntimeError("testbed unavailable: " + why);
  // Objects of another run with this tag would be taken over and then deleted by our
  // teardown: refuse instead.
  if (std::vector<std::string> in_use = testbed_list(tag_); !in_use.empty())
    throw RuntimeError("testbed: tag " + tag_ + " is in use (" + in_use[0] +
                       ", ...): choose another tag or run `pac-testbed down " +
                       tag_.substr(std::strlen(kTestbedPrefix)) + "`");
  try {
    build(scenario);
  } catch (...) {
    teardown();
    throw;
  }
}

Testbed::~Testbed() { teardown(); }

std::string Testbed::device_ip(int i) const { return devs_.at(i).ip; }
std::string Testbed::netns(int i) const { return devs_.at(i).ns; }

std::vector<WorkerAddress> Testbed::workers() const {
  std::vector<WorkerAddress> w;
  for (const Dev& d : devs_) w.push_back({d.id, d.ip + ":" + std::to_string(options_.port)});
  return w;
}

void Testbed::build(const Scenario& s) {
  const bool v = options_.verbose;
  netem_ = testbed_netem_available();
  if (!netem_) limitations_.push_back("latency not emulated: tc netem is missing from this kernel (rates only)");

  // A /24 no interface here uses yet, picked from the tag so parallel runs differ.
  std::string addrs;
  cmd_run("ip -o -4 addr show", &addrs);
  unsigned h = 0;
  for (char c : tag_) h = h * 131 + (unsigned char)c;
  for (int attempt = 0;; attempt++) {
    int a = 100 + (h >> 8) % 100, b = h % 256;
    subnet_ = "10." + std::to_string(a) + "." + std::to_string(b) + ".";
    if (addrs.find(" " + subnet_) == std::string::npos) break;
    if (attempt > 1000) throw RuntimeError("testbed: no free 10.x.y.0/24 subnet found");
    h = h * 2654435761u + 1;
  }
  bridge_ip_ = subnet_ + "1";

  log_dir_ = options_.log_dir;
  if (log_dir_.empty()) {
    log_dir_ = "/tmp/" + tag_ + "-logs";
    own_log_dir_ = true;
  }
  dir_create(log_dir_);

  bridge_ = tag_ + "br";
  cmd_check("bridge", "ip link add " + bridge_ + " type bridge", v);
  cmd_check("bridge", "ip addr add " + bridge_ip_ + "/24 dev " + bridge_, v);
  cmd_check("bridge", "ip link set " + bridge_ + " up", v);

  for (size_t i = 0; i < s.devices.size(); i++) {
    Dev d;
    d.id = s.devices[i].id;
    d.ns = tag_ + "-" + std::to_string(i);
    d.veth_root = tag_ + "r" + std::to_string(i);
    d.veth_ns = tag_ + "n" + std::to_string(i);
    d.ip = subnet_ + std::to_string(i + 2);
    d.log = path_join(log_dir_, tag_ + "-" + std::to_string(i) + ".log");
    devs_.push_back(d);
    const std::string who = "device " + d.id;
    cmd_check(who, "ip netns add " + d.ns, v);
    cmd_check(who, "ip link add " + d.veth_root + " type veth peer name " + d.veth_ns + " netns " + d.ns, v);
    cmd_check(who, "ip link set " + d.veth_root + " master " + bridge_, v);
    cmd_check(who, "ip link set " + d.veth_root + " up", v);
    cmd_check(who, "ip -n " + d.ns + " addr add " + d.ip + "/24 dev " + d.veth_ns, v);
    cmd_check(who, "ip -n " + d.ns + " link set " + d.veth_ns + " up", v);
    cmd_check(who, "ip -n " + d.ns + " link set lo up", v);
  }
  for (size_t i = 0; i < s.devices.size(); i++) shape_device(s, (int)i);
  if (s.network.kind == "shared") shape_shared_medium(s);
  for (size_t i = 0; i < s.devices.size(); i++) make_cgroups(s, (int)i);
  if (!options_.worker_exe.empty())
    for (size_t i = 0; i < s.devices.size(); i++) start_worker((int)i);
}

// Egress of device i (its namespace side of the veth): one htb class per peer device at
// the pair's rate with netem delay = the pair's one-way latency under it, chosen by a u32
// filter on the destination address; everything else (the coordinator) goes to class 1:1
// at the device's NIC rate. Both directions of a pair are shaped by their sender, so a
// pair's round trip is 2 x latency and each direction gets the full rate (full duplex).
void Testbed::shape_device(const Scenario& s, int i) {
  const Dev& d = devs_[i];
  const DeviceSpec& ds = s.devices[i];
  const std::string who = "device " + d.id;
  const std::string tc = "tc -n " + d.ns + " ";
  const std::string dev = " dev " + d.veth_ns + " ";
  double nic = s.network.bandwidth_bps;
  if (ds.profile.nic_bandwidth_bps > 0) nic = std::min(nic, ds.profile.nic_bandwidth_bps);
  double nic_lat = s.network.latency_s + ds.profile.nic_latency_s;
  auto add_class = [&](int minor, double bps, double lat_s, const std::string& peer) {
    if (!(bps > 0) || !std::isfinite(bps))
      throw RuntimeError("testbed: " + who + ": link rate to " + peer + " is " + std::to_string(bps) +
                         " bit/s (expected a finite number > 0)");
    std::string cls = "1:" + hex(minor);
    cmd_check(who, tc + "class add" + dev + "parent 1: classid " + cls + " htb rate " + tc_rate(bps) + " ceil " +
                       tc_rate(bps) + " burst " + tc_burst(bps) + " cburst " + tc_burst(bps),
              options_.verbose);
    if (netem_ && lat_s > 0) {
      char delay[64];
      std::snprintf(delay, sizeof delay, "%.0fus", lat_s * 1e6);
      // A deep netem queue: the htb above it already limits the rate.
      cmd_check(who, tc + "qdisc add" + dev + "parent " + cls + " handle " + hex(minor + 0x100) + ": netem delay " +
                         delay + " limit 100000",
                options_.verbose);
    }
  };
  cmd_check(who, tc + "qdisc add" + dev + "root handle 1: htb default 1", options_.verbose);
  add_class(1, nic, nic_lat, "the coordinator");
  for (size_t j = 0; j < s.devices.size(); j++) {
    if ((int)j == i) continue;
    int minor = 0x10 + (int)j;
    add_class(minor, link_bandwidth_bps(s, i, (int)j), link_latency_s(s, i, (int)j), "device " + s.devices[j].id);
    cmd_check(who, tc + "filter add" + dev + "parent 1: protocol ip prio 1 u32 match ip dst " + devs_[j].ip +
                       "/32 flowid 1:" + hex(minor),
              options_.verbose);
  }
}

// A shared medium (Wi-Fi): every frame any device sends enters the bridge through its
// port's ingress; all ports redirect to one ifb whose single htb class has the medium's
// capacity, so all transfers, both directions, queue for the same budget. Frames to the
// coordinator (the bridge address) bypass it in an unshaped class: the control plane is
// not part of the emulated medium.
void Testbed::shape_shared_medium(const Scenario& s) {
  const bool v = options_.verbose;
  ifb_ = tag_ + "ifb";
  double cap = s.network.bandwidth_bps;
  if (!(cap > 0) || !std::isfinite(cap))
    throw RuntimeError("testbed: shared medium: capacity " + std::to_string(cap) + " bit/s (expected > 0)");
  cmd_check("shared medium", "ip link add " + ifb_ + " type ifb", v);
  cmd_check("shared medium", "ip link set " + ifb_ + " up", v);
  cmd_check("shared medium", "tc qdisc add dev " + ifb_ + " root handle 1: htb default 1", v);
  cmd_check("shared medium", "tc class add dev " + ifb_ + " parent 1: classid 1:1 htb rate " + tc_rate(cap) +
                                 " ceil " + tc_rate(cap) + " burst " + tc_burst(cap) + " cburst " + tc_burst(cap),
            v);
  cmd_check("shared medium", "tc class add dev " + ifb_ + " parent 1: classid 1:2 htb rate 100gbit", v);
  cmd_check("shared medium", "tc filter add dev " + ifb_ + " parent 1: protocol ip prio 1 u32 match ip dst " +
                                 bridge_ip_ + "/32 flowid 1:2",
            v);
  for (const Dev& d : devs_) {
    const std::string who = "device " + d.id + " (shared medium)";
    cmd_check(who, "tc qdisc add dev " + d.veth_root + " handle ffff: ingress", v);
    cmd_check(who, "tc filter add dev " + d.veth_root +
                       " parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev " + ifb_,
              v);
  }
  limitations_.push_back(
      "shared medium: one FIFO capacity for all device-to-device traffic; no airtime contention, "
      "collisions, rate adaptation or per-station fairness");
}

void Testbed::make_cgroups(const Scenario& s, int i) {
  Dev& d = devs_[i];
  const DeviceSpec& ds = s.devices[i];
  d.cpu_quota = ds.cpu_quota;
  const std::string who = "device " + d.id;
  CgroupBases b = cgroup_bases();
  const long period = 100000;
  const long quota = ds.cpu_quota > 0 ? std::max(1000L, std::lround(ds.cpu_quota * period)) : -1;
  const double mem = options_.memory_limit ? ds.profile.memory_bytes : 0;
  const std::string name = "/" + d.ns;
  std::string why;
  auto make = [&](const std::string& parent) {
    std::string dir = parent + name;
    if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
      throw RuntimeError("testbed: " + who + ": cannot create cgroup " + dir + ": " + std::strerror(errno));
    d.cgroups.push_back(dir);
    return dir;
  };
  auto put = [&](const std::string& path, const std::string& text) {
    if (!cgroup_write(path, text, &why)) throw RuntimeError("testbed: " + who + ": " + why);
  };
  if (b.v2) {
    // The parent must hand the controllers down to its children.
    cgroup_write(b.v2_parent + "/cgroup.subtree_control", "+cpu", nullptr);
    if (mem > 0) cgroup_write(b.v2_parent + "/cgroup.subtree_control", "+memory", nullptr);
    std::string dir = make(b.v2_parent);
    if (quota > 0) put(dir + "/cpu.max", std::to_string(quota) + " " + std::to_string(period));
    if (mem > 0) {
      put(dir + "/memory.max", std::to_string((long long)mem));
      // No swap beyond the limit: a device's memory is its RAM (best effort: the file
      // exists only with swap accounting).
      cgroup_write(dir + "/memory.swap.max", "0", nullptr);
    }
    return;
  }
  std::string cpu = make(b.cpu_parent);
  put(cpu + "/cpu.cfs_period_us", std::to_string(period));
  put(cpu + "/cpu.cfs_quota_us", std::to_string(quota));
  if (mem > 0) {
    if (b.mem_parent.empty()) {
      limitations_.push_back("memory limit not applied: no cgroup v1 memory controller");
    } else {
      std::string m = make(b.mem_parent);
      put(m + "/memory.limit_in_bytes", std::to_string((long long)mem));
      // Memory + swap capped at the same value: no swapping past the device's RAM
      // (best effort: the file exists only with swap accounting).
      cgroup_write(m + "/memory.memsw.limit_in_bytes", std::to_string((long long)mem), nullptr);
    }
  }
}

pid_t Testbed::spawn(int device, const std::vector<std::string>& argv, const std::string& log_path) {
  const Dev& d = devs_.at(device);
  const std::string who = "device " + d.id;
  if (argv.empty()) throw RuntimeError("testbed: " + who + ": spawn with an empty command");
  // Everything the child needs is prepared here: between fork and exec only
  // async-signal-safe calls (open, write, setns, dup2, execv).
  std::vector<std::string> procs;
  for (const std::string& c : d.cgroups) procs.push_back(c + "/cgroup.procs");
  std::string ns_path = "/run/netns/" + d.ns;
  int ns_fd = open(ns_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (ns_fd < 0) throw RuntimeError("testbed: " + who + ": cannot open " + ns_path + ": " + std::strerror(errno));
  std::string log = log_path.empty() ? "/dev/null" : log_path;
  int log_fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    close(ns_fd);
    throw RuntimeError("testbed: " + who + ": cannot open log " + log + ": " + std::strerror(errno));
  }
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    close(ns_fd);
    close(log_fd);
    throw RuntimeError("testbed: " + who + ": fork: " + std::strerror(errno));
  }
  if (pid == 0) {
    setpgid(0, 0);  // its own process group: teardown kills it with everything it started
    char me[32];
    int n = std::snprintf(me, sizeof me, "%d", (int)getpid());
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    for (const std::string& p : procs) {
      int fd = open(p.c_str(), O_WRONLY);
      if (fd < 0 || write(fd, me, n) != n) {
        const char* m = "testbed: cannot join cgroup\n";
        (void)!write(2, m, std::strlen(m));
        _exit(126);
      }
      close(fd);
    }
    if (setns(ns_fd, CLONE_NEWNET) != 0) {
      const char* m = "testbed: setns failed\n";
      (void)!write(2, m, std::strlen(m));
      _exit(126);
    }
    execv(args[0], args.data());
    const char* m = "testbed: exec failed: ";
    (void)!write(2, m, std::strlen(m));
    (void)!write(2, args[0], std::strlen(args[0]));
    (void)!write(2, "\n", 1);
    _exit(127);
  }
  setpgid(pid, pid);  // also from here, so a kill(-pid) right after fork cannot miss it
  close(ns_fd);
  close(log_fd);
  spawned_.push_back(pid);
  return pid;
}

static int status_code(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st); }

int Testbed::wait_exit(pid_t pid, std::chrono::milliseconds timeout) {
  std::string who = "process " + std::to_string(pid);
  for (size_t i = 0; i < devs_.size(); i++)
    if (devs_[i].worker == pid) who = "worker of device " + devs_[i].id;
  auto deadline = Clock::now() + timeout;
  for (;;) {
    int st = 0;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) {
      spawned_.erase(std::remove(spawned_.begin(), spawned_.end(), pid), spawned_.end());
      return status_code(st);
    }
    if (r < 0) throw RuntimeError("testbed: waitpid " + who + ": " + std::strerror(errno));
    if (Clock::now() > deadline) {
      kill(-pid, SIGKILL);
      waitpid(pid, &st, 0);
      spawned_.erase(std::remove(spawned_.begin(), spawned_.end(), pid), spawned_.end());
      throw RuntimeError("testbed: " + who + " did not exit within " + std::to_string(timeout.count()) +
                         " ms (killed)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

static std::string file_tail(const std::string& path, size_t n) {
  std::ifstream in(path);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (s.size() > n) s = "..." + s.substr(s.size() - n);
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

std::chrono::milliseconds testbed_start_timeout(std::chrono::milliseconds at_one_core, double cpu_quota) {
  if (cpu_quota <= 0 || cpu_quota >= 1) return at_one_core;
  return std::chrono::milliseconds(std::llround(static_cast<double>(at_one_core.count()) / cpu_quota));
}

void Testbed::start_worker(int i) {
  Dev& d = devs_[i];
  std::string addr = d.ip + ":" + std::to_string(options_.port);
  std::vector<std::string> argv = {options_.worker_exe, "--listen", addr, "--device-id", d.id};
  if (!options_.key_file.empty()) {
    argv.push_back("--key-file");
    argv.push_back(options_.key_file);
  }
  for (const std::string& a : options_.worker_args) argv.push_back(a);
  d.worker = spawn(i, argv, d.log);
  // Ready when it printed "listening on" (it has bound its socket by then).
  const auto timeout = testbed_start_timeout(options_.start_timeout, d.cpu_quota);
  auto deadline = Clock::now() + timeout;
  for (;;) {
    std::ifstream in(d.log);
    std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (s.find("listening on") != std::string::npos) return;
    int st = 0;
    if (waitpid(d.worker, &st, WNOHANG) == d.worker) {
      spawned_.erase(std::remove(spawned_.begin(), spawned_.end(), d.worker), spawned_.end());
      d.worker = -1;
      throw RuntimeError("testbed: device " + d.id + ": worker `" + options_.worker_exe + "` exited (status " +
                         std::to_string(status_code(st)) + ") before listening on " + addr + "; log " + d.log +
                         ": " + file_tail(d.log, 600));
    }
    if (Clock::now() > deadline)
      throw RuntimeError("testbed: device " + d.id + ": worker did not listen on " + addr + " within " +
                         std::to_string(timeout.count()) + " ms; log " + d.log + ": " +
                         file_tail(d.log, 600));
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void Testbed::teardown() {
  if (torn_down_) return;
  torn_down_ = true;
  // SIGTERM first (a worker may flush logs), SIGKILL whatever is left after 2 s.
  for (pid_t p : spawned_) kill(-p, SIGTERM);
  auto deadline = Clock::now() + std::chrono::seconds(2);
  std::vector<pid_t> left = spawned_;
  while (!left.empty()) {
    std::vector<pid_t> still;
    for (pid_t p : left) {
      int st;
      pid_t r = waitpid(p, &st, WNOHANG);
      if (r == 0) still.push_back(p);
    }
    left.swap(still);
    if (left.empty()) break;
    if (Clock::now() > deadline) {
      for (pid_t p : left) {
        kill(-p, SIGKILL);
        int st;
        waitpid(p, &st, 0);
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  spawned_.clear();
  for (Dev& d : devs_) d.worker = -1;
  // Removing a namespace destroys its end of the veth and with it the root end.
  for (const Dev& d : devs_) {
    std::string out;
    if (cmd_run("ip netns pids " + d.ns, &out) == 0)
      for (const std::string& pid : split_lines(out)) kill((pid_t)std::atol(pid.c_str()), SIGKILL);
    if (cmd_run("ip netns del " + d.ns, &out) != 0 && out.find("No such file") == std::string::npos)
      std::fprintf(stderr, "[testbed] ip netns del %s: %s\n", d.ns.c_str(), out.c_str());
    cmd_quiet("ip link del " + d.veth_root);
  }
  if (!ifb_.empty()) cmd_quiet("ip link del " + ifb_);
  if (!bridge_.empty()) cmd_quiet("ip link del " + bridge_);
  for (const Dev& d : devs_)
    for (const std::string& c : d.cgroups) cgroup_remove(c);
  if (own_log_dir_) cmd_quiet("rm -rf '" + log_dir_ + "'");
}

// ---------------------------------------------------------------- leftovers

// Whether `name` belongs to the run(s) `prefix` names. The bare kTestbedPrefix means
// every run; a run's tag matches only the names it makes (T-<i>, Tr<i>, Tn<i>, Tbr,
// Tifb, T-logs), so `down ab` leaves a run tagged "ab1" alone.
static bool name_in_run(const std::string& name, const std::string& prefix) {
  if (!starts_with(name, prefix)) return false;
  if (prefix == kTestbedPrefix) return true;
  std::string rest = name.substr(prefix.size());
  if (rest == "br" || rest == "ifb" || rest == "-logs") return true;
  if (rest.size() < 2 || (rest[0] != '-' && rest[0] != 'r' && rest[0] != 'n')) return false;
  for (size_t i = 1; i < rest.size(); i++)
    if (rest[i] < '0' || rest[i] > '9') return false;
  return true;
}

// Namespaces, links and cgroup dirs of the run(s) `prefix` names (name_in_run); removes
// them when `remove` (processes inside are killed first). One line per object.
static std::vector<std::string> leftovers(const std::string& prefix, bool remove) {
  std::vector<std::string> found;
  if (prefix.size() < std::strlen(kTestbedPrefix) || !starts_with(prefix, kTestbedPrefix)) return found;
  std::string out;
  if (cmd_run("ip netns list", &out) == 0)
    for (const std::string& line : split_lines(out)) {
      std::string ns = line.substr(0, line.find(' '));
      if (!name_in_run(ns, prefix)) continue;
      found.push_back("netns " + ns);
      if (!remove) continue;
      std::string pids;
      if (cmd_run("ip netns pids " + ns, &pids) == 0)
        for (const std::string& p : split_lines(pids)) kill((pid_t)std::atol(p.c_str()), SIGKILL);
      cmd_quiet("ip netns del " + ns);
    }
  // "12: pactbx1r0@if3: <...>" -> pactbx1r0. Bridges go last: ports first.
  if (cmd_run("ip -o link show", &out) == 0) {
    std::vector<std::string> links;
    for (const std::string& line : split_lines(out)) {
      size_t a = line.find(": ");
      if (a == std::string::npos) continue;
      std::string name = line.substr(a + 2);
      name = name.substr(0, name.find_first_of("@:"));
      if (name_in_run(name, prefix)) links.push_back(name);
    }
    std::stable_partition(links.begin(), links.end(),
                          [](const std::string& n) { return n.size() < 2 || n.compare(n.size() - 2, 2, "br") != 0; });
    for (const std::string& l : links) {
      found.push_back("link " + l);
      if (remove) cmd_quiet("ip link del " + l);
    }
  }
  CgroupBases b = cgroup_bases();
  for (const std::string& parent : {b.v2_parent, b.cpu_parent, b.mem_parent}) {
    if (parent.empty()) continue;
    DIR* dir = opendir(parent.c_str());
    if (!dir) continue;
    std::vector<std::string> names;
    while (dirent* e = readdir(dir))
      if (e->d_type == DT_DIR && name_in_run(e->d_name, prefix)) names.push_back(e->d_name);
    closedir(dir);
    for (const std::string& n : names) {
      found.push_back("cgroup " + parent + "/" + n);
      if (remove) cgroup_remove(parent + "/" + n);
    }
  }
  if (DIR* dir = opendir("/tmp")) {
    std::vector<std::string> names;
    while (dirent* e = readdir(dir)) {
      std::string n = e->d_name;
      if (name_in_run(n, prefix) && n.size() > 5 && n.compare(n.size() - 5, 5, "-logs") == 0) names.push_back(n);
    }
    closedir(dir);
    for (const std::string& n : names) {
      found.push_back("logs /tmp/" + n);
      if (remove) cmd_quiet("rm -rf '/tmp/" + n + "'");
    }
  }
  return found;
}

std::vector<std::string> testbed_cleanup(const std::string& prefix) { return leftovers(prefix, true); }
std::vector<std::string> testbed_list(const std::string& prefix) { return leftovers(prefix, false); }

}  // namespace pac
