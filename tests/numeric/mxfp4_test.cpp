#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "atom/numeric/mxfp4.hpp"
#include "reference.hpp"

using atom::e8m0;
using atom::test::bits;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();
constexpr float qnan = std::numeric_limits<float>::quiet_NaN();
constexpr std::array<double, 8> e2m1_magnitudes = {0, 0.5, 1, 1.5, 2, 3, 4, 6};

double e2m1_reference_value(int code) {
  return atom::test::minifloat_value(code >> 3, (code >> 1) & 3, code & 1, 1, 1);
}

atom::test::Grid e2m1_grid() {
  atom::test::Grid g;
  for (int c = 0; c < 16; ++c) {
    if (c == 0x8) continue;  // -0 duplicates 0
    g.codes.push_back(c);
    g.values.push_back(e2m1_reference_value(c));
  }
  return g;
}

int e2m1_reference_encode(const atom::test::Grid& g, double v) {
  const int c = g.nearest(v);
  return (c == 0 && std::signbit(v)) ? 0x8 : c;
}

// The OCP rule in float64: scale 2^(floor(log2 amax) - 2) clamped at 2^-127, elements rounded to
// nearest even on the e2m1 grid of x / scale, saturating at 6.
struct ReferenceBlock {
  int scale_code = 0;
  std::vector<int> codes;
};

ReferenceBlock reference_quantize(const std::vector<float>& x) {
  ReferenceBlock r;
  double amax = 0;
  bool special = false;
  for (float v : x) {
    if (!std::isfinite(v)) special = true;
    amax = std::max(amax, std::fabs(static_cast<double>(v)));
  }
  if (special) {
    r.scale_code = 0xff;
    r.codes.assign(x.size(), 0);
    return r;
  }
  int shared_exp = -127;
  if (amax > 0) {
    int e = 0;
    std::frexp(amax, &e);  // amax = f * 2^e, 0.5 <= f < 1
    shared_exp = std::max(e - 1 - 2, -127);
  }
  r.scale_code = shared_exp + 127;
  const atom::test::Grid g = e2m1_grid();
  for (float v : x) {
    r.codes.push_back(e2m1_reference_encode(g, std::ldexp(static_cast<double>(v), -shared_exp)));
  }
  return r;
}

int nibble(const std::vector<std::uint8_t>& packed, std::size_t i) {
  return (i % 2) ? packed[i / 2] >> 4 : packed[i / 2] & 0xf;
}

// Half the e2m1 spacing around magnitude v (in units of the scale).
double e2m1_half_ulp(double v) {
  return v < 2 ? 0.25 : v < 4 ? 0.5 : 1.0;
}

void check_block(const std::vector<float>& x) {
  const int n = static_cast<int>(x.size());
  const std::size_t bytes = (x.size() + 1) / 2;
  std::vector<std::uint8_t> packed(bytes, 0xff);
  e8m0 scale{0xab};
  atom::quantize_mx_block(x.data(), n, packed.data(), &scale);
  const ReferenceBlock ref = reference_quantize(x);
  REQUIRE(scale.bits == ref.scale_code);
  for (std::size_t i = 0; i < x.size(); ++i) {
    INFO("element " << i << " of " << n << ": " << x[i]);
    REQUIRE(nibble(packed, i) == ref.codes[i]);
  }
  if (n % 2) REQUIRE((packed.back() >> 4) == 0);

  std::vector<float> out(x.size(), qnan);
  atom::dequantize_mx_block(packed.data(), n, scale, out.data());
  for (std::size_t i = 0; i < x.size(); ++i) {
    INFO("element " << i << " of " << n << ": " << x[i]);
    const float value = atom::mxfp4_value(packed.data(), static_cast<std::int64_t>(i), scale);
    REQUIRE(bits(out[i]) == bits(value));
    if (ref.scale_code == 0xff) {
      REQUIRE(bits(out[i]) == 0x7fc00000u);
      continue;
    }
    const double s = std::ldexp(1.0, ref.scale_code - 127);
    REQUIRE(static_cast<double>(out[i]) == e2m1_reference_value(ref.codes[i]) * s);
    const double scaled = std::fabs(static_cast<double>(x[i])) / s;
    if (scaled > 6) {
      REQUIRE(std::fabs(static_cast<double>(out[i])) == 6 * s);
      REQUIRE(std::signbit(out[i]) == std::signbit(x[i]));
    } else {
      REQUIRE(std::fabs(static_cast<double>(out[i]) - static_cast<double>(x[i])) <=
              e2m1_half_ulp(scaled) * s);
    }
  }
}

float random_float(std::mt19937& rng, int min_exp, int max_exp) {
  std::uniform_int_distribution<int> exponent(min_exp, max_exp);
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  std::bernoulli_distribution negative;
  const float v = std::ldexp(mantissa(rng), exponent(rng));
  return negative(rng) ? -v : v;
}

}  // namespace

TEST_CASE("e2m1: every code decodes exactly and re-encodes to itself") {
  for (int c = 0; c < 16; ++c) {
    INFO("code " << c);
    const float f = atom::e2m1_to_float(static_cast<std::uint8_t>(c));
    REQUIRE(std::fabs(static_cast<double>(f)) == e2m1_magnitudes[c & 7]);
    REQUIRE(static_cast<double>(f) == e2m1_reference_value(c));
    REQUIRE(std::signbit(f) == (c >= 8));
    REQUIRE(atom::to_e2m1(f) == c);
    // Only the low four bits are read.
    REQUIRE(bits(atom::e2m1_to_float(static_cast<std::uint8_t>(c | 0xa0))) == bits(f));
  }
}

TEST_CASE("e2m1: halfway points round to even, neighbours to nearest") {
  for (int c = 0; c < 7; ++c) {
    const auto lo = static_cast<float>(e2m1_magnitudes[c]);
    const auto hi = static_cast<float>(e2m1_magnitudes[c + 1]);
    const float mid = (lo + hi) / 2;
    const int even = (c & 1) ? c + 1 : c;
    INFO("between codes " << c << " and " << c + 1);
    REQUIRE(atom::to_e2m1(mid) == even);
    REQUIRE(atom::to_e2m1(-mid) == (even | 0x8));
    REQUIRE(atom::to_e2m1(std::nextafter(mid, 0.0f)) == c);
    REQUIRE(atom::to_e2m1(std::nextafter(mid, inf)) == c + 1);
  }
}

TEST_CASE("e2m1: random floats match the brute-force nearest code") {
  const atom::test::Grid g = e2m1_grid();
  std::mt19937 rng(Catch::rngSeed());
  for (int i = 0; i < 20000; ++i) {
    const float x = random_float(rng, -4, 3);
    INFO("x = " << x);
    REQUIRE(atom::to_e2m1(x) == e2m1_reference_encode(g, static_cast<double>(x)));
  }
}

TEST_CASE("e2m1: every float from 2^-4 to 8 codes as the generic round-to-nearest-even rule") {
  // All 2^23 mantissas of each binade where a rounding boundary lies (the smallest midpoint is
  // 0.25; everything below 2^-4 codes 0, as the random case above checks), both signs, against
  // round_magnitude_rne with e2m1's 1 mantissa bit and minimum exponent 0.
  std::uint64_t mismatches = 0;
  for (std::uint32_t b = atom::bits_of(0.0625f); b <= atom::bits_of(8.0f); ++b) {
    const float x = atom::float_of(b);
    const std::uint8_t want =
        x >= 6.0f ? 7 : static_cast<std::uint8_t>(atom::round_magnitude_rne(b, 1, 0));
    mismatches += atom::to_e2m1(x) != want;
    mismatches += atom::to_e2m1(-x) != (want | 0x8);
  }
  CHECK(mismatches == 0);
}

TEST_CASE("e2m1: saturation, NaN, zero and negative zero") {
  for (float x : {6.0f, 6.5f, 7.0f, 1e30f, inf}) {
    INFO("x = " << x);
    REQUIRE(atom::to_e2m1(x) == 0x7);
    REQUIRE(atom::to_e2m1(-x) == 0xf);
  }
  CHECK(atom::to_e2m1(qnan) == 0x7);
  CHECK(atom::to_e2m1(-qnan) == 0xf);
  CHECK(atom::to_e2m1(0.0f) == 0x0);
  CHECK(atom::to_e2m1(-0.0f) == 0x8);
  CHECK(atom::to_e2m1(0.25f) == 0x0);
  CHECK(atom::to_e2m1(-0.25f) == 0x8);
  CHECK(atom::to_e2m1(std::numeric_limits<float>::denorm_min()) == 0x0);
}

TEST_CASE("e8m0: every code decodes to exactly 2^(e-127), 0xFF is NaN") {
  for (int c = 0; c < 255; ++c) {
    INFO("code " << c);
    const float f = atom::to_float(e8m0{static_cast<std::uint8_t>(c)});
    REQUIRE(bits(f) == bits(std::ldexp(1.0f, c - 127)));
    REQUIRE(static_cast<double>(f) == std::ldexp(1.0, c - 127));
  }
  CHECK(std::isnan(atom::to_float(e8m0{0xff})));
}

TEST_CASE("mx_scale_for: floor(log2 amax) - 2, clamped at -127, with zero, NaN and inf") {
  std::mt19937 rng(Catch::rngSeed());
  std::uniform_int_distribution<std::uint32_t> finite_bits(1, 0x7f7fffffu);
  for (int i = 0; i < 100000; ++i) {
    const float amax = atom::test::from_bits(finite_bits(rng));
    int e = 0;
    std::frexp(static_cast<double>(amax), &e);
    const int expected = std::max(e - 1 - 2, -127) + 127;
    INFO("amax = " << amax);
    REQUIRE(atom::mx_scale_for(amax).bits == expected);
    REQUIRE(atom::mx_scale_for(-amax).bits == expected);
  }
  CHECK(atom::mx_scale_for(6.0f).bits == 127);
  CHECK(atom::mx_scale_for(std::nextafter(8.0f, 0.0f)).bits == 127);
  CHECK(atom::mx_scale_for(8.0f).bits == 128);
  CHECK(atom::mx_scale_for(std::numeric_limits<float>::max()).bits == 252);
  CHECK(atom::mx_scale_for(std::ldexp(1.0f, -125)).bits == 0);
  CHECK(atom::mx_scale_for(std::ldexp(1.0f, -124)).bits == 1);
  CHECK(atom::mx_scale_for(std::numeric_limits<float>::denorm_min()).bits == 0);
  CHECK(atom::mx_scale_for(0.0f).bits == 0);
  CHECK(atom::mx_scale_for(-0.0f).bits == 0);
  CHECK(atom::mx_scale_for(inf).bits == 0xff);
  CHECK(atom::mx_scale_for(-inf).bits == 0xff);
  CHECK(atom::mx_scale_for(qnan).bits == 0xff);
}

TEST_CASE("mxfp4 blocks: random blocks match the float64 OCP reference") {
  std::mt19937 rng(Catch::rngSeed());
  for (int n : {1, 2, 3, 17, 31, 32}) {
    for (int trial = 0; trial < 300; ++trial) {
      std::vector<float> x(static_cast<std::size_t>(n));
      // Half the blocks span 2^-130..2^120 freely; the rest sit near one exponent, so most
      // elements land on the grid rather than flushing to zero.
      const bool wide = trial % 2 == 0;
      std::uniform_int_distribution<int> centre(-128, 118);
      const int c = centre(rng);
      for (float& v : x) v = wide ? random_float(rng, -130, 120) : random_float(rng, c - 3, c + 2);
      check_block(x);
    }
  }
}

TEST_CASE("mxfp4 blocks: tiny, huge, zero and mixed-sign blocks") {
  check_block(std::vector<float>(32, 0.0f));
  check_block(std::vector<float>(17, -0.0f));
  check_block({std::numeric_limits<float>::denorm_min(), -std::ldexp(1.0f, -130), 1e-39f});
  check_block({std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(), 1.0f});
  check_block({6.0f, -6.5f, 7.9f, 0.25f, 0.75f, -1.25f, 2.5f, 3.5f, 5.0f});
  check_block({1.0f, 0.0f, -0.0f});
}

TEST_CASE("mxfp4 blocks: NaN or inf anywhere gives the NaN scale and NaN on dequantize") {
  std::mt19937 rng(Catch::rngSeed());
  for (float special : {qnan, -qnan, inf, -inf}) {
    for (int n : {1, 3, 17, 32}) {
      std::vector<float> x(static_cast<std::size_t>(n));
      for (float& v : x) v = random_float(rng, -10, 10);
      x[static_cast<std::size_t>(n / 2)] = special;
      check_block(x);
    }
  }
}

TEST_CASE("mxfp4 blocks: a block size outside 1..32 is rejected") {
  std::array<float, 33> x{};
  std::array<std::uint8_t, 17> packed{};
  std::array<float, 33> out{};
  e8m0 scale{0};
  for (int n : {0, -1, 33}) {
    INFO("n = " << n);
    REQUIRE_THROWS_WITH(atom::quantize_mx_block(x.data(), n, packed.data(), &scale),
                        Catch::Contains("block size n=" + std::to_string(n)));
    REQUIRE_THROWS_AS(atom::dequantize_mx_block(packed.data(), n, scale, out.data()),
                      std::invalid_argument);
  }
}

TEST_CASE("mxfp4: conversions are constant expressions") {
  STATIC_REQUIRE(atom::to_e2m1(2.5f) == 0x4);
  STATIC_REQUIRE(atom::e2m1_to_float(0xf) == -6.0f);
  STATIC_REQUIRE(atom::to_float(e8m0{0}) == 0x1p-127f);
  STATIC_REQUIRE(atom::mx_scale_for(0x1p10f).bits == 135);
  constexpr std::uint8_t packed[] = {0x71};
  STATIC_REQUIRE(atom::mxfp4_value(packed, 1, e8m0{128}) == 12.0f);
}
