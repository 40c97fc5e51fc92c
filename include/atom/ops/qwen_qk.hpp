// Qwen3 attention's QK step: per-head RMSNorm of q and k, RoPE on both, and the write of k and v
// into the paged cache (any format of kv_format.hpp). Two implementations with one signature: the
// fused op (one pass, the intermediate kept in float) and the separate chain (the standalone ops
// composed).
#pragma once

#include <cstdint>

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/backend.hpp"
#include "atom/ops/cache.hpp"
#include "atom/ops/rope.hpp"

namespace atom::ops {

// Arguments (shared by both variants):
//   qkv        [T, (q_heads + 2 kv_heads) * head_dim]: per token, q heads then k heads then v
//              heads, head_dim each (rows may be strided)
//   q_norm_weight, k_norm_weight [head_dim]; eps: the per-head RMSNorm (norm.hpp's contract)
//   positions  [T], cos_sin [max_positions, head_dim]: RoPE over the whole head
//   slots      [T]: cache slot per token, -1 = write nothing (q is still produced)
//   cache      [num_blocks, block_size, kv_heads, head_dim] (cache.hpp)
//   q_out      [T, q_heads, head_dim]
// q_heads comes from q_out, kv_heads and head_dim from the cache.
//
// Fused: per head, y = RoPE(RMSNorm(x)) in float; q_out = bf16(y) (one rounding); k is stored
// straight from y (store_kv_row: quantized or rounded to bf16 once, no bf16 in between); v is
// stored from its bf16 input. The separate chain rounds the normed q and k to bf16, runs rope on
// bf16 (rounding again) and stores k from that bf16 tensor. So an element of q moves by at most
// 3u times the norm of the pair it rotates with (u = 2^-8: the extra rounding before the
// rotation, then each path's final rounding), and so does an element of a bf16 cache's k. In
// fp8_row, k's scale moves by at most (sqrt(2) + 1)u of itself, and each dequantized k element by
// that bf16 effect plus half an FP8 step of either path (where the rotation cancels, that can be
// more than one code step); in fp8_tensor (a fixed scale) each k element by the bf16 effect plus
// half an FP8 step. v is identical in every format.
template <RopeStyle S, KvCacheFormat F>
void qk_norm_rope_cache_fused(const Host&, View2<const bf16> qkv, View1<const bf16> q_norm_weight,
                              View1<const bf16> k_norm_weight, float eps,
                              View1<const std::int64_t> positions, View2<const float> cos_sin,
                              View1<const std::int64_t> slots, const KvCache<F>& cache,
                              View3<bf16> q_out);

// The same step as rms_norm<epi::Bf16> per head, then rope<S> on q and k, then
// kv_cache_write: literally the composition of the standalone ops.
template <RopeStyle S, KvCacheFormat F>
void qk_norm_rope_cache_separate(const Host&, View2<const bf16> qkv,
                                 View1<const bf16> q_norm_weight, View1<const bf16> k_norm_weight,
                                 float eps, View1<const std::int64_t> positions,
                                 View2<const float> cos_sin, View1<const std::int64_t> slots,
                                 const KvCache<F>& cache, View3<bf16> q_out);

}  // namespace atom::ops
