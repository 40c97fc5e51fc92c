// Test support for the GPU GEMMs over bf16 and FP8 block-scaled weights (gemm_a16w16,
// gemm_a8w8_block and their routed forms): seeded random operands in host memory (never zero,
// rows optionally padded), their device copies, and each output's exact value computed in double
// from the same operands, independently of the host ops.
//
// The bound (atom/ops/gpu/gemm.hpp): the GPU's float result lies within depth * 2^-24 * S of the
// exact value, S = sum of |terms|, depth = K for bf16 and min(K, 128) + ceil(K / 128) + 1 for FP8;
// rounding it to bf16 moves it by at most 2^-8 of the bf16 result (half an ulp of an 8-bit
// significand). The double sums themselves are within K * 2^-53 * S of exact (each term is exact
// in double), which the 1% margin on the first term covers. NaN fails the bound.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "atom/core/tensor.hpp"
#include "atom/gpu/device.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/formats.hpp"

namespace dense_test {

using atom::bf16;
using atom::fp8_e4m3;
using atom::index_t;

inline std::mt19937& rng() {
  static std::mt19937 engine(Catch::rngSeed() + 29u);
  return engine;
}

inline std::size_t at(index_t i) {
  return static_cast<std::size_t>(i);
}

// [rows, cols] in host memory, rows `stride` >= cols elements apart. Every byte starts as 0xFF
// (NaN in bf16, e4m3fn and float), so padding that a kernel should never read would show.
template <class T>
struct Matrix {
  index_t rows = 0;
  index_t cols = 0;
  index_t stride = 0;
  std::vector<T> v;

  Matrix(index_t r, index_t c, index_t pad = 0)
      : rows(r), cols(c), stride(c + pad), v(at(r * (c + pad))) {
    if (!v.empty()) std::memset(v.data(), 0xFF, v.size() * sizeof(T));
  }
  T* row(index_t r) { return v.data() + r * stride; }
  const T* row(index_t r) const { return v.data() + r * stride; }
};

// Values uniform in [-range, range], none zero.
inline Matrix<bf16> random_bf16(index_t rows, index_t cols, float range, index_t pad = 0) {
  std::uniform_real_distribution<float> value(-range, range);
  Matrix<bf16> m(rows, cols, pad);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) {
      bf16 x{0};
      while (x.bits == 0 || x.bits == 0x8000) x = atom::to_bf16(value(rng()));
      m.row(r)[c] = x;
    }
  return m;
}

// e4m3fn codes uniform over the nonzero finite ones (not 0x00, 0x80 and the NaNs 0x7F, 0xFF).
inline Matrix<fp8_e4m3> random_fp8(index_t rows, index_t cols, index_t pad = 0) {
  std::uniform_int_distribution<int> code(1, 252);
  Matrix<fp8_e4m3> m(rows, cols, pad);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) {
      const int i = code(rng());  // 1..126 positive, 127..252 negative (0x81..0xFE)
      m.row(r)[c] = fp8_e4m3{static_cast<std::uint8_t>(i <= 126 ? i : i - 127 + 0x81)};
    }
  return m;
}

// Scales in [2^-10, 2^-4) with random significands, so that their products round.
inline Matrix<float> random_scales(index_t rows, index_t cols) {
  std::uniform_real_distribution<float> significand(1.0f, 2.0f);
  std::uniform_int_distribution<int> exponent(-10, -5);
  Matrix<float> m(rows, cols);
  for (auto& s : m.v) s = std::ldexp(significand(rng()), exponent(rng()));
  return m;
}

// A Matrix copied to the device, seen with the same row stride.
template <class T>
struct DeviceMatrix {
  index_t rows;
  index_t cols;
  index_t stride;
  atom::gpu::Buffer<T> buffer;

  explicit DeviceMatrix(const Matrix<T>& m)
      : rows(m.rows), cols(m.cols), stride(m.stride), buffer(m.v) {}
  atom::View2<T> view() const { return {buffer.data(), {rows, cols}, {stride, 1}}; }
  // The rows as `experts` blocks of rows / experts rows each: [E, rows / E, cols].
  atom::View3<T> experts(index_t e) const {
    return {buffer.data(), {e, rows / e, cols}, {rows / e * stride, stride, 1}};
  }
};

// An output's exact value and S, the sum of the magnitudes of its terms.
struct Exact {
  double value = 0.0;
  double abs = 0.0;
};

inline Exact exact_bf16(const bf16* a, const bf16* w, index_t k) {
  Exact e;
  for (index_t i = 0; i < k; ++i) {
    const double term = static_cast<double>(atom::to_float(a[i])) * atom::to_float(w[i]);
    e.value += term;
    e.abs += std::fabs(term);
  }
  return e;
}

// Group g's terms are q_a * q_w * (a_scale[g] * w_scale[g]), the scale product rounded to float
// as gemm_a8w8_block's contract (atom/ops/gemm.hpp) defines it. w_scale: the row of the output
// column's block.
inline Exact exact_fp8(const fp8_e4m3* a, const float* a_scale, const fp8_e4m3* w,
                       const float* w_scale, index_t k) {
  Exact e;
  for (index_t i = 0; i < k; ++i) {
    const index_t g = i / atom::ops::fp8_group;
    const float scale = a_scale[g] * w_scale[g];
    const double term = static_cast<double>(atom::to_float(a[i])) * atom::to_float(w[i]) *
                        static_cast<double>(scale);
    e.value += term;
    e.abs += std::fabs(term);
  }
  return e;
}

inline double bf16_depth(index_t k) {
  return static_cast<double>(k);
}

inline double fp8_depth(index_t k) {
  return static_cast<double>(std::min<index_t>(k, atom::ops::fp8_group) +
                             atom::ops::ceil_div(k, atom::ops::fp8_group) + 1);
}

// Whether a GPU output matches the exact value within the bound; a NaN expectation (from a NaN
// scale) wants NaN.
inline bool matches(bf16 got, const Exact& want, double depth) {
  const double have = atom::to_float(got);
  if (std::isnan(want.value)) return std::isnan(have);
  const double tol = depth * std::ldexp(want.abs, -24) * 1.01 +
                     std::ldexp(std::max(std::fabs(have), std::fabs(want.value)), -8);
  return std::fabs(have - want.value) <= tol;
}

// Byte patterns for poisoning outputs: NaN in bf16, and a finite value (0x7F7F, about 3.4e38)
// for outputs that are meant to become NaN, so that an unwritten one shows.
inline constexpr int nan_poison = 0xFF;
inline constexpr int finite_poison = 0x7F;

inline bool have_gpu() {
  return atom::gpu::device_count() > 0;
}

}  // namespace dense_test
