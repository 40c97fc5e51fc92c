// Bit-level views of float and the round-to-nearest-even step shared by every narrow format.
// Integer arithmetic only, so host and device produce the same bits.
#pragma once

#include <cstdint>

#include "atom/numeric/host_device.hpp"

namespace atom {

ATOM_HD constexpr std::uint32_t bits_of(float x) {
  return __builtin_bit_cast(std::uint32_t, x);
}
ATOM_HD constexpr float float_of(std::uint32_t bits) {
  return __builtin_bit_cast(float, bits);
}

inline constexpr std::uint32_t float_sign_mask = 0x80000000u;
inline constexpr std::uint32_t float_abs_mask = 0x7fffffffu;
inline constexpr std::uint32_t float_inf_bits = 0x7f800000u;
inline constexpr std::uint32_t float_quiet_nan_bits = 0x7fc00000u;

ATOM_HD constexpr bool is_nan_bits(std::uint32_t bits) {
  return (bits & float_abs_mask) > float_inf_bits;
}
ATOM_HD constexpr bool is_finite_bits(std::uint32_t bits) {
  return (bits & float_abs_mask) < float_inf_bits;
}

// 2^e for -126 <= e <= 127, built from the exponent field so it is exact.
ATOM_HD constexpr float exact_pow2(int e) {
  return float_of(static_cast<std::uint32_t>(e + 127) << 23);
}

// Rounds the magnitude |x| (given as its bits, finite and below the format's saturation point) to
// a minifloat with `mant_bits` stored mantissa bits and minimum normal exponent `emin`, ties to
// even. Returns the magnitude code (exponent field << mant_bits | mantissa); the rounding carry
// moves into the exponent field by plain addition, and subnormals fall out of the same shift.
ATOM_HD constexpr std::uint32_t round_magnitude_rne(std::uint32_t abs_bits, int mant_bits,
                                                    int emin) {
  if (abs_bits < 0x00800000u) return 0;  // float subnormals lie far below every narrow format
  const int exponent = static_cast<int>(abs_bits >> 23) - 127;
  const std::uint32_t significand = (abs_bits & 0x007fffffu) | 0x00800000u;
  const int below_emin = exponent < emin ? emin - exponent : 0;
  const int shift = 23 - mant_bits + below_emin;
  if (shift > 24) return 0;  // below half the smallest subnormal
  std::uint32_t q = significand >> shift;
  const std::uint32_t rest = significand & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (q & 1u))) ++q;
  if (below_emin > 0) return q;
  return (static_cast<std::uint32_t>(exponent - emin) << mant_bits) + q;
}

}  // namespace atom
