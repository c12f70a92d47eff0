#include "src/common/blas.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cctype>
#include <fstream>
#include <cstdlib>
#include <cstring>

namespace pac {

void* openblas_symbol(const char* name) { return dlsym(RTLD_DEFAULT, name); }

std::string blas_core_name() {
  using CoreNameFn = char* (*)();
  auto fn = reinterpret_cast<CoreNameFn>(openblas_symbol("openblas_get_corename"));
  if (!fn) return "";
  const char* name = fn();
  return name ? std::string(name) : std::string();
}

// OpenBLAS kernels written before AVX: on a CPU with AVX2 + FMA, being on one of them
// means the library did not recognise the CPU (its kernels for newer x86 all use AVX).
static bool blas_core_is_pre_avx(const std::string& core) {
  static const char* old[] = {"prescott", "core2", "penryn", "dunnington", "nehalem", "katmai",
                              "coppermine", "northwood", "banias", "atom", "opteron", "barcelona"};
  std::string lower;
  for (char c : core) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const char* o : old) {
    if (lower == o) return true;
  }
  return false;
}

void blas_kernel_fix(char** argv) {
  const char* off = std::getenv("PAC_BLAS_FIX");
  if (off && std::strcmp(off, "0") == 0) return;
  if (std::getenv("PAC_BLAS_REEXEC") || std::getenv("OPENBLAS_CORETYPE")) return;
  std::string core = blas_core_name();
  if (core.empty() || !blas_core_is_pre_avx(core)) return;
  __builtin_cpu_init();
  const char* want = nullptr;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    want = "SkylakeX";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    want = "Haswell";
  }
  if (!want) return;  // an old CPU: the old kernel is the right one
  setenv("OPENBLAS_CORETYPE", want, 1);
  setenv("PAC_BLAS_REEXEC", "1", 1);
  execv("/proc/self/exe", argv);
  // exec failed (no /proc?): carry on with the slow kernel; children still get the variable.
}

std::string host_cpu_id() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, name, family, model, stepping;
  auto value = [](const std::string& l) {
    size_t colon = l.find(':');
    size_t b = colon == std::string::npos ? l.size() : l.find_first_not_of(" \t", colon + 1);
    return b == std::string::npos ? std::string() : l.substr(b);
  };
  while (std::getline(in, line)) {
    if (line.empty()) break;  // the first processor's block is enough
    if (line.rfind("model name", 0) == 0) name = value(line);
    else if (line.rfind("cpu family", 0) == 0) family = value(line);
    else if (line.rfind("model", 0) == 0 && line.rfind("model name", 0) != 0) model = value(line);
    else if (line.rfind("stepping", 0) == 0) stepping = value(line);
  }
  if (name.empty()) return "";
  return name + " (family " + family + " model " + model + " stepping " + stepping + ")";
}

}  // namespace pac
