#include <algorithm>
#include <bit>
#include <numeric>

#include "atom/ops/gemm.hpp"
#include "atom/ops/moe.hpp"
#include "atom/ops/quant.hpp"
#include "support.hpp"

using namespace ops_test;
namespace ops = atom::ops;

namespace {

const ops::Host host;

std::size_t at(index_t i) {
  return static_cast<std::size_t>(i);
}

// True when a ranks before b: larger key, or the same key and the lower index.
bool ranks_before(float key_a, index_t a, float key_b, index_t b) {
  return key_a > key_b || (key_a == key_b && a < b);
}

// Brute force: the group subset of size topk_group whose every member ranks before every
// non-member, then experts picked by repeated arg-max over the kept groups.
void ref_grouped_topk(const float* logits, const float* bias, index_t experts, int n_group,
                      int topk_group, index_t k, std::vector<index_t>& ids,
                      std::vector<float>& sig) {
  sig.assign(at(experts), 0.0f);
  std::vector<float> c(at(experts));
  for (index_t e = 0; e < experts; ++e) {
    sig[at(e)] = 1.0f / (1.0f + std::exp(-logits[e]));
    c[at(e)] = sig[at(e)] + bias[e];
  }
  const index_t gs = experts / n_group;
  std::vector<float> score(at(n_group));
  for (index_t g = 0; g < n_group; ++g) {
    if (gs == 1) {
      score[at(g)] = c[at(g)];
      continue;
    }
    float best = -INFINITY, second = -INFINITY;  // the two largest, found by a pairwise scan
    for (index_t i = g * gs; i < (g + 1) * gs; ++i)
      for (index_t j = g * gs; j < (g + 1) * gs; ++j)
        if (i != j && c[at(i)] + c[at(j)] > best + second) {
          best = std::max(c[at(i)], c[at(j)]);
          second = std::min(c[at(i)], c[at(j)]);
        }
    score[at(g)] = best + second;
  }
  unsigned chosen = 0;
  int found = 0;
  for (unsigned mask = 0; mask < (1u << n_group); ++mask) {
    if (std::popcount(mask) != topk_group) continue;
    bool dominant = true;
    for (int g = 0; g < n_group; ++g)
      for (int h = 0; h < n_group; ++h)
        if ((mask >> g & 1u) && !(mask >> h & 1u) &&
            !ranks_before(score[at(g)], g, score[at(h)], h))
          dominant = false;
    if (dominant) {
      chosen = mask;
      ++found;
    }
  }
  REQUIRE(found == 1);
  ids.clear();
  std::vector<bool> taken(at(experts), false);
  for (index_t j = 0; j < k; ++j) {
    index_t best = -1;
    for (index_t e = 0; e < experts; ++e)
      if ((chosen >> (e / gs) & 1u) && !taken[at(e)] &&
          (best < 0 || ranks_before(c[at(e)], e, c[at(best)], best)))
        best = e;
    taken[at(best)] = true;
    ids.push_back(best);
  }
}

void check_grouped(const std::vector<float>& logits, const std::vector<float>& bias, index_t tokens,
                   index_t experts, int n_group, int topk_group, index_t k, float scaling,
                   bool renormalize = true) {
  INFO("renormalize " << renormalize);
  std::vector<std::int32_t> ids(at(tokens * k), -1);
  std::vector<float> weights(at(tokens * k), float_poison);
  ops::route_grouped_topk(host, atom::make_view(logits.data(), tokens, experts),
                          atom::make_view(bias.data(), experts), n_group, topk_group, renormalize,
                          scaling, atom::make_view(ids.data(), tokens, k),
                          atom::make_view(weights.data(), tokens, k));
  index_t id_bad = 0;
  std::vector<double> want_w(at(tokens * k));
  for (index_t t = 0; t < tokens; ++t) {
    std::vector<index_t> ref;
    std::vector<float> sig;
    ref_grouped_topk(logits.data() + t * experts, bias.data(), experts, n_group, topk_group, k, ref,
                     sig);
    double total = 0;
    for (index_t j = 0; j < k; ++j) total += sig[at(ref[at(j)])];
    for (index_t j = 0; j < k; ++j) {
      id_bad += ids[at(t * k + j)] != ref[at(j)];
      const double s = sig[at(ref[at(j)])];
      want_w[at(t * k + j)] = (renormalize ? s / (total + 1e-20) : s) * scaling;
    }
  }
  CHECK(id_bad == 0);
  // Float sum of k terms and one division and product: a few ulps.
  check_close(
      "weights", tokens * k, [&](index_t i) { return double(weights[at(i)]); },
      [&](index_t i) { return want_w[at(i)]; },
      [&](index_t i) { return std::fabs(want_w[at(i)]) * static_cast<double>(k + 3) * 0x1p-24; });
}

}  // namespace

TEST_CASE("route_grouped_topk matches a brute-force reference") {
  struct Config {
    index_t experts;
    int n_group, topk_group;
    index_t k;
  };
  for (const Config cfg : {Config{256, 8, 4, 8}, Config{16, 4, 2, 3}, Config{8, 8, 3, 2},
                           Config{6, 1, 1, 6}, Config{64, 8, 8, 1}}) {
    INFO("E " << cfg.experts << ", groups " << cfg.n_group << ", topk_group " << cfg.topk_group
              << ", k " << cfg.k);
    const index_t tokens = 5;
    const auto logits = random_floats(tokens * cfg.experts, 0.01f, 4.0f);
    const auto bias = random_floats(cfg.experts, 0.001f, 0.1f);
    for (const bool renormalize : {true, false})
      check_grouped(logits, bias, tokens, cfg.experts, cfg.n_group, cfg.topk_group, cfg.k, 2.5f,
                    renormalize);
  }
}

TEST_CASE("route_grouped_topk breaks ties toward the lower index") {
  // Every expert equal: groups 0..topk_group-1, then experts in index order.
  {
    const std::vector<float> logits(16, 0.5f), bias(16, 0.25f);
    std::vector<std::int32_t> ids(3);
    std::vector<float> w(3);
    ops::route_grouped_topk(host, atom::make_view(logits.data(), 1, 16),
                            atom::make_view(bias.data(), 16), 4, 2, true, 1.0f,
                            atom::make_view(ids.data(), 1, 3), atom::make_view(w.data(), 1, 3));
    CHECK(ids == std::vector<std::int32_t>{0, 1, 2});
    for (float x : w) CHECK(x == Approx(1.0 / 3.0).epsilon(1e-6));
  }
  // Groups 1 and 3 tie for best (group 2 matches their top expert but not the top-2 sum);
  // experts 5 and 13, and 6 and 14, tie across the kept groups.
  {
    std::vector<float> logits(16, -3.0f);
    const std::vector<float> bias(16, 0.0f);
    logits[5] = 2.0f;
    logits[6] = 1.0f;
    logits[13] = 2.0f;
    logits[14] = 1.0f;
    logits[8] = 2.0f;
    check_grouped(logits, bias, 1, 16, 4, 2, 4, 2.5f);
    std::vector<std::int32_t> ids(4);
    std::vector<float> w(4);
    ops::route_grouped_topk(host, atom::make_view(logits.data(), 1, 16),
                            atom::make_view(bias.data(), 16), 4, 2, true, 2.5f,
                            atom::make_view(ids.data(), 1, 4), atom::make_view(w.data(), 1, 4));
    CHECK(ids == std::vector<std::int32_t>{5, 13, 6, 14});
    // Only one group kept: the tie goes to group 1, and inside it 4 and 7 tie.
    ops::route_grouped_topk(host, atom::make_view(logits.data(), 1, 16),
                            atom::make_view(bias.data(), 16), 4, 1, true, 2.5f,
                            atom::make_view(ids.data(), 1, 4), atom::make_view(w.data(), 1, 4));
    CHECK(ids == std::vector<std::int32_t>{5, 6, 4, 7});
    check_grouped(logits, bias, 1, 16, 4, 1, 4, 2.5f);
  }
  // Random ties: logits drawn from a few values so many experts and groups are equal.
  {
    const index_t tokens = 20, experts = 32;
    std::vector<float> logits(at(tokens * experts));
    std::uniform_int_distribution<int> pick(0, 2);
    for (float& x : logits) x = 0.5f * static_cast<float>(pick(rng())) + 0.25f;
    const std::vector<float> bias(at(experts), 0.125f);
    check_grouped(logits, bias, tokens, experts, 8, 3, 6, 2.5f);
  }
}

TEST_CASE("route_grouped_topk routes infinite logits as sigmoid 1 and 0") {
  // +inf: s = 1, c = 1 + bias; -inf: s = 0, c = bias. Both order like finite scores.
  const index_t tokens = 3, experts = 16;
  // |logit| <= 2 elsewhere: every finite c is at most sigmoid(2) + 0.1 < 1, below the +inf ones.
  auto logits = random_floats(tokens * experts, 0.01f, 2.0f);
  const auto bias = random_floats(experts, 0.001f, 0.1f);
  logits[at(0 * experts + 11)] = INFINITY;
  logits[at(0 * experts + 2)] = -INFINITY;
  for (index_t e = 0; e < experts; ++e) logits[at(1 * experts + e)] = -INFINITY;
  logits[at(2 * experts + 4)] = INFINITY;
  logits[at(2 * experts + 5)] = INFINITY;
  for (const bool renormalize : {true, false})
    check_grouped(logits, bias, tokens, experts, 4, 2, 5, 2.5f, renormalize);
  std::vector<std::int32_t> ids(at(tokens * 5));
  std::vector<float> w(at(tokens * 5));
  ops::route_grouped_topk(host, atom::make_view(logits.data(), tokens, experts),
                          atom::make_view(bias.data(), experts), 4, 2, true, 2.5f,
                          atom::make_view(ids.data(), tokens, 5),
                          atom::make_view(w.data(), tokens, 5));
  CHECK(ids[0] == 11);
  // A row of -inf: every s is 0, so the weights are 0 / (0 + 1e-20) = 0 (as the model's).
  for (index_t j = 0; j < 5; ++j) CHECK(w[at(5 + j)] == 0.0f);
  CHECK(std::min(ids[10], ids[11]) == 4);
  CHECK(std::max(ids[10], ids[11]) == 5);
}

TEST_CASE("route_softmax_topk picks the largest probabilities") {
  for (const index_t experts : {1, 3, 17, 128}) {
    const index_t tokens = 4;
    const index_t k = std::min<index_t>(8, experts);
    INFO("E " << experts << ", k " << k);
    // Distinct logits 0.1 apart in a random order, so the ranking is unambiguous in float.
    std::vector<float> logits(at(tokens * experts));
    for (index_t t = 0; t < tokens; ++t) {
      std::vector<index_t> perm(at(experts));
      std::iota(perm.begin(), perm.end(), index_t{0});
      std::shuffle(perm.begin(), perm.end(), rng());
      for (index_t e = 0; e < experts; ++e)
        logits[at(t * experts + e)] = 0.1f * static_cast<float>(perm[at(e)]) - 3.0f;
    }
    for (const bool renormalize : {false, true}) {
      std::vector<std::int32_t> ids(at(tokens * k), -1);
      std::vector<float> w(at(tokens * k), float_poison);
      ops::route_softmax_topk(host, atom::make_view(logits.data(), tokens, experts), renormalize,
                              atom::make_view(ids.data(), tokens, k),
                              atom::make_view(w.data(), tokens, k));
      std::vector<double> want(at(tokens * k));
      index_t bad = 0;
      for (index_t t = 0; t < tokens; ++t) {
        const float* row = logits.data() + t * experts;
        double z = 0;
        for (index_t e = 0; e < experts; ++e) z += std::exp(double(row[e]));
        std::vector<index_t> order(at(experts));
        std::iota(order.begin(), order.end(), index_t{0});
        std::sort(order.begin(), order.end(),
                  [&](index_t x, index_t y) { return row[x] > row[y]; });
        double chosen = 0;
        for (index_t j = 0; j < k; ++j) chosen += std::exp(double(row[order[at(j)]])) / z;
        for (index_t j = 0; j < k; ++j) {
          bad += ids[at(t * k + j)] != order[at(j)];
          const double p = std::exp(double(row[order[at(j)]])) / z;
          want[at(t * k + j)] = renormalize ? p / chosen : p;
        }
      }
      CHECK(bad == 0);
      // exp in float (a few ulps), sums of up to E terms.
      check_close(
          "weights", tokens * k, [&](index_t i) { return double(w[at(i)]); },
          [&](index_t i) { return want[at(i)]; },
          [&](index_t i) {
            return std::fabs(want[at(i)]) * static_cast<double>(experts + 8) * 0x1p-23;
          });
    }
  }
  // All equal: the lowest indices, each weight 1/E (or 1/k renormalized).
  const std::vector<float> flat(10, 1.5f);
  std::vector<std::int32_t> ids(4);
  std::vector<float> w(4);
  ops::route_softmax_topk(host, atom::make_view(flat.data(), 1, 10), true,
                          atom::make_view(ids.data(), 1, 4), atom::make_view(w.data(), 1, 4));
  CHECK(ids == std::vector<std::int32_t>{0, 1, 2, 3});
  for (float x : w) CHECK(x == Approx(0.25).epsilon(1e-6));
}

TEST_CASE("route_softmax_topk gives a -inf logit probability 0, chosen last by index") {
  std::vector<float> logits(12, -INFINITY);
  logits[7] = 0.5f;
  logits[3] = 1.5f;
  std::vector<std::int32_t> ids(4);
  std::vector<float> w(4, float_poison);
  for (const bool renormalize : {false, true}) {
    ops::route_softmax_topk(host, atom::make_view(logits.data(), 1, 12), renormalize,
                            atom::make_view(ids.data(), 1, 4), atom::make_view(w.data(), 1, 4));
    CHECK(ids == std::vector<std::int32_t>{3, 7, 0, 1});
    const double p3 = 1.0 / (1.0 + std::exp(-1.0));
    CHECK(w[0] == Approx(p3).epsilon(1e-6));
    CHECK(w[1] == Approx(1.0 - p3).epsilon(1e-6));
    CHECK((w[2] == 0.0f && w[3] == 0.0f));
  }
}

TEST_CASE("silu_mul matches float64 and its fused MXFP4 form is bounded by the separate chain") {
  for (const index_t inter : {1, 3, 17, 769, 2048, 5125}) {
    const index_t rows = 3;
    INFO("I " << inter);
    const auto gate_up = random_bf16(rows * 2 * inter, 0.01f, 4.0f);
    const auto gv = atom::make_view(gate_up.data(), rows, 2 * inter);
    Bf16Buffer out(rows, inter);
    ops::silu_mul<ops::epi::Bf16>(host, gv, out.act());
    std::vector<double> want(at(rows * inter));
    for (index_t r = 0; r < rows; ++r)
      for (index_t i = 0; i < inter; ++i) {
        const double g = value(gate_up[at(r * 2 * inter + i)]);
        const double u = value(gate_up[at(r * 2 * inter + inter + i)]);
        want[at(r * inter + i)] = g / (1.0 + std::exp(-g)) * u;
      }
    // float exp and three roundings: 2^-20 relative on top of the bf16 output rounding.
    check_close(
        "bf16", rows * inter, [&](index_t i) { return out.at(i / inter, i % inter); },
        [&](index_t i) { return want[at(i)]; },
        [&](index_t i) { return bf16_tol(want[at(i)], std::fabs(want[at(i)]) * 0x1p-20); });
    Mxfp4Buffer fused(rows, inter), separate(rows, inter);
    ops::silu_mul<ops::epi::Mxfp4>(host, gv, fused.act());
    ops::quantize<ops::epi::Mxfp4>(host, out.view(), separate.act());
    check_fused_mxfp4(fused, separate);
  }
}

TEST_CASE("moe_gemm_a4w4 applies each row's expert exactly as gemm_a4w4 does") {
  const index_t tokens = 5, k = 3, experts = 6, n = 40, kdim = 97;
  Mxfp4Buffer wbuf(experts * n, kdim);
  wbuf.randomize();
  const index_t pc = ops::mxfp4_packed_cols(kdim), sc = ops::mxfp4_scale_cols(kdim);
  const ops::Mxfp4Experts w{atom::make_view(wbuf.packed.data(), experts, n, pc),
                            atom::make_view(wbuf.scale.data(), experts, n, sc), kdim};
  std::vector<std::int32_t> ids(at(tokens * k));
  std::uniform_int_distribution<int> expert(0, static_cast<int>(experts) - 1);
  for (auto& id : ids) id = expert(rng());
  ids[0] = ids[1];  // one token sends two slots to the same expert
  const auto ids_v = atom::make_view(static_cast<const std::int32_t*>(ids.data()), tokens, k);
  for (const index_t a_rows : {tokens, tokens * k}) {
    INFO("a rows " << a_rows);
    Mxfp4Buffer a(a_rows, kdim);
    a.randomize();
    Bf16Buffer out(tokens * k, n);
    ops::moe_gemm_a4w4(host, a.act(), ids_v, w, out.view());
    index_t bad = 0;
    for (index_t r = 0; r < tokens * k; ++r) {
      const index_t src = a_rows == tokens ? r / k : r;
      const ops::Mxfp4Act full = a.act();
      const ops::Mxfp4Act row{full.packed.slice(0, src, 1), full.scale.slice(0, src, 1), kdim};
      const std::int32_t e = ids[at(r)];
      Bf16Buffer one(1, n);
      ops::gemm_a4w4(host, row, ops::Mxfp4Weight{w.packed[e], w.scale[e], kdim}, one.view());
      for (index_t c = 0; c < n; ++c) bad += one.data[at(c)].bits != out.data[at(r * n + c)].bits;
    }
    CHECK(bad == 0);
  }
  std::vector<std::int32_t> wrong = ids;
  wrong[7] = static_cast<std::int32_t>(experts);
  Mxfp4Buffer a(tokens, kdim);
  Bf16Buffer out(tokens * k, n);
  require_shape_error(
      [&] {
        ops::moe_gemm_a4w4(
            host, a.act(),
            atom::make_view(static_cast<const std::int32_t*>(wrong.data()), tokens, k), w,
            out.view());
      },
      {"moe_gemm_a4w4", "'ids'", "expert 6 at (2, 1)", "0..5"});
  wrong[7] = -1;
  require_shape_error(
      [&] {
        ops::moe_gemm_a4w4(
            host, a.act(),
            atom::make_view(static_cast<const std::int32_t*>(wrong.data()), tokens, k), w,
            out.view());
      },
      {"moe_gemm_a4w4", "expert -1"});
  // A slot of another rank's expert (expert parallelism) is a zero row; the others as before.
  std::vector<std::int32_t> local = ids;
  local[4] = ops::no_expert;
  Bf16Buffer full(tokens * k, n);
  ops::moe_gemm_a4w4(host, a.act(), ids_v, w, full.view());
  ops::moe_gemm_a4w4(host, a.act(),
                     atom::make_view(static_cast<const std::int32_t*>(local.data()), tokens, k), w,
                     out.view());
  for (index_t r = 0; r < tokens * k; ++r)
    for (index_t c = 0; c < n; ++c)
      REQUIRE(out.data[at(r * n + c)].bits == (r == 4 ? 0 : full.data[at(r * n + c)].bits));
}

TEST_CASE("localize_experts maps a rank's experts to its own indices and the others to no_expert") {
  const std::vector<std::int32_t> ids{0, 5, 9, -1, 7, 4};
  std::vector<std::int32_t> out(ids.size());
  ops::localize_experts(host, atom::make_view(ids.data(), 2, 3), 4, 4,
                        atom::make_view(out.data(), 2, 3));
  CHECK(out == std::vector<std::int32_t>{ops::no_expert, 1, ops::no_expert, -1, 3, 0});
  require_shape_error(
      [&] {
        ops::localize_experts(host, atom::make_view(ids.data(), 2, 3), 0, 4,
                              atom::make_view(out.data(), 3, 2));
      },
      {"localize_experts", "'out'"});
}

TEST_CASE("moe_combine sums weighted expert outputs in slot order plus the shared expert") {
  for (const index_t hidden : {1, 3, 17, 769, 7168}) {
    for (const bool shared : {false, true}) {
      const index_t tokens = 3, k = 8;
      INFO("H " << hidden << ", shared " << shared);
      const auto eo = random_bf16(tokens * k * hidden);
      const auto weights = random_floats(tokens * k, 0.01f, 1.0f);
      const auto sh = random_bf16(tokens * hidden);
      atom::View2<const bf16> shared_v;
      if (shared) shared_v = atom::make_view(sh.data(), tokens, hidden);
      Bf16Buffer out(tokens, hidden);
      ops::moe_combine(host, atom::make_view(eo.data(), tokens * k, hidden),
                       atom::make_view(weights.data(), tokens, k), shared_v, out.view());
      std::vector<double> want(at(tokens * hidden)), slack(want.size());
      for (index_t t = 0; t < tokens; ++t)
        for (index_t h = 0; h < hidden; ++h) {
          double sum = 0, abs_sum = 0;
          for (index_t j = 0; j < k; ++j) {
            const double p =
                double(weights[at(t * k + j)]) * value(eo[at((t * k + j) * hidden + h)]);
            sum += p;
            abs_sum += std::fabs(p);
          }
          if (shared) {
            sum += value(sh[at(t * hidden + h)]);
            abs_sum += std::fabs(value(sh[at(t * hidden + h)]));
          }
          want[at(t * hidden + h)] = sum;
          slack[at(t * hidden + h)] = static_cast<double>(2 * k + 2) * 0x1p-24 * abs_sum;
        }
      check_close(
          "out", tokens * hidden, [&](index_t i) { return out.at(i / hidden, i % hidden); },
          [&](index_t i) { return want[at(i)]; },
          [&](index_t i) { return bf16_tol(want[at(i)], slack[at(i)]); });
    }
  }
}
