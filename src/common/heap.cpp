#include "src/common/heap.h"

#include <malloc.h>

namespace pac {

void compute_heap_pin() {
  static const bool pinned = [] {
    // Setting M_MMAP_THRESHOLD also turns off glibc's dynamic adjustment of both.
    return mallopt(M_MMAP_THRESHOLD, 256 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 512 << 20) == 1;
  }();
  (void)pinned;
}

}  // namespace pac
