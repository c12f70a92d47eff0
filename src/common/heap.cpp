#include "src/common/heap.h"

#include <malloc.h>

namespace pac {

void compute_heap_pin() {
  static const bool pinned = [] {
    // Setting M_MMAP_THRESHOLD also turns off glibc's dynamic adjustment of both. One
    // arena: every thread allocates from the main heap, which those two settings govern.
    // A thread of its own gets an arena of 64 MiB mmap'd heaps that glibc unmaps when
    // they empty, and a step whose activations span several of them faulted them in
    // again every step (heap.h).
    return mallopt(M_MMAP_THRESHOLD, 256 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 512 << 20) == 1 &&
           mallopt(M_ARENA_MAX, 1) == 1;
  }();
  (void)pinned;
}

}  // namespace pac
