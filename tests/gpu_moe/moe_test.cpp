// The MoE ops on the GPU against the host ops on fresh random inputs, outputs poisoned (0xFF
// bytes, NaN in every float format) before each call.
//
// Exact: routing ids and weights (bits), silu_mul (bf16 values; FP8 and MXFP4 codes and scales),
// moe_combine (bf16 values). Bounded:
// - gemm_bf16: products of bf16 are exact in float; the host adds them left to right (error at
//   most (H - 1) 2^-24 S, S = sum_h |a_h w_h|), the GPU in per-thread runs and a tree (less), so
//   they differ by at most 2 H 2^-24 S.
// - moe_gemm_a4w4: gemm_a4w4's bound (atom/ops/gpu/gemm.hpp), K 2^-23 S plus one bf16 ulp.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "atom/gpu/device.hpp"
#include "atom/ops/gemm.hpp"
#include "atom/ops/gpu/moe.hpp"
#include "atom/ops/moe.hpp"

using atom::bf16;
using atom::e8m0;
using atom::index_t;
using atom::make_view;
using atom::ops::Gpu;
using atom::ops::Host;
using atom::policy::GemmBackend;
namespace gpu = atom::gpu;
namespace ops = atom::ops;

namespace {

const std::vector<index_t> test_tokens = {1, 3, 17, 64, 769};

std::mt19937& rng() {
  static std::mt19937 engine(Catch::rngSeed() + 17u);
  return engine;
}

std::size_t at(index_t i) {
  return static_cast<std::size_t>(i);
}

std::uint32_t bits(float x) {
  std::uint32_t u = 0;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

// Nonzero values in [-range, range].
std::vector<float> random_floats(index_t n, float range) {
  std::uniform_real_distribution<float> value(-range, range);
  std::vector<float> v(at(n));
  for (auto& x : v) {
    do x = value(rng());
    while (x == 0.0f);
  }
  return v;
}

// Values from a few levels, so that many are equal (ties).
std::vector<float> tied_floats(index_t n, int levels) {
  std::uniform_int_distribution<int> level(1, levels);
  std::vector<float> v(at(n));
  for (auto& x : v) x = static_cast<float>(level(rng())) * 0.25f - 1.0f;
  return v;
}

std::vector<bf16> random_bf16(index_t n, float range) {
  std::vector<bf16> v(at(n));
  const std::vector<float> f = random_floats(n, range);
  for (std::size_t i = 0; i < v.size(); ++i) {
    v[i] = atom::to_bf16(f[i]);
    if (v[i].bits == 0 || v[i].bits == 0x8000) v[i] = atom::to_bf16(range);
  }
  return v;
}

template <class T>
gpu::Buffer<T> poisoned(index_t n) {
  gpu::Buffer<T> b(at(std::max<index_t>(n, 1)));
  b.fill(0xFF);
  return b;
}

bool bf16_equal(const std::vector<bf16>& x, const std::vector<bf16>& y) {
  if (x.size() != y.size()) return false;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (x[i].bits != y[i].bits) return false;
  return true;
}

// ---- gemm_bf16 ----

void check_router_gemm(index_t tokens, index_t experts, index_t hidden) {
  INFO("T = " << tokens << ", E = " << experts << ", H = " << hidden);
  std::vector<bf16> a = random_bf16(tokens * hidden, 2.0f);
  std::vector<bf16> w = random_bf16(experts * hidden, 0.1f);
  std::vector<float> ref(at(tokens * experts));
  ops::gemm_bf16(Host{}, make_view(static_cast<const bf16*>(a.data()), tokens, hidden),
                 make_view(static_cast<const bf16*>(w.data()), experts, hidden),
                 make_view(ref.data(), tokens, experts));
  gpu::Buffer<bf16> a_dev(a);
  gpu::Buffer<bf16> w_dev(w);
  auto out = poisoned<float>(tokens * experts);
  ops::gemm_bf16(Gpu{}, make_view(static_cast<const bf16*>(a_dev.data()), tokens, hidden),
                 make_view(static_cast<const bf16*>(w_dev.data()), experts, hidden),
                 make_view(out.data(), tokens, experts));
  const std::vector<float> got = out.download();
  index_t bad = 0;
  for (index_t t = 0; t < tokens; ++t)
    for (index_t e = 0; e < experts; ++e) {
      double s = 0.0;
      for (index_t h = 0; h < hidden; ++h)
        s += std::fabs(static_cast<double>(atom::to_float(a[at(t * hidden + h)])) *
                       atom::to_float(w[at(e * hidden + h)]));
      const double tol = 2.0 * static_cast<double>(hidden) * std::ldexp(s, -24);
      const float g = got[at(t * experts + e)];
      const float r = ref[at(t * experts + e)];
      if (!(std::fabs(static_cast<double>(g) - r) <= tol)) ++bad;
    }
  CHECK(bad == 0);
}

// ---- routing ----

struct Routing {
  std::vector<std::int32_t> ids;
  std::vector<float> weights;
};

Routing gpu_routing_outputs(const gpu::Buffer<std::int32_t>& ids,
                            const gpu::Buffer<float>& weights) {
  return {ids.download(), weights.download()};
}

void expect_same_routing(const Routing& got, const Routing& ref, index_t tokens, index_t k,
                         const std::vector<bool>& rejected) {
  index_t bad = 0;
  for (index_t t = 0; t < tokens; ++t)
    for (index_t j = 0; j < k; ++j) {
      const std::size_t i = at(t * k + j);
      if (rejected[at(t)]) {
        if (got.ids[i] != -1 || !std::isnan(got.weights[i])) ++bad;
      } else if (got.ids[i] != ref.ids[i] || bits(got.weights[i]) != bits(ref.weights[i])) {
        ++bad;
      }
    }
  CHECK(bad == 0);
}

// Non-finite logits (when `non_finite`), by token t: t % 5 == 0 one NaN, 1 one +inf, 2 a row of
// -inf, 3 three -inf. Returns the tokens the host op rejects, read off the rows: a NaN, and for
// softmax also a +inf or no finite logit. The host routes the others (sigmoid of +-inf is 1 and
// 0; a softmax -inf is probability 0).
std::vector<bool> plant_non_finite(std::vector<float>& logits, index_t tokens, index_t experts,
                                   bool non_finite, bool softmax) {
  std::vector<bool> rejected(at(tokens), false);
  if (!non_finite) return rejected;
  std::uniform_int_distribution<index_t> expert(0, experts - 1);
  for (index_t t = 0; t < tokens; ++t) {
    float* row = logits.data() + t * experts;
    if (t % 5 == 0) row[expert(rng())] = std::nanf("");
    if (t % 5 == 1) row[expert(rng())] = INFINITY;
    if (t % 5 == 2) std::fill_n(row, experts, -INFINITY);
    if (t % 5 == 3)
      for (int i = 0; i < 3; ++i) row[expert(rng())] = -INFINITY;
    const auto any = [&](auto pred) { return std::any_of(row, row + experts, pred); };
    rejected[at(t)] = any([](float x) { return std::isnan(x); }) ||
                      (softmax && (any([](float x) { return x == INFINITY; }) ||
                                   !any([](float x) { return std::isfinite(x); })));
  }
  return rejected;
}

// The host's routing of the tokens it accepts (a rejected token's rows are left as they are).
template <class RouteHost>
Routing host_routing(const std::vector<float>& logits, index_t tokens, index_t experts, index_t k,
                     const std::vector<bool>& rejected, RouteHost route) {
  Routing ref{std::vector<std::int32_t>(at(tokens * k), -1), std::vector<float>(at(tokens * k))};
  for (index_t t = 0; t < tokens; ++t) {
    if (rejected[at(t)]) continue;
    route(make_view(logits.data() + t * experts, 1, experts),
          make_view(ref.ids.data() + t * k, 1, k), make_view(ref.weights.data() + t * k, 1, k));
  }
  return ref;
}

// route_grouped_topk on the GPU over copies of logits and bias, into poisoned outputs.
Routing gpu_grouped(const std::vector<float>& logits, const std::vector<float>& bias,
                    index_t tokens, index_t experts, int n_group, int topk_group, bool renormalize,
                    float scaling, index_t k) {
  gpu::Buffer<float> logits_dev(logits);
  gpu::Buffer<float> bias_dev(bias);
  auto ids = poisoned<std::int32_t>(tokens * k);
  auto weights = poisoned<float>(tokens * k);
  ops::route_grouped_topk(
      Gpu{}, make_view(static_cast<const float*>(logits_dev.data()), tokens, experts),
      make_view(static_cast<const float*>(bias_dev.data()), experts), n_group, topk_group,
      renormalize, scaling, make_view(ids.data(), tokens, k), make_view(weights.data(), tokens, k));
  return gpu_routing_outputs(ids, weights);
}

void check_grouped(index_t tokens, index_t experts, int n_group, int topk_group, index_t k,
                   bool ties, bool non_finite, bool renormalize = true) {
  INFO("T = " << tokens << ", E = " << experts << ", n_group " << n_group << ", topk_group "
              << topk_group << ", k " << k << ", ties " << ties << ", non-finite " << non_finite
              << ", renormalize " << renormalize);
  std::vector<float> logits =
      ties ? tied_floats(tokens * experts, 6) : random_floats(tokens * experts, 4.0f);
  const std::vector<float> bias = ties ? tied_floats(experts, 3) : random_floats(experts, 0.5f);
  const std::vector<bool> rejected = plant_non_finite(logits, tokens, experts, non_finite, false);
  constexpr float scaling = 2.5f;
  const Routing ref =
      host_routing(logits, tokens, experts, k, rejected, [&](auto l, auto ids, auto weights) {
        ops::route_grouped_topk(Host{}, l, make_view(bias.data(), experts), n_group, topk_group,
                                renormalize, scaling, ids, weights);
      });
  expect_same_routing(
      gpu_grouped(logits, bias, tokens, experts, n_group, topk_group, renormalize, scaling, k), ref,
      tokens, k, rejected);
}

void check_softmax(index_t tokens, index_t experts, index_t k, bool renormalize, bool ties,
                   bool non_finite) {
  INFO("T = " << tokens << ", E = " << experts << ", k " << k << ", renormalize " << renormalize
              << ", ties " << ties << ", non-finite " << non_finite);
  std::vector<float> logits =
      ties ? tied_floats(tokens * experts, 5) : random_floats(tokens * experts, 6.0f);
  const std::vector<bool> rejected = plant_non_finite(logits, tokens, experts, non_finite, true);
  const Routing ref =
      host_routing(logits, tokens, experts, k, rejected, [&](auto l, auto ids, auto weights) {
        ops::route_softmax_topk(Host{}, l, renormalize, ids, weights);
      });
  gpu::Buffer<float> logits_dev(logits);
  auto ids = poisoned<std::int32_t>(tokens * k);
  auto weights = poisoned<float>(tokens * k);
  ops::route_softmax_topk(
      Gpu{}, make_view(static_cast<const float*>(logits_dev.data()), tokens, experts), renormalize,
      make_view(ids.data(), tokens, k), make_view(weights.data(), tokens, k));
  expect_same_routing(gpu_routing_outputs(ids, weights), ref, tokens, k, rejected);
}

// ---- silu_mul ----

void check_silu(index_t rows, index_t inter) {
  INFO("rows = " << rows << ", I = " << inter);
  const std::vector<bf16> gate_up = random_bf16(rows * 2 * inter, 6.0f);
  const auto gu_host = make_view(gate_up.data(), rows, 2 * inter);
  gpu::Buffer<bf16> gu_dev(gate_up);
  const auto gu = make_view(static_cast<const bf16*>(gu_dev.data()), rows, 2 * inter);

  std::vector<bf16> ref(at(rows * inter));
  ops::silu_mul<ops::epi::Bf16>(Host{}, gu_host, ops::Bf16Act{make_view(ref.data(), rows, inter)});
  auto out = poisoned<bf16>(rows * inter);
  ops::silu_mul<ops::epi::Bf16>(Gpu{}, gu, ops::Bf16Act{make_view(out.data(), rows, inter)});
  std::vector<bf16> got = out.download();
  got.resize(ref.size());
  CHECK(bf16_equal(got, ref));

  const index_t packed_cols = ops::mxfp4_packed_cols(inter);
  const index_t scale_cols = ops::mxfp4_scale_cols(inter);
  std::vector<std::uint8_t> ref_packed(at(rows * packed_cols));
  std::vector<e8m0> ref_scale(at(rows * scale_cols));
  ops::silu_mul<ops::epi::Mxfp4>(
      Host{}, gu_host,
      ops::Mxfp4Act{make_view(ref_packed.data(), rows, packed_cols),
                    make_view(ref_scale.data(), rows, scale_cols), inter});
  auto packed = poisoned<std::uint8_t>(rows * packed_cols);
  auto scale = poisoned<e8m0>(rows * scale_cols);
  ops::silu_mul<ops::epi::Mxfp4>(Gpu{}, gu,
                                 ops::Mxfp4Act{make_view(packed.data(), rows, packed_cols),
                                               make_view(scale.data(), rows, scale_cols), inter});
  std::vector<std::uint8_t> got_packed = packed.download();
  got_packed.resize(ref_packed.size());
  CHECK(got_packed == ref_packed);
  std::vector<e8m0> got_scale = scale.download();
  bool scales_equal = true;
  for (std::size_t i = 0; i < ref_scale.size(); ++i)
    scales_equal = scales_equal && got_scale[i].bits == ref_scale[i].bits;
  CHECK(scales_equal);
}

// The FP8 per-group epilogue: the host's codes and scales bit for bit (groups of 128 along the
// intermediate columns, the last one partial when I is not a multiple of 128).
void check_silu_fp8_group(index_t rows, index_t inter) {
  INFO("rows = " << rows << ", I = " << inter);
  const std::vector<bf16> gate_up = random_bf16(rows * 2 * inter, 6.0f);
  gpu::Buffer<bf16> gu_dev(gate_up);
  const index_t groups = ops::fp8_group_cols(inter);
  std::vector<atom::fp8_e4m3> ref_q(at(rows * inter));
  std::vector<float> ref_scale(at(rows * groups));
  ops::silu_mul<ops::epi::Fp8PerGroup128>(
      Host{}, make_view(gate_up.data(), rows, 2 * inter),
      ops::Fp8GroupAct{make_view(ref_q.data(), rows, inter),
                       make_view(ref_scale.data(), rows, groups)});
  auto q = poisoned<atom::fp8_e4m3>(rows * inter);
  auto scale = poisoned<float>(rows * groups);
  ops::silu_mul<ops::epi::Fp8PerGroup128>(
      Gpu{}, make_view(static_cast<const bf16*>(gu_dev.data()), rows, 2 * inter),
      ops::Fp8GroupAct{make_view(q.data(), rows, inter), make_view(scale.data(), rows, groups)});
  const std::vector<atom::fp8_e4m3> got_q = q.download();
  const std::vector<float> got_scale = scale.download();
  index_t codes_differ = 0;
  for (std::size_t i = 0; i < ref_q.size(); ++i) codes_differ += got_q[i].bits != ref_q[i].bits;
  index_t scales_differ = 0;
  for (std::size_t i = 0; i < ref_scale.size(); ++i)
    scales_differ += bits(got_scale[i]) != bits(ref_scale[i]);
  CHECK(codes_differ == 0);
  CHECK(scales_differ == 0);
}

// ---- moe_combine ----

void check_combine(index_t tokens, index_t k, index_t hidden, bool with_shared) {
  INFO("T = " << tokens << ", k = " << k << ", H = " << hidden << ", shared " << with_shared);
  const std::vector<bf16> expert_out = random_bf16(tokens * k * hidden, 3.0f);
  const std::vector<float> weights = random_floats(tokens * k, 1.0f);
  const std::vector<bf16> shared = random_bf16(tokens * hidden, 3.0f);
  const auto shared_host =
      with_shared ? make_view(shared.data(), tokens, hidden) : atom::View2<const bf16>{};
  std::vector<bf16> ref(at(tokens * hidden));
  ops::moe_combine(Host{}, make_view(expert_out.data(), tokens * k, hidden),
                   make_view(weights.data(), tokens, k), shared_host,
                   make_view(ref.data(), tokens, hidden));
  gpu::Buffer<bf16> eo_dev(expert_out);
  gpu::Buffer<float> w_dev(weights);
  gpu::Buffer<bf16> sh_dev(shared);
  const auto shared_dev = with_shared
                              ? make_view(static_cast<const bf16*>(sh_dev.data()), tokens, hidden)
                              : atom::View2<const bf16>{};
  auto out = poisoned<bf16>(tokens * hidden);
  ops::moe_combine(Gpu{}, make_view(static_cast<const bf16*>(eo_dev.data()), tokens * k, hidden),
                   make_view(static_cast<const float*>(w_dev.data()), tokens, k), shared_dev,
                   make_view(out.data(), tokens, hidden));
  CHECK(bf16_equal(out.download(), ref));
}

// ---- moe_gemm_a4w4 ----

std::vector<std::uint8_t> random_codes(index_t n) {
  std::uniform_int_distribution<int> byte(1, 255);
  std::vector<std::uint8_t> v(at(n));
  for (auto& b : v) b = static_cast<std::uint8_t>(byte(rng()));
  return v;
}

std::vector<e8m0> random_scales(index_t n) {
  std::uniform_int_distribution<int> code(123, 131);
  std::vector<e8m0> v(at(n));
  for (auto& s : v) s = e8m0{static_cast<std::uint8_t>(code(rng()))};
  return v;
}

std::vector<std::uint8_t> magnitudes(std::vector<std::uint8_t> codes) {
  for (auto& b : codes) b = static_cast<std::uint8_t>(b & 0x77u);
  return codes;
}

// Each token's k experts distinct, as routing chooses them.
std::vector<std::int32_t> random_ids(index_t tokens, index_t k, index_t experts) {
  std::vector<std::int32_t> order(at(experts));
  std::vector<std::int32_t> ids;
  for (index_t t = 0; t < tokens; ++t) {
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng());
    ids.insert(ids.end(), order.begin(), order.begin() + k);
  }
  return ids;
}

struct Experts {
  index_t e;
  index_t n;
  index_t k;
  std::vector<std::uint8_t> packed;
  std::vector<e8m0> scale;
  ops::Mxfp4Experts view(std::vector<std::uint8_t>& codes) {
    return {make_view(codes.data(), e, n, ops::mxfp4_packed_cols(k)),
            make_view(scale.data(), e, n, ops::mxfp4_scale_cols(k)), k};
  }
};

template <GemmBackend G>
void run_moe_gemm(const char* name, const ops::PreparedMxfp4Experts<G>& w, index_t a_rows,
                  index_t cols, const gpu::Buffer<std::uint8_t>& a_packed,
                  const gpu::Buffer<e8m0>& a_scale, const gpu::Buffer<std::int32_t>& ids,
                  index_t tokens, index_t k, const std::vector<bf16>& ref,
                  const std::vector<bf16>& abs_ref, const std::vector<bool>& nan_row) {
  INFO("backend " << name);
  const index_t n = w.n();
  auto out = poisoned<bf16>(tokens * k * n);
  ops::moe_gemm_a4w4(
      Gpu{},
      ops::Mxfp4Act{make_view(a_packed.data(), a_rows, ops::mxfp4_packed_cols(cols)),
                    make_view(a_scale.data(), a_rows, ops::mxfp4_scale_cols(cols)), cols},
      make_view(static_cast<const std::int32_t*>(ids.data()), tokens, k), w,
      make_view(out.data(), tokens * k, n));
  const std::vector<bf16> got = out.download();
  index_t bad = 0;
  for (index_t r = 0; r < tokens * k; ++r)
    for (index_t c = 0; c < n; ++c) {
      const std::size_t i = at(r * n + c);
      const float g = atom::to_float(got[i]);
      if (nan_row[at(r)]) {
        if (!std::isnan(g)) ++bad;
        continue;
      }
      const float h = atom::to_float(ref[i]);
      const double s = atom::to_float(abs_ref[i]) * 1.01;
      const double tol = static_cast<double>(cols) * std::ldexp(s, -23) +
                         std::ldexp(std::max(std::fabs(g), std::fabs(h)), -7);
      if (!(std::fabs(static_cast<double>(g) - h) <= tol)) ++bad;
    }
  CHECK(bad == 0);
}

// Experts [e, n, k]; `tokens` tokens routed to `topk` each; a with T rows and with T * k rows;
// optionally one id out of range (a NaN row), or one slot of another rank's expert (no_expert:
// a zero row, as on the host).
void check_moe_gemm(index_t e, index_t n, index_t k_dim, index_t topk,
                    const std::vector<index_t>& token_counts, bool bad_id = false,
                    bool other_rank = false) {
  Experts w{e, n, k_dim, random_codes(e * n * ops::mxfp4_packed_cols(k_dim)),
            random_scales(e * n * ops::mxfp4_scale_cols(k_dim))};
  std::vector<std::uint8_t> w_abs = magnitudes(w.packed);
  const auto w_mc = ops::prepare_experts<GemmBackend::matrix_core>(w.view(w.packed));
  const auto w_pt = ops::prepare_experts<GemmBackend::portable>(w.view(w.packed));
  CHECK(w_mc.experts() == e);
  CHECK(w_pt.n() == n);
  CHECK(w_pt.k() == k_dim);
  for (const index_t tokens : token_counts)
    for (const bool per_slot : {false, true}) {
      INFO("E = " << e << ", N = " << n << ", K = " << k_dim << ", T = " << tokens
                  << ", k = " << topk << (per_slot ? ", a has T * k rows" : ", a has T rows")
                  << (bad_id ? ", one bad id" : ""));
      const index_t rows = tokens * topk;
      const index_t a_rows = per_slot ? rows : tokens;
      const index_t pc = ops::mxfp4_packed_cols(k_dim);
      const index_t sc = ops::mxfp4_scale_cols(k_dim);
      std::vector<std::uint8_t> a_packed = random_codes(a_rows * pc);
      std::vector<e8m0> a_scale = random_scales(a_rows * sc);
      std::vector<std::uint8_t> a_abs = magnitudes(a_packed);
      std::vector<std::int32_t> ids = random_ids(tokens, topk, e);
      std::vector<bool> nan_row(at(rows), false);
      std::vector<std::int32_t> device_ids = ids;
      if (bad_id) {
        const index_t r = rows / 2;
        nan_row[at(r)] = true;
        device_ids[at(r)] = tokens == 3 ? -3 : static_cast<std::int32_t>(e);
      }
      if (other_rank) ids[at(rows - 1)] = device_ids[at(rows - 1)] = ops::no_expert;
      std::vector<bf16> ref(at(rows * n));
      std::vector<bf16> abs_ref(at(rows * n));
      const auto ids_view = make_view(static_cast<const std::int32_t*>(ids.data()), tokens, topk);
      ops::moe_gemm_a4w4(Host{},
                         ops::Mxfp4Act{make_view(a_packed.data(), a_rows, pc),
                                       make_view(a_scale.data(), a_rows, sc), k_dim},
                         ids_view, w.view(w.packed), make_view(ref.data(), rows, n));
      ops::moe_gemm_a4w4(Host{},
                         ops::Mxfp4Act{make_view(a_abs.data(), a_rows, pc),
                                       make_view(a_scale.data(), a_rows, sc), k_dim},
                         ids_view, w.view(w_abs), make_view(abs_ref.data(), rows, n));
      gpu::Buffer<std::uint8_t> a_packed_dev(a_packed);
      gpu::Buffer<e8m0> a_scale_dev(a_scale);
      gpu::Buffer<std::int32_t> ids_dev(device_ids);
      run_moe_gemm("asm", w_mc, a_rows, k_dim, a_packed_dev, a_scale_dev, ids_dev, tokens, topk,
                   ref, abs_ref, nan_row);
      run_moe_gemm("triton", w_pt, a_rows, k_dim, a_packed_dev, a_scale_dev, ids_dev, tokens, topk,
                   ref, abs_ref, nan_row);
    }
}

bool have_gpu() {
  return gpu::device_count() > 0;
}

}  // namespace

TEST_CASE("gpu moe: router gemm_bf16 against the host") {
  REQUIRE(have_gpu());
  for (const index_t t : {1, 3, 17, 64}) check_router_gemm(t, 256, 7168);
  for (const index_t t : test_tokens) check_router_gemm(t, 128, 2048);
  for (const index_t t : {1, 17}) check_router_gemm(t, 16, 256);
  check_router_gemm(3, 5, 769);
}

TEST_CASE("gpu moe: grouped top-k routing equals the host bit for bit") {
  REQUIRE(have_gpu());
  for (const index_t t : test_tokens) {
    check_grouped(t, 256, 8, 4, 8, false, false);
    check_grouped(t, 256, 8, 4, 8, true, false);
    check_grouped(t, 16, 4, 2, 4, false, false);
    check_grouped(t, 16, 16, 3, 2, true, false);
  }
  check_grouped(17, 256, 8, 4, 8, false, true);
  check_grouped(64, 16, 4, 2, 4, true, true);
  // norm_topk_prob false: s * routed_scaling.
  check_grouped(17, 256, 8, 4, 8, false, true, false);
  check_grouped(3, 16, 4, 2, 4, true, false, false);
}

TEST_CASE("gpu moe: a non-finite bias value gives every token the NaN row") {
  REQUIRE(have_gpu());
  for (const float bad : {INFINITY, -INFINITY, std::nanf("")}) {
    const index_t tokens = 17, experts = 256, k = 8;
    const std::vector<float> logits = random_floats(tokens * experts, 4.0f);
    std::vector<float> bias = random_floats(experts, 0.5f);
    bias[at(experts - 3)] = bad;
    const Routing none{std::vector<std::int32_t>(at(tokens * k)),
                       std::vector<float>(at(tokens * k))};
    expect_same_routing(gpu_grouped(logits, bias, tokens, experts, 8, 4, true, 2.5f, k), none,
                        tokens, k, std::vector<bool>(at(tokens), true));
  }
}

TEST_CASE("gpu moe: softmax top-k routing equals the host bit for bit") {
  REQUIRE(have_gpu());
  for (const index_t t : test_tokens)
    for (const bool renormalize : {true, false}) {
      check_softmax(t, 128, 8, renormalize, false, false);
      check_softmax(t, 128, 8, renormalize, true, false);
      check_softmax(t, 16, 4, renormalize, false, false);
    }
  check_softmax(17, 128, 8, true, false, true);
  check_softmax(64, 16, 4, false, true, true);
  check_softmax(3, 769, 17, true, false, false);
  check_softmax(5, 1, 1, true, false, true);
}

TEST_CASE("gpu moe: silu_mul with bf16 and MXFP4 outputs equals the host") {
  REQUIRE(have_gpu());
  for (const index_t rows : test_tokens)
    for (const index_t inter : {769, 2048, 768, 64}) check_silu(rows, inter);
  check_silu(5, 1);
}

TEST_CASE("gpu moe: silu_mul with FP8 per-group outputs equals the host bit for bit") {
  REQUIRE(have_gpu());
  for (const index_t rows : test_tokens)
    for (const index_t inter : {769, 2048, 768, 200, 64}) check_silu_fp8_group(rows, inter);
  check_silu_fp8_group(5, 1);
}

TEST_CASE("gpu moe: moe_combine with and without a shared expert equals the host") {
  REQUIRE(have_gpu());
  for (const index_t t : test_tokens)
    for (const bool shared : {true, false}) {
      check_combine(t, 8, 7168, shared);
      check_combine(t, 8, 2048, shared);
      check_combine(t, 4, 769, shared);
    }
}

TEST_CASE("gpu moe: expert GEMM, DeepSeek expert shapes") {
  REQUIRE(have_gpu());
  check_moe_gemm(8, 4096, 7168, 8, {1, 3});
  check_moe_gemm(8, 7168, 2048, 8, {1, 3});
}

TEST_CASE("gpu moe: expert GEMM, Qwen3 expert shapes") {
  REQUIRE(have_gpu());
  check_moe_gemm(32, 1536, 2048, 8, {1, 3, 8});
  check_moe_gemm(32, 2048, 768, 8, {1, 3, 8});
  // More rows than experts: the rows are grouped by expert first, each CTA serves one expert's
  // rows in chunks of two token tiles (T = 64, 97: more than 8 rows per expert on average) or of
  // one (T = 5).
  check_moe_gemm(32, 2048, 768, 8, {5, 97});
  check_moe_gemm(32, 1536, 2048, 8, {5, 64});
}

TEST_CASE("gpu moe: expert GEMM, tiny preset shapes and many tokens") {
  REQUIRE(have_gpu());
  check_moe_gemm(16, 128, 256, 4, test_tokens);
  check_moe_gemm(16, 256, 64, 4, test_tokens);
  check_moe_gemm(5, 17, 96, 1, {1, 17});
  // More buckets (experts and the one of bad ids) than one counting pass of the grouping holds
  // (4096): two passes.
  check_moe_gemm(4099, 17, 64, 2, {2051}, true, true);
}

TEST_CASE("gpu moe: an expert id out of range gives a NaN row") {
  REQUIRE(have_gpu());
  check_moe_gemm(16, 128, 256, 4, {1, 3, 64}, true);
  check_moe_gemm(8, 1536, 2048, 8, {1, 3}, true);
}

TEST_CASE("gpu moe: a slot of another rank's expert gives a zero row, as on the host") {
  REQUIRE(have_gpu());
  check_moe_gemm(16, 128, 256, 4, {1, 3, 64}, false, true);
  check_moe_gemm(8, 1536, 2048, 8, {1, 5}, true, true);
}

TEST_CASE("gpu moe: expert parallel ids localize as on the host") {
  REQUIRE(have_gpu());
  const std::vector<std::int32_t> ids{0, 5, 9, -1, 15, 4, 8, 12, 7, 3, 11, 2};
  std::vector<std::int32_t> want(ids.size());
  ops::localize_experts(Host{}, make_view(ids.data(), 3, 4), 4, 4, make_view(want.data(), 3, 4));
  CHECK(want == std::vector<std::int32_t>{ops::no_expert, 1, ops::no_expert, -1, ops::no_expert, 0,
                                          ops::no_expert, ops::no_expert, 3, ops::no_expert,
                                          ops::no_expert, ops::no_expert});
  const gpu::Buffer<std::int32_t> dev(ids);
  gpu::Buffer<std::int32_t> out(ids.size());
  ops::localize_experts(Gpu{}, make_view(static_cast<const std::int32_t*>(dev.data()), 3, 4), 4, 4,
                        make_view(out.data(), 3, 4));
  CHECK(out.download() == want);
}

TEST_CASE("gpu moe: unsupported expert shapes are rejected at preparation") {
  REQUIRE(have_gpu());
  const auto prepare = [](index_t e, index_t n, index_t k) {
    Experts w{e, n, k, random_codes(e * n * ops::mxfp4_packed_cols(k)),
              random_scales(e * n * ops::mxfp4_scale_cols(k))};
    return ops::prepare_experts<GemmBackend::portable>(w.view(w.packed));
  };
  CHECK_THROWS_WITH(prepare(2, 8, 48),
                    Catch::Contains("K = 48") && Catch::Contains("multiple of 32"));
  CHECK_THROWS_WITH(prepare(2, 8, 0), Catch::Contains("K = 0"));
  CHECK_THROWS_WITH(prepare(2, 0, 64), Catch::Contains("N = 0"));
  CHECK_THROWS_WITH(prepare(0, 8, 64), Catch::Contains("no experts"));
  Experts w{2, 8, 64, random_codes(2 * 8 * 32), random_scales(2 * 8 * 2)};
  ops::Mxfp4Experts bad = w.view(w.packed);
  bad.scale = make_view(w.scale.data(), 2, 8, 1);
  CHECK_THROWS_AS(ops::prepare_experts<GemmBackend::matrix_core>(bad), atom::ShapeError);
  const auto prepared = ops::prepare_experts<GemmBackend::matrix_core>(w.view(w.packed));
  CHECK(prepared.bytes() ==
        2 * static_cast<std::size_t>(prepared.expert_packed_bytes() + prepared.expert_scales()));
  // The host checks run before anything reaches the device.
  std::vector<std::int32_t> ids(4, 0);
  gpu::Buffer<std::int32_t> ids_dev(ids);
  gpu::Buffer<std::uint8_t> a_packed(3 * 32);
  gpu::Buffer<e8m0> a_scale(3 * 2);
  auto out = poisoned<bf16>(4 * 8);
  CHECK_THROWS_AS(
      ops::moe_gemm_a4w4(
          Gpu{},
          ops::Mxfp4Act{make_view(a_packed.data(), 3, 32), make_view(a_scale.data(), 3, 2), 64},
          make_view(static_cast<const std::int32_t*>(ids_dev.data()), 2, 2), prepared,
          make_view(out.data(), 4, 8)),
      atom::ShapeError);
}
