#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "atom/numeric/bf16.hpp"
#include "reference.hpp"

using atom::bf16;
using atom::test::bits;
using atom::test::from_bits;

namespace {

bool is_nan_code(std::uint32_t c) {
  return (c & 0x7f80u) == 0x7f80u && (c & 0x7fu) != 0;
}

// The value of code c with an unbounded exponent: 0x7f80 reads as 2^128, the point IEEE rounding
// compares against before it overflows to inf.
double bf16_unbounded_value(std::uint32_t c) {
  return atom::test::minifloat_value(static_cast<int>(c >> 15), static_cast<int>((c >> 7) & 0xffu),
                                     static_cast<int>(c & 0x7fu), 7, 127);
}

double bf16_reference_value(std::uint32_t c) {
  const int sign = static_cast<int>(c >> 15);
  const int e = static_cast<int>((c >> 7) & 0xffu);
  const int m = static_cast<int>(c & 0x7fu);
  if (e == 0xff)
    return sign ? -std::numeric_limits<double>::infinity()
                : std::numeric_limits<double>::infinity();
  return atom::test::minifloat_value(sign, e, m, 7, 127);
}

}  // namespace

TEST_CASE("bf16: every code decodes to its value and re-encodes to itself") {
  for (std::uint32_t c = 0; c < 65536; ++c) {
    const float f = atom::to_float(bf16{static_cast<std::uint16_t>(c)});
    INFO("code 0x" << std::hex << c);
    REQUIRE(bits(f) == c << 16);
    if (is_nan_code(c)) {
      REQUIRE(std::isnan(f));
      const std::uint16_t back = atom::to_bf16(f).bits;
      REQUIRE(back == (c | 0x40u));  // quiet, same sign and payload
      continue;
    }
    REQUIRE(static_cast<double>(f) == bf16_reference_value(c));
    REQUIRE(atom::to_bf16(f).bits == c);
    REQUIRE(bits(atom::round_bf16(f)) == bits(f));
  }
}

TEST_CASE("bf16: exact halfway points round to even, neighbours to nearest") {
  for (std::uint32_t c = 0; c < 65536; ++c) {
    const bool finite = (c & 0x7f80u) != 0x7f80u;
    if (!finite) continue;
    const std::uint32_t low = c << 16;
    const std::uint32_t even_choice = (c & 1u) ? c + 1 : c;
    INFO("code 0x" << std::hex << c);
    REQUIRE(atom::to_bf16(from_bits(low | 0x8000u)).bits == even_choice);
    REQUIRE(atom::to_bf16(from_bits(low | 0x7fffu)).bits == c);
    REQUIRE(atom::to_bf16(from_bits(low | 0x8001u)).bits == c + 1);
    REQUIRE(atom::to_bf16(from_bits(low | 0x0001u)).bits == c);
  }
}

TEST_CASE("bf16: random floats round to the nearest bf16 by float64 distance") {
  std::mt19937 rng(Catch::rngSeed());
  std::uniform_int_distribution<std::uint32_t> any;
  for (int i = 0; i < 200000; ++i) {
    const std::uint32_t u = any(rng);
    const float x = from_bits(u);
    if (!std::isfinite(x)) continue;
    const std::uint32_t lo = u >> 16;
    const double below = bf16_unbounded_value(lo);
    const double above = bf16_unbounded_value(lo + 1);
    const double dx = static_cast<double>(x);
    const double d_below = std::fabs(dx - below);
    const double d_above = std::fabs(above - dx);
    const std::uint32_t expected = d_below < d_above   ? lo
                                   : d_above < d_below ? lo + 1
                                                       : ((lo & 1u) ? lo + 1 : lo);
    INFO("x bits 0x" << std::hex << u);
    REQUIRE(atom::to_bf16(x).bits == expected);
  }
}

TEST_CASE("bf16: overflow rounds to inf, inf and NaN are kept with their sign") {
  const float flt_max = std::numeric_limits<float>::max();
  CHECK(atom::to_bf16(flt_max).bits == 0x7f80);
  CHECK(atom::to_bf16(-flt_max).bits == 0xff80);
  CHECK(atom::to_bf16(from_bits(0x7f7f7fffu)).bits == 0x7f7f);  // below the tie: largest finite
  CHECK(atom::to_bf16(from_bits(0x7f7f8000u)).bits == 0x7f80);  // tie from odd 0x7f7f: to inf
  CHECK(atom::to_bf16(std::numeric_limits<float>::infinity()).bits == 0x7f80);
  CHECK(atom::to_bf16(-std::numeric_limits<float>::infinity()).bits == 0xff80);
  // A signalling NaN whose payload lives only in the low half must not truncate to inf.
  CHECK(atom::to_bf16(from_bits(0x7f800001u)).bits == 0x7fc0);
  CHECK(atom::to_bf16(from_bits(0xff800001u)).bits == 0xffc0);
  CHECK(atom::to_bf16(std::numeric_limits<float>::quiet_NaN()).bits == 0x7fc0);
  CHECK(atom::to_bf16(-std::numeric_limits<float>::quiet_NaN()).bits == 0xffc0);
  CHECK(std::isnan(atom::round_bf16(from_bits(0x7f800001u))));
  CHECK(atom::to_bf16(-0.0f).bits == 0x8000);
  CHECK(atom::to_bf16(std::numeric_limits<float>::denorm_min()).bits == 0x0000);
}

TEST_CASE("bf16: conversions are constant expressions") {
  STATIC_REQUIRE(atom::to_bf16(1.5f).bits == 0x3fc0);
  STATIC_REQUIRE(atom::to_float(bf16{0xc040}) == -3.0f);
  STATIC_REQUIRE(atom::round_bf16(1.00390625f) == 1.0f);  // tie 1 + 2^-8 rounds to even 1.0
}
