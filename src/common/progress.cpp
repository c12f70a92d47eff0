#include "src/common/progress.h"

#include <cstdio>

namespace pac {

std::string format_duration(double seconds) {
  if (seconds < 0 || seconds != seconds) return "?";
  long s = static_cast<long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
  return buf;
}

Progress::Progress(std::string what, long total, double min_interval_s)
    : what_(std::move(what)), total_(total), min_interval_s_(min_interval_s) {
  start_ = last_ = std::chrono::steady_clock::now();
}

double Progress::elapsed_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(long done, const std::string& extra) {
  auto now = std::chrono::steady_clock::now();
  bool last = done >= total_;
  if (quiet_ || (!last && std::chrono::duration<double>(now - last_).count() < min_interval_s_)) return;
  last_ = now;
  double el = elapsed_s();
  double eta = done > 0 ? el * static_cast<double>(total_ - done) / static_cast<double>(done) : -1;
  std::fprintf(stderr, "%s %ld/%ld%s%s elapsed %s ETA %s\n", what_.c_str(), done, total_,
               extra.empty() ? "" : " ", extra.c_str(), format_duration(el).c_str(),
               format_duration(eta).c_str());
  std::fflush(stderr);
}

}  // namespace pac
