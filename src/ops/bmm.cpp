#include "atom/ops/bmm.hpp"

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

#include "atom/ops/gemm.hpp"

namespace atom::ops {
namespace {

std::vector<float> scratch(index_t n) {
  return std::vector<float>(static_cast<std::size_t>(n));
}

}  // namespace

void bmm_fp8(const Host&, const Fp8GroupAct& a, const Fp8HeadWeight& w, View3<bf16> out) {
  constexpr const char* op = "bmm_fp8";
  expect_view(op, "out", out, {-1, -1, -1});
  const index_t tokens = out.shape[0];
  const index_t heads = out.shape[1];
  const index_t n_count = out.shape[2];
  expect_view(op, "w.w", w.w, {heads, n_count, -1});
  const index_t k_count = w.w.shape[2];
  expect_shape(op, "w.scale", w.scale, {heads});
  expect_format(op, "a", a, tokens * heads, k_count);
  expect_disjoint(op, "out", out, "a.q", a.q);
  expect_disjoint(op, "out", out, "a.scale", a.scale);
  expect_disjoint(op, "out", out, "w.w", w.w);
  expect_disjoint(op, "out", out, "w.scale", w.scale);
  // Codes as float, transposed to [K][N] so the innermost loop runs over output features.
  std::vector<float> wt = scratch(k_count * n_count);
  std::vector<float> a_codes = scratch(k_count);
  std::vector<float> partial = scratch(n_count);
  std::vector<float> acc = scratch(n_count);
  for (index_t h = 0; h < heads; ++h) {
    for (index_t n = 0; n < n_count; ++n) {
      const fp8_e4m3* wn = w.w[h][n].data;
      for (index_t k = 0; k < k_count; ++k)
        wt[static_cast<std::size_t>(k * n_count + n)] = to_float(wn[k]);
    }
    for (index_t t = 0; t < tokens; ++t) {
      const index_t row = t * heads + h;
      const fp8_e4m3* q = a.q[row].data;
      for (index_t k = 0; k < k_count; ++k) a_codes[static_cast<std::size_t>(k)] = to_float(q[k]);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (index_t k0 = 0; k0 < k_count; k0 += fp8_group) {
        std::fill(partial.begin(), partial.end(), 0.0f);
        for (index_t k = k0; k < std::min(k0 + fp8_group, k_count); ++k) {
          const float av = a_codes[static_cast<std::size_t>(k)];
          const float* wk = wt.data() + k * n_count;
          for (index_t n = 0; n < n_count; ++n) partial[static_cast<std::size_t>(n)] += av * wk[n];
        }
        const float group_scale = a.scale(row, k0 / fp8_group);
        for (index_t n = 0; n < n_count; ++n)
          acc[static_cast<std::size_t>(n)] += partial[static_cast<std::size_t>(n)] * group_scale;
      }
      bf16* dst = out[t][h].data;
      for (index_t n = 0; n < n_count; ++n)
        dst[n] = to_bf16(acc[static_cast<std::size_t>(n)] * w.scale(h));
    }
  }
}

void bmm_mxfp4(const Host& host, View3<const bf16> a, const Mxfp4HeadWeight& w, View3<bf16> out) {
  constexpr const char* op = "bmm_mxfp4";
  expect_view(op, "a", a, {-1, -1, -1});
  const index_t tokens = a.shape[0];
  const index_t heads = a.shape[1];
  const index_t k_count = a.shape[2];
  expect(w.k == k_count, op,
         "argument 'w' has K = " + std::to_string(w.k) + ", expected " + std::to_string(k_count));
  expect_view(op, "w.packed", w.packed, {heads, -1, mxfp4_packed_cols(k_count)});
  const index_t n_count = w.packed.shape[1];
  expect_view(op, "w.scale", w.scale, {heads, n_count, mxfp4_scale_cols(k_count)});
  expect_view(op, "out", out, {tokens, heads, n_count});
  expect_disjoint(op, "out", out, "a", a);
  expect_disjoint(op, "out", out, "w.packed", w.packed);
  expect_disjoint(op, "out", out, "w.scale", w.scale);
  std::vector<float> a_head = scratch(tokens * k_count);
  std::vector<float> result = scratch(tokens * n_count);
  const auto a_view = make_view(static_cast<const float*>(a_head.data()), tokens, k_count);
  const auto result_view = make_view(result.data(), tokens, n_count);
  for (index_t h = 0; h < heads; ++h) {
    for (index_t t = 0; t < tokens; ++t) {
      const bf16* src = a[t][h].data;
      for (index_t k = 0; k < k_count; ++k)
        a_head[static_cast<std::size_t>(t * k_count + k)] = to_float(src[k]);
    }
    gemm_w4(host, a_view, Mxfp4Weight{w.packed[h], w.scale[h], k_count}, result_view);
    for (index_t t = 0; t < tokens; ++t)
      for (index_t n = 0; n < n_count; ++n) out(t, h, n) = to_bf16(result_view(t, n));
  }
}

}  // namespace atom::ops
