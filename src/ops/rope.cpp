#include "atom/ops/rope.hpp"

#include <cmath>
#include <string>

#include "atom/ops/formats.hpp"

namespace atom::ops {

std::vector<float> make_cos_sin_cache(index_t max_positions, index_t rot_dim, double theta) {
  constexpr std::string_view op = "make_cos_sin_cache";
  expect(max_positions > 0, op,
         "max_positions must be positive, got " + std::to_string(max_positions));
  expect(rot_dim > 0 && rot_dim % 2 == 0, op,
         "rot_dim must be even and positive, got " + std::to_string(rot_dim));
  expect(theta > 1.0, op, "theta must be greater than 1, got " + std::to_string(theta));
  const index_t half = rot_dim / 2;
  std::vector<float> table(static_cast<std::size_t>(max_positions * rot_dim));
  for (index_t i = 0; i < half; ++i) {
    const double inv_freq =
        std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(rot_dim));
    for (index_t p = 0; p < max_positions; ++p) {
      const double angle = static_cast<double>(p) * inv_freq;
      table[static_cast<std::size_t>(p * rot_dim + i)] = static_cast<float>(std::cos(angle));
      table[static_cast<std::size_t>(p * rot_dim + half + i)] = static_cast<float>(std::sin(angle));
    }
  }
  return table;
}

void expect_positions(std::string_view op, View1<const std::int64_t> positions, index_t tokens,
                      index_t max_positions) {
  expect_shape(op, "positions", positions, {tokens});
  for (index_t t = 0; t < tokens; ++t)
    if (positions(t) < 0 || positions(t) >= max_positions)
      expect(false, op,
             "argument 'positions' holds " + std::to_string(positions(t)) + " at token " +
                 std::to_string(t) + ", outside the cos_sin cache [0, " +
                 std::to_string(max_positions) + ")");
}

template <RopeStyle S>
void rope(const Host&, View1<const std::int64_t> positions, View2<const float> cos_sin,
          View3<bf16> x) {
  constexpr std::string_view op = "rope";
  const index_t tokens = positions.size(0);
  const index_t rot_dim = x.size(2);
  expect(rot_dim > 0 && rot_dim % 2 == 0, op,
         "argument 'x' must have an even, positive last dimension (rot_dim), got " +
             std::to_string(rot_dim));
  expect_view(op, "x", x, {tokens, -1, rot_dim});
  expect_view(op, "cos_sin", cos_sin, {-1, rot_dim});
  expect_disjoint(op, "x", x, "cos_sin", cos_sin);
  expect_disjoint(op, "x", x, "positions", positions);
  expect_positions(op, positions, tokens, cos_sin.size(0));

  const index_t half = rot_dim / 2;
  for (index_t t = 0; t < tokens; ++t) {
    const float* row = &cos_sin(positions(t), 0);
    for (index_t h = 0; h < x.size(1); ++h) {
      bf16* head = &x(t, h, 0);
      for (index_t i = 0; i < half; ++i) {
        bf16& a = head[rope_first<S>(i)];
        bf16& b = head[rope_second<S>(i, half)];
        const RotatedPair r = rotate_pair(to_float(a), to_float(b), row[i], row[half + i]);
        a = to_bf16(r.first);
        b = to_bf16(r.second);
      }
    }
  }
}

template void rope<RopeStyle::neox>(const Host&, View1<const std::int64_t>, View2<const float>,
                                    View3<bf16>);
template void rope<RopeStyle::interleaved>(const Host&, View1<const std::int64_t>,
                                           View2<const float>, View3<bf16>);

}  // namespace atom::ops
