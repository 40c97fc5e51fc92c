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
#include <utility>
#include <vector>

#include "atom/gpu/arch.hpp"
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

namespace atom::gpu {

// The device current on this host thread.
inline int current_device() {
  int device = 0;
  ATOM_GPU_CHECK(hipGetDevice(&device));
  return device;
}

// compute() for `device`, asked once per host thread and device: a fact of the device or of the
// code loaded for it. Each call site (its own lambda type) keeps its own answers.
template <class F>
auto once_per_device(int device, F compute) -> decltype(compute()) {
  thread_local std::vector<std::pair<int, decltype(compute())>> known;
  for (const auto& [d, answer] : known)
    if (d == device) return answer;
  known.emplace_back(device, compute());
  return known.back().second;
}

// The PTX architecture that `kernel`'s code loaded for the current device was compiled for, as
// major * 10 + minor (90 for sm_90): what its device code may assume, which can be older than
// the card (code compiled for sm_80 and run on sm_90 answers 80).
inline int compiled_arch(const void* kernel) {
  hipFuncAttributes attr;
  ATOM_GPU_CHECK(hipFuncGetAttributes(&attr, kernel));
  return attr.ptxVersion;
}

// Whether this library's device code, as loaded for the current device, was compiled for sm_90 or
// newer on NVIDIA, i.e. its kernels wait in start_after_prior_grid(). Asked once per device and
// host thread.
bool programmatic_launches();

// Launches one of atom's kernels, checked: kernel<<<grid, block, shared, stream>>>(args...), and
// where programmatic_launches(), as a programmatic dependent of the stream's previous kernel, so
// that its launch overlaps that kernel's run. Its first statement is start_after_prior_grid()
// (atom/gpu/arch.hpp; a test holds every kernel of kernels/ to it), so each kernel of a stream
// still sees every write of the kernels before it, in eager launches and in captured graphs alike.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared,
            hipStream_t stream, const Args&... args) {
#if defined(__CUDACC__) && !defined(__HIPCC__)
  if (programmatic_launches()) {
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = shared;
    config.stream = stream;
    config.attrs = &attr;
    config.numAttrs = 1;
    ATOM_GPU_CHECK(cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...));
    return;
  }
#endif
  kernel<<<grid, block, shared, stream>>>(args...);
  ATOM_GPU_CHECK(hipGetLastError());
}

}  // namespace atom::gpu
