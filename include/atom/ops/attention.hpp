// Decode attention over paged caches: each token of a decode batch (ops/decode_batch.hpp: per
// sequence its query tokens, context length and block-table row) attends to the causal prefix of
// its sequence's context; a padded token's outputs are zero. A bad batch is rejected before
// anything is written.
//
// Arithmetic (the reference the device kernels are compared against, to float reassociation):
// every dot product is one fp32 sum in index order; softmax subtracts the maximum score, takes
// p_j = exp(s_j - max) and l = sum_j p_j in context order; out = (sum_j p_j v_j) / l, rounded to
// bf16 once.
#pragma once

#include <cstdint>
#include <string_view>

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/backend.hpp"
#include "atom/ops/cache.hpp"
#include "atom/ops/decode_batch.hpp"

namespace atom::ops {

// DeepSeek MLA decode in the absorbed form: the queries are already multiplied by W_UK, so the
// keys and values are the cached latents themselves.
//   q_latent [T, heads, kv_lora]   (q_nope x W_UK per head)
//   q_pe     [T, heads, rope]      (rotated; may be a slice of a wider q)
//   cache    [num_blocks, block_size, kv_lora + rope]  (mla_cache_write's layout: latent c_j,
//            then rotated key k_pe_j)
//   out      [T, heads, kv_lora]   (to be multiplied by W_UV)
// score_j = (q_latent . c_j + q_pe . k_pe_j) * softmax_scale, summed over the latent dims then
// the rope dims; out = softmax-weighted sum of c_j.
void mla_decode(const Host&, View3<const bf16> q_latent, View3<const bf16> q_pe,
                View3<const bf16> cache, const DecodeBatch& batch, float softmax_scale,
                View3<bf16> out);

// Grouped-query decode over the paged cache of format F (kv_format.hpp).
//   q   [T, q_heads, head_dim], q_heads a multiple of cache.kv_heads(); query head h reads kv
//       head h / (q_heads / kv_heads)
//   out [T, q_heads, head_dim]
// Keys and values are read as floats (PagedKvCache::element: to_float(code) * scale); score_j = (q
// . k_j) * softmax_scale.
template <KvCacheFormat F>
void gqa_decode(const Host&, View3<const bf16> q, const ConstKvCache<F>& cache,
                const DecodeBatch& batch, float softmax_scale, View3<bf16> out);

// The same over a writable cache (seen read-only), on either backend.
template <class Backend, KvCacheFormat F>
void gqa_decode(const Backend& b, View3<const bf16> q, const KvCache<F>& cache,
                const DecodeBatch& batch, float softmax_scale, View3<bf16> out) {
  gqa_decode<F>(b, q, ConstKvCache<F>(cache), batch, softmax_scale, out);
}

// The boundary checks both backends run before touching any data: shapes, contiguous rows,
// head divisibility, aliasing, a finite scale, and the batch's shapes. The host ops then check
// the batch's contents; device ops cannot read them without a sync.
void expect_mla_decode_args(std::string_view op, View3<const bf16> q_latent, View3<const bf16> q_pe,
                            View3<const bf16> cache, const DecodeBatch& batch, float softmax_scale,
                            View3<bf16> out);
template <KvCacheFormat F>
void expect_gqa_decode_args(std::string_view op, View3<const bf16> q, const ConstKvCache<F>& cache,
                            const DecodeBatch& batch, float softmax_scale, View3<bf16> out);

}  // namespace atom::ops
