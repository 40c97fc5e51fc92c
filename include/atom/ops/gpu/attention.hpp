// Decode attention on the GPU (atom/ops/attention.hpp's ops with `const Gpu&` first; every view in
// device memory). Same arguments, same boundary checks as the host ops, except for the contents
// of the batch, which live on the device:
//
//   a token whose batch data is bad (no sequence holds it as query_start says, its context is < 1
//   or exceeds its sequence's block-table row, block_table.size(1) * block_size, or any of its
//   context blocks has an id outside [0, num_blocks)) gets NaN in every element of all its output
//   rows; the kernel never reads outside the cache for it, and the other tokens are unaffected.
//   A padded token (slot -1, or past the last sequence) gets zeros and reads nothing. (With
//   starts that decrease, which of the sequences whose ranges hold a token it attends to is not
//   specified; it still reads only its blocks. The host ops reject such a batch.)
//
// Kernel shape (flash-decoding). MLA on NVIDIA: a block of threads takes one token, 16, 32 or 64
// heads and one chunk of the context; it stages tiles of 32 latent rows in shared memory as bf16
// (cp.async, the next tiles in flight), computes the scores Q K^T for all its heads with
// tensor-core mma.sync, keeps an online softmax (running max and sum in fp32) and accumulates P V
// with V the staged rows' first kv_lora columns, so each row is read from memory once per block.
// GQA over every cache format (fp8_row; fp8_tensor, whose one scale is read as each row's through
// strides 0; bf16) on NVIDIA (sm_89 and newer; head_dim 64 or 128, block_size a multiple of 16,
// cache rows 16-byte aligned): one kernel, a block takes up to 8 query heads of one kv head; each
// of its 4 warps streams 16-row steps of the cache rows (FP8 codes and scales, or bf16 values) into
// a private shared-memory ring (cp.async, two steps in flight), and runs K Q^T and V^T P^T on
// tensor-core mma.sync with fp32 accumulators (the heads as the mma's 8 columns): f16 operands for
// FP8, its codes converted in registers, bf16 operands for the bf16 cache, its rows as they are;
// the warps merge in a fixed order. Other GQA shapes and MLA and GQA on AMD: a block takes up to 16
// query heads that read the same cache rows, stages 16 rows at a time as floats (FP8 codes times
// their scale, bf16 values as they are: 8 values, 16 bytes, a load) and accumulates with SIMT fp32
// arithmetic. When tokens x head groups would not fill the GPU, the context is split into chunks
// over several blocks, whose partial max/sum/accumulator a second kernel combines in a fixed order
// (results are the same on every run). Split partials live in a per-thread, per-stream device
// buffer that grows on demand (growing synchronizes the device; capture a graph only after a call
// of the same or a larger shape).
//
// Numerics: fp32 accumulation throughout; exp(s - max) is taken against the running maximum and
// rescaled, and the result is rounded to bf16 once. Against the host reference (one ordered sum,
// global maximum) the SIMT kernel is float reassociation only, for every format (GQA over the bf16
// cache on the SIMT kernel: tests/gpu_attn checks 2^-17 * max|v| plus one bf16 step). The
// tensor-core kernels also round each softmax weight before the weighted sum of values (the
// normalizing sum stays fp32): MLA to bf16, each output element within one bf16 step of the host's
// value plus 2^-8 * max|v| of the values it averages; GQA over an FP8 cache to f16 (queries and FP8
// codes convert to f16 exactly; each row's value scale is folded into the weight's exponent, so
// weights stay in f16's range whatever the scales), within one bf16 step plus 2^-10 * max|v|; GQA
// over the bf16 cache to bf16 (queries and cache values enter the mma as they are, so the scores
// are exact products summed in fp32, reassociated; weights 2^(t - m) <= 1 in bf16's range, relative
// rounding error < 2^-8 each), within one bf16 step plus 2^-8 * max|v| (tests/gpu_attn checks
// exactly these bounds).
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
                View3<const bf16> cache, const DecodeBatch& batch, float softmax_scale,
                View3<bf16> out);

// Every cache format (explicitly instantiated for the three), all on the kernels above.
template <KvCacheFormat F>
void gqa_decode(const Gpu&, View3<const bf16> q, const ConstKvCache<F>& cache,
                const DecodeBatch& batch, float softmax_scale, View3<bf16> out);

}  // namespace atom::ops
