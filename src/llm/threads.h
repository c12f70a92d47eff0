// CPU threads for LibTorch's math.
#pragma once

namespace pac {

// Sets the threads LibTorch's CPU math uses: its intra-op pool *and* OpenBLAS's own
// pthread pool. Debian's libopenblas0-pthread does not follow at::set_num_threads and
// keeps one thread per core, so without this "1 thread" silently uses every core and
// "2 threads" oversubscribes them (measured with pac-profile: docs/profiling.md).
// n <= 0 leaves both as they are. Also pins the C heap (compute_heap_pin, src/common/heap.h).
void compute_threads_set(int n);

// OpenBLAS's current thread count, or -1 when no OpenBLAS is loaded.
int openblas_threads();

}  // namespace pac
