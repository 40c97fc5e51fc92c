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
