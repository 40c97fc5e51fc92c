#include "atom/ops/rope.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>

#include "atom/ops/formats.hpp"

namespace atom::ops {

std::vector<float> make_cos_sin_cache(index_t max_positions, index_t rot_dim, double theta) {
  return make_cos_sin_cache(max_positions, rot_dim, theta, RopeScaling{});
}

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

namespace {

// The dimension (real-valued) whose wavelength makes `rotations` turns over `max_position`
// positions: transformers' find_correction_dim.
double correction_dim(double rotations, index_t rot_dim, double theta, index_t max_position) {
  return static_cast<double>(rot_dim) *
         std::log(static_cast<double>(max_position) / (rotations * 2.0 * std::numbers::pi)) /
         (2.0 * std::log(theta));
}

}  // namespace

RopeFrequencies rope_frequencies(index_t rot_dim, double theta, const RopeScaling& scaling) {
  constexpr std::string_view op = "rope_frequencies";
  expect(rot_dim > 0 && rot_dim % 2 == 0, op,
         "rot_dim must be even and positive, got " + std::to_string(rot_dim));
  expect(theta > 1.0, op, "theta must be greater than 1, got " + std::to_string(theta));
  const index_t half = rot_dim / 2;
  RopeFrequencies f;
  f.inv_freq.resize(static_cast<std::size_t>(half));
  for (index_t i = 0; i < half; ++i)
    f.inv_freq[static_cast<std::size_t>(i)] =
        std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(rot_dim));
  if (scaling.kind == RopeScaling::Kind::none) return f;

  const double factor = scaling.factor;
  expect(factor > 0.0, op, "YaRN factor must be positive, got " + std::to_string(factor));
  expect(scaling.original_max_position > 0, op,
         "YaRN original_max_position must be positive, got " +
             std::to_string(scaling.original_max_position));
  if (scaling.attention_factor != 0.0)
    f.attention_factor = scaling.attention_factor;
  else if (scaling.mscale != 0.0 && scaling.mscale_all_dim != 0.0)
    f.attention_factor =
        yarn_get_mscale(factor, scaling.mscale) / yarn_get_mscale(factor, scaling.mscale_all_dim);
  else
    f.attention_factor = yarn_get_mscale(factor, 1.0);

  // transformers: beta_fast = get("beta_fast") or 32, beta_slow = get("beta_slow") or 1.
  const double beta_fast = scaling.beta_fast != 0.0 ? scaling.beta_fast : 32.0;
  const double beta_slow = scaling.beta_slow != 0.0 ? scaling.beta_slow : 1.0;
  double low = correction_dim(beta_fast, rot_dim, theta, scaling.original_max_position);
  double high = correction_dim(beta_slow, rot_dim, theta, scaling.original_max_position);
  if (scaling.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(rot_dim - 1));
  if (low == high) high += 0.001;  // transformers' guard against a zero-width ramp
  for (index_t i = 0; i < half; ++i) {
    const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
    const double extrapolation = 1.0 - ramp;
    double& inv = f.inv_freq[static_cast<std::size_t>(i)];
    inv = inv / factor * (1.0 - extrapolation) + inv * extrapolation;
  }
  return f;
}

std::vector<float> make_cos_sin_cache(index_t max_positions, index_t rot_dim, double theta,
                                      const RopeScaling& scaling) {
  constexpr std::string_view op = "make_cos_sin_cache";
  expect(max_positions > 0, op,
         "max_positions must be positive, got " + std::to_string(max_positions));
  expect(rot_dim > 0 && rot_dim % 2 == 0, op,
         "rot_dim must be even and positive, got " + std::to_string(rot_dim));
  const RopeFrequencies f = rope_frequencies(rot_dim, theta, scaling);
  const index_t half = rot_dim / 2;
  std::vector<float> table(static_cast<std::size_t>(max_positions * rot_dim));
  for (index_t i = 0; i < half; ++i) {
    const double inv_freq = f.inv_freq[static_cast<std::size_t>(i)];
    for (index_t p = 0; p < max_positions; ++p) {
      const double angle = static_cast<double>(p) * inv_freq;
      table[static_cast<std::size_t>(p * rot_dim + i)] =
          static_cast<float>(f.attention_factor * std::cos(angle));
      table[static_cast<std::size_t>(p * rot_dim + half + i)] =
          static_cast<float>(f.attention_factor * std::sin(angle));
    }
  }
  return table;
}

double mla_softmax_scale(index_t qk_head_dim, const RopeScaling& scaling) {
  expect(qk_head_dim > 0, "mla_softmax_scale",
         "qk_head_dim must be positive, got " + std::to_string(qk_head_dim));
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim));
  if (scaling.kind != RopeScaling::Kind::none && scaling.mscale_all_dim != 0.0) {
    const double m = yarn_get_mscale(scaling.factor, scaling.mscale_all_dim);
    scale *= m * m;
  }
  return scale;
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
