#include "atom/ops/moe.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "atom/ops/gemm.hpp"
#include "atom/ops/quant.hpp"

namespace atom::ops {
namespace {

std::size_t at(index_t i) {
  return static_cast<std::size_t>(i);
}

void expect_no_nan(const char* op, const char* arg, const float* values, index_t n, index_t row) {
  for (index_t i = 0; i < n; ++i)
    if (std::isnan(values[i]))
      fail(op, "argument '" + std::string(arg) + "' holds NaN at row " + std::to_string(row) +
                   ", column " + std::to_string(i));
}

// Softmax is defined on a row only if it holds no NaN, no +inf and a finite logit (-inf alone is
// a masked expert, of probability 0).
void expect_softmax_row(const char* op, const float* row, index_t n, index_t t) {
  expect_no_nan(op, "logits", row, n, t);
  for (index_t e = 0; e < n; ++e)
    if (row[e] == std::numeric_limits<float>::infinity())
      fail(op, "argument 'logits' holds +inf at row " + std::to_string(t) + ", column " +
                   std::to_string(e) + " (softmax is undefined there)");
  expect(std::any_of(row, row + n, [](float x) { return std::isfinite(x); }), op,
         "argument 'logits' holds no finite value in row " + std::to_string(t) +
             " (softmax is undefined there)");
}

// Indices [0, n) ordered by descending key, the lower index first among equal keys; only the
// first `count` are needed. Keys are NaN-free (checked by the callers).
void rank_descending(const std::vector<float>& key, std::vector<index_t>& order, index_t count) {
  std::iota(order.begin(), order.end(), index_t{0});
  std::partial_sort(order.begin(), order.begin() + count, order.end(), [&](index_t x, index_t y) {
    return key[at(x)] > key[at(y)] || (key[at(x)] == key[at(y)] && x < y);
  });
}

// ids and weights [T, k] for 1 <= k <= the experts a token can choose from; none aliases another
// or the logits.
void expect_routing_outputs(std::string_view op, View2<const float> logits, index_t choosable,
                            View2<std::int32_t> ids, View2<float> weights) {
  expect_view(op, "ids", ids, {logits.shape[0], -1});
  const index_t k = ids.shape[1];
  expect(k >= 1 && k <= choosable, op,
         "argument 'ids' asks for " + std::to_string(k) + " experts per token, expected 1.." +
             std::to_string(choosable));
  expect_view(op, "weights", weights, {logits.shape[0], k});
  expect_disjoint(op, "weights", weights, "ids", ids);
  expect_disjoint(op, "ids", ids, "logits", logits);
  expect_disjoint(op, "weights", weights, "logits", logits);
}

}  // namespace

void expect_grouped_topk_args(std::string_view op, View2<const float> logits,
                              View1<const float> bias, int n_group, int topk_group,
                              View2<std::int32_t> ids, View2<float> weights) {
  expect_view(op, "logits", logits, {-1, -1});
  const index_t experts = logits.shape[1];
  expect_view(op, "bias", bias, {experts});
  expect(n_group >= 1 && experts % n_group == 0, op,
         "n_group = " + std::to_string(n_group) + " must divide the " + std::to_string(experts) +
             " experts");
  expect(topk_group >= 1 && topk_group <= n_group, op,
         "topk_group = " + std::to_string(topk_group) +
             " must be in 1..n_group = " + std::to_string(n_group));
  expect_routing_outputs(op, logits, topk_group * (experts / n_group), ids, weights);
  expect_disjoint(op, "weights", weights, "bias", bias);
}

void expect_softmax_topk_args(std::string_view op, View2<const float> logits,
                              View2<std::int32_t> ids, View2<float> weights) {
  expect_view(op, "logits", logits, {-1, -1});
  expect_routing_outputs(op, logits, logits.shape[1], ids, weights);
}

void route_grouped_topk(const Host&, View2<const float> logits, View1<const float> bias,
                        int n_group, int topk_group, bool renormalize, float routed_scaling,
                        View2<std::int32_t> ids, View2<float> weights) {
  constexpr const char* op = "route_grouped_topk";
  expect_grouped_topk_args(op, logits, bias, n_group, topk_group, ids, weights);
  const index_t tokens = logits.shape[0];
  const index_t experts = logits.shape[1];
  const index_t group_size = experts / n_group;
  // Finite bias keeps every choice score finite (sigmoid is in [0, 1]), so scores always order.
  for (index_t e = 0; e < experts; ++e)
    if (!std::isfinite(bias(e)))
      fail(op, "argument 'bias' holds a non-finite value at column " + std::to_string(e));
  const index_t k = ids.shape[1];

  std::vector<float> sig(at(experts));
  std::vector<float> choice(at(experts));
  std::vector<float> group_score(at(n_group));
  std::vector<index_t> group_order(at(n_group));
  std::vector<float> kept_choice;
  std::vector<index_t> kept_experts;
  std::vector<index_t> expert_order;
  std::vector<index_t> kept_groups;
  for (index_t t = 0; t < tokens; ++t) {
    const float* row = logits[t].data;
    expect_no_nan(op, "logits", row, experts, t);
    for (index_t e = 0; e < experts; ++e) {
      sig[at(e)] = 1.0f / (1.0f + std::exp(-row[e]));
      choice[at(e)] = sig[at(e)] + bias(e);
    }
    for (index_t g = 0; g < n_group; ++g) {
      float best = -std::numeric_limits<float>::infinity();
      float second = best;
      for (index_t e = g * group_size; e < (g + 1) * group_size; ++e) {
        const float v = choice[at(e)];
        if (v > best) {
          second = best;
          best = v;
        } else if (v > second) {
          second = v;
        }
      }
      group_score[at(g)] = group_size >= 2 ? best + second : best;
    }
    rank_descending(group_score, group_order, topk_group);
    // Candidates in increasing expert index, so ranking ties still go to the lower expert.
    kept_groups.assign(group_order.begin(), group_order.begin() + topk_group);
    std::sort(kept_groups.begin(), kept_groups.end());
    kept_experts.clear();
    kept_choice.clear();
    for (index_t g : kept_groups)
      for (index_t e = g * group_size; e < (g + 1) * group_size; ++e) {
        kept_experts.push_back(e);
        kept_choice.push_back(choice[at(e)]);
      }
    expert_order.resize(kept_experts.size());
    rank_descending(kept_choice, expert_order, k);
    float total = 0.0f;
    for (index_t j = 0; j < k; ++j) total += sig[at(kept_experts[at(expert_order[at(j)])])];
    const float denominator = total + grouped_topk_epsilon;
    for (index_t j = 0; j < k; ++j) {
      const index_t e = kept_experts[at(expert_order[at(j)])];
      ids(t, j) = static_cast<std::int32_t>(e);
      weights(t, j) = (renormalize ? sig[at(e)] / denominator : sig[at(e)]) * routed_scaling;
    }
  }
}

void route_softmax_topk(const Host&, View2<const float> logits, bool renormalize,
                        View2<std::int32_t> ids, View2<float> weights) {
  constexpr const char* op = "route_softmax_topk";
  expect_softmax_topk_args(op, logits, ids, weights);
  const index_t tokens = logits.shape[0];
  const index_t experts = logits.shape[1];
  const index_t k = ids.shape[1];
  std::vector<float> prob(at(experts));
  std::vector<index_t> order(at(experts));
  for (index_t t = 0; t < tokens; ++t) {
    const float* row = logits[t].data;
    expect_softmax_row(op, row, experts, t);
    const float peak = *std::max_element(row, row + experts);
    float sum = 0.0f;
    for (index_t e = 0; e < experts; ++e) {
      prob[at(e)] = std::exp(row[e] - peak);
      sum += prob[at(e)];
    }
    for (index_t e = 0; e < experts; ++e) prob[at(e)] /= sum;
    rank_descending(prob, order, k);
    float chosen = 0.0f;
    for (index_t j = 0; j < k; ++j) chosen += prob[at(order[at(j)])];
    for (index_t j = 0; j < k; ++j) {
      const index_t e = order[at(j)];
      ids(t, j) = static_cast<std::int32_t>(e);
      weights(t, j) = renormalize ? prob[at(e)] / chosen : prob[at(e)];
    }
  }
}

template <class Epi>
requires Epilogue<Epi>
void silu_mul(const Host&, View2<const bf16> gate_up, typename Epi::Output out) {
  constexpr const char* op = "silu_mul";
  expect_view(op, "gate_up", gate_up, {-1, -1});
  expect(gate_up.shape[1] % 2 == 0, op,
         "argument 'gate_up' has " + std::to_string(gate_up.shape[1]) +
             " columns, expected an even count (gate then up)");
  const index_t inter = gate_up.shape[1] / 2;
  expect_format(op, "out", out, gate_up.shape[0], inter);
  expect_disjoint(op, "out", out, "gate_up", gate_up);
  std::vector<float> y(at(inter));
  for (index_t r = 0; r < gate_up.shape[0]; ++r) {
    const bf16* gate = gate_up[r].data;
    const bf16* up = gate + inter;
    for (index_t i = 0; i < inter; ++i) {
      const float g = to_float(gate[i]);
      y[at(i)] = g / (1.0f + std::exp(-g)) * to_float(up[i]);
    }
    store_row(y.data(), r, out);
  }
}

template void silu_mul<epi::Bf16>(const Host&, View2<const bf16>, Bf16Act);
template void silu_mul<epi::Fp8PerToken>(const Host&, View2<const bf16>, Fp8TokenAct);
template void silu_mul<epi::Fp8PerGroup128>(const Host&, View2<const bf16>, Fp8GroupAct);
template void silu_mul<epi::Mxfp4>(const Host&, View2<const bf16>, Mxfp4Act);

namespace {

// The rows of `src` listed in `rows`, copied (exactly) into `storage` as one contiguous view.
template <class T>
View2<T> gather(View2<const T> src, const std::vector<index_t>& rows, std::vector<T>& storage) {
  const index_t cols = src.shape[1];
  storage.resize(at(static_cast<index_t>(rows.size()) * cols));
  for (std::size_t i = 0; i < rows.size(); ++i)
    std::copy_n(src[rows[i]].data, cols, storage.data() + static_cast<index_t>(i) * cols);
  return make_view(storage.data(), static_cast<index_t>(rows.size()), cols);
}

// An activation's rows gathered per expert, in each format.
struct GatherBf16 {
  std::vector<bf16> x;
  Bf16Act operator()(const Bf16Act& a, const std::vector<index_t>& rows) {
    return {gather<bf16>(a.x, rows, x)};
  }
};
struct GatherFp8Group {
  std::vector<fp8_e4m3> q;
  std::vector<float> scale;
  Fp8GroupAct operator()(const Fp8GroupAct& a, const std::vector<index_t>& rows) {
    return {gather<fp8_e4m3>(a.q, rows, q), gather<float>(a.scale, rows, scale)};
  }
};
struct GatherMxfp4 {
  std::vector<std::uint8_t> packed;
  std::vector<e8m0> scale;
  Mxfp4Act operator()(const Mxfp4Act& a, const std::vector<index_t>& rows) {
    return {gather<std::uint8_t>(a.packed, rows, packed), gather<e8m0>(a.scale, rows, scale),
            a.cols};
  }
};

// The routed expert GEMM over any format: each expert's rows are gathered (an exact byte copy),
// multiplied as one GEMM by gemm(e, gathered, result) and scattered back, so the arithmetic per
// row is the dense GEMM's. a_rows: T or T * k.
template <class Act, class Gather, class Gemm>
void routed_gemm(const char* op, const Act& a, index_t a_rows, View2<const std::int32_t> ids,
                 index_t experts, index_t n_count, View2<bf16> out, Gather gather_rows, Gemm gemm) {
  const index_t tokens = ids.shape[0];
  const index_t k = ids.shape[1];
  expect(a_rows == tokens || a_rows == tokens * k, op,
         "argument 'a' has " + std::to_string(a_rows) + " rows, expected T = " +
             std::to_string(tokens) + " or T * k = " + std::to_string(tokens * k));
  expect_view(op, "out", out, {tokens * k, n_count});
  expect_disjoint(op, "out", out, "ids", ids);
  std::vector<std::vector<index_t>> rows_of(at(experts));
  for (index_t t = 0; t < tokens; ++t)
    for (index_t j = 0; j < k; ++j) {
      const std::int32_t e = ids(t, j);
      if (e == no_expert) {
        std::fill_n(out[t * k + j].data, n_count, bf16{});
        continue;
      }
      if (e < 0 || e >= experts)
        fail(op, "argument 'ids' holds expert " + std::to_string(e) + " at (" + std::to_string(t) +
                     ", " + std::to_string(j) + "), expected 0.." + std::to_string(experts - 1));
      rows_of[at(e)].push_back(t * k + j);
    }
  std::vector<index_t> source;
  std::vector<bf16> result;
  for (index_t e = 0; e < experts; ++e) {
    const std::vector<index_t>& rows = rows_of[at(e)];
    if (rows.empty()) continue;
    const auto count = static_cast<index_t>(rows.size());
    source.clear();
    for (const index_t r : rows) source.push_back(a_rows == tokens ? r / k : r);
    result.resize(at(count * n_count));
    gemm(e, gather_rows(a, source), make_view(result.data(), count, n_count));
    for (index_t i = 0; i < count; ++i)
      std::copy_n(result.data() + i * n_count, n_count, out[rows[at(i)]].data);
  }
}

}  // namespace

void moe_gemm_a4w4(const Host& host, const Mxfp4Act& a, View2<const std::int32_t> ids,
                   const Mxfp4Experts& w, View2<bf16> out) {
  constexpr const char* op = "moe_gemm_a4w4";
  expect_view(op, "ids", ids, {-1, -1});
  expect(w.k >= 0, op, "argument 'w' has a negative K");
  expect_view(op, "w.packed", w.packed, {-1, -1, mxfp4_packed_cols(w.k)});
  const index_t experts = w.packed.shape[0];
  const index_t n_count = w.packed.shape[1];
  expect_view(op, "w.scale", w.scale, {experts, n_count, mxfp4_scale_cols(w.k)});
  expect_format(op, "a", a, -1, w.k);
  expect_disjoint(op, "out", out, "a.packed", a.packed);
  expect_disjoint(op, "out", out, "a.scale", a.scale);
  expect_disjoint(op, "out", out, "w.packed", w.packed);
  expect_disjoint(op, "out", out, "w.scale", w.scale);
  routed_gemm(op, a, a.packed.shape[0], ids, experts, n_count, out, GatherMxfp4{},
              [&](index_t e, const Mxfp4Act& rows, View2<bf16> result) {
                gemm_a4w4(host, rows, Mxfp4Weight{w.packed[e], w.scale[e], w.k}, result);
              });
}

void moe_gemm_a16w16(const Host& host, const Bf16Act& a, View2<const std::int32_t> ids,
                     const Bf16Experts& w, View2<bf16> out) {
  constexpr const char* op = "moe_gemm_a16w16";
  expect_view(op, "ids", ids, {-1, -1});
  expect_view(op, "w.w", w.w, {-1, -1, -1});
  const index_t experts = w.w.shape[0];
  const index_t n_count = w.w.shape[1];
  expect_format(op, "a", a, -1, w.w.shape[2]);
  expect_disjoint(op, "out", out, "a.x", a.x);
  expect_disjoint(op, "out", out, "w.w", w.w);
  routed_gemm(op, a, a.x.shape[0], ids, experts, n_count, out, GatherBf16{},
              [&](index_t e, const Bf16Act& rows, View2<bf16> result) {
                gemm_a16w16(host, rows, Bf16Weight{w.w[e]}, result);
              });
}

void moe_gemm_a8w8_block(const Host& host, const Fp8GroupAct& a, View2<const std::int32_t> ids,
                         const Fp8BlockExperts& w, View2<bf16> out) {
  constexpr const char* op = "moe_gemm_a8w8_block";
  expect_view(op, "ids", ids, {-1, -1});
  expect_view(op, "w.q", w.q, {-1, -1, -1});
  const index_t experts = w.q.shape[0];
  const index_t n_count = w.q.shape[1];
  if (w.block_n < 1)
    fail(op, "argument 'w' has block_n = " + std::to_string(w.block_n) +
                 ", expected a positive block height");
  expect_view(op, "w.scale", w.scale,
              {experts, ceil_div(n_count, w.block_n), fp8_group_cols(w.q.shape[2])});
  expect_format(op, "a", a, -1, w.q.shape[2]);
  expect_disjoint(op, "out", out, "a.q", a.q);
  expect_disjoint(op, "out", out, "a.scale", a.scale);
  expect_disjoint(op, "out", out, "w.q", w.q);
  expect_disjoint(op, "out", out, "w.scale", w.scale);
  routed_gemm(op, a, a.q.shape[0], ids, experts, n_count, out, GatherFp8Group{},
              [&](index_t e, const Fp8GroupAct& rows, View2<bf16> result) {
                gemm_a8w8_block(host, rows, Fp8BlockWeight{w.q[e], w.scale[e], w.block_n}, result);
              });
}

void moe_combine(const Host&, View2<const bf16> expert_out, View2<const float> weights,
                 View2<const bf16> shared_out, View2<bf16> out) {
  constexpr const char* op = "moe_combine";
  expect_view(op, "weights", weights, {-1, -1});
  const index_t tokens = weights.shape[0];
  const index_t k = weights.shape[1];
  expect_view(op, "expert_out", expert_out, {tokens * k, -1});
  const index_t hidden = expert_out.shape[1];
  const bool has_shared = shared_out.data != nullptr;
  if (has_shared)
    expect_view(op, "shared_out", shared_out, {tokens, hidden});
  else
    expect_shape(op, "shared_out", shared_out, {0, 0});
  expect_view(op, "out", out, {tokens, hidden});
  expect_disjoint(op, "out", out, "expert_out", expert_out);
  expect_disjoint(op, "out", out, "weights", weights);
  expect_disjoint(op, "out", out, "shared_out", shared_out);
  std::vector<float> acc(at(hidden));
  for (index_t t = 0; t < tokens; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (index_t j = 0; j < k; ++j) {
      const float wj = weights(t, j);
      const bf16* src = expert_out[t * k + j].data;
      for (index_t h = 0; h < hidden; ++h) acc[at(h)] += wj * to_float(src[h]);
    }
    if (has_shared) {
      const bf16* shared = shared_out[t].data;
      for (index_t h = 0; h < hidden; ++h) acc[at(h)] += to_float(shared[h]);
    }
    bf16* dst = out[t].data;
    for (index_t h = 0; h < hidden; ++h) dst[h] = to_bf16(acc[at(h)]);
  }
}

void localize_experts(const Host&, View2<const std::int32_t> ids, std::int32_t first,
                      std::int32_t count, View2<std::int32_t> out) {
  constexpr const char* op = "localize_experts";
  expect_view(op, "ids", ids, {-1, -1});
  expect_view(op, "out", out, {ids.shape[0], ids.shape[1]});
  for (index_t t = 0; t < ids.shape[0]; ++t)
    for (index_t j = 0; j < ids.shape[1]; ++j)
      out(t, j) = localized_expert(ids(t, j), first, count);
}

}  // namespace atom::ops
