#include "atom/ops/qwen_qk.hpp"

#include <cmath>
#include <string>
#include <vector>

#include "atom/ops/formats.hpp"
#include "atom/ops/norm.hpp"

namespace atom::ops {
namespace {

struct QkShape {
  index_t tokens;
  index_t q_heads;
  index_t kv_heads;
  index_t head_dim;
};

// The boundary checks both variants share, so that either names itself in errors.
template <KvCacheFormat F>
QkShape expect_qk_args(std::string_view op, View2<const bf16> qkv, View1<const bf16> q_norm_weight,
                       View1<const bf16> k_norm_weight, View1<const std::int64_t> positions,
                       View2<const float> cos_sin, View1<const std::int64_t> slots,
                       const KvCache<F>& cache, View3<bf16> q_out) {
  expect_kv_cache(op, "cache", cache, -1, -1);
  const QkShape s{qkv.size(0), q_out.size(1), cache.kv_heads(), cache.head_dim()};
  expect(s.head_dim % 2 == 0, op,
         "the cache's head_dim must be even for RoPE, got " + std::to_string(s.head_dim));
  expect_view(op, "qkv", qkv, {s.tokens, (s.q_heads + 2 * s.kv_heads) * s.head_dim});
  expect_view(op, "q_out", q_out, {s.tokens, s.q_heads, s.head_dim});
  expect_view(op, "q_norm_weight", q_norm_weight, {s.head_dim});
  expect_view(op, "k_norm_weight", k_norm_weight, {s.head_dim});
  expect_view(op, "cos_sin", cos_sin, {-1, s.head_dim});
  expect_positions(op, positions, s.tokens, cos_sin.size(0));
  expect_slots(op, slots, s.tokens, cache.num_blocks() * cache.block_size());
  expect_disjoint(op, "q_out", q_out, "qkv", qkv);
  expect_disjoint(op, "q_out", q_out, "q_norm_weight", q_norm_weight);
  expect_disjoint(op, "q_out", q_out, "k_norm_weight", k_norm_weight);
  expect_disjoint(op, "q_out", q_out, "cos_sin", cos_sin);
  expect_disjoint_from_cache(op, cache, "qkv", qkv);
  expect_disjoint_from_cache(op, cache, "q_out", q_out);
  expect_disjoint_from_cache(op, cache, "q_norm_weight", q_norm_weight);
  expect_disjoint_from_cache(op, cache, "k_norm_weight", k_norm_weight);
  expect_disjoint_from_cache(op, cache, "cos_sin", cos_sin);
  return s;
}

// Heads [first, first + count) of every token of qkv, as [T, count, head_dim].
View3<const bf16> heads_of(View2<const bf16> qkv, index_t first, index_t count, index_t head_dim) {
  const View2<const bf16> columns = qkv.slice(1, first * head_dim, count * head_dim);
  return {columns.data, {qkv.size(0), count, head_dim}, {qkv.stride(0), head_dim, 1}};
}

// norm.hpp's RMSNorm contract on one row, in float.
void rms_normalize(const float* x, const bf16* weight, index_t n, float eps, float* y) {
  float sum_sq = 0.0f;
  for (index_t i = 0; i < n; ++i) sum_sq += x[i] * x[i];
  const float r = 1.0f / std::sqrt(sum_sq / static_cast<float>(n) + eps);
  for (index_t i = 0; i < n; ++i) y[i] = (x[i] * r) * to_float(weight[i]);
}

void load(const bf16* src, index_t n, float* dst) {
  for (index_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}

}  // namespace

template <RopeStyle S, KvCacheFormat F>
void qk_norm_rope_cache_fused(const Host&, View2<const bf16> qkv, View1<const bf16> q_norm_weight,
                              View1<const bf16> k_norm_weight, float eps,
                              View1<const std::int64_t> positions, View2<const float> cos_sin,
                              View1<const std::int64_t> slots, const KvCache<F>& cache,
                              View3<bf16> q_out) {
  const QkShape s = expect_qk_args("qk_norm_rope_cache_fused", qkv, q_norm_weight, k_norm_weight,
                                   positions, cos_sin, slots, cache, q_out);
  const index_t dim = s.head_dim;
  const View3<const bf16> q = heads_of(qkv, 0, s.q_heads, dim);
  const View3<const bf16> k = heads_of(qkv, s.q_heads, s.kv_heads, dim);
  const View3<const bf16> v = heads_of(qkv, s.q_heads + s.kv_heads, s.kv_heads, dim);
  const index_t block_size = cache.block_size();
  std::vector<float> x(static_cast<std::size_t>(dim));
  std::vector<float> y(static_cast<std::size_t>(dim));
  for (index_t t = 0; t < s.tokens; ++t) {
    const float* cos_sin_row = &cos_sin(positions(t), 0);
    for (index_t h = 0; h < s.q_heads; ++h) {
      load(&q(t, h, 0), dim, x.data());
      rms_normalize(x.data(), q_norm_weight.data, dim, eps, y.data());
      rotate_head<S>(y.data(), cos_sin_row, dim);
      bf16* out = &q_out(t, h, 0);
      for (index_t d = 0; d < dim; ++d) out[d] = to_bf16(y[static_cast<std::size_t>(d)]);
    }
    const std::int64_t slot = slots(t);
    if (slot == skip_slot) continue;
    const index_t block = slot / block_size;
    const index_t offset = slot % block_size;
    for (index_t h = 0; h < s.kv_heads; ++h) {
      load(&k(t, h, 0), dim, x.data());
      rms_normalize(x.data(), k_norm_weight.data, dim, eps, y.data());
      rotate_head<S>(y.data(), cos_sin_row, dim);
      store_kv_row(cache, false, block, offset, h, y.data(), dim);
      load(&v(t, h, 0), dim, x.data());
      store_kv_row(cache, true, block, offset, h, x.data(), dim);
    }
  }
}

template <RopeStyle S, KvCacheFormat F>
void qk_norm_rope_cache_separate(const Host& host, View2<const bf16> qkv,
                                 View1<const bf16> q_norm_weight, View1<const bf16> k_norm_weight,
                                 float eps, View1<const std::int64_t> positions,
                                 View2<const float> cos_sin, View1<const std::int64_t> slots,
                                 const KvCache<F>& cache, View3<bf16> q_out) {
  const QkShape s = expect_qk_args("qk_norm_rope_cache_separate", qkv, q_norm_weight, k_norm_weight,
                                   positions, cos_sin, slots, cache, q_out);
  const index_t dim = s.head_dim;
  const View3<const bf16> q = heads_of(qkv, 0, s.q_heads, dim);
  const View3<const bf16> k = heads_of(qkv, s.q_heads, s.kv_heads, dim);
  const View3<const bf16> v = heads_of(qkv, s.q_heads + s.kv_heads, s.kv_heads, dim);
  std::vector<bf16> k_normed(static_cast<std::size_t>(s.tokens * s.kv_heads * dim));
  const View3<bf16> k_rows = make_view(k_normed.data(), s.tokens, s.kv_heads, dim);
  // One norm call per token: a token's heads are evenly strided rows [heads, head_dim], while the
  // heads of all tokens together are not (qkv rows also hold the other projections).
  for (index_t t = 0; t < s.tokens; ++t) {
    rms_norm<epi::Bf16>(host, q[t], q_norm_weight, eps, Bf16Act{q_out[t]});
    rms_norm<epi::Bf16>(host, k[t], k_norm_weight, eps, Bf16Act{k_rows[t]});
  }
  rope<S>(host, positions, cos_sin, q_out);
  rope<S>(host, positions, cos_sin, k_rows);
  kv_cache_write(host, View3<const bf16>(k_rows), v, slots, cache);
}

#define ATOM_INSTANTIATE_QK(S, F)                                                                  \
  template void qk_norm_rope_cache_fused<S, F>(                                                    \
      const Host&, View2<const bf16>, View1<const bf16>, View1<const bf16>, float,                 \
      View1<const std::int64_t>, View2<const float>, View1<const std::int64_t>, const KvCache<F>&, \
      View3<bf16>);                                                                                \
  template void qk_norm_rope_cache_separate<S, F>(                                                 \
      const Host&, View2<const bf16>, View1<const bf16>, View1<const bf16>, float,                 \
      View1<const std::int64_t>, View2<const float>, View1<const std::int64_t>, const KvCache<F>&, \
      View3<bf16>);
#define ATOM_INSTANTIATE_QK_FORMATS(S)              \
  ATOM_INSTANTIATE_QK(S, KvCacheFormat::fp8_row)    \
  ATOM_INSTANTIATE_QK(S, KvCacheFormat::fp8_tensor) \
  ATOM_INSTANTIATE_QK(S, KvCacheFormat::bf16)

ATOM_INSTANTIATE_QK_FORMATS(RopeStyle::neox)
ATOM_INSTANTIATE_QK_FORMATS(RopeStyle::interleaved)

}  // namespace atom::ops
