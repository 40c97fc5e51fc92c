// Every op rejects a wrong shape, naming itself and the argument.
#include "atom/ops/bmm.hpp"
#include "atom/ops/gemm.hpp"
#include "atom/ops/moe.hpp"
#include "atom/ops/norm.hpp"
#include "atom/ops/quant.hpp"
#include "support.hpp"

using namespace ops_test;
namespace ops = atom::ops;

namespace {

const ops::Host host;

// A consumer takes exactly the format it reads: wiring another format to it does not compile.
template <class Act>
concept GemmA4w4Reads = requires(const Act& a, const ops::Mxfp4Weight& w, atom::View2<bf16> out) {
  ops::gemm_a4w4(host, a, w, out);
};
static_assert(GemmA4w4Reads<ops::Mxfp4Act>);
static_assert(!GemmA4w4Reads<ops::Bf16Act>);
static_assert(!GemmA4w4Reads<ops::Fp8GroupAct>);
static_assert(!GemmA4w4Reads<ops::Fp8TokenAct>);

template <class Act>
concept BmmFp8Reads = requires(const Act& a, const ops::Fp8HeadWeight& w, atom::View3<bf16> out) {
  ops::bmm_fp8(host, a, w, out);
};
static_assert(BmmFp8Reads<ops::Fp8GroupAct>);
static_assert(!BmmFp8Reads<ops::Fp8TokenAct>);
static_assert(!BmmFp8Reads<ops::Mxfp4Act>);

// A producer writes the format its epilogue names, and quantize has no bf16 "quantization".
template <class Epi, class Out>
concept NormWrites = requires(atom::View2<const bf16> x, atom::View1<const bf16> w, Out out) {
  ops::rms_norm<Epi>(host, x, w, 1e-6f, out);
};
static_assert(NormWrites<ops::epi::Mxfp4, ops::Mxfp4Act>);
static_assert(!NormWrites<ops::epi::Mxfp4, ops::Bf16Act>);
static_assert(!NormWrites<ops::epi::Bf16, ops::Mxfp4Act>);
template <class Epi>
concept Quantizes = requires(atom::View2<const bf16> x, typename Epi::Output out) {
  ops::quantize<Epi>(host, x, out);
};
static_assert(Quantizes<ops::epi::Fp8PerGroup128>);
static_assert(!Quantizes<ops::epi::Bf16>);

}  // namespace

TEST_CASE("norm ops reject wrong shapes and aliasing") {
  const auto x = random_bf16(3 * 64);
  const auto w = random_bf16(64);
  const auto xv = atom::make_view(x.data(), 3, 64);
  Bf16Buffer out(3, 64);
  require_shape_error(
      [&] {
        ops::rms_norm<ops::epi::Bf16>(host, xv, atom::make_view(w.data(), 63), 1e-6f, out.act());
      },
      {"rms_norm", "'weight'", "[63]", "expected [64]"});
  Bf16Buffer short_out(2, 64);
  require_shape_error(
      [&] {
        ops::rms_norm<ops::epi::Bf16>(host, xv, atom::make_view(w.data(), 64), 1e-6f,
                                      short_out.act());
      },
      {"rms_norm", "'out.x'", "[2, 64]", "expected [3, 64]"});
  Mxfp4Buffer mx(3, 64);
  ops::Mxfp4Act bad_mx = mx.act();
  bad_mx.cols = 62;
  require_shape_error(
      [&] {
        ops::rms_norm<ops::epi::Mxfp4>(host, xv, atom::make_view(w.data(), 64), 1e-6f, bad_mx);
      },
      {"rms_norm", "'out'", "62 columns", "expected 64"});
  Fp8GroupBuffer grp(3, 64);
  ops::Fp8GroupAct bad_grp = grp.act();
  bad_grp.scale.shape[1] = 2;
  require_shape_error(
      [&] {
        ops::rms_norm<ops::epi::Fp8PerGroup128>(host, xv, atom::make_view(w.data(), 64), 1e-6f,
                                                bad_grp);
      },
      {"rms_norm", "'out.scale'", "expected [3, 1]"});
  std::vector<bf16> residual = x;
  require_shape_error(
      [&] {
        ops::add_rms_norm<ops::epi::Bf16>(host, xv, atom::make_view(residual.data(), 3, 63),
                                          atom::make_view(w.data(), 64), 1e-6f, out.act());
      },
      {"add_rms_norm", "'residual'", "expected [3, 64]"});
  require_shape_error(
      [&] {
        ops::add_rms_norm<ops::epi::Bf16>(host, xv, atom::make_view(residual.data(), 3, 64),
                                          atom::make_view(w.data(), 64), 1e-6f,
                                          ops::Bf16Act{atom::make_view(residual.data(), 3, 64)});
      },
      {"add_rms_norm", "'out.x' overlaps input 'residual'"});
  const auto qkv = random_bf16(2 * 40);
  Bf16Buffer q(2, 24), kv(2, 8), pe(2, 8);
  const auto qw = random_bf16(24), kvw = random_bf16(8);
  require_shape_error(
      [&] {
        ops::qk_norm_fused<ops::epi::Bf16>(
            host, atom::make_view(qkv.data(), 2, 40), atom::make_view(qw.data(), 24),
            atom::make_view(kvw.data(), 8), 1e-6f, q.act(), kv.view(), pe.view().slice(1, 0, 7));
      },
      {"qk_norm_fused", "'k_pe_out'", "[2, 7]", "expected [2, 8]"});
  require_shape_error(
      [&] {
        ops::qk_norm_fused<ops::epi::Bf16>(
            host, atom::make_view(qkv.data(), 2, 30), atom::make_view(qw.data(), 24),
            atom::make_view(kvw.data(), 8), 1e-6f, q.act(), kv.view(), pe.view());
      },
      {"qk_norm_fused", "'qkv_a'", "30 columns"});
  require_shape_error([&] { ops::copy(host, xv, out.view().slice(1, 0, 60)); },
                      {"copy", "'dst'", "expected [3, 64]"});
  // A view whose last dimension is strided (a transposed view) is rejected, not misread.
  atom::View2<const bf16> transposed{x.data(), {64, 3}, {1, 64}};
  require_shape_error([&] { ops::copy(host, transposed, Bf16Buffer(64, 3).view()); },
                      {"copy", "'src'", "contiguous last dimension"});
}

TEST_CASE("quant and gemm ops reject wrong shapes") {
  const auto x = random_bf16(2 * 40);
  Mxfp4Buffer mx(2, 41);
  require_shape_error(
      [&] { ops::quantize<ops::epi::Mxfp4>(host, atom::make_view(x.data(), 2, 40), mx.act()); },
      {"quantize", "'out'", "41 columns", "expected 40"});
  Fp8TokenBuffer tok(3, 40);
  require_shape_error(
      [&] {
        ops::quantize<ops::epi::Fp8PerToken>(host, atom::make_view(x.data(), 2, 40), tok.act());
      },
      {"quantize", "'out.q'", "expected [2, 40]"});
  std::vector<float> f(100);
  require_shape_error([&] { ops::dequantize(host, mx.act(), atom::make_view(f.data(), 2, 40)); },
                      {"dequantize", "'out'", "expected [2, 41]"});

  Mxfp4Buffer a(2, 64), w(5, 64), w_short(5, 32);
  Bf16Buffer out(2, 5);
  const auto wa = w.act();
  const auto ws = w_short.act();
  require_shape_error(
      [&] {
        ops::gemm_a4w4(host, a.act(), ops::Mxfp4Weight{ws.packed, ws.scale, 32}, out.view());
      },
      {"gemm_a4w4", "'a'", "64 columns", "expected 32"});
  require_shape_error(
      [&] {
        ops::gemm_a4w4(host, a.act(), ops::Mxfp4Weight{wa.packed, wa.scale, 64},
                       Bf16Buffer(2, 4).view());
      },
      {"gemm_a4w4", "'out'", "[2, 4]", "expected [2, 5]"});
  require_shape_error(
      [&] {
        ops::gemm_a4w4(host, a.act(), ops::Mxfp4Weight{wa.packed, wa.scale.slice(1, 0, 1), 64},
                       out.view());
      },
      {"gemm_a4w4", "'w.scale'", "expected [5, 2]"});
  const auto b = random_bf16(5 * 64);
  std::vector<float> logits(10);
  require_shape_error(
      [&] {
        ops::gemm_bf16(host, atom::make_view(b.data(), 2, 64), atom::make_view(b.data(), 5, 63),
                       atom::make_view(logits.data(), 2, 5));
      },
      {"gemm_bf16", "'w'", "expected [*, 64]"});
  std::vector<float> af(64 * 2), wf(64 * 5);
  require_shape_error(
      [&] {
        ops::gemm_f32(host, atom::make_view(af.data(), 2, 64), atom::make_view(wf.data(), 5, 64),
                      atom::make_view(af.data(), 2, 5));
      },
      {"gemm_f32", "'out' overlaps input 'a'"});
}

TEST_CASE("bmm ops reject wrong shapes") {
  Fp8GroupBuffer a(6, 128), wbuf(2 * 16, 128);
  std::vector<float> head_scale(2, 1.0f);
  std::vector<bf16> out(3 * 2 * 16);
  const ops::Fp8HeadWeight w{atom::make_view(wbuf.q.data(), 2, 16, 128),
                             atom::make_view(head_scale.data(), 2)};
  require_shape_error(
      [&] { ops::bmm_fp8(host, a.act(), w, atom::make_view(out.data(), 2, 2, 16)); },
      {"bmm_fp8", "'a.q'", "[6, 128]", "expected [4, 128]"});
  require_shape_error(
      [&] { ops::bmm_fp8(host, a.act(), w, atom::make_view(out.data(), 1, 3, 16)); },
      {"bmm_fp8", "'w.w'", "expected [3, 16, *]"});
  const auto act = random_bf16(3 * 2 * 64);
  Mxfp4Buffer mw(2 * 16, 64);
  const ops::Mxfp4HeadWeight mxw{atom::make_view(mw.packed.data(), 2, 16, 32),
                                 atom::make_view(mw.scale.data(), 2, 16, 2), 64};
  require_shape_error(
      [&] {
        ops::bmm_mxfp4(host, atom::make_view(act.data(), 3, 2, 63), mxw,
                       atom::make_view(out.data(), 3, 2, 16));
      },
      {"bmm_mxfp4", "'w'", "K = 64", "expected 63"});
  require_shape_error(
      [&] {
        ops::bmm_mxfp4(host, atom::make_view(act.data(), 3, 2, 64), mxw,
                       atom::make_view(out.data(), 3, 2, 15));
      },
      {"bmm_mxfp4", "'out'", "expected [3, 2, 16]"});
}

TEST_CASE("moe ops reject wrong shapes and arguments") {
  const auto logits = random_floats(2 * 16);
  const auto bias = random_floats(16);
  std::vector<std::int32_t> ids(2 * 4);
  std::vector<float> weights(2 * 4);
  const auto lv = atom::make_view(logits.data(), 2, 16);
  const auto iv = atom::make_view(ids.data(), 2, 4);
  const auto wv = atom::make_view(weights.data(), 2, 4);
  require_shape_error(
      [&] {
        ops::route_grouped_topk(host, lv, atom::make_view(bias.data(), 15), 4, 2, true, 1.0f, iv,
                                wv);
      },
      {"route_grouped_topk", "'bias'", "expected [16]"});
  require_shape_error(
      [&] {
        ops::route_grouped_topk(host, lv, atom::make_view(bias.data(), 16), 3, 2, true, 1.0f, iv,
                                wv);
      },
      {"route_grouped_topk", "n_group = 3"});
  require_shape_error(
      [&] {
        ops::route_grouped_topk(host, lv, atom::make_view(bias.data(), 16), 4, 5, true, 1.0f, iv,
                                wv);
      },
      {"route_grouped_topk", "topk_group = 5"});
  // k = 4 experts from a single group of 4 is fine; k = 5 is not.
  std::vector<std::int32_t> ids5(10);
  std::vector<float> w5(10);
  require_shape_error(
      [&] {
        ops::route_grouped_topk(host, lv, atom::make_view(bias.data(), 16), 4, 1, true, 1.0f,
                                atom::make_view(ids5.data(), 2, 5),
                                atom::make_view(w5.data(), 2, 5));
      },
      {"route_grouped_topk", "'ids'", "5 experts"});
  require_shape_error(
      [&] { ops::route_softmax_topk(host, lv, true, iv, atom::make_view(weights.data(), 2, 3)); },
      {"route_softmax_topk", "'weights'", "expected [2, 4]"});
  std::vector<float> nan_logits = logits;
  nan_logits[20] = std::nanf("");
  require_shape_error(
      [&] {
        ops::route_softmax_topk(host, atom::make_view(nan_logits.data(), 2, 16), true, iv, wv);
      },
      {"route_softmax_topk", "'logits'", "NaN at row 1, column 4"});
  require_shape_error(
      [&] {
        ops::route_grouped_topk(host, atom::make_view(nan_logits.data(), 2, 16),
                                atom::make_view(bias.data(), 16), 4, 2, true, 1.0f, iv, wv);
      },
      {"route_grouped_topk", "'logits'", "NaN"});

  std::vector<float> inf_logits = logits;
  inf_logits[21] = INFINITY;
  require_shape_error(
      [&] {
        ops::route_softmax_topk(host, atom::make_view(inf_logits.data(), 2, 16), true, iv, wv);
      },
      {"route_softmax_topk", "'logits'", "+inf at row 1, column 5"});
  std::vector<float> masked_logits = logits;
  std::fill_n(masked_logits.begin() + 16, 16, -INFINITY);
  require_shape_error(
      [&] {
        ops::route_softmax_topk(host, atom::make_view(masked_logits.data(), 2, 16), true, iv, wv);
      },
      {"route_softmax_topk", "'logits'", "no finite value in row 1"});

  std::vector<float> inf_bias = bias;
  inf_bias[3] = INFINITY;
  require_shape_error(
      [&] {
        ops::route_grouped_topk(host, lv, atom::make_view(inf_bias.data(), 16), 4, 2, true, 1.0f,
                                iv, wv);
      },
      {"route_grouped_topk", "'bias'", "non-finite value at column 3"});

  const auto gate_up = random_bf16(2 * 9);
  Bf16Buffer out(2, 4);
  require_shape_error(
      [&] {
        ops::silu_mul<ops::epi::Bf16>(host, atom::make_view(gate_up.data(), 2, 9), out.act());
      },
      {"silu_mul", "'gate_up'", "9 columns"});
  require_shape_error(
      [&] {
        ops::silu_mul<ops::epi::Bf16>(host, atom::make_view(gate_up.data(), 2, 8),
                                      Bf16Buffer(2, 8).act());
      },
      {"silu_mul", "'out.x'", "expected [2, 4]"});

  Mxfp4Buffer a(3, 64), wbuf(4 * 8, 64);
  const ops::Mxfp4Experts w{atom::make_view(wbuf.packed.data(), 4, 8, 32),
                            atom::make_view(wbuf.scale.data(), 4, 8, 2), 64};
  std::vector<std::int32_t> route(2 * 2, 0);
  require_shape_error(
      [&] {
        ops::moe_gemm_a4w4(host, a.act(),
                           atom::make_view(static_cast<const std::int32_t*>(route.data()), 2, 2), w,
                           Bf16Buffer(4, 8).view());
      },
      {"moe_gemm_a4w4", "'a'", "3 rows", "T = 2 or T * k = 4"});

  const auto eo = random_bf16(4 * 8);
  const auto cw = random_floats(4);
  const auto shared = random_bf16(2 * 7);
  require_shape_error(
      [&] {
        ops::moe_combine(host, atom::make_view(eo.data(), 4, 8), atom::make_view(cw.data(), 2, 2),
                         atom::make_view(shared.data(), 2, 7), Bf16Buffer(2, 8).view());
      },
      {"moe_combine", "'shared_out'", "expected [2, 8]"});
  require_shape_error(
      [&] {
        ops::moe_combine(host, atom::make_view(eo.data(), 3, 8), atom::make_view(cw.data(), 2, 2),
                         atom::View2<const bf16>{}, Bf16Buffer(2, 8).view());
      },
      {"moe_combine", "'expert_out'", "expected [4, *]"});
}
