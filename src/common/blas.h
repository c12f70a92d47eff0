// Which OpenBLAS kernel this process runs on, and a fix for OpenBLAS picking its
// generic one on a CPU it does not know. No torch: works on whatever BLAS the
// process loaded (LibTorch links Debian's libblas.so.3, usually OpenBLAS).
#pragma once
#include <string>

namespace pac {

// A function of the OpenBLAS the process loaded, looked up at run time (so that programs
// without it, and machines whose libblas.so.3 is another BLAS, still link and run);
// nullptr when there is none.
void* openblas_symbol(const char* name);

// OpenBLAS's kernel name ("SkylakeX", "Haswell", "Prescott", ...), "" when the process
// did not load OpenBLAS (the reference BLAS, or no torch at all).
std::string blas_core_name();

// Call first thing in main() of a program that runs LibTorch. OpenBLAS 0.3.21 (Debian 12)
// picks its kernel from the CPU model number; on a model it does not know (measured here:
// family 6 model 207, a 2026 Xeon) it falls back to "Prescott", its SSE3 kernel, and
// every fp32 matmul runs 3-6x slower than the CPU can (a d512 layer at 16-28 GFLOP/s
// instead of 63-106). The kernel is chosen when the library loads, before main, and only
// the environment variable OPENBLAS_CORETYPE changes it. So when OpenBLAS chose a
// pre-AVX kernel on a CPU that has AVX2 + FMA (or AVX-512), this sets OPENBLAS_CORETYPE
// to the kernel the CPU supports (SkylakeX with AVX-512 F/BW/DQ/VL, else Haswell) and
// re-executes the program with the same arguments (same pid; once: a second start with
// PAC_BLAS_REEXEC set never does it again). Workers started by this process inherit the
// variable. A user's own OPENBLAS_CORETYPE, or PAC_BLAS_FIX=0, is left alone. Returns
// only when nothing needed changing (or exec failed: then it goes on, slower).
void blas_kernel_fix(char** argv);

// This CPU as /proc/cpuinfo names it: "<model name> (family F model M stepping S)", ""
// when unreadable. With blas_core_name() it is what a calibrated profile was measured on
// (calibration.cpu, calibration.blas_core): the fidelity harness recalibrates when
// either differs from the machine it runs on.
std::string host_cpu_id();

}  // namespace pac
