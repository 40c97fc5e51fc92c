#include "atom/ops/quant.hpp"

#include <algorithm>
#include <cstddef>
#include <vector>

namespace atom::ops {
namespace {

constexpr float fp8_scale_max = fp8_max<Fp8Kind::e4m3fn>;

// max |y| over n values; NaN wins (so the scale carries it), compared on the bits.
float abs_max(const float* y, index_t n) {
  std::uint32_t amax = 0;
  for (index_t i = 0; i < n; ++i) amax = std::max(amax, bits_of(y[i]) & float_abs_mask);
  return float_of(amax);
}

float fp8_scale_for(float amax) {
  return amax == 0.0f ? 1.0f : amax / fp8_scale_max;
}

void quantize_fp8(const float* y, index_t n, fp8_e4m3* q, float* scale) {
  const float s = fp8_scale_for(abs_max(y, n));
  *scale = s;
  for (index_t i = 0; i < n; ++i) q[i] = to_fp8<Fp8Kind::e4m3fn>(y[i] / s);
}

}  // namespace

void store_row(const float* y, index_t row, const Bf16Act& out) {
  bf16* dst = out.x[row].data;
  for (index_t i = 0; i < out.x.shape[1]; ++i) dst[i] = to_bf16(y[i]);
}

void store_row(const float* y, index_t row, const Fp8TokenAct& out) {
  quantize_fp8(y, out.q.shape[1], out.q[row].data, &out.scale(row));
}

void store_row(const float* y, index_t row, const Fp8GroupAct& out) {
  const index_t cols = out.q.shape[1];
  fp8_e4m3* q = out.q[row].data;
  float* scale = out.scale[row].data;
  for (index_t g = 0; g * fp8_group < cols; ++g) {
    const index_t begin = g * fp8_group;
    quantize_fp8(y + begin, std::min(fp8_group, cols - begin), q + begin, scale + g);
  }
}

void store_row(const float* y, index_t row, const Mxfp4Act& out) {
  std::uint8_t* packed = out.packed[row].data;
  e8m0* scale = out.scale[row].data;
  for (index_t b = 0; b * mx_block < out.cols; ++b) {
    const index_t begin = b * mx_block;
    const auto n = static_cast<int>(std::min<index_t>(mx_block, out.cols - begin));
    quantize_mx_block(y + begin, n, packed + begin / 2, scale + b);
  }
}

template <class Epi>
requires Epilogue<Epi> &&
    (Epi::format != Format::bf16) void quantize(const Host&, View2<const bf16> x,
                                                typename Epi::Output out) {
  constexpr const char* op = "quantize";
  expect_view(op, "x", x, {-1, -1});
  expect_format(op, "out", out, x.shape[0], x.shape[1]);
  expect_disjoint(op, "out", out, "x", x);
  std::vector<float> row(static_cast<std::size_t>(x.shape[1]));
  for (index_t r = 0; r < x.shape[0]; ++r) {
    const bf16* src = x[r].data;
    for (index_t i = 0; i < x.shape[1]; ++i) row[static_cast<std::size_t>(i)] = to_float(src[i]);
    store_row(row.data(), r, out);
  }
}

template void quantize<epi::Fp8PerToken>(const Host&, View2<const bf16>, Fp8TokenAct);
template void quantize<epi::Fp8PerGroup128>(const Host&, View2<const bf16>, Fp8GroupAct);
template void quantize<epi::Mxfp4>(const Host&, View2<const bf16>, Mxfp4Act);

void dequantize(const Host&, const Fp8TokenAct& a, View2<float> out) {
  constexpr const char* op = "dequantize";
  expect_format(op, "a", a, -1, -1);
  expect_view(op, "out", out, {a.q.shape[0], a.q.shape[1]});
  for (index_t r = 0; r < a.q.shape[0]; ++r) {
    const fp8_e4m3* q = a.q[r].data;
    float* dst = out[r].data;
    for (index_t i = 0; i < a.q.shape[1]; ++i) dst[i] = to_float(q[i]) * a.scale(r);
  }
}

void dequantize(const Host&, const Fp8GroupAct& a, View2<float> out) {
  constexpr const char* op = "dequantize";
  expect_format(op, "a", a, -1, -1);
  expect_view(op, "out", out, {a.q.shape[0], a.q.shape[1]});
  for (index_t r = 0; r < a.q.shape[0]; ++r) {
    const fp8_e4m3* q = a.q[r].data;
    const float* scale = a.scale[r].data;
    float* dst = out[r].data;
    for (index_t i = 0; i < a.q.shape[1]; ++i) dst[i] = to_float(q[i]) * scale[i / fp8_group];
  }
}

void dequantize(const Host&, const Mxfp4Act& a, View2<float> out) {
  constexpr const char* op = "dequantize";
  expect_format(op, "a", a, -1, -1);
  expect_view(op, "out", out, {a.packed.shape[0], a.cols});
  for (index_t r = 0; r < a.packed.shape[0]; ++r) {
    const std::uint8_t* packed = a.packed[r].data;
    const e8m0* scale = a.scale[r].data;
    float* dst = out[r].data;
    for (index_t i = 0; i < a.cols; ++i) dst[i] = mxfp4_value(packed, i, scale[i / mx_block]);
  }
}

void dequantize(const Host&, const Mxfp4Weight& w, View2<float> out) {
  constexpr const char* op = "dequantize";
  expect_weight(op, "w", w, -1, -1);
  expect_view(op, "out", out, {w.packed.shape[0], w.k});
  for (index_t n = 0; n < w.packed.shape[0]; ++n) {
    const std::uint8_t* packed = w.packed[n].data;
    const e8m0* scale = w.scale[n].data;
    float* dst = out[n].data;
    for (index_t i = 0; i < w.k; ++i) dst[i] = mxfp4_value(packed, i, scale[i / mx_block]);
  }
}

}  // namespace atom::ops
