#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "atom/ops/qwen_qk.hpp"
#include "attn_test_support.hpp"

using namespace atom;
using namespace atom::ops;
using namespace atom::attn_test;

namespace {

std::size_t z(index_t i) {
  return static_cast<std::size_t>(i);
}

struct QkCase {
  index_t tokens, q_heads, kv_heads, dim;
};

// Float64 RMSNorm then RoPE of one head (the pairs spelled out here, independent of the library).
// Also returns, per element, the norm of the pair it rotates with.
void reference_head(RopeStyle style, const bf16* x, const bf16* weight, index_t dim, double eps,
                    const float* cos_sin_row, std::vector<double>& out,
                    std::vector<double>& pair_norm) {
  double sum_sq = 0.0;
  for (index_t i = 0; i < dim; ++i) sum_sq += value(x[i]) * value(x[i]);
  const double r = 1.0 / std::sqrt(sum_sq / static_cast<double>(dim) + eps);
  std::vector<double> y(z(dim));
  for (index_t i = 0; i < dim; ++i) y[z(i)] = value(x[i]) * r * value(weight[i]);
  const index_t half = dim / 2;
  out.assign(z(dim), 0.0);
  pair_norm.assign(z(dim), 0.0);
  for (index_t i = 0; i < half; ++i) {
    const index_t a = style == RopeStyle::neox ? i : 2 * i;
    const index_t b = style == RopeStyle::neox ? i + half : 2 * i + 1;
    const double c = cos_sin_row[i], s = cos_sin_row[half + i];
    out[z(a)] = y[z(a)] * c - y[z(b)] * s;
    out[z(b)] = y[z(b)] * c + y[z(a)] * s;
    pair_norm[z(a)] = pair_norm[z(b)] = std::hypot(y[z(a)], y[z(b)]);
  }
}

// The inputs both checks draw: qkv rows `pad` elements wider than the heads (a strided view when
// pad > 0), norm weights, a RoPE table, random positions and slots.
struct QkInputs {
  index_t heads, pitch;
  std::vector<bf16> buffer;
  View2<const bf16> qkv;
  std::vector<bf16> q_w, k_w;
  float eps = 1e-6f;
  index_t max_positions = 2053;
  std::vector<float> table;
  std::vector<std::int64_t> positions;
  index_t block_size = 16;
  index_t blocks;
  std::vector<std::int64_t> slots;

  QkInputs(const QkCase& c, std::uint64_t seed, index_t pad)
      : heads(c.q_heads + 2 * c.kv_heads),
        pitch(heads * c.dim + pad),
        blocks(c.tokens / block_size + 2) {
    Rng g = rng(static_cast<std::uint64_t>(c.tokens * 1000 + c.q_heads * 10 + c.dim) + seed);
    buffer = random_bf16(g, c.tokens * pitch, 0.01f, 4.0f);
    qkv = make_view(static_cast<const bf16*>(buffer.data()), c.tokens, pitch)
              .slice(1, 0, heads * c.dim);
    q_w = random_bf16(g, c.dim, 0.5f, 1.5f);
    k_w = random_bf16(g, c.dim, 0.5f, 1.5f);
    table = make_cos_sin_cache(max_positions, c.dim, 1000000.0);
    positions.resize(z(c.tokens));
    std::uniform_int_distribution<std::int64_t> pos(0, max_positions - 1);
    for (auto& p : positions) p = pos(g);
    slots = random_slots(g, c.tokens, blocks * block_size);
  }
};

struct QkRun {
  Fp8Cache cache;
  std::vector<bf16> q_out;
  QkRun(index_t blocks, index_t block_size, const QkCase& c)
      : cache(blocks, block_size, c.kv_heads, c.dim),
        q_out(z(c.tokens * c.q_heads * c.dim), bf16_nan) {}
};

template <RopeStyle S>
void check_qk(const QkCase& c) {
  INFO("tokens " << c.tokens << ", q_heads " << c.q_heads << ", kv_heads " << c.kv_heads << ", dim "
                 << c.dim << ", style " << (S == RopeStyle::neox ? "neox" : "interleaved"));
  const QkInputs in(c, 0, 7);

  QkRun fused(in.blocks, in.block_size, c), separate(in.blocks, in.block_size, c);
  const auto args = [&](QkRun& run) {
    return std::tuple{make_view(in.q_w.data(), c.dim),
                      make_view(in.k_w.data(), c.dim),
                      make_view(in.positions.data(), c.tokens),
                      make_view(in.table.data(), in.max_positions, c.dim),
                      make_view(in.slots.data(), c.tokens),
                      run.cache.view(),
                      make_view(run.q_out.data(), c.tokens, c.q_heads, c.dim)};
  };
  {
    const auto [qw, kw, p, cs, sl, cache, q_out] = args(fused);
    qk_norm_rope_cache_fused<S>(Host{}, in.qkv, qw, kw, in.eps, p, cs, sl, cache, q_out);
  }
  {
    const auto [qw, kw, p, cs, sl, cache, q_out] = args(separate);
    qk_norm_rope_cache_separate<S>(Host{}, in.qkv, qw, kw, in.eps, p, cs, sl, cache, q_out);
  }

  std::size_t q_bad = 0, q_diff_bad = 0, k_bad = 0, k_diff_bad = 0, scale_bad = 0, v_bad = 0;
  std::size_t k_codes_far = 0, k_elements = 0;
  double fused_error = 0.0, separate_error = 0.0;
  std::vector<double> ref, pair_norm;
  for (index_t t = 0; t < c.tokens; ++t) {
    const float* row = &in.table[z(in.positions[z(t)] * c.dim)];
    for (index_t h = 0; h < c.q_heads; ++h) {
      reference_head(S, &in.qkv(t, h * c.dim), in.q_w.data(), c.dim, in.eps, row, ref, pair_norm);
      for (index_t d = 0; d < c.dim; ++d) {
        const std::size_t at = z((t * c.q_heads + h) * c.dim + d);
        const double f = value(fused.q_out[at]), s = value(separate.q_out[at]);
        const double slack = std::ldexp(pair_norm[z(d)], -16);  // fp32 norm and rotation
        // Fused: one bf16 rounding. Separate: one more rounding before the rotation, which moves
        // the element by at most u times its pair's norm, then its own final rounding.
        q_bad += !(std::fabs(f - ref[z(d)]) <= u_bf16 * std::fabs(ref[z(d)]) + slack);
        q_diff_bad += !(std::fabs(f - s) <= 3.0 * u_bf16 * pair_norm[z(d)] + 2.0 * slack);
        fused_error += std::fabs(f - ref[z(d)]);
        separate_error += std::fabs(s - ref[z(d)]);
      }
    }
    const std::int64_t slot = in.slots[z(t)];
    if (slot < 0) continue;
    for (index_t h = 0; h < c.kv_heads; ++h) {
      reference_head(S, &in.qkv(t, (c.q_heads + h) * c.dim), in.k_w.data(), c.dim, in.eps, row, ref,
                     pair_norm);
      const std::size_t row_at = z(slot * c.kv_heads + h);
      const float f_scale = fused.cache.key_scale[row_at];
      const float s_scale = separate.cache.key_scale[row_at];
      double amax = 0.0, r_max = 0.0;
      for (index_t d = 0; d < c.dim; ++d) {
        amax = std::max(amax, std::fabs(ref[z(d)]));
        r_max = std::max(r_max, pair_norm[z(d)]);
      }
      scale_bad += !(std::fabs(f_scale - amax / 448.0) <= std::ldexp(amax / 448.0, -14));
      // The separate amax moves by at most (sqrt(2) + 1) u of amax (see the header's contract).
      scale_bad += !(std::fabs(s_scale - f_scale) <= 2.5 * u_bf16 * f_scale);
      for (index_t d = 0; d < c.dim; ++d) {
        const std::size_t at = row_at * z(c.dim) + z(d);
        const double f = to_float(fused.cache.key[at]) * static_cast<double>(f_scale);
        const double s = to_float(separate.cache.key[at]) * static_cast<double>(s_scale);
        const double slack = std::ldexp(r_max, -16);
        const double x = std::fabs(ref[z(d)]) + slack;
        const double f_tol = fp8_half_step(x / f_scale) * f_scale + slack;
        const double s_tol = fp8_half_step((x + 2.0 * u_bf16 * r_max) / s_scale) * s_scale +
                             2.0 * u_bf16 * pair_norm[z(d)] + u_bf16 * x + slack;
        k_bad += !(std::fabs(f - ref[z(d)]) <= f_tol) || !(std::fabs(s - ref[z(d)]) <= s_tol);
        k_diff_bad += !(std::fabs(f - s) <= f_tol + s_tol);
        const int fc =
            (fused.cache.key[at].bits & 0x80 ? -1 : 1) * (fused.cache.key[at].bits & 0x7f);
        const int sc =
            (separate.cache.key[at].bits & 0x80 ? -1 : 1) * (separate.cache.key[at].bits & 0x7f);
        k_codes_far += std::abs(fc - sc) > 1;
        ++k_elements;
      }
      // v: both quantize the same bf16 input, bit for bit.
      std::vector<double> v(z(c.dim));
      for (index_t d = 0; d < c.dim; ++d)
        v[z(d)] = value(in.qkv(t, (c.q_heads + c.kv_heads + h) * c.dim + d));
      v_bad +=
          check_fp8_row(v, &fused.cache.value[row_at * z(c.dim)], fused.cache.value_scale[row_at]);
      v_bad += fused.cache.value_scale[row_at] != separate.cache.value_scale[row_at];
      for (index_t d = 0; d < c.dim; ++d)
        v_bad += fused.cache.value[row_at * z(c.dim) + z(d)].bits !=
                 separate.cache.value[row_at * z(c.dim) + z(d)].bits;
    }
  }
  INFO("k codes more than one step apart: " << k_codes_far << " of " << k_elements);
  CHECK(q_bad == 0);
  CHECK(q_diff_bad == 0);
  CHECK(k_bad == 0);
  CHECK(k_diff_bad == 0);
  CHECK(scale_bad == 0);
  CHECK(v_bad == 0);
  // Keeping the intermediate in float is measurably closer to float64.
  if (c.tokens * c.q_heads * c.dim >= 1000) CHECK(fused_error < separate_error);
  // Padding tokens wrote nothing; rows nobody owns keep their poison.
  std::vector<bool> owned(z(in.blocks * in.block_size), false);
  for (std::int64_t s : in.slots)
    if (s >= 0) owned[z(s)] = true;
  std::size_t touched = 0;
  for (const QkRun* run : {&fused, &separate})
    for (index_t s = 0; s < in.blocks * in.block_size; ++s)
      for (index_t i = 0; i < c.kv_heads * c.dim && !owned[z(s)]; ++i)
        touched += run->cache.key[z(s * c.kv_heads * c.dim + i)].bits != 0xff ||
                   run->cache.value[z(s * c.kv_heads * c.dim + i)].bits != 0xff;
  CHECK(touched == 0);
}

// The fp8_tensor and bf16 formats: q is the same as with any cache (bit for bit against an fp8_row
// run); k is the reference rounded once (bf16) or quantized once with the tensor's scale (fp8),
// within the bounds of the header's contract for the separate chain; v is stored from its bf16
// input by both variants alike.
template <RopeStyle S>
void check_qk_formats(const QkCase& c) {
  INFO("tokens " << c.tokens << ", q_heads " << c.q_heads << ", kv_heads " << c.kv_heads << ", dim "
                 << c.dim << ", style " << (S == RopeStyle::neox ? "neox" : "interleaved"));
  const QkInputs in(c, 1, 0);
  const auto n = z(in.blocks * in.block_size * c.kv_heads * c.dim);
  const auto rows = [&](auto* data) {
    return make_view(data, in.blocks, in.block_size, c.kv_heads, c.dim);
  };
  // Scales that put the normed keys (|k| up to a few units) in the middle of the FP8 range and
  // saturate the largest values (up to 4 x 0.01..4 summed in no GEMM here: v is qkv's input).
  float scales[2][2] = {{0.011f, 0.007f}, {0.011f, 0.007f}};  // [fused, separate][key, value]

  QkRun row_run(in.blocks, in.block_size, c);
  std::vector<bf16> q_out[2][2];  // [format: fp8_tensor, bf16][fused, separate]
  std::vector<fp8_e4m3> key8[2], value8[2];
  std::vector<bf16> key16[2], value16[2];
  const auto call = [&](bool fused, const auto& cache, std::vector<bf16>& q) {
    q.assign(z(c.tokens * c.q_heads * c.dim), bf16_nan);
    const auto out = make_view(q.data(), c.tokens, c.q_heads, c.dim);
    const auto qw = make_view(in.q_w.data(), c.dim), kw = make_view(in.k_w.data(), c.dim);
    const auto p = make_view(in.positions.data(), c.tokens);
    const auto cs = make_view(in.table.data(), in.max_positions, c.dim);
    const auto sl = make_view(in.slots.data(), c.tokens);
    if (fused)
      qk_norm_rope_cache_fused<S>(Host{}, in.qkv, qw, kw, in.eps, p, cs, sl, cache, out);
    else
      qk_norm_rope_cache_separate<S>(Host{}, in.qkv, qw, kw, in.eps, p, cs, sl, cache, out);
  };
  for (int v = 0; v < 2; ++v) {
    key8[v].assign(n, fp8_nan);
    value8[v].assign(n, fp8_nan);
    key16[v].assign(n, bf16_nan);
    value16[v].assign(n, bf16_nan);
    call(v == 0,
         per_tensor_fp8_cache(rows(key8[v].data()), rows(value8[v].data()), &scales[v][0],
                              &scales[v][1]),
         q_out[0][v]);
    call(v == 0, bf16_cache(rows(key16[v].data()), rows(value16[v].data())), q_out[1][v]);
  }
  const auto same = [](const std::vector<bf16>& a, const std::vector<bf16>& b) {
    return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                      [](bf16 x, bf16 y) { return x.bits == y.bits; });
  };
  std::vector<bf16> q_row;
  call(true, row_run.cache.view(), q_row);
  CHECK(same(q_out[0][0], q_row));
  CHECK(same(q_out[1][0], q_row));
  std::vector<bf16> q_row_separate;
  call(false, row_run.cache.view(), q_row_separate);
  CHECK(same(q_out[0][1], q_row_separate));
  CHECK(same(q_out[1][1], q_row_separate));

  std::size_t k_bad = 0, v_bad = 0, untouched_bad = 0;
  std::vector<double> ref, pair_norm;
  std::vector<bool> owned(z(in.blocks * in.block_size), false);
  for (index_t t = 0; t < c.tokens; ++t) {
    const std::int64_t slot = in.slots[z(t)];
    if (slot < 0) continue;
    owned[z(slot)] = true;
    const float* row = &in.table[z(in.positions[z(t)] * c.dim)];
    for (index_t h = 0; h < c.kv_heads; ++h) {
      reference_head(S, &in.qkv(t, (c.q_heads + h) * c.dim), in.k_w.data(), c.dim, in.eps, row, ref,
                     pair_norm);
      for (index_t d = 0; d < c.dim; ++d) {
        const std::size_t at = z((slot * c.kv_heads + h) * c.dim + d);
        const double r = ref[z(d)];
        const double slack = std::ldexp(pair_norm[z(d)], -16);  // fp32 norm and rotation
        // The separate chain's k before its store: within 2u of its pair's norm and u of itself.
        const double moved = 2.0 * u_bf16 * pair_norm[z(d)] + u_bf16 * std::fabs(r) + slack;
        // bf16: one rounding (fused), the moved value rounded once more (separate).
        const double f16 = value(key16[0][at]), s16 = value(key16[1][at]);
        k_bad += !(std::fabs(f16 - r) <= u_bf16 * std::fabs(r) + slack);
        k_bad += !(std::fabs(s16 - r) <= u_bf16 * (std::fabs(r) + moved) + moved);
        // fp8_tensor: half a step of x / scale, or saturated at 448 x scale.
        const double scale = 0.011;
        for (int v = 0; v < 2; ++v) {
          const double tol = (v == 0 ? slack : moved);
          const double got = to_float(key8[v][at]) * scale;
          const double limit = 448.0 * scale;
          if (std::fabs(r) - tol > limit)
            k_bad += got != std::copysign(limit, r);
          else
            k_bad += !(std::fabs(std::clamp(r, -limit, limit) - got) <=
                       fp8_half_step((std::fabs(r) + tol) / scale) * scale * (1.0 + 1e-6) + tol);
        }
        // v: both variants store the same bf16 input alike.
        const bf16 vx = in.qkv(t, (c.q_heads + c.kv_heads + h) * c.dim + d);
        v_bad += value16[0][at].bits != vx.bits || value16[1][at].bits != vx.bits;
        v_bad += value8[0][at].bits != quantize_kv_tensor(to_float(vx), 0.007f).bits ||
                 value8[1][at].bits != value8[0][at].bits;
      }
    }
  }
  for (index_t s = 0; s < in.blocks * in.block_size; ++s)
    for (index_t i = 0; i < c.kv_heads * c.dim && !owned[z(s)]; ++i) {
      const std::size_t at = z(s * c.kv_heads * c.dim + i);
      for (int v = 0; v < 2; ++v)
        untouched_bad += key8[v][at].bits != 0xff || value8[v][at].bits != 0xff ||
                         key16[v][at].bits != bf16_nan.bits || value16[v][at].bits != bf16_nan.bits;
    }
  CHECK(k_bad == 0);
  CHECK(v_bad == 0);
  CHECK(untouched_bad == 0);
}

}  // namespace

TEST_CASE("qk_norm_rope_cache fused matches float64 and the separate chain within bounds",
          "[qwen_qk]") {
  for (const index_t tokens : {1, 3, 17})
    for (const QkCase c : {QkCase{tokens, 32, 4, 128}, QkCase{tokens, 3, 1, 34},
                           QkCase{tokens, 1, 1, 64}, QkCase{tokens, 16, 16, 64}}) {
      check_qk<RopeStyle::neox>(c);
      check_qk<RopeStyle::interleaved>(c);
    }
}

TEST_CASE("qk_norm_rope_cache over fp8_tensor and bf16 caches stores k and v by the format",
          "[qwen_qk]") {
  for (const index_t tokens : {1, 3, 17})
    for (const QkCase c :
         {QkCase{tokens, 32, 4, 128}, QkCase{tokens, 3, 1, 34}, QkCase{tokens, 16, 16, 64}}) {
      check_qk_formats<RopeStyle::neox>(c);
      check_qk_formats<RopeStyle::interleaved>(c);
    }
}

TEST_CASE("qk_norm_rope_cache variants reject bad shapes naming themselves", "[qwen_qk]") {
  Rng g = rng(3);
  const index_t tokens = 2, q_heads = 4, kv_heads = 2, dim = 8;
  const std::vector<bf16> qkv = random_bf16(g, tokens * (q_heads + 2 * kv_heads) * dim);
  const std::vector<bf16> w = random_bf16(g, dim);
  const std::vector<float> table = make_cos_sin_cache(16, dim, 10000.0);
  std::vector<std::int64_t> positions = {0, 15}, slots = {3, -1};
  Fp8Cache cache(1, 4, kv_heads, dim);
  std::vector<bf16> q_out(z(tokens * q_heads * dim), bf16_nan);
  const auto run = [&](bool fused, index_t qkv_cols, index_t q_out_heads) {
    const auto qkv_v = make_view(qkv.data(), tokens, qkv_cols);
    const auto wv = make_view(w.data(), dim);
    const auto cs = make_view(table.data(), 16, dim);
    const auto q = make_view(q_out.data(), tokens, q_out_heads, dim);
    if (fused)
      qk_norm_rope_cache_fused<RopeStyle::neox>(Host{}, qkv_v, wv, wv, 1e-6f,
                                                make_view(positions.data(), tokens), cs,
                                                make_view(slots.data(), tokens), cache.view(), q);
    else
      qk_norm_rope_cache_separate<RopeStyle::neox>(
          Host{}, qkv_v, wv, wv, 1e-6f, make_view(positions.data(), tokens), cs,
          make_view(slots.data(), tokens), cache.view(), q);
  };
  CHECK_NOTHROW(run(true, 64, 4));
  CHECK_NOTHROW(run(false, 64, 4));
  CHECK_THROWS_WITH(run(true, 60, 3), Catch::Contains("qk_norm_rope_cache_fused") &&
                                          Catch::Contains("'qkv'") && Catch::Contains("[2, 56]"));
  CHECK_THROWS_WITH(run(false, 64, 3),
                    Catch::Contains("qk_norm_rope_cache_separate") && Catch::Contains("'qkv'"));
  positions = {0, 16};
  CHECK_THROWS_WITH(run(false, 64, 4), Catch::Contains("qk_norm_rope_cache_separate") &&
                                           Catch::Contains("'positions'"));
  positions = {0, 1};
  slots = {4, 0};
  CHECK_THROWS_WITH(run(true, 64, 4),
                    Catch::Contains("qk_norm_rope_cache_fused") && Catch::Contains("'slots'"));
}
