// Qwen3's QK step on the GPU (atom/ops/qwen_qk.hpp with `const Gpu&` first): the fused op in one
// launch (one block per token, one warp per head, the head kept in registers from the load to the
// cache write) and the separate chain composed of the GPU ops (rms_norm per head, rope on q and k,
// kv_cache_write).
//
// Both for every cache format (kv_format.hpp; explicitly instantiated for the three x both RoPE
// styles): k and v go into the cache as store_kv_row stores them (fp8_tensor's scales read from
// device memory in the kernel).
//
// Each head's sum of squares is reduced across the warp (see gpu/norm.hpp for the bound this
// gives against the host's left-to-right sum); everything after it is bit-identical. Positions and
// slots are checked in the kernel (gpu/rope.hpp, gpu/cache.hpp): a token whose position is outside
// the cos/sin cache gets NaN in its q rows and writes nothing to the cache.
#pragma once

#include <cstdint>

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/cache.hpp"
#include "atom/ops/gpu.hpp"
#include "atom/ops/rope.hpp"

namespace atom::ops {

// Largest head_dim the fused kernel holds in registers.
inline constexpr index_t gpu_qk_max_head_dim = 512;

template <RopeStyle S, KvCacheFormat F>
void qk_norm_rope_cache_fused(const Gpu&, View2<const bf16> qkv, View1<const bf16> q_norm_weight,
                              View1<const bf16> k_norm_weight, float eps,
                              View1<const std::int64_t> positions, View2<const float> cos_sin,
                              View1<const std::int64_t> slots, const KvCache<F>& cache,
                              View3<bf16> q_out);

template <RopeStyle S, KvCacheFormat F>
void qk_norm_rope_cache_separate(const Gpu&, View2<const bf16> qkv, View1<const bf16> q_norm_weight,
                                 View1<const bf16> k_norm_weight, float eps,
                                 View1<const std::int64_t> positions, View2<const float> cos_sin,
                                 View1<const std::int64_t> slots, const KvCache<F>& cache,
                                 View3<bf16> q_out);

}  // namespace atom::ops
