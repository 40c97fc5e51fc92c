// FP8 e4m3 in its two flavours: OCP e4m3fn (bias 7, NaN 0x7F/0xFF, no inf) and e4m3fnuz (bias 8,
// the only NaN is 0x80, no negative zero, no inf). Encoding rounds to nearest even and saturates.
#pragma once

#include <cstdint>

#include "atom/numeric/float_bits.hpp"
#include "atom/numeric/host_device.hpp"

namespace atom {

enum class Fp8Kind : std::uint8_t { e4m3fn, e4m3fnuz };

template <Fp8Kind K>
struct fp8 {
  std::uint8_t bits;
};

using fp8_e4m3 = fp8<Fp8Kind::e4m3fn>;
using fp8_e4m3fnuz = fp8<Fp8Kind::e4m3fnuz>;

template <Fp8Kind K>
inline constexpr float fp8_max = K == Fp8Kind::e4m3fn ? 448.0f : 240.0f;

template <Fp8Kind K>
struct Fp8Format {
  static constexpr int mant_bits = 3;
  static constexpr int bias = K == Fp8Kind::e4m3fn ? 7 : 8;
  static constexpr int emin = 1 - bias;
  // Largest finite magnitude code: fn reserves S.1111.111 for NaN, fnuz uses all of exponent 15.
  static constexpr std::uint8_t max_code = K == Fp8Kind::e4m3fn ? 0x7e : 0x7f;
  static constexpr std::uint8_t nan_code = K == Fp8Kind::e4m3fn ? 0x7f : 0x80;
};

template <Fp8Kind K>
ATOM_HD constexpr bool is_nan(fp8<K> x) {
  if constexpr (K == Fp8Kind::e4m3fn) return (x.bits & 0x7fu) == 0x7fu;
  return x.bits == 0x80u;
}

template <Fp8Kind K>
ATOM_HD constexpr float to_float(fp8<K> x) {
  using F = Fp8Format<K>;
  const std::uint32_t sign = static_cast<std::uint32_t>(x.bits >> 7) << 31;
  if (is_nan(x)) return float_of(sign | float_quiet_nan_bits);
  const int exponent_field = (x.bits >> 3) & 0xf;
  const int mantissa = x.bits & 0x7;
  const int significand = exponent_field == 0 ? mantissa : 8 + mantissa;
  const int exponent = (exponent_field == 0 ? F::emin : exponent_field - F::bias) - F::mant_bits;
  // A small integer times an exact power of two: the product is exact.
  const float magnitude = static_cast<float>(significand) * exact_pow2(exponent);
  return float_of(sign | bits_of(magnitude));
}

// Round to nearest even, saturating to +-fp8_max (also for +-inf); NaN maps to the NaN code
// (keeping the sign for e4m3fn). e4m3fnuz has no -0, so negative values that round to zero give
// 0x00.
template <Fp8Kind K>
ATOM_HD constexpr fp8<K> to_fp8(float x) {
  using F = Fp8Format<K>;
  const std::uint32_t u = bits_of(x);
  const std::uint32_t abs_bits = u & float_abs_mask;
  const auto sign = static_cast<std::uint8_t>((u >> 24) & 0x80u);
  if (abs_bits > float_inf_bits) {
    if constexpr (K == Fp8Kind::e4m3fn)
      return fp8<K>{static_cast<std::uint8_t>(sign | F::nan_code)};
    return fp8<K>{F::nan_code};
  }
  if (abs_bits >= bits_of(fp8_max<K>)) return fp8<K>{static_cast<std::uint8_t>(sign | F::max_code)};
  const auto magnitude =
      static_cast<std::uint8_t>(round_magnitude_rne(abs_bits, F::mant_bits, F::emin));
  if constexpr (K == Fp8Kind::e4m3fnuz) {
    if (magnitude == 0) return fp8<K>{0};
  }
  return fp8<K>{static_cast<std::uint8_t>(sign | magnitude)};
}

}  // namespace atom
