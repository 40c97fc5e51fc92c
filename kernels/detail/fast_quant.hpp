// The quantizers' inner loop without a division or an emulated rounding per element, giving the
// host's bits (atom/numeric): FP8 codes of x / scale, e2m1 codes of x * 2^-e.
//
// x / scale: scale is shared by a row or group, so 1 / scale is computed once (correctly
// rounded) and each quotient is q = x * rcp refined by one residual step, q + (x - q * scale) *
// rcp, with both operations fused. Markstein's theorem makes that the correctly rounded quotient
// when rcp is the rounded reciprocal, q is within one ulp and the residual is exact; that holds
// for quotients of magnitude 2^-12 to 2^10 once the scale lies in [2^-64, 2^64] (smaller
// quotients become FP8 zero either way; their sign is restored). The quantizers divide values by
// their own amax / 448, so every quotient is at most 448 (or NaN). Other scales (zero rows give
// 1, so only tiny or huge rows, inf and NaN get there) take the plain division.
#pragma once

#include <cstdint>

#include "reduce.hpp"

namespace atom::kernels {

// Divisor of a row or group with its rounded reciprocal.
struct Fp8Divisor {
  float scale;
  float rcp;
  bool fast;

  __device__ explicit Fp8Divisor(float s)
      : scale(s), rcp(div(1.0f, s)), fast(s >= 0x1p-64f && s <= 0x1p64f) {}

  // x / scale, rounded to nearest even, when `fast`; NaN x keeps its sign as on the host.
  __device__ float quotient(float x) const {
    const float q = mul(x, rcp);
    const float residual = __fmaf_rn(-q, scale, x);
    const float refined = __fmaf_rn(residual, rcp, q);
    return float_of((bits_of(refined) & float_abs_mask) | (bits_of(x) & float_sign_mask));
  }
};

// to_fp8<e4m3fn>(lo).bits | to_fp8<e4m3fn>(hi).bits << 8. The conversion instruction rounds and
// saturates as to_fp8 does; the host keeps a NaN's sign, so the sign bits are set from the inputs.
__device__ inline std::uint32_t fp8x2(float lo, float hi) {
  if constexpr (gpu::fp8_e4m3fn_cvt) {
    std::uint32_t codes = 0;
    asm("{\n\t.reg .b16 c;\n\t.reg .f32 a, b;\n\tmov.b32 a, %1;\n\tmov.b32 b, %2;\n\t"
        "cvt.rn.satfinite.e4m3x2.f32 c, a, b;\n\tcvt.u32.u16 %0, c;\n\t}"
        : "=r"(codes)
        : "r"(bits_of(hi)), "r"(bits_of(lo)));
    return codes | ((bits_of(lo) >> 24) & 0x80u) | ((bits_of(hi) >> 16) & 0x8000u);
  } else {
    return static_cast<std::uint32_t>(to_fp8<Fp8Kind::e4m3fn>(lo).bits) |
           (static_cast<std::uint32_t>(to_fp8<Fp8Kind::e4m3fn>(hi).bits) << 8);
  }
}

// Eight codes of x[j] / d.scale, code j in byte j.
__device__ inline uint2 fp8x8(const float* x, const Fp8Divisor& d) {
  std::uint32_t pairs[4];
  if (d.fast) {
#pragma unroll
    for (int j = 0; j < 4; ++j) pairs[j] = fp8x2(d.quotient(x[2 * j]), d.quotient(x[2 * j + 1]));
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j)
      pairs[j] = fp8x2(div(x[2 * j], d.scale), div(x[2 * j + 1], d.scale));
  }
  return make_uint2(pairs[0] | (pairs[1] << 16), pairs[2] | (pairs[3] << 16));
}

// to_e2m1(v) with integer and fused operations on the bits: for |v| >= 1 the float is rounded to
// one mantissa bit in place (ties to even, the carry moving into the exponent) and its exponent
// rebased to e2m1's bias, saturating at code 7; below 1 the code counts halves, RNE(2 |v|), which
// one fused add of 1.5 * 2^23 rounds. NaN saturates with its sign, as on the host.
__device__ inline std::uint32_t e2m1_code(float v) {
  const std::uint32_t u = bits_of(v);
  const std::uint32_t a = u & float_abs_mask;
  constexpr std::uint32_t one = 0x3f800000u;
  constexpr std::uint32_t rebase = (one >> 22) - 2u;  // 1.0 is code 2
  const std::uint32_t rounded = (a + 0x1fffffu + ((a >> 22) & 1u) - (rebase << 22)) >> 22;
  const std::uint32_t normal = rounded < 7u ? rounded : 7u;
  constexpr float halves_magic = 0x1.8p23f;
  const std::uint32_t halves =
      bits_of(__fmaf_rn(float_of(a), 2.0f, halves_magic)) - bits_of(halves_magic);
  return (a < one ? halves : normal) | ((u >> 28) & 0x8u);
}

}  // namespace atom::kernels
