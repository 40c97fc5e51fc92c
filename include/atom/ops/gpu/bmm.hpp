// The MLA absorbed BMMs on the GPU (atom/ops/bmm.hpp with `const Gpu&` first): the FP8 path
// (ATOM_USE_TRITON_MXFP4_BMM=0) and the MXFP4 path (=1). Same parameters, same contract, same
// boundary checks as the host ops; every view is device memory, weights in their logical layout.
//
// Arithmetic: one thread computes one output feature of a head for several tokens, summing over K
// in increasing k with the host's operations: every product of the FP8 path (fp8 x fp8) and of
// the MXFP4 path (bf16 x e2m1 * 2^e) is exact, so an FMA rounds exactly as the host's separate
// multiply and add; the FP8 group scaling and the head scale are multiplied and added with
// explicit single roundings. The results are therefore bit-identical to the host (for scales
// that keep the products inside float's normal range).
#pragma once

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/bmm.hpp"
#include "atom/ops/gpu.hpp"

namespace atom::ops {

// a [T * H, K] (row t * H + h), w [H, N, K], out [T, H, N]; T and H are read from out.
void bmm_fp8(const Gpu&, const Fp8GroupAct& a, const Fp8HeadWeight& w, View3<bf16> out);

// a [T, H, K], w [H, N, K], out [T, H, N].
void bmm_mxfp4(const Gpu&, View3<const bf16> a, const Mxfp4HeadWeight& w, View3<bf16> out);

}  // namespace atom::ops
