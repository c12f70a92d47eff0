#include "src/core/scenario.h"

#include <set>

#include "src/common/error.h"
#include "src/core/profile.h"

namespace pac {

const std::vector<std::string>& strategy_names() {
  static const std::vector<std::string> names = {"pac", "pac-opt", "standalone", "eddl", "ecofl", "asteroid"};
  return names;
}

int Scenario::device_index(const std::string& id) const {
  for (size_t i = 0; i < devices.size(); i++) {
    if (devices[i].id == id) return (int)i;
  }
  return -1;
}

static MethodSpec method_read(const JsonIn& j) {
  j.check_keys({"kind", "reduction_k", "lora_rank", "lora_alpha", "lora_mlp", "adapter_bottleneck", "cache",
                "cache_dtype", "dtype", "optimizer"});
  MethodSpec m;
  m.kind = j.choice("kind", {"full", "lora", "adapters", "parallel_adapters"});
  m.reduction_k = (int)j.integer_or("reduction_k", m.reduction_k, 1, 1 << 20);
  m.lora_rank = (int)j.integer_or("lora_rank", m.lora_rank, 1, 1 << 20);
  m.lora_alpha = j.number_or("lora_alpha", m.lora_alpha, 0);
  m.lora_mlp = j.boolean_or("lora_mlp", m.lora_mlp);
  m.adapter_bottleneck = (int)j.integer_or("adapter_bottleneck", m.adapter_bottleneck, 1, 1 << 20);
  m.cache = j.boolean_or("cache", m.kind == "parallel_adapters");
  if (m.cache && m.kind != "parallel_adapters")
    j.fail_at("cache", "the activation cache needs kind \"parallel_adapters\" (the backbone must be frozen and untouched)");
  m.cache_dtype = j.choice_or("cache_dtype", m.cache_dtype, {"fp32", "fp16", "bf16"});
  m.dtype = j.choice_or("dtype", m.dtype, {"fp32", "fp16", "bf16"});
  m.optimizer = j.choice_or("optimizer", m.optimizer, {"adamw"});
  return m;
}

static DataSpec data_read(const JsonIn& j, const ModelConfig& model) {
  j.check_keys({"task", "samples", "seq_len", "mini_batch", "micro_batches", "target_len"});
  DataSpec d;
  d.task = j.string_or("task", "");
  d.samples = j.integer("samples", 1);
  d.seq_len = (int)j.integer_or("seq_len", d.seq_len, 1, model.max_seq);
  d.mini_batch = (int)j.integer_or("mini_batch", d.mini_batch, 1, 1 << 20);
  d.micro_batches = (int)j.integer_or("micro_batches", std::min(d.micro_batches, d.mini_batch), 1, d.mini_batch);
  d.target_len = (int)j.integer_or("target_len", 0, 0, model.max_seq);
  return d;
}

// Bandwidth in either unit: "<key>_mbps" (what people quote) or "<key>_bps".
static double bps_read(const JsonIn& j, const std::string& key, double def, bool required) {
  for (const char* unit : {"_mbps", "_bps"}) {
    if (!j.has(key + unit)) continue;
    double v = j.number(key + unit);
    if (!(v > 0)) j.fail_at(key + unit, std::string("expected a number > 0 (") + (unit[1] == 'm' ? "megabits" : "bits") +
                                            " per second), got " + json_describe(j.at(key + unit).raw()));
    return unit[1] == 'm' ? v * 1e6 : v;
  }
  if (required) j.fail_at(key + "_mbps", "missing (required: a number > 0, megabits per second)");
  return def;
}

static double seconds_read(const JsonIn& j, const std::string& key, double def) {
  if (j.has(key + "_ms")) return j.number(key + "_ms", 0, 1e7) * 1e-3;
  return j.number_or(key + "_s", def, 0, 1e4);
}

Scenario scenario_from_json(const JsonIn& j, const std::string& profiles_dir_in) {
  j.check_keys({"name", "description", "model", "method", "data", "epochs", "cluster", "network", "strategy",
                "stages", "faults", "format_version"});
  std::string profiles_dir = profiles_dir_resolve(profiles_dir_in, j.file());
  Scenario s;
  s.file = j.file();
  s.name = j.string_or("name", "");
  s.model = model_config_resolve(j.at("model"), profiles_dir);
  if (auto m = j.find("method")) s.method = method_read(*m);
  s.data = data_read(j.at("data"), s.model);
  s.epochs = (int)j.integer_or("epochs", 1, 1, 100000);
  s.strategy = j.choice_or("strategy", "pac", {"pac", "pac-opt", "standalone", "eddl", "ecofl", "asteroid"});

  JsonIn cluster = j.at("cluster");
  cluster.check_keys({"devices", "host_cores", "cfs_phases"});
  s.host_cores = cluster.number_or("host_cores", 0, 0, 1 << 20);
  s.cfs_phases_aligned = cluster.choice_or("cfs_phases", "spread", {"spread", "aligned"}) == "aligned";
  JsonIn devs = cluster.at("devices");
  std::set<std::string> ids;
  for (const JsonIn& dj : devs.items()) {
    dj.check_keys({"id", "profile", "address", "cpu_quota", "count", "memory_bytes"});
    DeviceProfile prof = device_profile_resolve(dj.at("profile"), profiles_dir);
    // What-if override of the usable memory (e.g. a budget shared with other apps).
    prof.memory_bytes = dj.number_or("memory_bytes", prof.memory_bytes, 1.0);
    int64_t count = dj.integer_or("count", 1, 1, 4096);
    std::string id = dj.string_or("id", prof.name);
    if (count > 1 && dj.has("address")) dj.fail_at("address", "not allowed together with \"count\" (give each device its own entry)");
    for (int64_t c = 0; c < count; c++) {
      DeviceSpec d;
      d.id = count > 1 ? id + std::to_string(c) : id;
      d.profile = prof;
      d.address = dj.string_or("address", "");
      d.cpu_quota = dj.number_or("cpu_quota", 0, 0, 4096);
      if (!ids.insert(d.id).second) dj.fail_at("id", "duplicate device id \"" + d.id + "\" (ids must be unique)");
      s.devices.push_back(d);
    }
  }
  if (s.devices.empty()) devs.fail("expected at least one device");

  if (auto nj = j.find("network")) {
    nj->check_keys({"kind", "bandwidth_mbps", "bandwidth_bps", "latency_ms", "latency_s", "links"});
    s.network.kind = nj->choice_or("kind", "switched", {"switched", "shared"});
    s.network.bandwidth_bps = bps_read(*nj, "bandwidth", s.network.bandwidth_bps, true);
    s.network.latency_s = seconds_read(*nj, "latency", s.network.latency_s);
    if (auto lj = nj->find("links")) {
      for (const JsonIn& l : lj->items()) {
        l.check_keys({"a", "b", "bandwidth_mbps", "bandwidth_bps", "latency_ms", "latency_s"});
        LinkSpec link;
        link.a = l.string("a");
        link.b = l.string("b");
        if (s.device_index(link.a) < 0) l.fail_at("a", "unknown device id \"" + link.a + "\"");
        if (s.device_index(link.b) < 0) l.fail_at("b", "unknown device id \"" + link.b + "\"");
        if (link.a == link.b) l.fail_at("b", "expected a device other than \"a\"");
        link.bandwidth_bps = bps_read(l, "bandwidth", s.network.bandwidth_bps, false);
        link.latency_s = seconds_read(l, "latency", s.network.latency_s);
        s.network.links.push_back(link);
      }
    }
  }

  s.stages = (int)j.integer_or("stages", 0, 0, 1 << 20);
  if (s.stages > s.model.total_layers())
    j.fail_at("stages", "expected at most the model's " + std::to_string(s.model.total_layers()) + " layers, got " +
                            std::to_string(s.stages));
  if (s.stages > (int)s.devices.size())
    j.fail_at("stages", "expected at most the " + std::to_string(s.devices.size()) + " devices, got " +
                            std::to_string(s.stages));

  if (auto fj = j.find("faults")) {
    for (const JsonIn& f : fj->items()) {
      f.check_keys({"kind", "device", "peer", "at_time_s", "at_iteration", "factor"});
      FaultSpec fs;
      fs.kind = f.choice("kind", {"leave", "fail", "slowdown", "link_degrade"});
      fs.device = f.string("device");
      if (s.device_index(fs.device) < 0) f.fail_at("device", "unknown device id \"" + fs.device + "\"");
      fs.peer = f.string_or("peer", "");
      if (!fs.peer.empty() && s.device_index(fs.peer) < 0) f.fail_at("peer", "unknown device id \"" + fs.peer + "\"");
      fs.at_time_s = f.number_or("at_time_s", -1, 0);
      fs.at_iteration = f.integer_or("at_iteration", -1, 0);
      if ((fs.at_time_s >= 0) == (fs.at_iteration >= 0)) f.fail("expected exactly one of at_time_s / at_iteration");
      fs.factor = f.number_or("factor", 1, 1e-9);
      s.faults.push_back(fs);
    }
  }
  return s;
}

Scenario scenario_load(const std::string& file, const std::string& profiles_dir) {
  return scenario_from_json(JsonIn::load_file(file), profiles_dir);
}

json scenario_to_json(const Scenario& s) {
  json j;
  j["name"] = s.name;
  j["model"] = model_config_to_json(s.model);
  const MethodSpec& m = s.method;
  j["method"] = {{"kind", m.kind},         {"reduction_k", m.reduction_k},
                 {"lora_rank", m.lora_rank}, {"lora_alpha", m.lora_alpha},
                 {"lora_mlp", m.lora_mlp},   {"adapter_bottleneck", m.adapter_bottleneck},
                 {"cache", m.cache},         {"cache_dtype", m.cache_dtype},
                 {"dtype", m.dtype},         {"optimizer", m.optimizer}};
  j["data"] = {{"task", s.data.task},
               {"samples", s.data.samples},
               {"seq_len", s.data.seq_len},
               {"mini_batch", s.data.mini_batch},
               {"micro_batches", s.data.micro_batches},
               {"target_len", s.data.target_len}};
  j["epochs"] = s.epochs;
  json devs = json::array();
  for (const DeviceSpec& d : s.devices) {
    json dj = {{"id", d.id}, {"profile", device_profile_to_json(d.profile)}};
    if (!d.address.empty()) dj["address"] = d.address;
    if (d.cpu_quota > 0) dj["cpu_quota"] = d.cpu_quota;
    devs.push_back(dj);
  }
  j["cluster"] = {{"devices", devs}};
  if (s.host_cores > 0) j["cluster"]["host_cores"] = s.host_cores;
  if (s.cfs_phases_aligned) j["cluster"]["cfs_phases"] = "aligned";
  json links = json::array();
  for (const LinkSpec& l : s.network.links)
    links.push_back({{"a", l.a}, {"b", l.b}, {"bandwidth_bps", l.bandwidth_bps}, {"latency_s", l.latency_s}});
  j["network"] = {{"kind", s.network.kind},
                  {"bandwidth_bps", s.network.bandwidth_bps},
                  {"latency_s", s.network.latency_s},
                  {"links", links}};
  j["strategy"] = s.strategy;
  if (s.stages > 0) j["stages"] = s.stages;
  json faults = json::array();
  for (const FaultSpec& f : s.faults) {
    json fj = {{"kind", f.kind}, {"device", f.device}, {"factor", f.factor}};
    if (!f.peer.empty()) fj["peer"] = f.peer;
    if (f.at_time_s >= 0) fj["at_time_s"] = f.at_time_s;
    if (f.at_iteration >= 0) fj["at_iteration"] = f.at_iteration;
    faults.push_back(fj);
  }
  j["faults"] = faults;
  return j;
}

static const LinkSpec* link_find(const Scenario& s, int a, int b) {
  const std::string& ia = s.devices[a].id;
  const std::string& ib = s.devices[b].id;
  for (const LinkSpec& l : s.network.links) {
    if ((l.a == ia && l.b == ib) || (l.a == ib && l.b == ia)) return &l;
  }
  return nullptr;
}

double link_bandwidth_bps(const Scenario& s, int a, int b) {
  if (const LinkSpec* l = link_find(s, a, b)) return l->bandwidth_bps;
  // Switched: the slower NIC and the switch port rate limit the pair. Shared: the
  // medium's capacity, which every concurrent transfer splits (the simulator and
  // pac-opt account for the sharing; this is the rate of a lone transfer).
  double nic = std::min(s.devices[a].profile.nic_bandwidth_bps, s.devices[b].profile.nic_bandwidth_bps);
  return std::min(s.network.bandwidth_bps, nic);
}

double link_latency_s(const Scenario& s, int a, int b) {
  // Every message also pays the runtime's per-message cost at both ends (calibrated
  // testbed profiles; 0 otherwise), whatever the wire between them.
  double software = s.devices[a].profile.message_overhead_s + s.devices[b].profile.message_overhead_s;
  if (const LinkSpec* l = link_find(s, a, b)) return l->latency_s + software;
  return s.network.latency_s + std::max(s.devices[a].profile.nic_latency_s, s.devices[b].profile.nic_latency_s) +
         software;
}

}  // namespace pac
