#include "src/llm/threads.h"

#include "src/common/blas.h"
#include "src/common/heap.h"

#include <ATen/Parallel.h>

namespace pac {

// OpenBLAS's pool is found with openblas_symbol (src/common/blas.h): LibTorch reaches
// OpenBLAS through libblas.so.3, which may be another BLAS on other machines; then there
// is no second pool to set.
void compute_threads_set(int n) {
  compute_heap_pin();  // every process that computes runs the allocator pac-profile timed
  if (n <= 0) return;
  at::set_num_threads(n);
  using SetFn = void (*)(int);
  static SetFn set = reinterpret_cast<SetFn>(openblas_symbol("openblas_set_num_threads"));
  if (set) set(n);
}

int openblas_threads() {
  using GetFn = int (*)();
  static GetFn get = reinterpret_cast<GetFn>(openblas_symbol("openblas_get_num_threads"));
  return get ? get() : -1;
}

}  // namespace pac
