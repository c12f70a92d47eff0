// compute_threads_set governs OpenBLAS's own pool as well as LibTorch's (the bug it
// fixes: "1 thread" measured 2 cores' worth of GFLOP/s because OpenBLAS kept 2 threads).
#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include "src/llm/threads.h"

using namespace pac;

TEST(LlmThreads, SetsLibTorchAndOpenBlasPools) {
  if (openblas_threads() < 0) GTEST_SKIP() << "LibTorch is not using OpenBLAS here";
  compute_threads_set(1);
  EXPECT_EQ(at::get_num_threads(), 1);
  EXPECT_EQ(openblas_threads(), 1);
  compute_threads_set(2);
  EXPECT_EQ(at::get_num_threads(), 2);
  EXPECT_EQ(openblas_threads(), 2);
  compute_threads_set(0);  // leaves both alone
  EXPECT_EQ(openblas_threads(), 2);
}
