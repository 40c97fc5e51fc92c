// bfloat16: the upper half of an IEEE binary32. Conversions round to nearest even and are
// bit-identical on host and device.
#pragma once

#include <cstdint>

#include "atom/numeric/float_bits.hpp"
#include "atom/numeric/host_device.hpp"

namespace atom {

struct bf16 {
  std::uint16_t bits;
};

ATOM_HD constexpr float to_float(bf16 x) {
  return float_of(static_cast<std::uint32_t>(x.bits) << 16);
}

// Round to nearest even; values past the largest bf16 round to inf as IEEE does; NaN becomes a
// quiet NaN with the same sign (setting the quiet bit keeps a payload from truncating to inf).
ATOM_HD constexpr bf16 to_bf16(float x) {
  const std::uint32_t u = bits_of(x);
  if (is_nan_bits(u)) return bf16{static_cast<std::uint16_t>((u >> 16) | 0x0040u)};
  const std::uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<std::uint16_t>(rounded >> 16)};
}

ATOM_HD constexpr float round_bf16(float x) {
  return to_float(to_bf16(x));
}

}  // namespace atom
