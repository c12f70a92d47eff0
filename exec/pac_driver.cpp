#include "exec/pac_driver.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>

#include "src/common/error.h"
#include "src/common/hash.h"

namespace pac {

int tcp_free_port(const std::string& host) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw RuntimeError(std::string("cannot open a socket to find a free port: ") + std::strerror(errno));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = 0;
  if (::inet_pton(AF_INET, host.c_str(), &sa.sin_addr) != 1) {
    ::close(fd);
    throw InputError("not an IPv4 address for a collective store: " + host);
  }
  socklen_t len = sizeof sa;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    int err = errno;
    ::close(fd);
    if (err == EADDRNOTAVAIL) {
      // The store's host is another machine (or a testbed namespace): we cannot probe
      // its ports from here. Hand out ports from a range nothing else of ours uses, a
      // different one per store of this run (a clash fails the store's start, loudly).
      static std::atomic<int> next{0};
      static const int base = 29500 + static_cast<int>(::getpid() % 50) * 20;
      return base + next++ % 20;
    }
    throw RuntimeError("cannot bind " + host + ":0 to find a free port: " + std::strerror(err));
  }
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    std::string why = std::strerror(errno);
    ::close(fd);
    throw RuntimeError("cannot read the port bound on " + host + ": " + why);
  }
  ::close(fd);
  return ntohs(sa.sin_port);
}

// Device w's next Result as a JSON object (a malformed one is a WireError naming it).
static json result_wait(Coordinator& c, int w, Millis wait) {
  return frame_json(c.wait_from(w, MsgType::Result, wait), PeerName{c.worker(w).id, c.worker(w).address});
}

std::string address_host(const std::string& address) {
  size_t colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

std::vector<json> pac_assign_phase(Coordinator& c, const std::vector<Assignment>& as, const json& settings) {
  if (static_cast<int>(as.size()) != c.worker_count())
    throw RuntimeError("pac-run: " + std::to_string(as.size()) + " assignments for " +
                       std::to_string(c.worker_count()) + " workers");
  // One store per stage group, on the host of the group's first device.
  std::vector<json> stores;
  const std::vector<StageInfo>& stages = as.empty() ? std::vector<StageInfo>() : as[0].stages;
  for (const StageInfo& st : stages) {
    if (st.devices.size() < 2) {
      stores.push_back(nullptr);
      continue;
    }
    std::string host = address_host(c.worker(st.devices[0]).address);
    stores.push_back({{"host", host}, {"port", tcp_free_port(host)}});
  }
  std::vector<json> acks;
  for (int w = 0; w < c.worker_count(); w++) {
    if (as[w].stage < 0) continue;
    json f = settings;
    if (!f.contains("executor")) f["executor"] = "pac-pipeline";
    f["assignment"] = assignment_to_json(as[w]);
    // The workers reach each other at the addresses the coordinator connected to.
    for (auto& st : f["assignment"]["stages"]) {
      json addrs = json::array();
      for (auto& d : st["devices"]) addrs.push_back(c.worker(d.get<int>()).address);
      st["addresses"] = addrs;
    }
    if (!stores[as[w].stage].is_null()) f["group_store"] = stores[as[w].stage];
    f["bind_host"] = address_host(c.worker(w).address);  // Gloo binds its pairs to this device's address
    acks.push_back(c.assign(w, f));
  }
  return acks;
}

std::vector<double> pac_join_groups(Coordinator& c, const std::vector<Assignment>& as, Millis wait,
                                    const std::vector<Assignment>& next) {
  json dp_store;
  if (!next.empty() && next[0].stages.size() == 1 && next[0].stages[0].devices.size() > 1) {
    std::string host = address_host(c.worker(next[0].stages[0].devices[0]).address);
    dp_store = {{"host", host}, {"port", tcp_free_port(host)}};
  }
  for (int w = 0; w < c.worker_count(); w++) {
    if (as[w].stage < 0) continue;
    json start = {{"op", "join"}};
    if (!dp_store.is_null() && next[w].stage >= 0) {
      start["dp_store"] = dp_store;
      start["dp_rank"] = next[w].group_rank;
      start["dp_size"] = next[w].group_size();
    }
    c.connection(w).send_json(MsgType::Start, start);
  }
  std::vector<double> cpu(c.worker_count(), -1);
  for (int w = 0; w < c.worker_count(); w++)
    if (as[w].stage >= 0) cpu[w] = result_wait(c, w, wait).value("cpu_s", -1.0);
  return cpu;
}

PacStepResult pac_train_step(Coordinator& c, const std::vector<Assignment>& as, int step, double lr,
                             const std::vector<const Example*>& batch, Millis wait, bool trace,
                             const std::vector<const Example*>* next) {
  json tokens = json::array(), mask = json::array();
  for (const Example* e : batch) {
    tokens.push_back(e->tokens);
    json m = json::array();
    for (uint8_t v : e->mask) m.push_back(static_cast<int>(v));
    mask.push_back(m);
  }
  json ids = json::array();
  for (const Example* e : batch) ids.push_back(e->id);
  json start = {{"op", "train"}, {"step", step}, {"lr", lr}, {"tokens", tokens}, {"mask", mask}, {"samples", ids}};
  if (trace) start["trace"] = true;
  if (next && !next->empty()) {
    json nids = json::array(), nhashes = json::array();
    for (const Example* e : *next) {
      nids.push_back(e->id);
      nhashes.push_back(hash_hex(tokens_hash(e->tokens)));
    }
    start["next"] = {{"samples", nids}, {"hashes", nhashes}};
  }
  for (int w = 0; w < c.worker_count(); w++)
    if (as[w].stage >= 0) c.connection(w).send_json(MsgType::Start, start);
  PacStepResult r;
  for (int w = 0; w < c.worker_count(); w++) {
    if (as[w].stage < 0) continue;
    json j = result_wait(c, w, wait);
    r.loss += j.value("loss_part", 0.0);
    r.max_seconds = std::max(r.max_seconds, j.value("seconds", 0.0));
    r.results.push_back(j);
    r.workers.push_back(w);
  }
  return r;
}

void pac_note_cached(const PacStepResult& r, CacheHolders* holders) {
  for (size_t i = 0; i < r.results.size(); i++) {
    auto it = r.results[i].find("cached");
    if (it == r.results[i].end() || !it->is_array()) continue;
    for (const json& id : *it)
      if (id.is_number_integer()) (*holders)[id.get<int64_t>()].push_back(r.workers[i]);
  }
}

std::vector<int> switch_owners(const std::vector<int64_t>& samples, const CacheHolders& holders,
                               const std::vector<int>& dp_devices, const std::vector<double>& dp_shares,
                               const std::vector<int>& taps) {
  int n = static_cast<int>(samples.size()), G = static_cast<int>(dp_devices.size());
  std::vector<int> cap(G), owner(n, -1);
  for (int g = 0; g < G; g++) cap[g] = share_rows(RowRange{0, n}, dp_shares, g).size();
  // DP ranks in order of the taps their phase-1 records hold, most first: keeping a
  // sample on the device that holds most of it saves the most bytes.
  std::vector<int> order(G);
  for (int g = 0; g < G; g++) order[g] = g;
  auto taps_of = [&](int g) { return dp_devices[g] < static_cast<int>(taps.size()) ? taps[dp_devices[g]] : 0; };
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return taps_of(x) > taps_of(y); });
  for (int g : order) {
    for (int i = 0; i < n && cap[g] > 0; i++) {
      if (owner[i] >= 0) continue;
      auto it = holders.find(samples[i]);
      if (it == holders.end()) continue;
      if (std::find(it->second.begin(), it->second.end(), dp_devices[g]) == it->second.end()) continue;
      owner[i] = g;
      cap[g]--;
    }
  }
  // The rest go wherever capacity is left, in rank order.
  int g = 0;
  for (int i = 0; i < n; i++) {
    if (owner[i] >= 0) continue;
    while (cap[g] == 0) g++;
    owner[i] = g;
    cap[g]--;
  }
  return owner;
}

SwitchResult pac_switch(Coordinator& c, const std::vector<Assignment>& p1, const std::vector<Assignment>& p2,
                        const std::vector<const Example*>& samples, const CacheHolders& holders, Millis wait,
                        bool trace) {
  auto t0 = std::chrono::steady_clock::now();
  if (p2.empty() || p2[0].stages.size() != 1)
    throw InputError("plan: the phase after the switch must be one data-parallel stage, got " +
                     std::to_string(p2.empty() ? 0 : p2[0].stages.size()) + " stages");
  const StageInfo& dp = p2[0].stages[0];
  std::vector<int> taps(c.worker_count(), 0);
  for (int w = 0; w < c.worker_count(); w++) {
    if (p2[w].stage >= 0 && p1[w].stage < 0)
      throw InputError("plan: device " + c.worker(w).id +
                       " joins only after the switch; pac-run needs every data-parallel device in phase 1");
    if (p1[w].stage >= 0) taps[w] = p1[w].layer_end() + 1 - (p1[w].layer_begin() == 0 ? 0 : p1[w].layer_begin() + 1);
  }
  std::vector<int64_t> ids;
  json hashes = json::array(), dps = json::array();
  for (const Example* e : samples) {
    ids.push_back(e->id);
    hashes.push_back(hash_hex(tokens_hash(e->tokens)));
  }
  std::vector<int> owner = switch_owners(ids, holders, dp.devices, dp.shares, taps);
  for (int d : dp.devices) dps.push_back({{"id", c.worker(d).id}, {"address", c.worker(d).address}});
  json start = {{"op", "switch"}, {"samples", ids}, {"hashes", hashes}, {"owners", owner}, {"dp_devices", dps}};
  if (trace) start["trace"] = true;
  if (dp.devices.size() > 1) {
    std::string host = address_host(c.worker(dp.devices[0]).address);
    start["dp_store"] = {{"host", host}, {"port", tcp_free_port(host)}};
  }
  std::vector<int> involved;
  for (int w = 0; w < c.worker_count(); w++) {
    if (p1[w].stage < 0 && p2[w].stage < 0) continue;
    json f = start;
    f["dp_rank"] = p2[w].stage >= 0 ? p2[w].group_rank : -1;
    c.connection(w).send_json(MsgType::Start, f);
    involved.push_back(w);
  }
  SwitchResult r;
  r.owners = owner;
  for (int w : involved) {
    json j = result_wait(c, w, wait);
    r.results.push_back(j);
    r.workers.push_back(w);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

std::vector<std::string> pac_save_parts(Coordinator& c, const std::vector<Assignment>& as, const std::string& dir,
                                        Millis wait) {
  std::vector<std::string> paths;
  if (as.empty()) return paths;
  for (int s = 0; s < static_cast<int>(as[0].stages.size()); s++) {
    int w = as[0].stages[s].devices[0];
    std::string path = dir + "/side-stage" + std::to_string(s) + ".safetensors";
    c.run_step(w, {{"op", "save"}, {"path", path}}, wait);
    paths.push_back(path);
  }
  return paths;
}

}  // namespace pac
