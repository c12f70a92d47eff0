// Progress lines for long work: "epoch 2/3 step 40/120 loss 1.234 1520 tok/s ETA 0:42".
// Prints at most every `min_interval_s` seconds (and always the last step), to stderr,
// so stdout stays clean for --json output.
#pragma once
#include <chrono>
#include <string>

namespace pac {

class Progress {
 public:
  Progress(std::string what, long total, double min_interval_s = 1.0);
  // `done` units finished so far; `extra` is appended (e.g. "loss 1.23 812 tok/s").
  void update(long done, const std::string& extra = "");
  double elapsed_s() const;
  void set_quiet(bool q) { quiet_ = q; }

 private:
  std::string what_;
  long total_;
  double min_interval_s_;
  bool quiet_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

// "1:05:09" / "4:02" / "0:07"
std::string format_duration(double seconds);

}  // namespace pac
