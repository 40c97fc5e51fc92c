// Architecture traits for device code: warp size and FP8 flavour are facts of the target, asked
// for by name rather than tested with #ifdef inside kernels.
#pragma once

#include "atom/numeric/fp8.hpp"

namespace atom::gpu {

#if defined(__HIP_DEVICE_COMPILE__) && \
    (defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__))
inline constexpr int warp_size = 64;
inline constexpr Fp8Kind native_fp8 = Fp8Kind::e4m3fnuz;  // gfx94x matrix cores read fnuz
#elif defined(__HIP_DEVICE_COMPILE__)
inline constexpr int warp_size = 64;
inline constexpr Fp8Kind native_fp8 = Fp8Kind::e4m3fn;
#else
inline constexpr int warp_size = 32;
inline constexpr Fp8Kind native_fp8 = Fp8Kind::e4m3fn;
#endif

}  // namespace atom::gpu

namespace atom::gpu {

// Whether this build's device code targets NVIDIA (sm_80 or newer), so that warp-level mma.sync
// and prmt may be issued through inline PTX. nvcc's host pass sees the same answer, so launchers
// pick kernels with it; on AMD (and in plain host code) it is false.
#if defined(__CUDACC__) && !defined(__HIPCC__)
inline constexpr bool nvidia_ptx = true;
#else
inline constexpr bool nvidia_ptx = false;
#endif

}  // namespace atom::gpu

// Cross-device polling for device code: a clock for bounded waits, and 16-byte loads that read
// memory every time, for data that a peer device pushes.
#if defined(__CUDACC__) || defined(__HIPCC__)
#include <cstdint>

#include "atom/gpu/runtime.hpp"

namespace atom::gpu {

// Nanoseconds of a clock that runs at a fixed rate whatever the multiprocessor clock does.
__device__ inline std::uint64_t clock_ns() {
#if defined(__HIP_DEVICE_COMPILE__)
  return wall_clock64() * 10;  // gfx90a and gfx94x run the wall clock at 100 MHz
#elif defined(__CUDA_ARCH__)
  std::uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
#else
  return 0;
#endif
}

// Never served from a cache line that a peer's write would leave stale. Each 2-byte lane is read
// whole (the 16 bytes need not be one access).
__device__ inline uint4 load_volatile_16(const void* p) {
#if defined(__HIP_DEVICE_COMPILE__)
  const auto* w = static_cast<const std::uint32_t*>(p);
  uint4 v;
  v.x = __hip_atomic_load(w, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_SYSTEM);
  v.y = __hip_atomic_load(w + 1, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_SYSTEM);
  v.z = __hip_atomic_load(w + 2, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_SYSTEM);
  v.w = __hip_atomic_load(w + 3, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_SYSTEM);
  return v;
#elif defined(__CUDA_ARCH__)
  uint4 v;
  asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p)
               : "memory");
  return v;
#else
  return *static_cast<const uint4*>(p);
#endif
}

// Programmatic dependent launch (NVIDIA sm_90 and newer): a kernel that gpu::launch starts may
// begin while the stream's previous kernel still runs, once every block of that kernel has called
// allow_dependents() or exited; wait_for_prior_grid() returns once the previous kernel has
// completed and its memory is visible. Elsewhere both are no-ops (and gpu::launch a plain launch).
__device__ inline void allow_dependents() {
#if defined(__CUDA_ARCH__) && !defined(__HIPCC__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ inline void wait_for_prior_grid() {
#if defined(__CUDA_ARCH__) && !defined(__HIPCC__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// The first statement of every kernel that gpu::launch starts: once the stream's previous kernel
// has completed (its writes visible), the next kernel may launch, so that its blocks are resident
// and its launch is paid while this one runs. At most two kernels of a stream are in flight: the
// next one waits here for this one. First, before any early return: a kernel that returned
// without waiting could complete before its predecessor, and the kernel after it, which waits only
// for this one, would read what the predecessor had not written yet.
__device__ inline void start_after_prior_grid() {
  wait_for_prior_grid();
  allow_dependents();
}

// Fetches [p, p + bytes) into L2 in the background: a hint for bytes the kernel reads soon
// (cp.async.bulk.prefetch, NVIDIA sm_90 and newer; elsewhere, or where p is not 16-byte aligned,
// nothing). L2 is where every writer's bytes meet, so a prefetch never makes a read stale, even of
// bytes that the previous kernel still writes.
__device__ inline void prefetch_l2(const void* p, std::uint32_t bytes) {
#if defined(__CUDA_ARCH__) && !defined(__HIPCC__) && __CUDA_ARCH__ >= 900
  if (reinterpret_cast<std::uintptr_t>(p) % 16 == 0 && bytes >= 16)
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes / 16 * 16)
                 : "memory");
#else
  (void)p;
  (void)bytes;
#endif
}

// start_after_prior_grid() for a kernel that knows before the wait which bytes it reads first:
// before() (prefetch_l2 of its weights, say) runs while the previous kernel still runs, so that
// the fetch overlaps that kernel's tail and this kernel's launch. before() may read only what no
// kernel of the stream writes: kernel arguments and the block's own coordinates.
template <class Before>
__device__ inline void start_after_prior_grid(Before before) {
  before();
  start_after_prior_grid();
}

}  // namespace atom::gpu
#endif

namespace atom::gpu {

// Whether device code converts a pair of floats to OCP e4m3fn codes with one instruction
// (cvt.rn.satfinite.e4m3x2.f32, NVIDIA sm_89 and newer): round to nearest even, finite values
// past the largest code saturating to it. Only the device pass of such a target sees true, so it
// may choose code inside device functions, never a kernel's signature or a launch.
#if defined(__CUDA_ARCH__) && !defined(__HIPCC__) && __CUDA_ARCH__ >= 890
inline constexpr bool fp8_e4m3fn_cvt = true;
#else
inline constexpr bool fp8_e4m3fn_cvt = false;
#endif

}  // namespace atom::gpu
