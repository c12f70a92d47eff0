#include "src/common/json_in.h"

#include <algorithm>
#include <cmath>

#include "src/common/error.h"
#include "src/common/fs.h"

namespace pac {

std::string json_describe(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return std::string("the boolean ") + (v.get<bool>() ? "true" : "false");
    case json::value_t::string: {
      std::string s = v.get<std::string>();
      if (s.size() > 40) s = s.substr(0, 40) + "...";
      return "the string \"" + s + "\"";
    }
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
    case json::value_t::number_float: return "the number " + v.dump();
    case json::value_t::array: return "an array of " + std::to_string(v.size());
    case json::value_t::object: return "an object";
    default: return "a value of unsupported type";
  }
}

JsonIn JsonIn::load_file(const std::string& file) {
  std::string text = file_read(file);
  auto doc = std::make_shared<json>();
  try {
    *doc = json::parse(text);
  } catch (const json::parse_error& e) {
    throw InputError(file + ": not valid JSON at byte " + std::to_string(e.byte) + ": " + e.what());
  }
  const json* node = doc.get();
  return JsonIn(std::move(doc), node, file, "$");
}

JsonIn JsonIn::from(json doc, const std::string& file) {
  auto d = std::make_shared<json>(std::move(doc));
  const json* node = d.get();
  return JsonIn(std::move(d), node, file, "$");
}

void JsonIn::fail(const std::string& what) const { throw_input(file_, path_, what); }

void JsonIn::fail_at(const std::string& key, const std::string& what) const {
  throw_input(file_, child_path(key), what);
}

std::string JsonIn::child_path(const std::string& key) const { return path_ + "." + key; }

void JsonIn::require_object() const {
  if (!node_->is_object()) fail("expected an object, got " + json_describe(*node_));
}

bool JsonIn::has(const std::string& key) const { return node_->is_object() && node_->contains(key); }

size_t JsonIn::size() const {
  if (!node_->is_array() && !node_->is_object()) fail("expected an array or object, got " + json_describe(*node_));
  return node_->size();
}

JsonIn JsonIn::at(const std::string& key) const {
  require_object();
  auto it = node_->find(key);
  if (it == node_->end()) fail_at(key, "missing (required)");
  return JsonIn(root_, &*it, file_, child_path(key));
}

std::optional<JsonIn> JsonIn::find(const std::string& key) const {
  require_object();
  auto it = node_->find(key);
  if (it == node_->end() || it->is_null()) return std::nullopt;
  return JsonIn(root_, &*it, file_, child_path(key));
}

JsonIn JsonIn::at(size_t index) const {
  if (!node_->is_array()) fail("expected an array, got " + json_describe(*node_));
  if (index >= node_->size())
    fail("index " + std::to_string(index) + " out of range (" + std::to_string(node_->size()) + " elements)");
  return JsonIn(root_, &(*node_)[index], file_, path_ + "[" + std::to_string(index) + "]");
}

std::vector<JsonIn> JsonIn::items() const {
  if (!node_->is_array()) fail("expected an array, got " + json_describe(*node_));
  std::vector<JsonIn> out;
  out.reserve(node_->size());
  for (size_t i = 0; i < node_->size(); i++) out.push_back(at(i));
  return out;
}

std::vector<std::string> JsonIn::keys() const {
  require_object();
  std::vector<std::string> out;
  for (auto it = node_->begin(); it != node_->end(); ++it) out.push_back(it.key());
  return out;
}

static std::string range_text(double lo, double hi) {
  auto fmt = [](double v) {
    json j = v;
    if (std::floor(v) == v && std::fabs(v) < 1e15) j = static_cast<int64_t>(v);
    return j.dump();
  };
  bool has_lo = lo > -1e299, has_hi = hi < 1e299;
  if (has_lo && has_hi) return " in [" + fmt(lo) + ", " + fmt(hi) + "]";
  if (has_lo) return " >= " + fmt(lo);
  if (has_hi) return " <= " + fmt(hi);
  return "";
}

double JsonIn::as_number(double lo, double hi) const {
  if (!node_->is_number()) fail("expected a number" + range_text(lo, hi) + ", got " + json_describe(*node_));
  double v = node_->get<double>();
  if (!std::isfinite(v) || v < lo || v > hi)
    fail("expected a number" + range_text(lo, hi) + ", got " + json_describe(*node_));
  return v;
}

int64_t JsonIn::as_int(int64_t lo, int64_t hi) const {
  double dlo = lo == INT64_MIN ? -1e300 : static_cast<double>(lo);
  double dhi = hi == INT64_MAX ? 1e300 : static_cast<double>(hi);
  bool integral = node_->is_number_integer() || node_->is_number_unsigned() ||
                  (node_->is_number_float() && std::floor(node_->get<double>()) == node_->get<double>());
  if (!integral) fail("expected an integer" + range_text(dlo, dhi) + ", got " + json_describe(*node_));
  double d = node_->get<double>();
  if (d < dlo || d > dhi) fail("expected an integer" + range_text(dlo, dhi) + ", got " + json_describe(*node_));
  return node_->is_number_unsigned() ? static_cast<int64_t>(node_->get<uint64_t>()) : node_->get<int64_t>();
}

std::string JsonIn::as_string() const {
  if (!node_->is_string()) fail("expected a string, got " + json_describe(*node_));
  return node_->get<std::string>();
}

bool JsonIn::as_bool() const {
  if (!node_->is_boolean()) fail("expected true or false, got " + json_describe(*node_));
  return node_->get<bool>();
}

double JsonIn::number(const std::string& key, double lo, double hi) const { return at(key).as_number(lo, hi); }

double JsonIn::number_or(const std::string& key, double def, double lo, double hi) const {
  auto v = find(key);
  return v ? v->as_number(lo, hi) : def;
}

int64_t JsonIn::integer(const std::string& key, int64_t lo, int64_t hi) const { return at(key).as_int(lo, hi); }

int64_t JsonIn::integer_or(const std::string& key, int64_t def, int64_t lo, int64_t hi) const {
  auto v = find(key);
  return v ? v->as_int(lo, hi) : def;
}

std::string JsonIn::string(const std::string& key) const { return at(key).as_string(); }

std::string JsonIn::string_or(const std::string& key, const std::string& def) const {
  auto v = find(key);
  return v ? v->as_string() : def;
}

static std::string choices_text(std::initializer_list<const char*> choices) {
  std::string s;
  for (const char* c : choices) {
    if (!s.empty()) s += ", ";
    s += std::string("\"") + c + "\"";
  }
  return s;
}

std::string JsonIn::choice(const std::string& key, std::initializer_list<const char*> choices) const {
  JsonIn v = at(key);
  if (!v.is_string()) v.fail("expected one of " + choices_text(choices) + ", got " + json_describe(v.raw()));
  std::string s = v.as_string();
  for (const char* c : choices)
    if (s == c) return s;
  v.fail("expected one of " + choices_text(choices) + ", got " + json_describe(v.raw()));
}

std::string JsonIn::choice_or(const std::string& key, const std::string& def,
                              std::initializer_list<const char*> choices) const {
  return has(key) && !node_->at(key).is_null() ? choice(key, choices) : def;
}

bool JsonIn::boolean_or(const std::string& key, bool def) const {
  auto v = find(key);
  return v ? v->as_bool() : def;
}

void JsonIn::check_keys(const std::vector<std::string>& allowed) const {
  require_object();
  for (auto it = node_->begin(); it != node_->end(); ++it) {
    if (std::find(allowed.begin(), allowed.end(), it.key()) != allowed.end()) continue;
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    fail_at(it.key(), "unknown field (expected one of: " + list + ")");
  }
}

void JsonIn::check_keys(std::initializer_list<const char*> allowed) const {
  check_keys(std::vector<std::string>(allowed.begin(), allowed.end()));
}

}  // namespace pac
