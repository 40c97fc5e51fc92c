// Mixture-of-experts ops: routing, the expert activation, the grouped expert GEMM and the combine.
#pragma once

#include <cstdint>
#include <string_view>

#include "atom/core/tensor.hpp"
#include "atom/numeric/host_device.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/backend.hpp"
#include "atom/ops/formats.hpp"

namespace atom::ops {

// The id of a slot whose expert another rank holds (expert parallelism, localize_experts): the
// routed GEMMs write its row as zeros and read no weight for it.
inline constexpr std::int32_t no_expert = -2;

// What DeepSeek-V3's routing adds to the sum of the chosen sigmoids before dividing by it (as
// the model does: chosen sigmoids that are all 0 give weights 0, not NaN).
inline constexpr float grouped_topk_epsilon = 1e-20f;

// DeepSeek-V3 routing (noaux_tc). logits [T, E], bias [E], ids and weights [T, k].
// In float: s_e = 1 / (1 + exp(-logit_e)), c_e = s_e + bias_e. The E experts form n_group
// consecutive groups of E / n_group; a group's score is the sum of its two largest c (its only
// c when a group holds one expert). The topk_group best groups are kept; the k experts with the
// largest c among them are chosen, in descending c (slot order). With S the sum of the chosen s
// in slot order: weights_j = s_j / (S + grouped_topk_epsilon) * routed_scaling when renormalize
// (norm_topk_prob), else s_j * routed_scaling. Ties (equal group scores, equal c) go to the lower
// index. Logits of +-inf are defined (s = 1 or 0); NaN logits and non-finite bias values are
// rejected.
void route_grouped_topk(const Host&, View2<const float> logits, View1<const float> bias,
                        int n_group, int topk_group, bool renormalize, float routed_scaling,
                        View2<std::int32_t> ids, View2<float> weights);

// Qwen3 routing. logits [T, E], ids and weights [T, k]. In float: p = softmax(logits)
// (max-subtracted exp, sum in expert order); the k largest p in descending order, ties to the
// lower index; weights = p, or p / (sum of the chosen p, in slot order) when renormalize.
// A logit of -inf is an expert of probability 0 (chosen after every other, by index); a row
// holding a NaN, a +inf or no finite logit is rejected (softmax is undefined there).
void route_softmax_topk(const Host&, View2<const float> logits, bool renormalize,
                        View2<std::int32_t> ids, View2<float> weights);

// The checks both backends run on the routing ops' arguments before touching data: shapes,
// n_group and topk_group, k, aliasing. The host ops then check the values (NaN logits, bias);
// device ops cannot read them without a sync and give those rows a defined result instead.
void expect_grouped_topk_args(std::string_view op, View2<const float> logits,
                              View1<const float> bias, int n_group, int topk_group,
                              View2<std::int32_t> ids, View2<float> weights);
void expect_softmax_topk_args(std::string_view op, View2<const float> logits,
                              View2<std::int32_t> ids, View2<float> weights);

// gate_up [R, 2I] (gate columns first, then up); out [R, I] in Epi's format with
// y = silu(gate) * up = gate / (1 + exp(-gate)) * up in float. Epi::Mxfp4 quantizes the float y
// for the down projection (the fused form); Epi::Bf16 rounds it (the separate form).
template <class Epi>
requires Epilogue<Epi>
void silu_mul(const Host&, View2<const bf16> gate_up, typename Epi::Output out);

// Routed expert GEMM: out row r = t * k + j is gemm_a4w4 of input row a[t] (a has T rows) or
// a[r] (a has T * k rows) with expert ids(t, j)'s weight w[ids(t, j)] [N, K]. ids [T, k],
// w [E, N, K], out [T * k, N] bf16. Same arithmetic as gemm_a4w4; a row of id no_expert is
// zeros; other ids outside [0, E) are rejected.
void moe_gemm_a4w4(const Host&, const Mxfp4Act& a, View2<const std::int32_t> ids,
                   const Mxfp4Experts& w, View2<bf16> out);

// The same routed expert GEMM for bf16 experts (gemm_a16w16's arithmetic) and FP8 block-scaled
// experts (gemm_a8w8_block's), with the same rules for a's rows and ids.
void moe_gemm_a16w16(const Host&, const Bf16Act& a, View2<const std::int32_t> ids,
                     const Bf16Experts& w, View2<bf16> out);
void moe_gemm_a8w8_block(const Host&, const Fp8GroupAct& a, View2<const std::int32_t> ids,
                         const Fp8BlockExperts& w, View2<bf16> out);

// Expert parallelism: the ids [T, k] of the routed experts as a rank holding experts
// [first, first + count) indexes its own: id - first for those, no_expert for the others.
// Negative ids (the routing's mark of a bad row) are kept. out may be ids.
ATOM_HD inline std::int32_t localized_expert(std::int32_t id, std::int32_t first,
                                             std::int32_t count) {
  if (id < 0) return id;
  return id >= first && id - first < count ? id - first : no_expert;
}
void localize_experts(const Host&, View2<const std::int32_t> ids, std::int32_t first,
                      std::int32_t count, View2<std::int32_t> out);

// out[t] = bf16(sum over j in slot order of weights(t, j) * expert_out[t * k + j] + shared[t]),
// in float, the shared expert's output added last. expert_out [T * k, H], weights [T, k],
// shared_out [T, H] or empty (no data, shape [0, 0]) when there is no shared expert, out [T, H].
void moe_combine(const Host&, View2<const bf16> expert_out, View2<const float> weights,
                 View2<const bf16> shared_out, View2<bf16> out);

}  // namespace atom::ops
