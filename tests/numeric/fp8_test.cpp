#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "atom/numeric/fp8.hpp"
#include "reference.hpp"

using atom::Fp8Kind;
using atom::test::bits;
using atom::test::from_bits;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();

template <Fp8Kind K>
constexpr int bias = K == Fp8Kind::e4m3fn ? 7 : 8;

template <Fp8Kind K>
bool is_nan_code(int c) {
  return K == Fp8Kind::e4m3fn ? (c & 0x7f) == 0x7f : c == 0x80;
}

template <Fp8Kind K>
double reference_value(int c) {
  return atom::test::minifloat_value(c >> 7, (c >> 3) & 0xf, c & 7, 3, bias<K>);
}

// Every finite code except the redundant -0 of e4m3fn: a value has one code.
template <Fp8Kind K>
atom::test::Grid grid() {
  atom::test::Grid g;
  for (int c = 0; c < 256; ++c) {
    if (is_nan_code<K>(c) || c == 0x80) continue;
    g.codes.push_back(c);
    g.values.push_back(reference_value<K>(c));
  }
  return g;
}

template <Fp8Kind K>
std::uint8_t encode(float x) {
  return atom::to_fp8<K>(x).bits;
}

template <Fp8Kind K>
void check_every_code() {
  for (int c = 0; c < 256; ++c) {
    const float f = atom::to_float(atom::fp8<K>{static_cast<std::uint8_t>(c)});
    INFO("code 0x" << std::hex << c);
    if (is_nan_code<K>(c)) {
      REQUIRE(std::isnan(f));
      REQUIRE(encode<K>(f) == c);
      continue;
    }
    REQUIRE(static_cast<double>(f) == reference_value<K>(c));
    REQUIRE(encode<K>(f) == c);
  }
}

template <Fp8Kind K>
void check_halfway_points() {
  std::vector<std::pair<double, int>> positive;
  for (int c = 0; c < 0x80; ++c) {
    if (!is_nan_code<K>(c)) positive.emplace_back(reference_value<K>(c), c);
  }
  std::sort(positive.begin(), positive.end());
  for (std::size_t i = 0; i + 1 < positive.size(); ++i) {
    const auto [lo, lo_code] = positive[i];
    const auto [hi, hi_code] = positive[i + 1];
    const auto mid = static_cast<float>((lo + hi) / 2);
    REQUIRE(static_cast<double>(mid) == (lo + hi) / 2);  // exactly representable
    const int even = (lo_code & 1) ? hi_code : lo_code;
    INFO("between 0x" << std::hex << lo_code << " and 0x" << hi_code);
    REQUIRE(encode<K>(mid) == even);
    REQUIRE(encode<K>(std::nextafter(mid, 0.0f)) == lo_code);
    REQUIRE(encode<K>(std::nextafter(mid, inf)) == hi_code);
    const int negative_zero = K == Fp8Kind::e4m3fn ? 0x80 : 0x00;
    const int neg_even = even == 0 ? negative_zero : (even | 0x80);
    REQUIRE(encode<K>(-mid) == neg_even);
  }
}

template <Fp8Kind K>
void check_random_against_reference() {
  const atom::test::Grid g = grid<K>();
  std::mt19937 rng(Catch::rngSeed());
  std::uniform_real_distribution<double> exponent(-14.0, 10.0);
  std::uniform_real_distribution<double> mantissa(1.0, 2.0);
  std::bernoulli_distribution negative;
  for (int i = 0; i < 20000; ++i) {
    const auto x = static_cast<float>((negative(rng) ? -1 : 1) * mantissa(rng) *
                                      std::exp2(std::floor(exponent(rng))));
    int expected = g.nearest(static_cast<double>(x));
    if (K == Fp8Kind::e4m3fn && expected == 0 && x < 0) expected = 0x80;
    INFO("x = " << x);
    REQUIRE(encode<K>(x) == expected);
  }
}

template <Fp8Kind K>
void check_saturation_and_special_values() {
  const int max_code = K == Fp8Kind::e4m3fn ? 0x7e : 0x7f;
  const float max = atom::fp8_max<K>;
  REQUIRE(static_cast<double>(max) == reference_value<K>(max_code));
  for (float x : {max, std::nextafter(max, inf), max * 1.0625f, max * 2, 1e30f,
                  std::numeric_limits<float>::max(), inf}) {
    INFO("x = " << x);
    REQUIRE(encode<K>(x) == max_code);
    REQUIRE(encode<K>(-x) == (max_code | 0x80));
  }
  REQUIRE(atom::to_float(atom::fp8<K>{static_cast<std::uint8_t>(max_code)}) == max);
  const float smallest = static_cast<float>(reference_value<K>(1));
  REQUIRE(encode<K>(smallest / 2) == 0x00);  // tie with zero goes to even zero
  REQUIRE(encode<K>(std::nextafter(smallest / 2, inf)) == 0x01);
  REQUIRE(encode<K>(std::numeric_limits<float>::denorm_min()) == 0x00);
  REQUIRE(encode<K>(0.0f) == 0x00);
}

}  // namespace

TEST_CASE("fp8 e4m3fn: every code decodes exactly and re-encodes to itself") {
  check_every_code<Fp8Kind::e4m3fn>();
}
TEST_CASE("fp8 e4m3fnuz: every code decodes exactly and re-encodes to itself") {
  check_every_code<Fp8Kind::e4m3fnuz>();
}
TEST_CASE("fp8 e4m3fn: halfway points between adjacent codes round to even") {
  check_halfway_points<Fp8Kind::e4m3fn>();
}
TEST_CASE("fp8 e4m3fnuz: halfway points between adjacent codes round to even") {
  check_halfway_points<Fp8Kind::e4m3fnuz>();
}
TEST_CASE("fp8 e4m3fn: random floats match the brute-force nearest code") {
  check_random_against_reference<Fp8Kind::e4m3fn>();
}
TEST_CASE("fp8 e4m3fnuz: random floats match the brute-force nearest code") {
  check_random_against_reference<Fp8Kind::e4m3fnuz>();
}
TEST_CASE("fp8 e4m3fn: saturation, subnormal edge and zero") {
  check_saturation_and_special_values<Fp8Kind::e4m3fn>();
}
TEST_CASE("fp8 e4m3fnuz: saturation, subnormal edge and zero") {
  check_saturation_and_special_values<Fp8Kind::e4m3fnuz>();
}

TEST_CASE("fp8: NaN codes and negative zero per flavour") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(atom::to_fp8<Fp8Kind::e4m3fn>(nan).bits == 0x7f);
  CHECK(atom::to_fp8<Fp8Kind::e4m3fn>(-nan).bits == 0xff);
  CHECK(atom::to_fp8<Fp8Kind::e4m3fn>(from_bits(0x7f800001u)).bits == 0x7f);
  CHECK(atom::to_fp8<Fp8Kind::e4m3fnuz>(nan).bits == 0x80);
  CHECK(atom::to_fp8<Fp8Kind::e4m3fnuz>(-nan).bits == 0x80);
  CHECK(atom::to_fp8<Fp8Kind::e4m3fn>(-0.0f).bits == 0x80);
  CHECK(atom::to_fp8<Fp8Kind::e4m3fnuz>(-0.0f).bits == 0x00);
  CHECK(atom::to_fp8<Fp8Kind::e4m3fnuz>(-1e-10f).bits == 0x00);
  CHECK(atom::to_fp8<Fp8Kind::e4m3fn>(-1e-10f).bits == 0x80);
  CHECK(bits(atom::to_float(atom::fp8_e4m3{0x80})) == 0x80000000u);
  CHECK(atom::fp8_max<Fp8Kind::e4m3fn> == 448.0f);
  CHECK(atom::fp8_max<Fp8Kind::e4m3fnuz> == 240.0f);
}

TEST_CASE("fp8: conversions are constant expressions") {
  STATIC_REQUIRE(atom::to_fp8<Fp8Kind::e4m3fn>(1000.0f).bits == 0x7e);
  STATIC_REQUIRE(atom::to_float(atom::fp8_e4m3fnuz{0x7f}) == 240.0f);
  STATIC_REQUIRE(atom::to_fp8<Fp8Kind::e4m3fnuz>(-0.0f).bits == 0x00);
}
