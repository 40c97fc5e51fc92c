#include <algorithm>

#include "atom/ops/norm.hpp"
#include "atom/ops/quant.hpp"
#include "support.hpp"

using namespace ops_test;
namespace ops = atom::ops;

namespace {

const ops::Host host;
constexpr float eps = 1e-6f;

// float64 RMSNorm of rows [T, C] (given as doubles) with bf16 weight.
std::vector<double> ref_rms_norm(const std::vector<double>& x, const std::vector<bf16>& w,
                                 index_t rows, index_t cols) {
  std::vector<double> y(x.size());
  for (index_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (index_t c = 0; c < cols; ++c)
      ss += x[static_cast<std::size_t>(r * cols + c)] * x[static_cast<std::size_t>(r * cols + c)];
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(cols) + eps);
    for (index_t c = 0; c < cols; ++c)
      y[static_cast<std::size_t>(r * cols + c)] =
          x[static_cast<std::size_t>(r * cols + c)] * inv * value(w[static_cast<std::size_t>(c)]);
  }
  return y;
}

std::vector<double> widen(const std::vector<bf16>& x) {
  std::vector<double> d(x.size());
  std::transform(x.begin(), x.end(), d.begin(), value);
  return d;
}

const index_t hidden_sizes[] = {1, 3, 17, 128, 512, 769, 5125, 7168};

// Dequantized quant epilogue output against the float64 result: half a grid step of the format
// at that value (FP8: 2^-4 relative, subnormals 2^-10 of the scale; MXFP4: half the e2m1 spacing
// times the block scale, up to 2 steps at saturation), plus 2^-10 relative for the float
// computation of y.
void check_quantized(const std::string& what, const std::vector<double>& y, index_t rows,
                     index_t cols, const std::function<double(index_t, index_t)>& deq,
                     const std::function<double(index_t, index_t)>& half_step) {
  check_close(
      what, rows * cols, [&](index_t i) { return deq(i / cols, i % cols); },
      [&](index_t i) { return y[static_cast<std::size_t>(i)]; },
      [&](index_t i) {
        return half_step(i / cols, i % cols) + std::fabs(y[static_cast<std::size_t>(i)]) * 0x1p-10;
      });
}

}  // namespace

TEST_CASE("rms_norm with every epilogue matches float64") {
  for (index_t cols : hidden_sizes) {
    for (index_t rows : {1, 3}) {
      INFO("rows " << rows << ", cols " << cols);
      const auto x = random_bf16(rows * cols);
      const auto w = random_bf16(cols, 0.5f, 1.5f);
      const auto xv = atom::make_view(x.data(), rows, cols);
      const auto wv = atom::make_view(w.data(), cols);
      const auto y = ref_rms_norm(widen(x), w, rows, cols);

      Bf16Buffer out(rows, cols);
      ops::rms_norm<ops::epi::Bf16>(host, xv, wv, eps, out.act());
      check_close(
          "bf16", rows * cols, [&](index_t i) { return out.at(i / cols, i % cols); },
          [&](index_t i) { return y[static_cast<std::size_t>(i)]; },
          [&](index_t i) { return bf16_tol(y[static_cast<std::size_t>(i)], 0); });

      Fp8TokenBuffer tok(rows, cols);
      ops::rms_norm<ops::epi::Fp8PerToken>(host, xv, wv, eps, tok.act());
      check_quantized(
          "fp8 per token", y, rows, cols, [&](index_t r, index_t c) { return tok.at(r, c); },
          [&](index_t r, index_t c) {
            return std::fabs(tok.at(r, c)) * 0x1p-4 +
                   tok.scale[static_cast<std::size_t>(r)] * 0x1p-10;
          });

      Fp8GroupBuffer grp(rows, cols);
      ops::rms_norm<ops::epi::Fp8PerGroup128>(host, xv, wv, eps, grp.act());
      check_quantized(
          "fp8 per group", y, rows, cols, [&](index_t r, index_t c) { return grp.at(r, c); },
          [&](index_t r, index_t c) {
            return std::fabs(grp.at(r, c)) * 0x1p-4 + grp.group_scale(r, c) * 0x1p-10;
          });

      Mxfp4Buffer mx(rows, cols);
      ops::rms_norm<ops::epi::Mxfp4>(host, xv, wv, eps, mx.act());
      index_t scale_mismatch = 0;
      for (index_t r = 0; r < rows; ++r)
        for (index_t b = 0; b * 32 < cols; ++b) {
          double amax = 0;
          for (index_t c = b * 32; c < std::min(cols, b * 32 + 32); ++c)
            amax = std::max(amax, std::fabs(y[static_cast<std::size_t>(r * cols + c)]));
          if (mx.scale_code(r, b * 32) != ref_mx_scale_code(amax)) ++scale_mismatch;
        }
      CHECK(scale_mismatch == 0);
      check_quantized(
          "mxfp4", y, rows, cols, [&](index_t r, index_t c) { return mx.at(r, c); },
          [&](index_t r, index_t c) {
            const double m = std::fabs(e2m1_value(mx.code(r, c)));
            // The OCP scale leaves amax / scale in [4, 8), so the top code 6 also stands for
            // saturated values up to 8.
            const double half_step = m < 2.0 ? 0.25 : (m < 4.0 ? 0.5 : (m < 6.0 ? 1.0 : 2.0));
            return half_step * e8m0_value(mx.scale_code(r, c));
          });
    }
  }
}

TEST_CASE("add_rms_norm updates the residual to bf16(x + residual) and normalizes it") {
  for (index_t cols : hidden_sizes) {
    const index_t rows = 3;
    INFO("cols " << cols);
    const auto x = random_bf16(rows * cols);
    const auto residual_in = random_bf16(rows * cols);
    const auto w = random_bf16(cols, 0.5f, 1.5f);
    std::vector<bf16> residual = residual_in;
    Bf16Buffer out(rows, cols);
    ops::add_rms_norm<ops::epi::Bf16>(host, atom::make_view(x.data(), rows, cols),
                                      atom::make_view(residual.data(), rows, cols),
                                      atom::make_view(w.data(), cols), eps, out.act());
    std::vector<bf16> sum(x.size());
    index_t residual_bad = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      // Exact in float64; rounding that once to float is what a float add gives.
      sum[i] = atom::to_bf16(static_cast<float>(value(x[i]) + value(residual_in[i])));
      if (sum[i].bits != residual[i].bits) ++residual_bad;
    }
    CHECK(residual_bad == 0);
    const auto y = ref_rms_norm(widen(sum), w, rows, cols);
    check_close(
        "out", rows * cols, [&](index_t i) { return out.at(i / cols, i % cols); },
        [&](index_t i) { return y[static_cast<std::size_t>(i)]; },
        [&](index_t i) { return bf16_tol(y[static_cast<std::size_t>(i)], 0); });

    // Fused add+norm+MXFP4 against add+norm to bf16, then quantize.
    std::vector<bf16> residual2 = residual_in;
    Mxfp4Buffer fused(rows, cols);
    ops::add_rms_norm<ops::epi::Mxfp4>(host, atom::make_view(x.data(), rows, cols),
                                       atom::make_view(residual2.data(), rows, cols),
                                       atom::make_view(w.data(), cols), eps, fused.act());
    Mxfp4Buffer separate(rows, cols);
    ops::quantize<ops::epi::Mxfp4>(host, out.view(), separate.act());
    check_fused_mxfp4(fused, separate);
  }
}

TEST_CASE("qk_norm_fused equals the separate norms and copy, and bounds the fused quant") {
  struct Dims {
    index_t tokens, q_lora, kv_lora, rope;
  };
  for (const Dims d :
       {Dims{3, 1536, 512, 64}, Dims{1, 48, 32, 16}, Dims{4, 17, 3, 0}, Dims{2, 769, 1, 5}}) {
    INFO("T " << d.tokens << ", q " << d.q_lora << ", kv " << d.kv_lora << ", rope " << d.rope);
    const index_t width = d.q_lora + d.kv_lora + d.rope;
    const auto qkv = random_bf16(d.tokens * width);
    const auto qw = random_bf16(d.q_lora, 0.5f, 1.5f);
    const auto kvw = random_bf16(d.kv_lora, 0.5f, 1.5f);
    const auto qkv_v = atom::make_view(qkv.data(), d.tokens, width);
    const auto qw_v = atom::make_view(qw.data(), d.q_lora);
    const auto kvw_v = atom::make_view(kvw.data(), d.kv_lora);

    Bf16Buffer q(d.tokens, d.q_lora), kv(d.tokens, d.kv_lora), pe(d.tokens, d.rope);
    ops::qk_norm_fused<ops::epi::Bf16>(host, qkv_v, qw_v, kvw_v, eps, q.act(), kv.view(),
                                       pe.view());

    Bf16Buffer q2(d.tokens, d.q_lora), kv2(d.tokens, d.kv_lora), pe2(d.tokens, d.rope);
    ops::rms_norm<ops::epi::Bf16>(host, qkv_v.slice(1, 0, d.q_lora), qw_v, eps, q2.act());
    ops::rms_norm<ops::epi::Bf16>(host, qkv_v.slice(1, d.q_lora, d.kv_lora), kvw_v, eps, kv2.act());
    ops::copy(host, qkv_v.slice(1, d.q_lora + d.kv_lora, d.rope), pe2.view());

    const auto same_bits = [](const Bf16Buffer& a, const Bf16Buffer& b) {
      index_t bad = 0;
      for (std::size_t i = 0; i < a.data.size(); ++i) bad += a.data[i].bits != b.data[i].bits;
      return bad;
    };
    CHECK(same_bits(q, q2) == 0);
    CHECK(same_bits(kv, kv2) == 0);
    CHECK(same_bits(pe, pe2) == 0);
    for (index_t t = 0; t < d.tokens; ++t)
      for (index_t c = 0; c < d.rope; ++c)
        CHECK(pe.data[static_cast<std::size_t>(t * d.rope + c)].bits ==
              qkv[static_cast<std::size_t>(t * width + d.q_lora + d.kv_lora + c)].bits);
    // The q part against float64 as well, so the shared arithmetic is itself right.
    std::vector<double> q_in(static_cast<std::size_t>(d.tokens * d.q_lora));
    for (index_t t = 0; t < d.tokens; ++t)
      for (index_t c = 0; c < d.q_lora; ++c)
        q_in[static_cast<std::size_t>(t * d.q_lora + c)] =
            value(qkv[static_cast<std::size_t>(t * width + c)]);
    const auto y = ref_rms_norm(q_in, qw, d.tokens, d.q_lora);
    check_close(
        "q", d.tokens * d.q_lora, [&](index_t i) { return q.at(i / d.q_lora, i % d.q_lora); },
        [&](index_t i) { return y[static_cast<std::size_t>(i)]; },
        [&](index_t i) { return bf16_tol(y[static_cast<std::size_t>(i)], 0); });

    Mxfp4Buffer q_fused(d.tokens, d.q_lora), q_separate(d.tokens, d.q_lora);
    Bf16Buffer kv3(d.tokens, d.kv_lora), pe3(d.tokens, d.rope);
    ops::qk_norm_fused<ops::epi::Mxfp4>(host, qkv_v, qw_v, kvw_v, eps, q_fused.act(), kv3.view(),
                                        pe3.view());
    CHECK(same_bits(kv3, kv2) == 0);
    CHECK(same_bits(pe3, pe2) == 0);
    ops::quantize<ops::epi::Mxfp4>(host, q2.view(), q_separate.act());
    check_fused_mxfp4(q_fused, q_separate);
  }
}
