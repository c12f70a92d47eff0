// compute_threads_set governs OpenBLAS's own pool as well as LibTorch's (the bug it
// fixes: "1 thread" measured 2 cores' worth of GFLOP/s because OpenBLAS kept 2 threads).
#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include <cstdlib>
#include <malloc.h>

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

// compute_threads_set pins the C heap (src/common/heap.h): a 4 MiB tensor-sized block,
// which glibc's default would serve with mmap (threshold 128 KiB at start), comes from
// the heap afterwards, so mallinfo2's count of mmapped blocks does not grow while it is
// held; and freeing a 64 MiB block does not shrink the heap back (trim threshold 512 MiB).
TEST(LlmThreads, PinsTheHeapForTensorSizedBlocks) {
  compute_threads_set(1);
  size_t mmapped_before = mallinfo2().hblks;
  void* p = std::malloc(4 << 20);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(mallinfo2().hblks, mmapped_before);
  std::free(p);
  void* big = std::malloc(64 << 20);
  ASSERT_NE(big, nullptr);
  EXPECT_EQ(mallinfo2().hblks, mmapped_before);
  size_t arena_held = mallinfo2().arena;
  std::free(big);
  EXPECT_EQ(mallinfo2().arena, arena_held);  // kept for the next step's tensors
}
