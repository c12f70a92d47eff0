#include "exec/pac_driver.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "src/common/error.h"

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
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    std::string why = std::strerror(errno);
    ::close(fd);
    throw RuntimeError("cannot bind " + host + ":0 to find a free port: " + why);
  }
  ::close(fd);
  return ntohs(sa.sin_port);
}

static std::string host_of(const std::string& address) {
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
    std::string host = host_of(c.worker(st.devices[0]).address);
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
    acks.push_back(c.assign(w, f));
  }
  return acks;
}

PacStepResult pac_train_step(Coordinator& c, const std::vector<Assignment>& as, int step, double lr,
                             const std::vector<const Example*>& batch, Millis wait) {
  json tokens = json::array(), mask = json::array();
  for (const Example* e : batch) {
    tokens.push_back(e->tokens);
    json m = json::array();
    for (uint8_t v : e->mask) m.push_back(static_cast<int>(v));
    mask.push_back(m);
  }
  json start = {{"op", "train"}, {"step", step}, {"lr", lr}, {"tokens", tokens}, {"mask", mask}};
  for (int w = 0; w < c.worker_count(); w++)
    if (as[w].stage >= 0) c.connection(w).send_json(MsgType::Start, start);
  PacStepResult r;
  for (int w = 0; w < c.worker_count(); w++) {
    if (as[w].stage < 0) continue;
    Frame f = c.wait_from(w, MsgType::Result, wait);
    json j = json::parse(f.payload, nullptr, false);
    if (j.is_discarded() || !j.is_object())
      throw RuntimeError("device " + c.worker(w).id + " sent a Result that is not a JSON object");
    r.loss += j.value("loss_part", 0.0);
    r.max_seconds = std::max(r.max_seconds, j.value("seconds", 0.0));
    r.results.push_back(j);
  }
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
