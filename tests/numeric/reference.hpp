// Independent float64 references for the numeric tests: values come from std::ldexp on the code's
// fields, and encoders pick the nearest representable value by brute force.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace atom::test {

inline std::uint32_t bits(float x) {
  return std::bit_cast<std::uint32_t>(x);
}
inline float from_bits(std::uint32_t b) {
  return std::bit_cast<float>(b);
}

// A minifloat code's value: exponent field e (bias `bias`), mantissa m with `mant_bits` bits.
inline double minifloat_value(int sign, int e, int m, int mant_bits, int bias) {
  const double magnitude = e == 0 ? std::ldexp(m, 1 - bias - mant_bits)
                                  : std::ldexp((1 << mant_bits) + m, e - bias - mant_bits);
  return sign ? -magnitude : magnitude;
}

// Nearest code among `codes` (all finite, with their values), ties to the even code, saturating
// to the largest magnitude of the matching sign.
struct Grid {
  std::vector<int> codes;
  std::vector<double> values;

  int nearest(double x) const {
    int best = -1;
    double best_distance = std::numeric_limits<double>::infinity();
    for (std::size_t i = 0; i < codes.size(); ++i) {
      const double d = std::fabs(values[i] - x);
      if (d < best_distance || (d == best_distance && (codes[i] & 1) == 0)) {
        best = codes[i];
        best_distance = d;
      }
    }
    return best;
  }
};

}  // namespace atom::test
