// The MoE block's ops on the GPU (atom/ops/moe.hpp and the router GEMM of atom/ops/gemm.hpp with
// `const Gpu&` first; views are device memory). The host checks shapes exactly as the host ops
// do; the data itself stays on the device, so what the host op rejects by looking at values is
// given a defined device-side result instead:
// - routing: a token whose logits the host op rejects (a NaN; for route_softmax_topk also a +inf
//   or no finite logit) gets ids -1 and NaN weights in every slot (the other tokens are routed
//   normally); a non-finite value in route_grouped_topk's bias, which the host op rejects too,
//   gives every token that row.
// - moe_gemm_a4w4, moe_gemm_a16w16, moe_gemm_a8w8_block: an id outside [0, E) makes that output
//   row NaN, except no_expert, whose row is zeros (as on the host); nothing is read through it.
//
// Semantics equal the host's: routing ids and weights are bit for bit the host's (the same float
// operations in the same order, exp evaluated exactly as the host's C library does), silu_mul
// writes the host's bf16 values, FP8 codes and scales or MXFP4 codes and scales, moe_combine the
// host's bf16 values.
// gemm_bf16 accumulates in float in another order than the host: each output differs from the
// host's by at most 2 * H * 2^-24 * sum_h |a_h w_h|. moe_gemm_a4w4, moe_gemm_a16w16 and
// moe_gemm_a8w8_block are gemm_a4w4, gemm_a16w16 and gemm_a8w8_block per row, with the same
// arithmetic (atom/ops/gpu/gemm.hpp states their bounds against the host).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "atom/core/tensor.hpp"
#include "atom/gpu/device.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/formats.hpp"
#include "atom/ops/gpu.hpp"
#include "atom/ops/gpu/gemm.hpp"
#include "atom/policy/axes.hpp"

namespace atom::ops {

// a [T, H], w [E, H], out [T, E] float (router logits).
void gemm_bf16(const Gpu&, View2<const bf16> a, View2<const bf16> w, View2<float> out);

void route_grouped_topk(const Gpu&, View2<const float> logits, View1<const float> bias, int n_group,
                        int topk_group, bool renormalize, float routed_scaling,
                        View2<std::int32_t> ids, View2<float> weights);

void route_softmax_topk(const Gpu&, View2<const float> logits, bool renormalize,
                        View2<std::int32_t> ids, View2<float> weights);

// Epilogues epi::Bf16, epi::Fp8PerGroup128 and epi::Mxfp4. Rows of up to gpu_norm_max_cols
// (atom/ops/gpu/norm.hpp) intermediate columns.
template <class Epi>
requires Epilogue<Epi>
void silu_mul(const Gpu&, View2<const bf16> gate_up, typename Epi::Output out);

void localize_experts(const Gpu&, View2<const std::int32_t> ids, std::int32_t first,
                      std::int32_t count, View2<std::int32_t> out);

void moe_combine(const Gpu&, View2<const bf16> expert_out, View2<const float> weights,
                 View2<const bf16> shared_out, View2<bf16> out);

// E expert weights [E, N, K] in device memory, each preshuffled in Mxfp4WeightLayout<G> and
// stored one after the other. Move-only; owns its memory.
template <policy::GemmBackend G>
class PreparedMxfp4Experts {
 public:
  using Layout = Mxfp4WeightLayout<G>;

  PreparedMxfp4Experts(index_t experts, index_t n, index_t k,
                       const std::vector<std::uint8_t>& packed, const std::vector<e8m0>& scale);

  index_t experts() const { return experts_; }
  index_t n() const { return n_; }
  index_t k() const { return k_; }
  const std::uint8_t* packed() const { return packed_->data(); }
  const e8m0* scale() const { return scale_->data(); }
  // One expert's preshuffled codes and scales.
  index_t expert_packed_bytes() const { return Layout::packed_bytes(n_, k_); }
  index_t expert_scales() const { return Layout::scale_count(n_, k_); }
  // Bytes of all experts (codes and scales, padding included).
  std::size_t bytes() const { return packed_->size() + scale_->size(); }

 private:
  index_t experts_;
  index_t n_;
  index_t k_;
  std::unique_ptr<gpu::Buffer<std::uint8_t>> packed_;
  std::unique_ptr<gpu::Buffer<e8m0>> scale_;
};

// Preshuffles the experts held in host memory and uploads them. Throws ShapeError for the shapes
// prepare_weight rejects (K not a positive multiple of 32, N < 1) and for no experts.
template <policy::GemmBackend G>
PreparedMxfp4Experts<G> prepare_experts(const Mxfp4Experts& host_weights);

// Out row r = t * k + j is gemm_a4w4 of a[t] (a has T rows) or a[r] (a has T * k rows) with
// expert ids(t, j). ids [T, k] (device), out [T * k, N] bf16. The rows of each expert are
// gathered on the device and run through the decode GEMM kernels of backend G, the CTAs of an
// expert reading its weight once per 8 or 16 rows (matrix core) or 1 or 4 rows (portable). Where
// rows outnumber experts (T * k > E), a first launch groups the rows by expert into a per-thread,
// per-stream device buffer that grows on demand (growing synchronizes the device; capture a graph
// only after a call of the same or a larger T * k and E), as do the routed GEMMs below.
template <policy::GemmBackend G>
void moe_gemm_a4w4(const Gpu&, const Mxfp4Act& a, View2<const std::int32_t> ids,
                   const PreparedMxfp4Experts<G>& w, View2<bf16> out);

// The same routed GEMM over bf16 and FP8 block-scaled experts in their logical layout ([E, N, K],
// as the checkpoint stores them; device memory, no preparation). The rows of each expert are
// gathered on the device as for moe_gemm_a4w4; the CTAs of an expert read its weight once per 16
// rows.
void moe_gemm_a16w16(const Gpu&, const Bf16Act& a, View2<const std::int32_t> ids,
                     const Bf16Experts& w, View2<bf16> out);
void moe_gemm_a8w8_block(const Gpu&, const Fp8GroupAct& a, View2<const std::int32_t> ids,
                         const Fp8BlockExperts& w, View2<bf16> out);

}  // namespace atom::ops
