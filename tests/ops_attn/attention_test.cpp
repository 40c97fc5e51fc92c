#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "atom/ops/attention.hpp"
#include "attn_test_support.hpp"

using namespace atom;
using namespace atom::ops;
using namespace atom::attn_test;

namespace {

std::size_t z(index_t i) {
  return static_cast<std::size_t>(i);
}

// Float64 softmax(scores) . values for one query: scores [n], values [n][dim] -> [dim].
std::vector<double> reference_attend(const std::vector<double>& scores,
                                     const std::vector<std::vector<double>>& values) {
  double max = scores[0];
  for (double s : scores) max = std::max(max, s);
  std::vector<double> p(scores.size());
  double sum = 0.0;
  for (std::size_t j = 0; j < scores.size(); ++j) sum += p[j] = std::exp(scores[j] - max);
  std::vector<double> out(values[0].size(), 0.0);
  for (std::size_t j = 0; j < scores.size(); ++j)
    for (std::size_t i = 0; i < out.size(); ++i) out[i] += p[j] / sum * values[j][i];
  return out;
}

struct MlaCase {
  index_t heads, kv_lora, rope_dim, block_size;
  std::vector<std::int32_t> contexts;
};

// A filled MLA cache and the paging of a ragged batch over it.
struct MlaSetup {
  Paging paging;
  index_t width;
  std::vector<bf16> cache;
  MlaSetup(Rng& g, const MlaCase& c)
      : paging(make_paging(g, c.contexts, c.block_size)),
        width(c.kv_lora + c.rope_dim),
        cache(random_bf16(g, paging.num_blocks * c.block_size * width)) {}
  View3<const bf16> view() const {
    return make_view(cache.data(), paging.num_blocks, paging.block_size, width);
  }
  double at(index_t t, index_t j, index_t i) const {
    return value(cache[z(paging.slot(t, j) * width + i)]);
  }
};

}  // namespace

TEST_CASE("mla_decode matches float64 attention over the latent cache", "[attention]") {
  const std::vector<MlaCase> cases = {
      {16, 512, 64, 16, {1, 7, 300}}, {3, 512, 64, 1, {7, 1, 300}}, {1, 33, 6, 16, {17}},
      {3, 64, 34, 1, {5, 2, 9}},      {16, 128, 64, 16, {40}},
  };
  for (const MlaCase& c : cases) {
    const index_t tokens = static_cast<index_t>(c.contexts.size());
    INFO("heads " << c.heads << ", kv_lora " << c.kv_lora << ", rope " << c.rope_dim
                  << ", block_size " << c.block_size << ", tokens " << tokens);
    Rng g = rng(static_cast<std::uint64_t>(c.heads * 7 + c.kv_lora + c.block_size));
    const MlaSetup s(g, c);
    // q_pe is the rope slice of a [T, H, 128 + rope] q: strided rows.
    const std::vector<bf16> q_latent = random_bf16(g, tokens * c.heads * c.kv_lora);
    const std::vector<bf16> q_full = random_bf16(g, tokens * c.heads * (128 + c.rope_dim));
    const View3<const bf16> q_pe =
        make_view(q_full.data(), tokens, c.heads, 128 + c.rope_dim).slice(2, 128, c.rope_dim);
    const View3<const bf16> q_lat = make_view(q_latent.data(), tokens, c.heads, c.kv_lora);
    std::vector<bf16> out(z(tokens * c.heads * c.kv_lora), bf16_nan);
    const float scale = 0.1f;
    mla_decode(Host{}, q_lat, q_pe, s.view(), s.paging.batch(), scale,
               make_view(out.data(), tokens, c.heads, c.kv_lora));

    std::size_t bad = 0;
    for (index_t t = 0; t < tokens; ++t) {
      const index_t n = c.contexts[z(t)];
      std::vector<std::vector<double>> latents(z(n), std::vector<double>(z(c.kv_lora)));
      for (index_t j = 0; j < n; ++j)
        for (index_t i = 0; i < c.kv_lora; ++i) latents[z(j)][z(i)] = s.at(t, j, i);
      for (index_t h = 0; h < c.heads; ++h) {
        std::vector<double> scores(z(n));
        for (index_t j = 0; j < n; ++j) {
          double dot = 0.0;
          for (index_t i = 0; i < c.kv_lora; ++i) dot += value(q_lat(t, h, i)) * s.at(t, j, i);
          for (index_t r = 0; r < c.rope_dim; ++r)
            dot += value(q_pe(t, h, r)) * s.at(t, j, c.kv_lora + r);
          scores[z(j)] = dot * scale;
        }
        const std::vector<double> ref = reference_attend(scores, latents);
        for (index_t i = 0; i < c.kv_lora; ++i) {
          // One bf16 rounding of the output; 2^-14 covers fp32 accumulation over <= 576 terms.
          const double tol = u_bf16 * std::fabs(ref[z(i)]) + std::ldexp(1.0, -14);
          const double got = value(out[z((t * c.heads + h) * c.kv_lora + i)]);
          if (!(std::fabs(got - ref[z(i)]) <= tol)) ++bad;
        }
      }
    }
    CHECK(bad == 0);
  }
}

TEST_CASE("mla_decode absorbed equals ordinary attention over the decompressed cache",
          "[attention]") {
  // DeepSeek-V3 per-head sizes: nope 128, v 128, rope 64, kv_lora 512.
  const index_t heads = 4, nope = 128, v_dim = 128, rope_dim = 64, kv_lora = 512;
  const MlaCase c{heads, kv_lora, rope_dim, 16, {1, 7, 300}};
  const index_t tokens = 3;
  Rng g = rng(77);
  const MlaSetup s(g, c);
  std::vector<double> w_uk(z(heads * nope * kv_lora)), w_uv(z(heads * kv_lora * v_dim));
  // Scaled so q_latent and v stay of order 1.
  for (double& w : w_uk) w = nonzero(g) / std::sqrt(static_cast<double>(nope));
  for (double& w : w_uv) w = nonzero(g) / std::sqrt(static_cast<double>(kv_lora));
  const auto uk = [&](index_t h, index_t n, index_t l) {
    return w_uk[z((h * nope + n) * kv_lora + l)];
  };
  const auto uv = [&](index_t h, index_t l, index_t m) {
    return w_uv[z((h * kv_lora + l) * v_dim + m)];
  };
  const std::vector<bf16> q_nope = random_bf16(g, tokens * heads * nope);
  const std::vector<bf16> q_pe = random_bf16(g, tokens * heads * rope_dim);
  const auto qn = [&](index_t t, index_t h, index_t n) {
    return value(q_nope[z((t * heads + h) * nope + n)]);
  };
  const auto qp = [&](index_t t, index_t h, index_t r) {
    return value(q_pe[z((t * heads + h) * rope_dim + r)]);
  };
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(nope + rope_dim)));

  // Absorbed: q_latent = q_nope x W_UK (rounded to bf16, as the BMM writes it), mla_decode, then
  // out x W_UV in float64.
  std::vector<double> q_latent_exact(z(tokens * heads * kv_lora));
  std::vector<bf16> q_latent(q_latent_exact.size());
  for (index_t t = 0; t < tokens; ++t)
    for (index_t h = 0; h < heads; ++h)
      for (index_t l = 0; l < kv_lora; ++l) {
        double acc = 0.0;
        for (index_t n = 0; n < nope; ++n) acc += qn(t, h, n) * uk(h, n, l);
        const std::size_t at = z((t * heads + h) * kv_lora + l);
        q_latent_exact[at] = acc;
        q_latent[at] = to_bf16(static_cast<float>(acc));
      }
  std::vector<bf16> out(z(tokens * heads * kv_lora), bf16_nan);
  mla_decode(Host{}, make_view(q_latent.data(), tokens, heads, kv_lora),
             make_view(q_pe.data(), tokens, heads, rope_dim), s.view(), s.paging.batch(), scale,
             make_view(out.data(), tokens, heads, kv_lora));

  std::size_t bad = 0;
  double worst_ratio = 0.0, ref_square_sum = 0.0, max_tol = 0.0;
  for (index_t t = 0; t < tokens; ++t) {
    const index_t n = c.contexts[z(t)];
    for (index_t h = 0; h < heads; ++h) {
      // Non-absorbed: decompress every context row, k_nope = W_UK c, v = c W_UV, ordinary MHA.
      std::vector<double> scores(z(n));
      std::vector<std::vector<double>> values(z(n), std::vector<double>(z(v_dim)));
      double score_slack = 0.0;  // the largest |score error| caused by rounding q_latent to bf16
      for (index_t j = 0; j < n; ++j) {
        double dot = 0.0;
        for (index_t k = 0; k < nope; ++k) {
          double k_nope = 0.0;
          for (index_t l = 0; l < kv_lora; ++l) k_nope += uk(h, k, l) * s.at(t, j, l);
          dot += qn(t, h, k) * k_nope;
        }
        for (index_t r = 0; r < rope_dim; ++r) dot += qp(t, h, r) * s.at(t, j, kv_lora + r);
        scores[z(j)] = dot * scale;
        for (index_t m = 0; m < v_dim; ++m) {
          double v = 0.0;
          for (index_t l = 0; l < kv_lora; ++l) v += s.at(t, j, l) * uv(h, l, m);
          values[z(j)][z(m)] = v;
        }
        // The score error the bf16 q_latent causes, exactly: (q_latent - exact) . c_j * scale.
        double rounding = 0.0;
        for (index_t l = 0; l < kv_lora; ++l) {
          const std::size_t at = z((t * heads + h) * kv_lora + l);
          rounding += (value(q_latent[at]) - q_latent_exact[at]) * s.at(t, j, l);
        }
        score_slack = std::max(score_slack, std::fabs(rounding) * scale);
      }
      const std::vector<double> ref = reference_attend(scores, values);
      std::vector<double> p(z(n));
      double max_score = scores[0], sum = 0.0;
      for (double x : scores) max_score = std::max(max_score, x);
      for (index_t j = 0; j < n; ++j) sum += p[z(j)] = std::exp(scores[z(j)] - max_score);
      for (index_t m = 0; m < v_dim; ++m) {
        double got = 0.0, out_rounding = 0.0, spread = 0.0;
        for (index_t l = 0; l < kv_lora; ++l) {
          const double o = value(out[z((t * heads + h) * kv_lora + l)]);
          got += o * uv(h, l, m);
          out_rounding += u_bf16 * std::fabs(o) * std::fabs(uv(h, l, m));
        }
        for (index_t j = 0; j < n; ++j)
          spread += p[z(j)] / sum * std::fabs(values[z(j)][z(m)] - ref[z(m)]);
        // Score errors of at most score_slack scale each softmax weight by a factor within
        // exp(+-2 score_slack); as the weights still sum to 1, the output moves by at most
        // expm1(2 score_slack) * sum_j p_j |v_j - out|. The output's bf16 rounding adds at most
        // out_rounding; 2^-14 covers fp32 accumulation.
        const double tol =
            std::expm1(2.0 * score_slack) * spread + out_rounding + std::ldexp(1.0, -14);
        if (!(std::fabs(got - ref[z(m)]) <= tol)) ++bad;
        worst_ratio = std::max(worst_ratio, std::fabs(got - ref[z(m)]) / tol);
        ref_square_sum += ref[z(m)] * ref[z(m)];
        max_tol = std::max(max_tol, tol);
      }
    }
  }
  INFO("worst error / tolerance " << worst_ratio << ", largest tolerance " << max_tol);
  CHECK(bad == 0);
  // The tolerance is tight enough to mean something: well below the outputs' typical size.
  const double ref_rms = std::sqrt(ref_square_sum / static_cast<double>(tokens * heads * v_dim));
  CHECK(max_tol < 0.25 * ref_rms);
}

namespace {

struct GqaCase {
  index_t q_heads, kv_heads, dim, block_size;
  std::vector<std::int32_t> contexts;
};

}  // namespace

TEST_CASE("gqa_decode matches float64 attention over the cache in every format", "[attention]") {
  const std::vector<GqaCase> cases = {
      {16, 4, 128, 16, {1, 7, 300}}, {3, 1, 64, 1, {300, 7, 1}}, {1, 1, 17, 16, {33}},
      {32, 4, 128, 16, {65, 2}},     {3, 3, 34, 1, {5, 9, 2}},
  };
  for (const GqaCase& c : cases)
    for (const KvCacheFormat format :
         {KvCacheFormat::fp8_row, KvCacheFormat::fp8_tensor, KvCacheFormat::bf16}) {
      const index_t tokens = static_cast<index_t>(c.contexts.size());
      INFO("q_heads " << c.q_heads << ", kv_heads " << c.kv_heads << ", dim " << c.dim
                      << ", block_size " << c.block_size << ", tokens " << tokens << ", format "
                      << kv_cache_format_name(format));
      Rng g = rng(static_cast<std::uint64_t>(c.q_heads * 100 + c.kv_heads * 10 + c.dim) +
                  static_cast<std::uint64_t>(format) * 7);
      const Paging p = make_paging(g, c.contexts, c.block_size);
      const index_t rows = p.num_blocks * c.block_size * c.kv_heads;
      // Random finite codes (never the NaN codes 0x7f / 0xff) and positive scales; for bf16,
      // random values.
      std::vector<fp8_e4m3> key(z(rows * c.dim)), val(key.size());
      std::uniform_int_distribution<int> code(0, 253);
      for (auto* cache : {&key, &val})
        for (fp8_e4m3& x : *cache) {
          const int b = code(g);
          x.bits = static_cast<std::uint8_t>(b >= 0x7f ? b + 1 : b);
        }
      std::vector<float> key_scale(z(rows)), val_scale(z(rows));
      std::uniform_real_distribution<float> scale_dist(1e-3f, 4e-3f);
      for (float& x : key_scale) x = scale_dist(g);
      for (float& x : val_scale) x = scale_dist(g);
      std::vector<bf16> key16 = random_bf16(g, rows * c.dim), val16 = random_bf16(g, rows * c.dim);
      const auto rows4 = [&](auto* data) {
        return make_view(data, p.num_blocks, c.block_size, c.kv_heads, c.dim);
      };
      const auto rows3 = [&](float* data) {
        return make_view(data, p.num_blocks, c.block_size, c.kv_heads);
      };
      const AnyKvCache cache =
          format == KvCacheFormat::fp8_row
              ? AnyKvCache{KvCacheFp8{rows4(key.data()), rows4(val.data()), rows3(key_scale.data()),
                                      rows3(val_scale.data())}}
          : format == KvCacheFormat::fp8_tensor
              ? AnyKvCache{per_tensor_fp8_cache(rows4(key.data()), rows4(val.data()),
                                                key_scale.data(), val_scale.data())}
              : AnyKvCache{bf16_cache(rows4(key16.data()), rows4(val16.data()))};
      const std::vector<bf16> q = random_bf16(g, tokens * c.q_heads * c.dim);
      std::vector<bf16> out(q.size(), bf16_nan);
      const float softmax_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.dim)));
      std::visit(
          [&](const auto& kv) {
            gqa_decode(Host{}, make_view(q.data(), tokens, c.q_heads, c.dim), kv, p.batch(),
                       softmax_scale, make_view(out.data(), tokens, c.q_heads, c.dim));
          },
          cache);

      // The format's element, from the raw buffers: code x its row's scale (fp8_row), x the
      // tensor's one scale (fp8_tensor: element 0 of the scale vectors), or the bf16 value.
      const auto deq = [&](bool is_value, index_t slot, index_t head, index_t d) {
        const index_t row = slot * c.kv_heads + head;
        const std::size_t at = z(row * c.dim + d);
        if (format == KvCacheFormat::bf16) return value((is_value ? val16 : key16)[at]);
        const auto& scales = is_value ? val_scale : key_scale;
        return static_cast<double>(to_float((is_value ? val : key)[at])) *
               static_cast<double>(scales[format == KvCacheFormat::fp8_tensor ? 0 : z(row)]);
      };
      std::size_t bad = 0;
      const index_t group = c.q_heads / c.kv_heads;
      for (index_t t = 0; t < tokens; ++t) {
        const index_t n = c.contexts[z(t)];
        for (index_t h = 0; h < c.q_heads; ++h) {
          const index_t kvh = h / group;
          std::vector<double> scores(z(n));
          std::vector<std::vector<double>> values(z(n), std::vector<double>(z(c.dim)));
          double v_max = 0.0;
          for (index_t j = 0; j < n; ++j) {
            const index_t slot = p.slot(t, j);
            double dot = 0.0;
            for (index_t d = 0; d < c.dim; ++d) {
              dot += value(q[z((t * c.q_heads + h) * c.dim + d)]) * deq(false, slot, kvh, d);
              values[z(j)][z(d)] = deq(true, slot, kvh, d);
              v_max = std::max(v_max, std::fabs(values[z(j)][z(d)]));
            }
            scores[z(j)] = dot * softmax_scale;
          }
          const std::vector<double> ref = reference_attend(scores, values);
          for (index_t d = 0; d < c.dim; ++d) {
            // One bf16 rounding of the output; 2^-12 of the largest value covers fp32 sums.
            const double tol = u_bf16 * std::fabs(ref[z(d)]) + std::ldexp(v_max, -12);
            const double got = value(out[z((t * c.q_heads + h) * c.dim + d)]);
            if (!(std::fabs(got - ref[z(d)]) <= tol)) ++bad;
          }
        }
      }
      CHECK(bad == 0);
    }
}

TEST_CASE("decode attention: a sequence's query tokens attend causally, padded tokens read nothing",
          "[attention]") {
  // Sequences of 1, 2, 3 and 0 query tokens, sequence 2's middle token padded (slot -1), and two
  // padding tokens after the last sequence. Each token's outputs are those of a sequence of its
  // own with its causal context over the same rows, bit for bit (the host ops' arithmetic does
  // not depend on the batch's form); a padded token's outputs are zeros.
  Rng g = rng(91);
  const MlaCase c{3, 64, 16, 4, {9, 6, 13, 5}};
  MlaSetup s(g, c);
  s.paging.with_queries({1, 2, 3, 0}, 2);
  s.paging.slots[4] = ops::skip_slot;
  const Paging single = s.paging.one_per_token();
  const index_t tokens = s.paging.tokens();
  REQUIRE(tokens == 8);
  const std::vector<bf16> q_lat = random_bf16(g, tokens * c.heads * c.kv_lora);
  const std::vector<bf16> q_pe = random_bf16(g, tokens * c.heads * c.rope_dim);
  const auto ql = make_view(q_lat.data(), tokens, c.heads, c.kv_lora);
  const auto qp = make_view(q_pe.data(), tokens, c.heads, c.rope_dim);
  std::vector<bf16> got(z(tokens * c.heads * c.kv_lora), bf16_nan), want(got);
  mla_decode(Host{}, ql, qp, s.view(), s.paging.batch(), 0.25f,
             make_view(got.data(), tokens, c.heads, c.kv_lora));
  mla_decode(Host{}, ql, qp, s.view(), single.batch(), 0.25f,
             make_view(want.data(), tokens, c.heads, c.kv_lora));
  const auto padded = [&](index_t t) { return s.paging.slots[z(t)] < 0; };
  const auto row_bits = [&](const std::vector<bf16>& v, index_t t, index_t width) {
    std::vector<std::uint16_t> bits;
    for (index_t i = t * width; i < (t + 1) * width; ++i) bits.push_back(v[z(i)].bits);
    return bits;
  };
  for (index_t t = 0; t < tokens; ++t) {
    INFO("MLA token " << t);
    CHECK(row_bits(got, t, c.heads * c.kv_lora) == row_bits(want, t, c.heads * c.kv_lora));
    if (padded(t))
      CHECK(row_bits(got, t, c.heads * c.kv_lora) ==
            std::vector<std::uint16_t>(z(c.heads * c.kv_lora), 0));
  }

  // GQA over the same paging: 4 query heads per kv head, random finite codes.
  const index_t kv_heads = 2, q_heads = 8, dim = 16;
  const index_t rows = s.paging.num_blocks * c.block_size * kv_heads;
  std::vector<fp8_e4m3> key(z(rows * dim)), val(key.size());
  std::uniform_int_distribution<int> code(0, 0x7e);
  for (auto* v : {&key, &val})
    for (fp8_e4m3& x : *v) x.bits = static_cast<std::uint8_t>(code(g) | (g() & 0x80u));
  std::vector<float> key_scales(z(rows)), val_scales(z(rows));
  for (auto* v : {&key_scales, &val_scales})
    for (float& x : *v) x = 1e-3f + 3e-3f * static_cast<float>(g() % 1000) / 1000.0f;
  const index_t nb = s.paging.num_blocks;
  const ConstKvCacheFp8 kv{
      make_view(static_cast<const fp8_e4m3*>(key.data()), nb, c.block_size, kv_heads, dim),
      make_view(static_cast<const fp8_e4m3*>(val.data()), nb, c.block_size, kv_heads, dim),
      make_view(static_cast<const float*>(key_scales.data()), nb, c.block_size, kv_heads),
      make_view(static_cast<const float*>(val_scales.data()), nb, c.block_size, kv_heads)};
  const std::vector<bf16> q = random_bf16(g, tokens * q_heads * dim);
  std::vector<bf16> gqa_got(q.size(), bf16_nan), gqa_want(q.size(), bf16_nan);
  const auto qv = make_view(q.data(), tokens, q_heads, dim);
  gqa_decode(Host{}, qv, kv, s.paging.batch(), 0.25f,
             make_view(gqa_got.data(), tokens, q_heads, dim));
  gqa_decode(Host{}, qv, kv, single.batch(), 0.25f,
             make_view(gqa_want.data(), tokens, q_heads, dim));
  for (index_t t = 0; t < tokens; ++t) {
    INFO("GQA token " << t);
    CHECK(row_bits(gqa_got, t, q_heads * dim) == row_bits(gqa_want, t, q_heads * dim));
    if (padded(t))
      CHECK(row_bits(gqa_got, t, q_heads * dim) == std::vector<std::uint16_t>(z(q_heads * dim), 0));
  }
}

TEST_CASE("decode attention rejects a bad per-sequence batch, naming the entry", "[attention]") {
  Rng g = rng(6);
  const MlaCase c{2, 8, 4, 4, {5, 3}};
  MlaSetup s(g, c);
  s.paging.with_queries({2, 1}, 1);
  const std::vector<bf16> q_lat = random_bf16(g, 4 * 2 * 8), q_pe = random_bf16(g, 4 * 2 * 4);
  std::vector<bf16> out(4 * 2 * 8, bf16_nan);
  const auto run = [&](const Paging& p) {
    mla_decode(Host{}, make_view(q_lat.data(), 4, 2, 8), make_view(q_pe.data(), 4, 2, 4), s.view(),
               p.batch(), 0.5f, make_view(out.data(), 4, 2, 8));
  };
  CHECK_NOTHROW(run(s.paging));
  std::fill(out.begin(), out.end(), bf16_nan);
  Paging p = s.paging;
  p.query_start[0] = 1;
  CHECK_THROWS_WITH(run(p), Catch::Contains("'query_start'") && Catch::Contains("start at 0"));
  p = s.paging;
  p.query_start = {0, 3, 2};
  CHECK_THROWS_WITH(run(p), Catch::Contains("'query_start'") && Catch::Contains("[2]"));
  p = s.paging;
  p.query_start = {0, 2, 5};
  CHECK_THROWS_WITH(run(p), Catch::Contains("'query_start'") && Catch::Contains("4 tokens"));
  p = s.paging;
  p.context_lens[0] = 1;  // fewer rows than its 2 query tokens
  CHECK_THROWS_WITH(run(p), Catch::Contains("'context_lens'") && Catch::Contains("sequence 0"));
  p = s.paging;
  p.slots[3] = 7;  // the token past the last sequence must be padding
  CHECK_THROWS_WITH(run(p), Catch::Contains("token 3") && Catch::Contains("no sequence"));
  ops::DecodeBatch b = s.paging.batch();
  b.slots.shape[0] = 3;
  CHECK_THROWS_WITH(
      mla_decode(Host{}, make_view(q_lat.data(), 4, 2, 8), make_view(q_pe.data(), 4, 2, 4),
                 s.view(), b, 0.5f, make_view(out.data(), 4, 2, 8)),
      Catch::Contains("'slots'") && Catch::Contains("[3]"));
  for (const bf16 x : out) REQUIRE(x.bits == bf16_nan.bits);
}

TEST_CASE("decode attention rejects bad tables, lengths and shapes before writing", "[attention]") {
  Rng g = rng(5);
  const MlaCase c{2, 8, 4, 4, {5, 3}};
  const MlaSetup s(g, c);
  const std::vector<bf16> q_lat = random_bf16(g, 2 * 2 * 8), q_pe = random_bf16(g, 2 * 2 * 4);
  std::vector<bf16> out(2 * 2 * 8, bf16_nan);
  const auto ql = make_view(q_lat.data(), 2, 2, 8);
  const auto qp = make_view(q_pe.data(), 2, 2, 4);
  const auto o = make_view(out.data(), 2, 2, 8);
  const auto run = [&](const std::vector<std::int32_t>& table,
                       const std::vector<std::int32_t>& lens) {
    ops::DecodeBatch b = s.paging.batch();
    b.block_table = make_view(table.data(), 2, index_t(table.size() / 2));
    b.context_lens = make_view(lens.data(), 2);
    mla_decode(Host{}, ql, qp, s.view(), b, 0.5f, o);
  };
  std::vector<std::int32_t> table = s.paging.block_table;
  CHECK_NOTHROW(run(table, {5, 3}));
  std::fill(out.begin(), out.end(), bf16_nan);
  CHECK_THROWS_WITH(run(table, {5, 0}),
                    Catch::Contains("mla_decode") && Catch::Contains("'context_lens'"));
  const std::int32_t too_long = static_cast<std::int32_t>(s.paging.max_blocks * 4 + 1);
  CHECK_THROWS_WITH(run(table, {too_long, 3}),
                    Catch::Contains("'context_lens'") && Catch::Contains(std::to_string(too_long)));
  // Sequence 1's second block (needed for a length of 5) is -1 in the table.
  CHECK_THROWS_WITH(run(table, {5, 5}), Catch::Contains("mla_decode") &&
                                            Catch::Contains("'block_table'") &&
                                            Catch::Contains("-1"));
  table[0] = static_cast<std::int32_t>(s.paging.num_blocks);
  CHECK_THROWS_WITH(run(table, {5, 3}), Catch::Contains("'block_table'"));
  for (const bf16 x : out) REQUIRE(x.bits == bf16_nan.bits);

  const ops::DecodeBatch batch = s.paging.batch();
  CHECK_THROWS_WITH(
      mla_decode(Host{}, ql, make_view(q_pe.data(), 2, 4, 2), s.view(), batch, 0.5f, o),
      Catch::Contains("mla_decode") && Catch::Contains("'q_pe'") && Catch::Contains("[2, 2, 2]"));
  CHECK_THROWS_WITH(
      mla_decode(Host{}, ql, qp, s.view(), batch, 0.5f, make_view(out.data(), 2, 2, 7)),
      Catch::Contains("mla_decode") && Catch::Contains("'out'"));
  CHECK_THROWS_WITH(mla_decode(Host{}, ql, qp, s.view(), batch, NAN, o),
                    Catch::Contains("'softmax_scale'"));
  // Writing the output over the queries is rejected.
  std::vector<bf16> q_and_out = q_lat;
  const auto alias = make_view(q_and_out.data(), 2, 2, 8);
  CHECK_THROWS_WITH(mla_decode(Host{}, alias, qp, s.view(), batch, 0.5f, alias),
                    Catch::Contains("overlaps"));

  std::vector<fp8_e4m3> key(z(s.paging.num_blocks * 4 * 2 * 8), fp8_e4m3{0x38});
  std::vector<float> scales(z(s.paging.num_blocks * 4 * 2), 1.0f);
  const ConstKvCacheFp8 kv{
      make_view(static_cast<const fp8_e4m3*>(key.data()), s.paging.num_blocks, 4, 2, 8),
      make_view(static_cast<const fp8_e4m3*>(key.data()), s.paging.num_blocks, 4, 2, 8),
      make_view(static_cast<const float*>(scales.data()), s.paging.num_blocks, 4, 2),
      make_view(static_cast<const float*>(scales.data()), s.paging.num_blocks, 4, 2)};
  CHECK_THROWS_WITH(gqa_decode(Host{}, ql, kv, batch, 0.5f, o),
                    Catch::Contains("gqa_decode") && Catch::Contains("overlap"));
  std::vector<fp8_e4m3> val(key.size(), fp8_e4m3{0x38});
  std::vector<float> val_scales(scales.size(), 1.0f);
  ConstKvCacheFp8 kv2 = kv;
  kv2.value = make_view(static_cast<const fp8_e4m3*>(val.data()), s.paging.num_blocks, 4, 2, 8);
  kv2.value_scale =
      make_view(static_cast<const float*>(val_scales.data()), s.paging.num_blocks, 4, 2);
  CHECK_NOTHROW(gqa_decode(Host{}, ql, kv2, batch, 0.5f, o));
  const std::vector<bf16> q3 = random_bf16(g, 2 * 3 * 8);
  std::vector<bf16> out3(2 * 3 * 8);
  CHECK_THROWS_WITH(gqa_decode(Host{}, make_view(q3.data(), 2, 3, 8), kv2, batch, 0.5f,
                               make_view(out3.data(), 2, 3, 8)),
                    Catch::Contains("gqa_decode") && Catch::Contains("multiple"));
  CHECK_THROWS_WITH(
      gqa_decode(Host{}, make_view(q3.data(), 2, 2, 12), kv2, batch, 0.5f, o),
      Catch::Contains("gqa_decode") && Catch::Contains("'q'") && Catch::Contains("[2, 2, 8]"));
}
