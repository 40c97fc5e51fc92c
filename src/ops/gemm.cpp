#include "atom/ops/gemm.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <vector>

#include "atom/ops/quant.hpp"

namespace atom::ops {
namespace {

// Output features per tile. The weight tile is stored transposed ([K][tile_n]) so the innermost
// loop runs over independent accumulators (one per output feature) and vectorizes, while each
// accumulator still sums in increasing k.
constexpr index_t tile_n = 32;

// out[m * ldo + j] = sum over k of a[m * lda + k] * wt[k * tile_n + j] for j < n_valid.
void multiply_tile(const float* a, index_t lda, index_t rows, index_t k_count, const float* wt,
                   index_t n_valid, float* out, index_t ldo) {
  for (index_t m = 0; m < rows; ++m) {
    std::array<float, tile_n> acc{};
    const float* am = a + m * lda;
    for (index_t k = 0; k < k_count; ++k) {
      const float av = am[k];
      const float* wk = wt + k * tile_n;
      for (index_t j = 0; j < tile_n; ++j) acc[static_cast<std::size_t>(j)] += av * wk[j];
    }
    std::copy_n(acc.begin(), n_valid, out + m * ldo);
  }
}

std::vector<float> scratch(index_t n) {
  return std::vector<float>(static_cast<std::size_t>(n));
}

// Runs multiply_tile over all tiles of N; fill(n0, n_valid, wt) writes the transposed tile of
// output features [n0, n0 + n_valid) (zero-padded to tile_n).
template <class FillTile>
void tiled_gemm(const float* a, index_t lda, index_t rows, index_t k_count, index_t n_count,
                View2<float> out, FillTile fill) {
  std::vector<float> wt = scratch(k_count * tile_n);
  std::vector<float> tile_out = scratch(rows * tile_n);
  for (index_t n0 = 0; n0 < n_count; n0 += tile_n) {
    const index_t n_valid = std::min(tile_n, n_count - n0);
    if (n_valid < tile_n) std::fill(wt.begin(), wt.end(), 0.0f);
    fill(n0, n_valid, wt.data());
    multiply_tile(a, lda, rows, k_count, wt.data(), n_valid, tile_out.data(), tile_n);
    for (index_t m = 0; m < rows; ++m)
      std::copy_n(tile_out.data() + m * tile_n, n_valid, out[m].data + n0);
  }
}

// The float rows of `a` as one contiguous [M, K] buffer.
std::vector<float> contiguous(View2<const float> a) {
  std::vector<float> dense = scratch(a.numel());
  for (index_t m = 0; m < a.shape[0]; ++m)
    std::copy_n(a[m].data, a.shape[1], dense.data() + m * a.shape[1]);
  return dense;
}

}  // namespace

void gemm_f32(const Host&, View2<const float> a, View2<const float> w, View2<float> out) {
  constexpr const char* op = "gemm_f32";
  expect_view(op, "a", a, {-1, -1});
  expect_view(op, "w", w, {-1, a.shape[1]});
  expect_view(op, "out", out, {a.shape[0], w.shape[0]});
  expect_disjoint(op, "out", out, "a", a);
  expect_disjoint(op, "out", out, "w", w);
  const index_t k_count = a.shape[1];
  const std::vector<float> dense = contiguous(a);
  tiled_gemm(dense.data(), k_count, a.shape[0], k_count, w.shape[0], out,
             [&](index_t n0, index_t n_valid, float* wt) {
               for (index_t j = 0; j < n_valid; ++j) {
                 const float* wn = w[n0 + j].data;
                 for (index_t k = 0; k < k_count; ++k) wt[k * tile_n + j] = wn[k];
               }
             });
}

void gemm_w4(const Host&, View2<const float> a, const Mxfp4Weight& w, View2<float> out) {
  constexpr const char* op = "gemm_w4";
  expect_view(op, "a", a, {-1, -1});
  expect_weight(op, "w", w, -1, a.shape[1]);
  expect_view(op, "out", out, {a.shape[0], w.packed.shape[0]});
  expect_disjoint(op, "out", out, "a", a);
  expect_disjoint(op, "out", out, "w.packed", w.packed);
  expect_disjoint(op, "out", out, "w.scale", w.scale);
  const index_t k_count = w.k;
  const std::vector<float> dense = contiguous(a);
  std::array<float, 16> e2m1{};
  for (std::uint8_t c = 0; c < 16; ++c) e2m1[c] = e2m1_to_float(c);
  tiled_gemm(dense.data(), k_count, a.shape[0], k_count, w.packed.shape[0], out,
             [&](index_t n0, index_t n_valid, float* wt) {
               for (index_t j = 0; j < n_valid; ++j) {
                 const std::uint8_t* packed = w.packed[n0 + j].data;
                 const e8m0* scale = w.scale[n0 + j].data;
                 for (index_t k = 0; k < k_count; ++k) {
                   const std::uint8_t byte = packed[k / 2];
                   const auto code = static_cast<std::uint8_t>((k & 1) ? byte >> 4 : byte & 0xf);
                   wt[k * tile_n + j] = e2m1[code] * to_float(scale[k / mx_block]);
                 }
               }
             });
}

void gemm_a4w4(const Host& host, const Mxfp4Act& a, const Mxfp4Weight& w, View2<bf16> out) {
  constexpr const char* op = "gemm_a4w4";
  expect_weight(op, "w", w, -1, -1);
  expect_format(op, "a", a, -1, w.k);
  const index_t rows = a.packed.shape[0];
  const index_t n_count = w.packed.shape[0];
  expect_view(op, "out", out, {rows, n_count});
  expect_disjoint(op, "out", out, "a.packed", a.packed);
  expect_disjoint(op, "out", out, "a.scale", a.scale);
  expect_disjoint(op, "out", out, "w.packed", w.packed);
  expect_disjoint(op, "out", out, "w.scale", w.scale);
  std::vector<float> a_values = scratch(rows * w.k);
  dequantize(host, a, make_view(a_values.data(), rows, w.k));
  std::vector<float> result = scratch(rows * n_count);
  const auto result_view = make_view(result.data(), rows, n_count);
  gemm_w4(host, make_view(static_cast<const float*>(a_values.data()), rows, w.k), w, result_view);
  for (index_t m = 0; m < rows; ++m)
    for (index_t n = 0; n < n_count; ++n) out(m, n) = to_bf16(result_view(m, n));
}

void gemm_a16w16(const Host& host, const Bf16Act& a, const Bf16Weight& w, View2<bf16> out) {
  constexpr const char* op = "gemm_a16w16";
  expect_format(op, "a", a, -1, -1);
  expect_weight(op, "w", w, -1, a.x.shape[1]);
  expect_view(op, "out", out, {a.x.shape[0], w.w.shape[0]});
  expect_disjoint(op, "out", out, "a.x", a.x);
  expect_disjoint(op, "out", out, "w.w", w.w);
  std::vector<float> result = scratch(out.numel());
  const auto result_view = make_view(result.data(), out.shape[0], out.shape[1]);
  gemm_bf16(host, a.x, w.w, result_view);
  for (index_t m = 0; m < out.shape[0]; ++m)
    for (index_t n = 0; n < out.shape[1]; ++n) out(m, n) = to_bf16(result_view(m, n));
}

void gemm_a8w8_block(const Host& host, const Fp8GroupAct& a, const Fp8BlockWeight& w,
                     View2<bf16> out) {
  constexpr const char* op = "gemm_a8w8_block";
  expect_format(op, "a", a, -1, -1);
  const index_t rows = a.q.shape[0];
  const index_t k_count = a.q.shape[1];
  expect_weight(op, "w", w, -1, k_count);
  const index_t n_count = w.q.shape[0];
  expect_view(op, "out", out, {rows, n_count});
  expect_disjoint(op, "out", out, "a.q", a.q);
  expect_disjoint(op, "out", out, "a.scale", a.scale);
  expect_disjoint(op, "out", out, "w.q", w.q);
  expect_disjoint(op, "out", out, "w.scale", w.scale);
  // The codes' values, unscaled; each group's partial sums are gemm_f32's (increasing k).
  const auto values = [](View2<const fp8_e4m3> q) {
    std::vector<float> v = scratch(q.numel());
    for (index_t r = 0; r < q.shape[0]; ++r)
      for (index_t c = 0; c < q.shape[1]; ++c)
        v[static_cast<std::size_t>(r * q.shape[1] + c)] = to_float(q(r, c));
    return v;
  };
  const std::vector<float> a_values = values(a.q);
  const std::vector<float> w_values = values(w.q);
  const auto a_view = make_view(a_values.data(), rows, k_count);
  const auto w_view = make_view(w_values.data(), n_count, k_count);
  std::vector<float> acc = scratch(rows * n_count);
  std::vector<float> partial = scratch(rows * n_count);
  const auto partial_view = make_view(partial.data(), rows, n_count);
  for (index_t g = 0; g < fp8_group_cols(k_count); ++g) {
    const index_t k0 = g * fp8_group;
    const index_t width = std::min(fp8_group, k_count - k0);
    gemm_f32(host, a_view.slice(1, k0, width), w_view.slice(1, k0, width), partial_view);
    for (index_t m = 0; m < rows; ++m)
      for (index_t n = 0; n < n_count; ++n)
        acc[static_cast<std::size_t>(m * n_count + n)] +=
            partial_view(m, n) * (a.scale(m, g) * w.scale(n / w.block_n, g));
  }
  for (index_t m = 0; m < rows; ++m)
    for (index_t n = 0; n < n_count; ++n)
      out(m, n) = to_bf16(acc[static_cast<std::size_t>(m * n_count + n)]);
}

void gemm_bf16(const Host& host, View2<const bf16> a, View2<const bf16> w, View2<float> out) {
  constexpr const char* op = "gemm_bf16";
  expect_view(op, "a", a, {-1, -1});
  expect_view(op, "w", w, {-1, a.shape[1]});
  expect_view(op, "out", out, {a.shape[0], w.shape[0]});
  expect_disjoint(op, "out", out, "a", a);
  expect_disjoint(op, "out", out, "w", w);
  const auto widen = [](View2<const bf16> v) {
    std::vector<float> values = scratch(v.numel());
    for (index_t r = 0; r < v.shape[0]; ++r)
      for (index_t c = 0; c < v.shape[1]; ++c)
        values[static_cast<std::size_t>(r * v.shape[1] + c)] = to_float(v(r, c));
    return values;
  };
  const std::vector<float> a_values = widen(a);
  const std::vector<float> w_values = widen(w);
  gemm_f32(host, make_view(a_values.data(), a.shape[0], a.shape[1]),
           make_view(w_values.data(), w.shape[0], w.shape[1]), out);
}

}  // namespace atom::ops
