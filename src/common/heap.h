// The C heap under LibTorch's CPU tensors.
#pragma once

namespace pac {

// Fixes glibc malloc's mmap and trim thresholds (once per process; later calls do
// nothing). By default glibc serves blocks >= 128 KiB with mmap, raises that threshold
// as such blocks are freed, and gives the heap's top back to the kernel past 2x it: so
// whether a layer's activations (0.1-10 MiB here) come from reused heap or from fresh,
// zero-filled pages depends on what the process allocated before, and the same layer
// has two speeds. Measured with pac-profile (stories260K, 1 thread, three runs each way,
// 2026-11-23): the no-grad layer at micro-batch 8 took 10.9 / 8.1 / 15.5 ms with the
// default and 5.6 / 5.9 / 8.4 ms pinned, and the profile that priced a whole fidelity
// suite had caught the slow mode at micro-batch 4 (7.8 ms where 2.9 ms is usual).
// Pinned, blocks below 256 MiB always come from the heap and up to 512 MiB of free heap
// top is kept, so pac-profile and the workers time the same allocator regime. The
// price: a process keeps its peak heap (peak memory is what the planner budgets anyway).
// The heap is also one arena for all threads (M_ARENA_MAX 1): a worker computes the
// cached epochs on another thread than the one that loaded the model, and that thread's
// own arena (64 MiB heaps, unmapped when empty) gave a 16-row cached step of
// llama-d512-l8 fresh pages every step: 0.37-0.74 s where pac-profile times 0.16 s,
// and 0.16-0.19 s with one arena (pac-run --local, one device, 2026-12-07, EPYC;
// perf: page faults and memset where sgemm should be). At 8 rows the step's memory fit
// and the two agreed, which is why the fidelity suite's two-device plans did not show it.
// Called first thing in main() of the programs that compute (with blas_kernel_fix) and
// by compute_threads_set.
void compute_heap_pin();

}  // namespace pac
