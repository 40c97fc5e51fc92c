// RMSNorm and its fused variants on the GPU: the host ops of atom/ops/norm.hpp with `const Gpu&`
// first and views of device memory. Same contract, same boundary checks.
//
// Arithmetic: the same per-element float operations as the host (each product and sum rounded on
// its own, never contracted into an FMA; division and square root correctly rounded). The one
// difference is the order of the sum of squares: each thread sums its own elements in column
// order, then the partial sums meet in a butterfly across the warp and then across warps, where
// the host sums the row left to right. The two sums differ by at most (n + log2 n) * 2^-24
// relative, so r = 1 / sqrt(ss / n + eps) differs by about half that: a bf16 output moves by at
// most one ulp, and a quantized code by at most one step where its float value sits within that
// distance of a rounding boundary (the GPU tests count and bound those cases).
#pragma once

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/formats.hpp"
#include "atom/ops/gpu.hpp"

namespace atom::ops {

// Widest row the GPU norms take: every kernel shape chosen up to this width fits the register
// file (wider rows picked 8 chunks of 448 threads, which does not launch; the tests run this
// width).
inline constexpr index_t gpu_norm_max_cols = 16384;

template <class Epi>
requires Epilogue<Epi>
void rms_norm(const Gpu&, View2<const bf16> x, View1<const bf16> weight, float eps,
              typename Epi::Output out);

template <class Epi>
requires Epilogue<Epi>
void add_rms_norm(const Gpu&, View2<const bf16> x, View2<bf16> residual, View1<const bf16> weight,
                  float eps, typename Epi::Output out);

// One launch: q_a norm (QEpi), kv_a norm (bf16) and the k_pe pass-through of every token.
template <class QEpi>
requires Epilogue<QEpi>
void qk_norm_fused(const Gpu&, View2<const bf16> qkv_a, View1<const bf16> q_weight,
                   View1<const bf16> kv_weight, float eps, typename QEpi::Output q_out,
                   View2<bf16> kv_c_out, View2<bf16> k_pe_out);

void copy(const Gpu&, View2<const bf16> src, View2<bf16> dst);

// ops/norm.hpp's copy_gbs on the GPU: copies on the Gpu's stream between device events; waits for
// the stream.
double copy_gbs(const Gpu&, index_t values = index_t{256} << 20);

}  // namespace atom::ops
