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
