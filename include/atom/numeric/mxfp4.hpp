// MXFP4 (OCP Microscaling Formats v1.0): blocks of mx_block e2m1 elements sharing one e8m0 scale.
// e2m1: sign bit 3, 2 exponent bits with bias 1, 1 mantissa bit; magnitudes 0, 0.5, 1, 1.5, 2, 3,
// 4, 6. e8m0: an unsigned power-of-two exponent with bias 127; 0xFF is NaN.
// Packing: element 2i in the low nibble of byte i, element 2i+1 in the high nibble.
// Scales down to 2^-127 make float subnormals part of the arithmetic: device code must be built
// without flush-to-zero (no fast-math) to match the host.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "atom/numeric/float_bits.hpp"
#include "atom/numeric/host_device.hpp"

namespace atom {

inline constexpr int mx_block = 32;
inline constexpr float e2m1_max = 6.0f;
inline constexpr int e2m1_emax = 2;  // exponent of the largest e2m1 normal, 4 = 2^2

ATOM_HD constexpr float e2m1_to_float(std::uint8_t code) {
  const int exponent_field = (code >> 1) & 0x3;
  const int mantissa = code & 0x1;
  // Magnitude in halves: subnormal m, normal (2 + m) << (e - 1).
  const int halves = exponent_field == 0 ? mantissa : (2 + mantissa) << (exponent_field - 1);
  const float magnitude = static_cast<float>(halves) * 0.5f;
  return (code & 0x8) ? -magnitude : magnitude;
}

// The midpoint between the magnitudes of codes c and c + 1.
constexpr float e2m1_midpoint(std::uint8_t c) {
  return 0.5f * (e2m1_to_float(c) + e2m1_to_float(static_cast<std::uint8_t>(c + 1)));
}
static_assert(e2m1_midpoint(0) == 0.25f && e2m1_midpoint(1) == 0.75f && e2m1_midpoint(2) == 1.25f &&
                  e2m1_midpoint(3) == 1.75f && e2m1_midpoint(4) == 2.5f &&
                  e2m1_midpoint(5) == 3.5f && e2m1_midpoint(6) == 5.0f,
              "to_e2m1's thresholds are the midpoints of the e2m1 grid");

// Round to nearest even on the e2m1 grid, saturating to +-6 (also for +-inf). NaN has no e2m1
// code; it maps to the saturated code with its sign (0x7 or 0xF) — in a block, the e8m0 scale
// carries the NaN. -0 maps to 0x8. Below 6 the magnitude's code is the number of grid midpoints
// under it, a tie counting when it rounds up to an even code (the midpoints after odd codes):
// comparisons without branches, which is what random data needs (the generic
// round_magnitude_rne gives the same codes, tested exhaustively, at a few times the cost).
ATOM_HD constexpr std::uint8_t to_e2m1(float x) {
  const std::uint32_t u = bits_of(x);
  const std::uint32_t abs_bits = u & float_abs_mask;
  const auto sign = static_cast<std::uint8_t>((u >> 28) & 0x8u);
  if (abs_bits >= bits_of(e2m1_max)) return static_cast<std::uint8_t>(sign | 0x7u);
  const float a = float_of(abs_bits);
  const int code = (a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) +
                   (a >= 3.5f) + (a > 5.0f);
  return static_cast<std::uint8_t>(sign | code);
}

struct e8m0 {
  std::uint8_t bits;
};

inline constexpr std::uint8_t e8m0_nan_code = 0xff;

// 2^(bits - 127); code 0 is 2^-127, a float subnormal; 0xFF is NaN.
ATOM_HD constexpr float to_float(e8m0 s) {
  if (s.bits == e8m0_nan_code) return float_of(float_quiet_nan_bits);
  if (s.bits == 0) return float_of(0x00400000u);
  return float_of(static_cast<std::uint32_t>(s.bits) << 23);
}

// floor(log2(|x|)) for finite nonzero x, read from the bits (float subnormals included).
ATOM_HD constexpr int floor_log2_bits(std::uint32_t abs_bits) {
  const int exponent_field = static_cast<int>(abs_bits >> 23);
  if (exponent_field != 0) return exponent_field - 127;
  int msb = 22;
  while (((abs_bits >> msb) & 1u) == 0) --msb;
  return msb - 149;
}

// The OCP scale: shared_exp = floor(log2(amax)) - emax(e2m1), clamped below at -127 (the largest
// finite float gives 125, so no upper clamp is reachable). amax is read as |amax|. amax == 0 (an
// all-zero block) gives code 0, i.e. 2^-127, the same value the clamp gives to tiny blocks; NaN or
// inf gives the NaN scale 0xFF.
ATOM_HD constexpr e8m0 mx_scale_for(float amax) {
  const std::uint32_t abs_bits = bits_of(amax) & float_abs_mask;
  if (abs_bits >= float_inf_bits) return e8m0{e8m0_nan_code};
  if (abs_bits == 0) return e8m0{0};
  const int shared_exp = floor_log2_bits(abs_bits) - e2m1_emax;
  const int clamped = shared_exp < -127 ? -127 : shared_exp;
  return e8m0{static_cast<std::uint8_t>(clamped + 127)};
}

// 1 / to_float(s) for a finite scale, exact: the exponents -125..127 are all float normals.
ATOM_HD constexpr float inverse_scale(e8m0 s) {
  return exact_pow2(127 - static_cast<int>(s.bits));
}

ATOM_HD inline void check_mx_block_size(int n) {
  if (n >= 1 && n <= mx_block) return;
#if defined(__CUDA_ARCH__)
  __trap();
#elif defined(__HIP_DEVICE_COMPILE__)
  __builtin_trap();
#else
  throw std::invalid_argument("MXFP4 block size n=" + std::to_string(n) +
                              " is out of range; expected 1..32");
#endif
}

// Quantizes x[0..n) (1 <= n <= 32) into ceil(n/2) packed bytes and one scale. A block holding NaN
// or inf gets the NaN scale and all-zero element codes. Out-of-range n throws on the host and
// traps on the device.
ATOM_HD inline void quantize_mx_block(const float* x, int n, std::uint8_t* packed, e8m0* scale) {
  check_mx_block_size(n);
  // For non-NaN floats the order of |x| bits is the order of |x|; NaN bits exceed inf's.
  std::uint32_t amax_bits = 0;
  for (int i = 0; i < n; ++i) {
    const std::uint32_t a = bits_of(x[i]) & float_abs_mask;
    amax_bits = a > amax_bits ? a : amax_bits;
  }
  const e8m0 s = mx_scale_for(float_of(amax_bits > float_inf_bits ? float_inf_bits : amax_bits));
  *scale = s;
  const bool nan_scale = s.bits == e8m0_nan_code;
  const float inv = nan_scale ? 0.0f : inverse_scale(s);
  for (int i = 0; i < n; i += 2) {
    const std::uint8_t lo = nan_scale ? 0 : to_e2m1(x[i] * inv);
    const std::uint8_t hi = (nan_scale || i + 1 >= n) ? 0 : to_e2m1(x[i + 1] * inv);
    packed[i / 2] = static_cast<std::uint8_t>(lo | (hi << 4));
  }
}

// Element i of a packed block. A NaN scale gives the quiet NaN 0x7FC00000 itself: multiplying by
// NaN would leave the NaN's bits to the hardware, which differ between host and device.
ATOM_HD constexpr float mxfp4_value(const std::uint8_t* packed, std::int64_t i, e8m0 scale) {
  if (scale.bits == e8m0_nan_code) return float_of(float_quiet_nan_bits);
  const std::uint8_t byte = packed[i / 2];
  const auto code = static_cast<std::uint8_t>((i & 1) ? byte >> 4 : byte & 0xf);
  return e2m1_to_float(code) * to_float(scale);
}

// Writes n (1 <= n <= 32) floats; a NaN scale gives NaN for every element.
ATOM_HD inline void dequantize_mx_block(const std::uint8_t* packed, int n, e8m0 scale, float* out) {
  check_mx_block_size(n);
  for (int i = 0; i < n; ++i) out[i] = mxfp4_value(packed, i, scale);
}

}  // namespace atom
