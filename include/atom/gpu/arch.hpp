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
