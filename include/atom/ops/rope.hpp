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
// sine. Computed in double and rounded to float once. Plain RoPE: no YaRN or other context
// extension scaling (a caller that needs one builds its own table with the same layout).
// rot_dim must be even and positive, max_positions positive, theta > 1.
std::vector<float> make_cos_sin_cache(index_t max_positions, index_t rot_dim, double theta);

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
