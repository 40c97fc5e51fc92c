#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "atom/ops/rope.hpp"
#include "attn_test_support.hpp"

using namespace atom;
using namespace atom::ops;
using namespace atom::attn_test;

TEST_CASE("make_cos_sin_cache matches cos and sin of p * theta^(-2i/d) in float64", "[rope]") {
  for (const index_t rot_dim : {2, 34, 64, 128}) {
    const index_t max_positions = 257;
    const double theta = 10000.0;
    const std::vector<float> table = make_cos_sin_cache(max_positions, rot_dim, theta);
    REQUIRE(table.size() == static_cast<std::size_t>(max_positions * rot_dim));
    const index_t half = rot_dim / 2;
    double worst = 0.0;
    for (index_t p = 0; p < max_positions; ++p)
      for (index_t i = 0; i < half; ++i) {
        const double angle =
            static_cast<double>(p) *
            std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(rot_dim));
        worst = std::max(
            worst, std::fabs(table[static_cast<std::size_t>(p * rot_dim + i)] - std::cos(angle)));
        worst = std::max(worst, std::fabs(table[static_cast<std::size_t>(p * rot_dim + half + i)] -
                                          std::sin(angle)));
      }
    // One float rounding of a value in [-1, 1] (at most 2^-25) and libm noise.
    CHECK(worst <= std::ldexp(1.0, -25) + 1e-15);
  }
  CHECK_THROWS_WITH(make_cos_sin_cache(16, 33, 10000.0),
                    Catch::Contains("make_cos_sin_cache") && Catch::Contains("rot_dim"));
  CHECK_THROWS_AS(make_cos_sin_cache(0, 64, 10000.0), ShapeError);
}

namespace {

// Independent float64 RoPE of one head given the cache values: which pairs rotate together is
// spelled out here, not taken from the library.
std::vector<double> reference_rope(RopeStyle style, const std::vector<double>& x,
                                   const float* cos_sin_row) {
  const std::size_t d = x.size();
  const std::size_t half = d / 2;
  std::vector<double> y(d);
  for (std::size_t i = 0; i < half; ++i) {
    const std::size_t a = style == RopeStyle::neox ? i : 2 * i;
    const std::size_t b = style == RopeStyle::neox ? i + half : 2 * i + 1;
    const double c = cos_sin_row[i];
    const double s = cos_sin_row[half + i];
    y[a] = x[a] * c - x[b] * s;
    y[b] = x[b] * c + x[a] * s;
  }
  return y;
}

template <RopeStyle S>
void check_rope(index_t tokens, index_t heads, index_t rot_dim) {
  INFO("tokens " << tokens << ", heads " << heads << ", rot_dim " << rot_dim << ", style "
                 << (S == RopeStyle::neox ? "neox" : "interleaved"));
  Rng g = rng(static_cast<std::uint64_t>(tokens * 1000 + heads * 10 + rot_dim));
  const index_t max_positions = 4099;
  const std::vector<float> table = make_cos_sin_cache(max_positions, rot_dim, 10000.0);
  // x is the rope slice of a wider q [T, heads, 5 + rot_dim]: strided rows.
  const index_t width = 5 + rot_dim;
  std::vector<bf16> q = random_bf16(g, tokens * heads * width);
  const std::vector<bf16> before = q;
  std::vector<std::int64_t> positions(static_cast<std::size_t>(tokens));
  std::uniform_int_distribution<std::int64_t> pos(0, max_positions - 1);
  for (auto& p : positions) p = pos(g);
  positions[0] = max_positions - 1;

  const View3<bf16> x = make_view(q.data(), tokens, heads, width).slice(2, 5, rot_dim);
  rope<S>(Host{}, make_view(positions.data(), tokens),
          make_view(table.data(), max_positions, rot_dim), x);

  std::size_t mismatches = 0;
  std::size_t untouched_changed = 0;
  for (index_t t = 0; t < tokens; ++t)
    for (index_t h = 0; h < heads; ++h) {
      const std::size_t base = static_cast<std::size_t>((t * heads + h) * width);
      for (std::size_t i = 0; i < 5; ++i)
        untouched_changed += q[base + i].bits != before[base + i].bits;
      std::vector<double> in(static_cast<std::size_t>(rot_dim));
      for (std::size_t i = 0; i < in.size(); ++i) in[i] = value(before[base + 5 + i]);
      const float* row =
          &table[static_cast<std::size_t>(positions[static_cast<std::size_t>(t)] * rot_dim)];
      const std::vector<double> ref = reference_rope(S, in, row);
      const std::size_t half = in.size() / 2;
      for (std::size_t i = 0; i < in.size(); ++i) {
        const std::size_t partner =
            S == RopeStyle::neox ? (i < half ? i + half : i - half) : (i ^ 1u);
        // One bf16 rounding of the float result, plus the float rounding of a*c - b*s.
        const double tol =
            u_bf16 * std::fabs(ref[i]) + std::ldexp(std::fabs(in[i]) + std::fabs(in[partner]), -21);
        const double got = value(q[base + 5 + i]);
        if (!(std::fabs(got - ref[i]) <= tol)) ++mismatches;
      }
    }
  CHECK(mismatches == 0);
  CHECK(untouched_changed == 0);
}

}  // namespace

TEST_CASE("rope (neox and interleaved) matches float64 on odd sizes and strided views", "[rope]") {
  for (const index_t tokens : {1, 3, 17})
    for (const index_t heads : {1, 3, 16})
      for (const index_t rot_dim : {34, 64, 128}) {
        check_rope<RopeStyle::neox>(tokens, heads, rot_dim);
        check_rope<RopeStyle::interleaved>(tokens, heads, rot_dim);
      }
}

TEST_CASE("rope rejects bad positions and shapes, naming the op and argument", "[rope]") {
  const std::vector<float> table = make_cos_sin_cache(8, 4, 10000.0);
  const auto cos_sin = make_view(table.data(), 8, 4);
  std::vector<bf16> x(2 * 3 * 4, to_bf16(0.5f));
  std::vector<bf16> before = x;
  std::vector<std::int64_t> positions = {3, 8};
  const auto view = make_view(x.data(), 2, 3, 4);
  CHECK_THROWS_WITH(
      rope<RopeStyle::neox>(Host{}, make_view(positions.data(), 2), cos_sin, view),
      Catch::Contains("rope") && Catch::Contains("'positions'") && Catch::Contains("8"));
  positions = {-1, 0};
  CHECK_THROWS_AS(rope<RopeStyle::neox>(Host{}, make_view(positions.data(), 2), cos_sin, view),
                  ShapeError);
  // Nothing was written before the error.
  for (std::size_t i = 0; i < x.size(); ++i) REQUIRE(x[i].bits == before[i].bits);
  positions = {0, 1};
  CHECK_THROWS_WITH(
      rope<RopeStyle::interleaved>(Host{}, make_view(positions.data(), 1), cos_sin, view),
      Catch::Contains("rope") && Catch::Contains("'x'") && Catch::Contains("[2, 3, 4]"));
  std::vector<bf16> wide(2 * 3 * 6, to_bf16(0.5f));
  CHECK_THROWS_WITH(rope<RopeStyle::neox>(Host{}, make_view(positions.data(), 2), cos_sin,
                                          make_view(wide.data(), 2, 3, 6)),
                    Catch::Contains("rope") && Catch::Contains("'cos_sin'"));
  std::vector<bf16> odd(2 * 3 * 5, to_bf16(0.5f));
  CHECK_THROWS_WITH(rope<RopeStyle::neox>(Host{}, make_view(positions.data(), 2), cos_sin,
                                          make_view(odd.data(), 2, 3, 5)),
                    Catch::Contains("rope") && Catch::Contains("even"));
}
