#pragma once
// Memory accounting of a process (no torch headers: pac-worker's main includes this).
#include <cstdint>

namespace pac {

// LibTorch CPU allocation accounting: wraps the CPU allocator so that live and peak
// bytes of tensor memory can be read (the CPU analogue of PyTorch's
// max_memory_allocated, and what pac-sim's per-device memory counts). Call enable once,
// early (before tensors exist: a block allocated before must not be freed through it).
void torch_memory_tracking_enable();
int64_t torch_memory_live_bytes();
int64_t torch_memory_peak_bytes();
void torch_memory_peak_reset();
// Peak resident set size of this process (VmHWM) and a reset via /proc/self/clear_refs.
int64_t rss_peak_bytes();
void rss_peak_reset();
// Both peaks restart from now (a worker's new assignment: a long-lived worker's earlier
// runs must not show in this one's peaks).
void memory_peaks_reset();

}  // namespace pac
