// Per-head batched GEMMs of MLA weight absorption (W_UK: q_nope [T, H, 128] -> [T, H, 512];
// W_UV: [T, H, 512] -> [T, H, 128]); out[t, h, n] = sum over k of a[t, h, k] * w[h, n, k].
//
// Contract, FP8 path: activations are Fp8GroupAct rows t * H + h (scale per group of 128 of K),
// weights FP8 with one float scale per head. For each group g of K, partial_g = sum over k in g
// of to_float(a_q) * to_float(w_q) (exact products, float sums in increasing k); then
// acc = sum over g in order of partial_g * a_scale[g]; out = bf16(acc * w_scale[h]).
// MXFP4 path: bf16 activations times exactly dequantized MXFP4 weights, products (exact) summed
// in float in increasing k, bf16 out. out must not share memory with an input.
#pragma once

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/backend.hpp"
#include "atom/ops/formats.hpp"

namespace atom::ops {

struct Fp8HeadWeight {
  View3<fp8_e4m3> w;   // [H, N, K]
  View1<float> scale;  // [H]
};

struct Mxfp4HeadWeight {
  View3<std::uint8_t> packed;  // [H, N, ceil(K / 2)]
  View3<e8m0> scale;           // [H, N, ceil(K / 32)]
  index_t k = 0;
};

// a [T * H, K] (row t * H + h), w [H, N, K], out [T, H, N]; T and H are read from out.
void bmm_fp8(const Host&, const Fp8GroupAct& a, const Fp8HeadWeight& w, View3<bf16> out);

// a [T, H, K], w [H, N, K], out [T, H, N].
void bmm_mxfp4(const Host&, View3<const bf16> a, const Mxfp4HeadWeight& w, View3<bf16> out);

}  // namespace atom::ops
