// Dense GEMMs: out[m, n] = sum over k of a[m, k] * w[n, k] (w holds one output feature per row).
//
// Contract: operands are first taken to their exact float values (bf16, dequantized MXFP4); each
// product is rounded to float and added to a float accumulator in increasing k (no fused
// multiply-add; for bf16 x bf16 and e2m1 x e2m1 products are exact anyway, so this only pins the
// order of the sums). Outputs are then written as float or rounded to bf16 (RNE). out must not
// share memory with an input.
#pragma once

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/backend.hpp"
#include "atom/ops/formats.hpp"

namespace atom::ops {

// a [M, K], w [N, K], out [M, N].
void gemm_f32(const Host&, View2<const float> a, View2<const float> w, View2<float> out);

// a [M, K] float, w [N, K] MXFP4, out [M, N] float: the core of gemm_a4w4 and bmm_mxfp4.
void gemm_w4(const Host&, View2<const float> a, const Mxfp4Weight& w, View2<float> out);

// a [M, K] MXFP4, w [N, K] MXFP4, out [M, N] bf16.
void gemm_a4w4(const Host&, const Mxfp4Act& a, const Mxfp4Weight& w, View2<bf16> out);

// a [M, K] bf16, w [N, K] bf16, out [M, N] bf16 (bf16 checkpoints).
void gemm_a16w16(const Host&, const Bf16Act& a, const Bf16Weight& w, View2<bf16> out);

// a [M, K] FP8 per token and group of 128 columns, w [N, K] FP8 with block scales (block_n rows
// x 128 columns), out [M, N] bf16 (DeepSeek-V3's FP8 checkpoints). For each group g of 128
// columns (the last may be partial): p_g = sum over k in g of to_float(a_q) * to_float(w_q)
// (products of two e4m3 values are exact in float), summed in increasing k; then
// acc = sum over g in increasing order of p_g * (a_scale[m, g] * w_scale[n / block_n, g]);
// out = bf16(acc).
void gemm_a8w8_block(const Host&, const Fp8GroupAct& a, const Fp8BlockWeight& w, View2<bf16> out);

// a [M, K] bf16, w [N, K] bf16, out [M, N] float (router logits).
void gemm_bf16(const Host&, View2<const bf16> a, View2<const bf16> w, View2<float> out);

}  // namespace atom::ops
