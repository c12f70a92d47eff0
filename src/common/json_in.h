// JsonIn: a read-only view of one JSON value that remembers which file it came from
// and its path inside it ("$.cluster.devices[2].profile"). Every accessor validates
// type and range and, on failure, throws InputError naming file, path and what was
// expected. Planner, simulator, runtime and trainer all read their inputs through it,
// so every bad-input message in PAC has the same shape.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace pac {

using json = nlohmann::json;

class JsonIn {
 public:
  // Parses a file; a parse error names the file and the byte offset.
  static JsonIn load_file(const std::string& file);
  // Wraps an in-memory document ("file" is only used in messages).
  static JsonIn from(json doc, const std::string& file = "<inline>");

  const std::string& file() const { return file_; }
  const std::string& path() const { return path_; }
  const json& raw() const { return *node_; }

  bool is_object() const { return node_->is_object(); }
  bool is_array() const { return node_->is_array(); }
  bool is_string() const { return node_->is_string(); }
  bool is_number() const { return node_->is_number(); }
  bool has(const std::string& key) const;
  size_t size() const;  // array length or object member count

  JsonIn at(const std::string& key) const;            // required member
  std::optional<JsonIn> find(const std::string& key) const;
  JsonIn at(size_t index) const;                      // array element
  std::vector<JsonIn> items() const;                  // array elements (requires array)
  std::vector<std::string> keys() const;              // object keys (requires object)

  // Typed reads of this value.
  double as_number(double lo = -1e300, double hi = 1e300) const;
  int64_t as_int(int64_t lo = INT64_MIN, int64_t hi = INT64_MAX) const;
  std::string as_string() const;
  bool as_bool() const;

  // Typed reads of a member; the *_or forms return `def` when the key is absent.
  double number(const std::string& key, double lo = -1e300, double hi = 1e300) const;
  double number_or(const std::string& key, double def, double lo = -1e300, double hi = 1e300) const;
  int64_t integer(const std::string& key, int64_t lo = INT64_MIN, int64_t hi = INT64_MAX) const;
  int64_t integer_or(const std::string& key, int64_t def, int64_t lo = INT64_MIN, int64_t hi = INT64_MAX) const;
  std::string string(const std::string& key) const;
  std::string string_or(const std::string& key, const std::string& def) const;
  // A string that must be one of `choices`.
  std::string choice(const std::string& key, std::initializer_list<const char*> choices) const;
  std::string choice_or(const std::string& key, const std::string& def,
                        std::initializer_list<const char*> choices) const;
  bool boolean_or(const std::string& key, bool def) const;

  // Rejects members not in `allowed` (catches typos like "bandwith_mbps").
  void check_keys(std::initializer_list<const char*> allowed) const;
  void check_keys(const std::vector<std::string>& allowed) const;

  [[noreturn]] void fail(const std::string& what) const;
  // Error for a member that may not exist yet.
  [[noreturn]] void fail_at(const std::string& key, const std::string& what) const;

 private:
  JsonIn(std::shared_ptr<const json> root, const json* node, std::string file, std::string path)
      : root_(std::move(root)), node_(node), file_(std::move(file)), path_(std::move(path)) {}
  void require_object() const;
  std::string child_path(const std::string& key) const;

  std::shared_ptr<const json> root_;  // keeps the document alive
  const json* node_;
  std::string file_;
  std::string path_;
};

// Short description of a JSON value for messages: 'a string "abc"', 'the number -5'.
std::string json_describe(const json& v);

}  // namespace pac
