#include "atom/ops/norm.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "atom/ops/quant.hpp"

namespace atom::ops {
namespace {

// y[i] = (x[i] * r) * w[i] with r = 1 / sqrt(sum(x^2) / n + eps), all in float.
void normalize(const float* x, const bf16* w, index_t n, float eps, float* y) {
  float sum_sq = 0.0f;
  for (index_t i = 0; i < n; ++i) sum_sq += x[i] * x[i];
  const float r = 1.0f / std::sqrt(sum_sq / static_cast<float>(n) + eps);
  for (index_t i = 0; i < n; ++i) y[i] = (x[i] * r) * to_float(w[i]);
}

void load(const bf16* src, index_t n, float* dst) {
  for (index_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}

std::vector<float> scratch(index_t n) {
  return std::vector<float>(static_cast<std::size_t>(n));
}

}  // namespace

template <class Epi>
requires Epilogue<Epi>
void rms_norm(const Host&, View2<const bf16> x, View1<const bf16> weight, float eps,
              typename Epi::Output out) {
  constexpr const char* op = "rms_norm";
  expect_view(op, "x", x, {-1, -1});
  expect(x.shape[1] > 0, op, "argument 'x' has no columns");
  expect_view(op, "weight", weight, {x.shape[1]});
  expect_format(op, "out", out, x.shape[0], x.shape[1]);
  expect_disjoint(op, "out", out, "x", x);
  expect_disjoint(op, "out", out, "weight", weight);
  std::vector<float> row = scratch(x.shape[1]);
  std::vector<float> y = scratch(x.shape[1]);
  for (index_t t = 0; t < x.shape[0]; ++t) {
    load(x[t].data, x.shape[1], row.data());
    normalize(row.data(), weight.data, x.shape[1], eps, y.data());
    store_row(y.data(), t, out);
  }
}

template <class Epi>
requires Epilogue<Epi>
void add_rms_norm(const Host&, View2<const bf16> x, View2<bf16> residual, View1<const bf16> weight,
                  float eps, typename Epi::Output out) {
  constexpr const char* op = "add_rms_norm";
  expect_view(op, "x", x, {-1, -1});
  expect(x.shape[1] > 0, op, "argument 'x' has no columns");
  expect_view(op, "residual", residual, {x.shape[0], x.shape[1]});
  expect_view(op, "weight", weight, {x.shape[1]});
  expect_format(op, "out", out, x.shape[0], x.shape[1]);
  expect_disjoint(op, "residual", residual, "x", x);
  expect_disjoint(op, "residual", residual, "weight", weight);
  expect_disjoint(op, "out", out, "x", x);
  expect_disjoint(op, "out", out, "residual", residual);
  expect_disjoint(op, "out", out, "weight", weight);
  std::vector<float> sum = scratch(x.shape[1]);
  std::vector<float> y = scratch(x.shape[1]);
  for (index_t t = 0; t < x.shape[0]; ++t) {
    const bf16* xr = x[t].data;
    bf16* rr = residual[t].data;
    for (index_t i = 0; i < x.shape[1]; ++i) {
      rr[i] = to_bf16(to_float(xr[i]) + to_float(rr[i]));
      sum[static_cast<std::size_t>(i)] = to_float(rr[i]);
    }
    normalize(sum.data(), weight.data, x.shape[1], eps, y.data());
    store_row(y.data(), t, out);
  }
}

template <class QEpi>
requires Epilogue<QEpi>
void qk_norm_fused(const Host&, View2<const bf16> qkv_a, View1<const bf16> q_weight,
                   View1<const bf16> kv_weight, float eps, typename QEpi::Output q_out,
                   View2<bf16> kv_c_out, View2<bf16> k_pe_out) {
  constexpr const char* op = "qk_norm_fused";
  expect_view(op, "q_weight", q_weight, {-1});
  expect_view(op, "kv_weight", kv_weight, {-1});
  const index_t q_lora = q_weight.shape[0];
  const index_t kv_lora = kv_weight.shape[0];
  expect(q_lora > 0 && kv_lora > 0, op, "'q_weight' and 'kv_weight' must not be empty");
  expect_view(op, "qkv_a", qkv_a, {-1, -1});
  const index_t tokens = qkv_a.shape[0];
  const index_t rope = qkv_a.shape[1] - q_lora - kv_lora;
  expect(rope >= 0, op,
         "argument 'qkv_a' has " + std::to_string(qkv_a.shape[1]) +
             " columns, fewer than q_weight + kv_weight = " + std::to_string(q_lora + kv_lora));
  expect_format(op, "q_out", q_out, tokens, q_lora);
  expect_view(op, "kv_c_out", kv_c_out, {tokens, kv_lora});
  expect_view(op, "k_pe_out", k_pe_out, {tokens, rope});
  expect_disjoint(op, "q_out", q_out, "qkv_a", qkv_a);
  expect_disjoint(op, "q_out", q_out, "kv_c_out", kv_c_out);
  expect_disjoint(op, "q_out", q_out, "k_pe_out", k_pe_out);
  expect_disjoint(op, "kv_c_out", kv_c_out, "qkv_a", qkv_a);
  expect_disjoint(op, "k_pe_out", k_pe_out, "qkv_a", qkv_a);
  expect_disjoint(op, "k_pe_out", k_pe_out, "kv_c_out", kv_c_out);
  std::vector<float> row = scratch(q_lora + kv_lora);
  std::vector<float> y = scratch(std::max(q_lora, kv_lora));
  for (index_t t = 0; t < tokens; ++t) {
    const bf16* src = qkv_a[t].data;
    load(src, q_lora + kv_lora, row.data());
    normalize(row.data(), q_weight.data, q_lora, eps, y.data());
    store_row(y.data(), t, q_out);
    normalize(row.data() + q_lora, kv_weight.data, kv_lora, eps, y.data());
    bf16* kv = kv_c_out[t].data;
    for (index_t i = 0; i < kv_lora; ++i) kv[i] = to_bf16(y[static_cast<std::size_t>(i)]);
    bf16* pe = k_pe_out[t].data;
    for (index_t i = 0; i < rope; ++i) pe[i] = src[q_lora + kv_lora + i];
  }
}

void copy(const Host&, View2<const bf16> src, View2<bf16> dst) {
  constexpr const char* op = "copy";
  expect_view(op, "src", src, {-1, -1});
  expect_view(op, "dst", dst, {src.shape[0], src.shape[1]});
  expect_disjoint(op, "dst", dst, "src", src);
  for (index_t r = 0; r < src.shape[0]; ++r) {
    const bf16* s = src[r].data;
    bf16* d = dst[r].data;
    for (index_t i = 0; i < src.shape[1]; ++i) d[i] = s[i];
  }
}

double copy_gbs(const Host& host, index_t values) {
  const index_t cols = 16384;
  const index_t rows = std::max<index_t>(1, values / cols);
  std::vector<bf16> a(static_cast<std::size_t>(rows * cols), to_bf16(1.0f)), b(a.size());
  const auto src = make_view(static_cast<const bf16*>(a.data()), rows, cols);
  const auto dst = make_view(b.data(), rows, cols);
  copy(host, src, dst);
  std::vector<double> seconds;
  for (int i = 0; i < 5; ++i) {
    const auto start = std::chrono::steady_clock::now();
    copy(host, src, dst);
    seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(seconds.begin(), seconds.end());
  return 2.0 * 2.0 * static_cast<double>(rows * cols) / seconds[2] / 1e9;
}

#define ATOM_INSTANTIATE_NORMS(Epi)                                                               \
  template void rms_norm<Epi>(const Host&, View2<const bf16>, View1<const bf16>, float,           \
                              Epi::Output);                                                       \
  template void add_rms_norm<Epi>(const Host&, View2<const bf16>, View2<bf16>, View1<const bf16>, \
                                  float, Epi::Output);                                            \
  template void qk_norm_fused<Epi>(const Host&, View2<const bf16>, View1<const bf16>,             \
                                   View1<const bf16>, float, Epi::Output, View2<bf16>,            \
                                   View2<bf16>);

ATOM_INSTANTIATE_NORMS(epi::Bf16)
ATOM_INSTANTIATE_NORMS(epi::Fp8PerToken)
ATOM_INSTANTIATE_NORMS(epi::Fp8PerGroup128)
ATOM_INSTANTIATE_NORMS(epi::Mxfp4)

}  // namespace atom::ops
