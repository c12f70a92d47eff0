#include "src/core/profile.h"

#include <cmath>
#include <cstdlib>
#include <iterator>

#include "src/common/error.h"
#include "src/common/fs.h"

namespace pac {

int dtype_bytes(const std::string& dtype) {
  if (dtype == "fp32") return 4;
  if (dtype == "fp16" || dtype == "bf16") return 2;
  throw InputError("unknown dtype \"" + dtype + "\" (expected fp32, fp16 or bf16)");
}

// Reads {"fp32": 1.2e11, "fp16": ...} style maps of positive numbers.
static std::map<std::string, double> rate_map_read(const JsonIn& j) {
  std::map<std::string, double> out;
  if (!j.is_object()) j.fail("expected an object of FLOP/s numbers, got " + json_describe(j.raw()));
  for (const std::string& k : j.keys()) out[k] = j.number(k, 1.0);
  return out;
}

DeviceProfile device_profile_from_json(const JsonIn& j) {
  j.check_keys({"name", "source", "notes", "peak_flops_fp32", "peak_flops_fp16", "eff_flops", "eff_flops_by_kind",
                "memory_bytes", "memory_total_bytes", "power_idle_w", "power_busy_w", "nic_bandwidth_bps",
                "nic_latency_s", "storage_read_bytes_per_s", "storage_write_bytes_per_s", "storage_write_record_s",
                "storage_read_record_s", "task_overhead_s", "step_overhead_s", "message_overhead_s",
                "sustained_quota", "throttle_delay_s", "cpu_work_factor", "first_step_bytes_per_s", "cached_first_step_bytes_per_s",
                "switch_local_s", "compute_jitter_cv", "corun_slowdown", "calibration"});
  DeviceProfile p;
  p.name = j.string("name");
  p.source = j.string_or("source", "");
  p.peak_flops_fp32 = j.number_or("peak_flops_fp32", 0, 0);
  p.peak_flops_fp16 = j.number_or("peak_flops_fp16", 0, 0);
  p.eff_flops = rate_map_read(j.at("eff_flops"));
  if (!p.eff_flops.count("fp32")) j.fail_at("eff_flops.fp32", "missing (required: the fp32 effective FLOP/s)");
  for (auto& kv : p.eff_flops) {
    if (kv.first != "fp32" && kv.first != "fp16" && kv.first != "bf16")
      j.fail_at("eff_flops." + kv.first, "unknown dtype (expected fp32, fp16 or bf16)");
  }
  if (auto k = j.find("eff_flops_by_kind")) p.eff_flops_by_kind = rate_map_read(*k);
  p.memory_bytes = j.number("memory_bytes", 1.0);
  p.power_idle_w = j.number("power_idle_w", 0);
  p.power_busy_w = j.number("power_busy_w", p.power_idle_w);
  p.nic_bandwidth_bps = j.number("nic_bandwidth_bps", 1.0);
  p.nic_latency_s = j.number_or("nic_latency_s", 0, 0, 10);
  p.storage_read_bytes_per_s = j.number("storage_read_bytes_per_s", 1.0);
  p.storage_write_bytes_per_s = j.number("storage_write_bytes_per_s", 1.0);
  p.storage_write_record_s = j.number_or("storage_write_record_s", 0, 0, 1);
  p.storage_read_record_s = j.number_or("storage_read_record_s", 0, 0, 1);
  p.task_overhead_s = j.number_or("task_overhead_s", 0, 0, 1);
  p.message_overhead_s = j.number_or("message_overhead_s", 0, 0, 1);
  p.step_overhead_s = j.number_or("step_overhead_s", 0, 0, 1);
  p.sustained_quota = j.number_or("sustained_quota", 0, 0, 1);
  p.throttle_delay_s = j.number_or("throttle_delay_s", 0, 0, 1);
  p.cpu_work_factor = j.number_or("cpu_work_factor", 1, 1, 100);
  p.first_step_bytes_per_s = j.number_or("first_step_bytes_per_s", 0, 0);
  p.cached_first_step_bytes_per_s = j.number_or("cached_first_step_bytes_per_s", 0, 0);
  p.switch_local_s = j.number_or("switch_local_s", 0, 0, 600);
  // At most 1/sqrt(3): the multiplier 1 + cv sqrt(3) (2u - 1) stays positive.
  p.compute_jitter_cv = j.number_or("compute_jitter_cv", 0, 0, 0.5);
  if (auto c = j.find("corun_slowdown")) {
    if (!c->is_object()) c->fail("expected an object of micro-batch size -> factor (>= 1), got " + json_describe(c->raw()));
    for (const std::string& k : c->keys()) {
      char* end = nullptr;
      long mb = std::strtol(k.c_str(), &end, 10);
      if (k.empty() || *end != '\0' || mb < 1 || mb > (1 << 20))
        c->fail_at(k, "expected a micro-batch size (a positive integer) as the key");
      p.corun_slowdown[static_cast<int>(mb)] = c->number(k, 1, 10);
    }
  }
  return p;
}

double corun_slowdown_at(const DeviceProfile& p, double samples) {
  const std::map<int, double>& m = p.corun_slowdown;
  if (m.empty()) return 1;
  auto hi = m.lower_bound(static_cast<int>(std::ceil(samples)));
  if (hi == m.begin()) return hi->second;
  if (hi == m.end()) return std::prev(hi)->second;
  auto lo = std::prev(hi);
  if (samples <= lo->first) return lo->second;
  double w = (samples - lo->first) / (hi->first - lo->first);
  return lo->second + w * (hi->second - lo->second);
}

json device_profile_to_json(const DeviceProfile& p) {
  json j;
  j["name"] = p.name;
  j["source"] = p.source;
  j["peak_flops_fp32"] = p.peak_flops_fp32;
  j["peak_flops_fp16"] = p.peak_flops_fp16;
  j["eff_flops"] = p.eff_flops;
  if (!p.eff_flops_by_kind.empty()) j["eff_flops_by_kind"] = p.eff_flops_by_kind;
  j["memory_bytes"] = p.memory_bytes;
  j["power_idle_w"] = p.power_idle_w;
  j["power_busy_w"] = p.power_busy_w;
  j["nic_bandwidth_bps"] = p.nic_bandwidth_bps;
  j["nic_latency_s"] = p.nic_latency_s;
  j["storage_read_bytes_per_s"] = p.storage_read_bytes_per_s;
  j["storage_write_bytes_per_s"] = p.storage_write_bytes_per_s;
  // Only when calibrated, so that plans of uncalibrated profiles stay as they were.
  if (p.storage_write_record_s > 0) j["storage_write_record_s"] = p.storage_write_record_s;
  if (p.storage_read_record_s > 0) j["storage_read_record_s"] = p.storage_read_record_s;
  if (p.task_overhead_s > 0) j["task_overhead_s"] = p.task_overhead_s;
  if (p.message_overhead_s > 0) j["message_overhead_s"] = p.message_overhead_s;
  if (p.step_overhead_s > 0) j["step_overhead_s"] = p.step_overhead_s;
  if (p.sustained_quota > 0) j["sustained_quota"] = p.sustained_quota;
  if (p.throttle_delay_s > 0) j["throttle_delay_s"] = p.throttle_delay_s;
  if (p.cpu_work_factor != 1) j["cpu_work_factor"] = p.cpu_work_factor;
  if (p.first_step_bytes_per_s > 0) j["first_step_bytes_per_s"] = p.first_step_bytes_per_s;
  if (p.cached_first_step_bytes_per_s > 0) j["cached_first_step_bytes_per_s"] = p.cached_first_step_bytes_per_s;
  if (p.switch_local_s > 0) j["switch_local_s"] = p.switch_local_s;
  if (p.compute_jitter_cv > 0) j["compute_jitter_cv"] = p.compute_jitter_cv;
  if (!p.corun_slowdown.empty()) {
    json c = json::object();
    for (auto& kv : p.corun_slowdown) c[std::to_string(kv.first)] = kv.second;
    j["corun_slowdown"] = c;
  }
  return j;
}

ModelConfig model_config_from_json(const JsonIn& j) {
  j.check_keys({"name", "source", "notes", "family", "encoder_layers", "decoder_layers", "hidden", "heads",
                "kv_heads", "ffn", "vocab", "max_seq", "tied_embeddings", "gated_ffn"});
  ModelConfig m;
  m.name = j.string("name");
  m.family = j.choice("family", {"llama", "t5", "bart"});
  if (m.family == "llama") {
    m.encoder_layers = (int)j.integer_or("encoder_layers", 0, 0, 0);
    m.decoder_layers = (int)j.integer("decoder_layers", 1, 100000);
  } else {
    m.encoder_layers = (int)j.integer("encoder_layers", 1, 100000);
    m.decoder_layers = (int)j.integer("decoder_layers", 1, 100000);
  }
  m.hidden = (int)j.integer("hidden", 1, 1 << 20);
  m.heads = (int)j.integer("heads", 1, m.hidden);
  if (m.hidden % m.heads != 0) j.fail_at("heads", "expected a divisor of hidden (" + std::to_string(m.hidden) + ")");
  m.kv_heads = (int)j.integer_or("kv_heads", m.heads, 1, m.heads);
  if (m.heads % m.kv_heads != 0) j.fail_at("kv_heads", "expected a divisor of heads (" + std::to_string(m.heads) + ")");
  m.ffn = (int)j.integer("ffn", 1, 1 << 24);
  m.vocab = (int)j.integer("vocab", 1, 1 << 24);
  m.max_seq = (int)j.integer("max_seq", 1, 1 << 24);
  m.tied_embeddings = j.boolean_or("tied_embeddings", true);
  m.gated_ffn = j.boolean_or("gated_ffn", m.family == "llama");
  return m;
}

json model_config_to_json(const ModelConfig& m) {
  json j;
  j["name"] = m.name;
  j["family"] = m.family;
  j["encoder_layers"] = m.encoder_layers;
  j["decoder_layers"] = m.decoder_layers;
  j["hidden"] = m.hidden;
  j["heads"] = m.heads;
  j["kv_heads"] = m.kv_heads;
  j["ffn"] = m.ffn;
  j["vocab"] = m.vocab;
  j["max_seq"] = m.max_seq;
  j["tied_embeddings"] = m.tied_embeddings;
  j["gated_ffn"] = m.gated_ffn;
  return j;
}

static std::string dir_of(const std::string& file) {
  size_t slash = file.find_last_of('/');
  return slash == std::string::npos ? "." : file.substr(0, slash);
}

std::string profiles_dir_resolve(const std::string& explicit_dir, const std::string& near_file) {
  if (!explicit_dir.empty()) return explicit_dir;
  if (const char* env = std::getenv("PAC_PROFILES_DIR")) {
    if (*env) return env;
  }
  if (!near_file.empty()) {
    std::string d = path_join(dir_of(near_file), "../profiles");
    if (file_exists(path_join(d, "devices"))) return d;
  }
  return "profiles";
}

// Shared by device and model references: inline object, path, or name in `sub`.
static JsonIn profile_ref_load(const JsonIn& ref, const std::string& profiles_dir, const std::string& sub) {
  if (ref.is_object()) return ref;
  std::string name = ref.as_string();
  if (name.empty()) ref.fail("expected a profile name, a .json path or an object, got an empty string");
  std::string file;
  if (name.size() > 5 && name.compare(name.size() - 5, 5, ".json") == 0) {
    file = name[0] == '/' ? name : path_join(dir_of(ref.file()), name);
  } else {
    file = path_join(path_join(profiles_dir, sub), name + ".json");
  }
  if (!file_exists(file)) ref.fail("unknown " + sub.substr(0, sub.size() - 1) + " profile \"" + name + "\" (no file " + file + ")");
  return JsonIn::load_file(file);
}

DeviceProfile device_profile_resolve(const JsonIn& ref, const std::string& profiles_dir) {
  return device_profile_from_json(profile_ref_load(ref, profiles_dir, "devices"));
}

ModelConfig model_config_resolve(const JsonIn& ref, const std::string& profiles_dir) {
  return model_config_from_json(profile_ref_load(ref, profiles_dir, "models"));
}

// The rate as timed (device_rate divides it by the profile's cpu_work_factor).
static double device_rate_timed(const DeviceProfile& p, const std::string& dtype, const std::string& kind,
                                int micro_batch) {
  const std::string at = kind + "@";
  auto it = p.eff_flops_by_kind.find(at + std::to_string(micro_batch));
  if (it != p.eff_flops_by_kind.end()) return it->second;
  // Between two timed sizes: the time per FLOP interpolated linearly in the size (a
  // data-parallel share of 5 rows lies between micro-batches 4 and 8); beyond them, the
  // nearest timed size's rate.
  int lo = 0, hi = 0;
  double r_lo = 0, r_hi = 0;
  for (auto k = p.eff_flops_by_kind.lower_bound(at); k != p.eff_flops_by_kind.end() && k->first.compare(0, at.size(), at) == 0; ++k) {
    int m = std::atoi(k->first.c_str() + at.size());
    if (m <= 0 || k->second <= 0) continue;
    if (m < micro_batch && m > lo) lo = m, r_lo = k->second;
    if (m > micro_batch && (hi == 0 || m < hi)) hi = m, r_hi = k->second;
  }
  if (lo > 0 && hi > 0) {
    double w = double(micro_batch - lo) / double(hi - lo);
    return 1.0 / ((1 - w) / r_lo + w / r_hi);
  }
  if (lo > 0) return r_lo;
  if (hi > 0) return r_hi;
  it = p.eff_flops_by_kind.find(kind);
  if (it != p.eff_flops_by_kind.end()) return it->second;
  // A backward rate not calibrated separately: the forward's.
  const std::string bwd = "_bwd";
  if (kind.size() > bwd.size() && kind.compare(kind.size() - bwd.size(), bwd.size(), bwd) == 0)
    return device_rate_timed(p, dtype, kind.substr(0, kind.size() - bwd.size()), micro_batch);
  it = p.eff_flops.find(dtype);
  if (it != p.eff_flops.end()) return it->second;
  it = p.eff_flops.find("fp32");
  return it != p.eff_flops.end() ? it->second : 1.0;
}

double device_rate(const DeviceProfile& p, const std::string& dtype, const std::string& kind, int micro_batch) {
  return device_rate_timed(p, dtype, kind, micro_batch) / p.cpu_work_factor;
}

bool profile_has_kind(const DeviceProfile& p, const std::string& kind) {
  for (const auto& kv : p.eff_flops_by_kind)
    if (kv.first == kind || kv.first.compare(0, kind.size() + 1, kind + "@") == 0) return true;
  return false;
}

}  // namespace pac
