// RoPE on the GPU (atom/ops/rope.hpp's rope with `const Gpu&` first). Bit-identical to the host:
// each pair is rotated with the same rounded products and sums (no FMA contraction).
//
// positions live in device memory, so the host cannot range-check them without a round trip; the
// kernel checks each one instead, and a token whose position lies outside the cos/sin cache gets
// NaN in every element of its heads rather than a rotation by some other row.
#pragma once

#include <cstdint>

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/gpu.hpp"
#include "atom/ops/rope.hpp"

namespace atom::ops {

template <RopeStyle S>
void rope(const Gpu&, View1<const std::int64_t> positions, View2<const float> cos_sin,
          View3<bf16> x);

}  // namespace atom::ops
