// Decode attention on the GPU (atom/ops/attention.hpp's ops with `const Gpu&` first; every view in
// device memory). Same arguments, same boundary checks as the host ops, except for the contents
// of block_table and context_lens, which live on the device:
//
//   a token whose context length is < 1 or exceeds its block-table row (block_table.size(1) *
//   block_size), or any of whose context blocks has an id outside [0, num_blocks), gets NaN in
//   every element of all its output rows; the kernel never reads outside the cache for it, and
//   the other tokens are unaffected.
//
// Kernel shape (flash-decoding): a block of threads takes one token, a group of up to 16 query
// heads that read the same cache rows (all heads for MLA, whose heads share each latent row; the
// query heads of one kv head for GQA), and one chunk of the context. It stages 16 cache rows at a
// time in shared memory as floats, so each row is read from memory once per block, and keeps an
// online softmax (running max, sum and fp32 accumulator) per head. When tokens x head groups
// would not fill the GPU, the context is split into chunks over several blocks, whose partial
// max/sum/accumulator a second kernel combines. Split partials live in a per-thread, per-stream
// device buffer that grows on demand (growing synchronizes the device; capture a graph only after
// a call of the same or a larger shape).
//
// Numerics: fp32 throughout; scores are summed per lane and then across 16 lanes, exp(s - max) is
// taken against the running maximum and rescaled, and the result is rounded to bf16 once. Against
// the host reference (one ordered sum, global maximum) this is float reassociation only: each
// output element is within one bf16 step of the host's value plus 2^-14 * max|v| of the values it
// averages (tests/gpu_attn checks exactly that).
//
// Limits of the kernels (ShapeError otherwise): MLA kv_lora and rope multiples of 8, kv_lora <=
// 512, kv_lora + rope <= 576; GQA head_dim a multiple of 8 up to 256; at most 65535 tokens.
#pragma once

#include <cstdint>

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/attention.hpp"
#include "atom/ops/cache.hpp"
#include "atom/ops/gpu.hpp"

namespace atom::ops {

void mla_decode(const Gpu&, View3<const bf16> q_latent, View3<const bf16> q_pe,
                View3<const bf16> cache, View2<const std::int32_t> block_table,
                View1<const std::int32_t> context_lens, float softmax_scale, View3<bf16> out);

void gqa_decode(const Gpu&, View3<const bf16> q, const ConstKvCacheFp8& cache,
                View2<const std::int32_t> block_table, View1<const std::int32_t> context_lens,
                float softmax_scale, View3<bf16> out);

}  // namespace atom::ops
