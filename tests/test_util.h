// Helpers shared by the tests (any folder).
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
