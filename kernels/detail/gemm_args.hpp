// What every MXFP4 GEMM kernel reads: the activation in its logical layout, the preshuffled
// weight, the bf16 output, and the integer block arithmetic both backends share.
#pragma once

#include <cstdint>

#include "atom/core/tensor.hpp"
#include "atom/gpu/runtime.hpp"
#include "atom/numeric/numeric.hpp"

namespace atom::kernels {

struct A4W4Args {
  const std::uint8_t* a_packed;  // [m, k / 2], rows a_stride bytes apart, 4-byte aligned
  index_t a_stride;
  const std::uint8_t* a_scale;  // e8m0 codes [m, k / 32], rows a_scale_stride apart
  index_t a_scale_stride;
  const std::uint8_t* w_packed;  // preshuffled codes
  const std::uint8_t* w_scale;   // preshuffled e8m0 codes
  bf16* out;                     // [m, n], rows out_stride apart
  index_t out_stride;
  int m;
  int n;
  int k;
  int k_tiles;  // k tiles of the weight layout
};

// Which row of `a` and of `out` each of a CTA's rows is. The dense GEMM's rows are consecutive
// from `first`; the routed expert GEMM (kernels/detail/moe_rows.hpp) gathers the rows that share
// an expert.
struct DenseRows {
  int first = 0;
  __device__ int a(int i) const { return first + i; }
  __device__ int out(int i) const { return first + i; }
};

// 2 * e2m1(code) as an integer in [-12, 12]: magnitudes 0, 1, 2, 3, 4, 6, 8, 12 packed in nibbles.
__device__ inline int e2m1_twice(std::uint32_t code) {
  const int magnitude = static_cast<int>((0xC8643210u >> (4u * (code & 7u))) & 0xFu);
  return (code & 8u) ? -magnitude : magnitude;
}

// to_float(e8m0{s}) with selects instead of branches: in the decode kernels a branch here sits
// between the weight loads and delays the later ones until the first have arrived.
__device__ inline float scale_value(std::uint32_t s) {
  std::uint32_t bits = s << 23;
  bits = s == 0u ? 0x00400000u : bits;
  bits = s == 255u ? float_quiet_nan_bits : bits;
  return float_of(bits);
}

// The integer sum c from an int32 sum that started at 0x4B400000 (the float 1.5 * 2^23): its bits
// are the float 1.5 * 2^23 + c, so one exact subtraction gives c (|c| < 2^22), instead of an
// int-to-float conversion (a quarter-rate instruction on NVIDIA).
__device__ inline float unbias(int d) {
  return float_of(static_cast<std::uint32_t>(d)) - 12582912.0f;
}

// The factor that turns a block's sum of (2 e2m1) x (2 e2m1) products into its value:
// sa * sw / 4. A power of two, so each step is exact while it stays at or above 2^-149; a NaN
// scale gives NaN.
__device__ inline float block_factor(std::uint8_t sa, std::uint8_t sw) {
  return __fmul_rn(__fmul_rn(to_float(e8m0{sa}), 0.25f), to_float(e8m0{sw}));
}

}  // namespace atom::kernels
