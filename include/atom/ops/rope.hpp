// Rotary position embedding (RoPE) over a cos/sin cache indexed by token position.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/backend.hpp"

namespace atom::ops {

// Which elements of a head rotate together at frequency i (0 <= i < rot_dim / 2):
// neox pairs (i, i + rot_dim / 2) (GPT-NeoX, Qwen3); interleaved pairs (2i, 2i + 1) (GPT-J,
// DeepSeek-V3's q_pe/k_pe).
enum class RopeStyle : std::uint8_t { neox, interleaved };

template <RopeStyle S>
ATOM_HD constexpr index_t rope_first(index_t i) {
  return S == RopeStyle::neox ? i : 2 * i;
}
template <RopeStyle S>
ATOM_HD constexpr index_t rope_second(index_t i, index_t half) {
  return S == RopeStyle::neox ? i + half : 2 * i + 1;
}

// The rotation of one pair in float, written once so that every backend and every fused op
// rounds the same way: (a, b) -> (a cos - b sin, b cos + a sin).
struct RotatedPair {
  float first;
  float second;
};
ATOM_HD constexpr RotatedPair rotate_pair(float a, float b, float cos, float sin) {
  return {a * cos - b * sin, b * cos + a * sin};
}

// Rotates the rot_dim floats at `x` (stride 1) in place with the cache row `cos_sin_row`.
template <RopeStyle S>
ATOM_HD constexpr void rotate_head(float* x, const float* cos_sin_row, index_t rot_dim) {
  const index_t half = rot_dim / 2;
  for (index_t i = 0; i < half; ++i) {
    const index_t a = rope_first<S>(i);
    const index_t b = rope_second<S>(i, half);
    const RotatedPair r = rotate_pair(x[a], x[b], cos_sin_row[i], cos_sin_row[half + i]);
    x[a] = r.first;
    x[b] = r.second;
  }
}

// The cos/sin cache [max_positions, rot_dim], row-major: for position p and frequency
// i < rot_dim / 2, column i holds cos(p * theta^(-2i / rot_dim)) and column rot_dim / 2 + i the
// sine. Computed in double and rounded to float once. Plain RoPE, no context-extension scaling.
// rot_dim must be even and positive, max_positions positive, theta > 1.
std::vector<float> make_cos_sin_cache(index_t max_positions, index_t rot_dim, double theta);

// Context-extension scaling of the rope frequencies, with the parameters of a Hugging Face
// config's `rope_parameters` (`rope_scaling`). Zero in mscale / mscale_all_dim / attention_factor
// means "not given": transformers tests them for truthiness, so 0 and absent behave the same.
struct RopeScaling {
  enum class Kind : std::uint8_t { none, yarn };
  Kind kind = Kind::none;
  double factor = 1.0;
  index_t original_max_position = 0;  // original_max_position_embeddings
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 0.0;
  double mscale_all_dim = 0.0;
  double attention_factor = 0.0;  // explicit attention_factor; 0: derived from the above
  bool truncate = true;           // round the correction range outwards to whole dimensions
};

// YaRN's magnitude correction, transformers' yarn_get_mscale / get_mscale: 1 for scale <= 1, else
// 0.1 * mscale * ln(scale) + 1.
double yarn_get_mscale(double scale, double mscale);

// The inverse frequencies (rot_dim / 2 of them) and the factor cos and sin are multiplied by, as
// transformers' _compute_default_rope_parameters / _compute_yarn_parameters (modeling_rope_utils,
// transformers 5) compute them, evaluated in double where transformers uses float32. YaRN: the
// correction range [low, high] of dimensions from beta_fast / beta_slow rotations over
// original_max_position (floored / ceiled when truncate, clamped to [0, rot_dim - 1]); frequency
// i keeps theta^(-2i / rot_dim) (extrapolation) below low, takes it divided by factor
// (interpolation) above high, and blends linearly between; attention factor: attention_factor
// when given, else get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim) when both
// mscales are given, else get_mscale(factor). Throws ShapeError for a bad rot_dim or theta, or
// YaRN parameters outside their domain (factor > 0, original_max_position > 0).
struct RopeFrequencies {
  std::vector<double> inv_freq;
  double attention_factor = 1.0;
};
RopeFrequencies rope_frequencies(index_t rot_dim, double theta, const RopeScaling& scaling);

// The cos/sin cache with the layout above, for the scaled frequencies: column i holds
// attention_factor * cos(p * inv_freq[i]), column rot_dim / 2 + i the sine, computed in double
// and rounded to float once. With Kind::none it equals the plain table.
std::vector<float> make_cos_sin_cache(index_t max_positions, index_t rot_dim, double theta,
                                      const RopeScaling& scaling);

// The softmax scale of MLA attention, as transformers' DeepseekV3Attention sets it:
// qk_head_dim^-0.5, times yarn_get_mscale(factor, mscale_all_dim)^2 when the rope is scaled and
// mscale_all_dim is given. (The cos/sin attention factor corrects the rotated dims only; this
// corrects the whole q.k product.)
double mla_softmax_scale(index_t qk_head_dim, const RopeScaling& scaling);

// Checks positions [tokens] and that each lies in [0, max_positions) (a cache row).
void expect_positions(std::string_view op, View1<const std::int64_t> positions, index_t tokens,
                      index_t max_positions);

// In place on x [tokens, heads, rot_dim] (rows may be strided, e.g. the rope slice of q; the last
// dimension has stride 1): each head of token t is rotated by cache row positions[t].
// cos_sin is [max_positions, rot_dim] as make_cos_sin_cache lays it out. Math in float
// (rotate_pair), one bf16 rounding per element. Positions outside [0, max_positions) are
// rejected before anything is written.
template <RopeStyle S>
void rope(const Host&, View1<const std::int64_t> positions, View2<const float> cos_sin,
          View3<bf16> x);

}  // namespace atom::ops
