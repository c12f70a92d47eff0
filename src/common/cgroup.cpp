#include "src/common/cgroup.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace pac {

std::string cgroup_own(const std::string& controller) {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  while (std::getline(in, line)) {
    size_t a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    std::string ctrls = line.substr(a + 1, b - a - 1);
    bool match = controller.empty() ? line.compare(0, 3, "0::") == 0
                                    : ("," + ctrls + ",").find("," + controller + ",") != std::string::npos;
    if (match) {
      std::string p = line.substr(b + 1);
      return p == "/" ? "" : p;
    }
  }
  return "";
}

bool cgroup_write(const std::string& path, const std::string& text, std::string* why) {
  int fd = ::open(path.c_str(), O_WRONLY);
  if (fd < 0 || ::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    if (why) *why = "cannot write \"" + text + "\" to " + path + ": " + std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return false;
  }
  ::close(fd);
  return true;
}

double process_cpu_s() {
  rusage u{};
  if (getrusage(RUSAGE_SELF, &u) != 0) return -1;
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

}  // namespace pac
