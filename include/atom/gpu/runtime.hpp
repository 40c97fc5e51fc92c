// Device code's view of the GPU runtime: HIP on AMD, HIP mapped onto CUDA on NVIDIA, and the
// error check every runtime call goes through. Included only by code that a GPU compiler builds.
#pragma once

#if defined(__HIPCC__)
#include <hip/hip_runtime.h>
#elif defined(__CUDACC__)
#include "atom/gpu/hip_on_cuda.hpp"
#else
#error "atom/gpu/runtime.hpp is for device code (nvcc or hipcc); host code uses atom/gpu/device.hpp"
#endif

#include <string>

#include "atom/gpu/device.hpp"

namespace atom::gpu {

[[noreturn]] inline void fail(hipError_t e, const char* what, const char* file, int line) {
  throw GpuError(std::string(what) + " failed at " + file + ":" + std::to_string(line) + ": " +
                 hipGetErrorString(e));
}

}  // namespace atom::gpu

// Every runtime call and every launch (ATOM_GPU_CHECK(hipGetLastError())) is checked.
#define ATOM_GPU_CHECK(expr)                                          \
  do {                                                                \
    const hipError_t atom_gpu_status_ = (expr);                       \
    if (atom_gpu_status_ != hipSuccess)                               \
      ::atom::gpu::fail(atom_gpu_status_, #expr, __FILE__, __LINE__); \
  } while (0)
