// Small cgroup and CPU-accounting helpers shared by pac-profile's CPU quota
// (src/llm/profiler.cpp), the emulated testbed (exec/testbed.cpp) and the runtime's
// reports. No torch.
#pragma once
#include <string>

namespace pac {

// This process's cgroup path for a v1 controller ("cpu", "memory") or v2 (""), from
// /proc/self/cgroup; "" for the root (so "/sys/fs/cgroup/cpu" + path + "/x" works).
std::string cgroup_own(const std::string& controller);

// Writes `text` into a cgroup control file (one write(2), as the kernel wants it);
// false with `why` (when given) naming the file and the error.
bool cgroup_write(const std::string& path, const std::string& text, std::string* why);

// CPU seconds (user + system, all threads) this process has used so far (getrusage).
// Workers put it in every step result, so a run can say how much of the host its
// devices and its coordinator used (report fields cpu_s, coordinator_cpu_s).
double process_cpu_s();

}  // namespace pac
