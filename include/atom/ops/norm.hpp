// RMSNorm and its fused variants.
//
// Contract (all variants, per row of C columns, in float): ss = sum of x_i^2 in column order,
// r = 1 / sqrt(ss / C + eps), y_i = (x_i * r) * weight_i. The epilogue Epi then writes y: Bf16
// rounds it, the quant epilogues quantize the float y directly (quant.hpp, store_row), which is
// what a fused norm+quant kernel does. add_rms_norm first forms s_i = bf16(x_i + residual_i),
// writes s back to `residual` (the next layer's residual) and normalizes s, as fused_add_rms_norm
// does. Outputs must not share memory with inputs (residual is updated in place by design).
#pragma once

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/backend.hpp"
#include "atom/ops/formats.hpp"

namespace atom::ops {

// x [T, C], weight [C], out [T, C] in Epi's format.
template <class Epi>
requires Epilogue<Epi>
void rms_norm(const Host&, View2<const bf16> x, View1<const bf16> weight, float eps,
              typename Epi::Output out);

// x [T, C]; residual [T, C] in: residual, out: bf16(x + residual); out = rms_norm(that sum).
template <class Epi>
requires Epilogue<Epi>
void add_rms_norm(const Host&, View2<const bf16> x, View2<bf16> residual, View1<const bf16> weight,
                  float eps, typename Epi::Output out);

// DeepSeek MLA q_a / kv_a norms in one pass over qkv_a [T, Q + L + P] (Q = q_weight size,
// L = kv_weight size, P = the rest, the rope part): q_out [T, Q] = rms_norm<QEpi>(columns
// [0, Q)), kv_c_out [T, L] = bf16 rms_norm(columns [Q, Q + L)), k_pe_out [T, P] = columns
// [Q + L, Q + L + P) copied. Same per-row arithmetic as the separate calls, so with QEpi = Bf16
// the result is bit-identical to rms_norm + rms_norm + copy; with QEpi = Mxfp4 q is quantized
// from float (no bf16 rounding in between).
template <class QEpi>
requires Epilogue<QEpi>
void qk_norm_fused(const Host&, View2<const bf16> qkv_a, View1<const bf16> q_weight,
                   View1<const bf16> kv_weight, float eps, typename QEpi::Output q_out,
                   View2<bf16> kv_c_out, View2<bf16> k_pe_out);

// dst = src, both [R, C]; the separate path's k_pe pass-through. dst must not overlap src.
void copy(const Host&, View2<const bf16> src, View2<bf16> dst);

// The backend's copy rate, measured now: the bytes copy() reads plus those it writes per second
// (GB/s) over `values` bf16 between two fresh buffers, the median of 5 copies after one. The rate
// the benchmarks and the decode steps state their own rates against.
double copy_gbs(const Host&, index_t values = index_t{64} << 20);

}  // namespace atom::ops
