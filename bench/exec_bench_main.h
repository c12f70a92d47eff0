// Shared main() of the exec_* benchmarks: like BENCHMARK_MAIN, but the JSON results go
// to bench/results/<json_name> unless the caller passes its own --benchmark_out.
#pragma once
#include <benchmark/benchmark.h>

#include <cstring>
#include <string>
#include <vector>

#include "src/common/blas.h"
#include "src/common/fs.h"

inline int exec_bench_main(int argc, char** argv, const char* json_name, void (*register_all)()) {
  pac::blas_kernel_fix(argv);
  std::vector<char*> args(argv, argv + argc);
  // CMake compiles with absolute paths, so __FILE__ locates the repository (bench
  // targets get no PAC_SOURCE_DIR definition).
  std::string self = __FILE__;
  size_t cut = self.rfind("/bench/");
  std::string out_dir = (cut == std::string::npos ? std::string(".") : self.substr(0, cut)) + "/bench/results";
  std::string out_flag = "--benchmark_out=" + out_dir + "/" + json_name;
  std::string fmt_flag = "--benchmark_out_format=json";
  bool has_out = false;
  for (int i = 1; i < argc; i++)
    if (std::strncmp(argv[i], "--benchmark_out=", 16) == 0) has_out = true;
  if (!has_out) {
    pac::dir_create(out_dir);
    args.push_back(&out_flag[0]);
    args.push_back(&fmt_flag[0]);
  }
  int n = int(args.size());
  benchmark::Initialize(&n, args.data());
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
