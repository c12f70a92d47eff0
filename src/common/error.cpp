#include "src/common/error.h"

#include <cstdio>
#include <exception>

namespace pac {

std::string error_where(const std::string& file, const std::string& path, const std::string& what) {
  std::string s;
  if (!file.empty()) s += file + ": ";
  if (!path.empty()) s += path + ": ";
  return s + what;
}

void throw_input(const std::string& file, const std::string& path, const std::string& what) {
  throw InputError(error_where(file, path, what));
}

int run_main(const char* tool, const std::function<int()>& body) {
  try {
    return body();
  } catch (const InputError& e) {
    std::fprintf(stderr, "%s: error: %s\n", tool, e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", tool, e.what());
    return 1;
  }
}

}  // namespace pac
