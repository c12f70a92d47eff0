// Errors and exit codes shared by every PAC tool.
//
// Two kinds of failure, two exit codes (design.md):
//   InputError   -> exit 2: the user gave us something wrong (file, field, value).
//                   The message names the file, the JSON path and what was expected.
//   RuntimeError -> exit 1: the input was fine but running it failed (a peer timed
//                   out, a device ran out of memory, a disk write failed).
#pragma once
#include <functional>
#include <stdexcept>
#include <string>

namespace pac {

struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct RuntimeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// "<file>: <path>: <what>" with empty parts left out, e.g.
// "scenarios/home.json: $.network.bandwidth_mbps: expected a number > 0, got -5".
std::string error_where(const std::string& file, const std::string& path, const std::string& what);

[[noreturn]] void throw_input(const std::string& file, const std::string& path, const std::string& what);

// Runs a tool's body and maps exceptions to exit codes: InputError -> 2, anything
// else -> 1, with one "<tool>: error: ..." line on stderr.
int run_main(const char* tool, const std::function<int()>& body);

}  // namespace pac
