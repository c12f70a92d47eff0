// Helpers shared by the core_* and planner_* tests.
#pragma once
#include <functional>
#include <string>

#include "src/common/error.h"

// The message of the InputError `f` throws, "" when it throws none.
inline std::string input_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const pac::InputError& e) {
    return e.what();
  }
  return "";
}
