// GPU RMSNorm (plain, with the residual add, DeepSeek's fused q_a/kv_a), the standalone quantizers
// and the copy against the host ops on the same inputs.
//
// Bounds: quantize and copy are bit-exact. The norms sum squares in a different order than the
// host (gpu/norm.hpp), which moves r by at most (cols + 64) * 2^-24 relative: bf16 outputs within
// one ulp, FP8 scales within that relative distance, MXFP4 scales at most one code apart (only
// when the amax sits on a power of two), quant codes at most one step; the fraction of elements
// that differ at all is required to stay under 1% (it is typically below 1e-3).
#include <catch2/catch.hpp>

#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "atom/ops/gpu/norm.hpp"
#include "atom/ops/gpu/quant.hpp"
#include "atom/ops/norm.hpp"
#include "atom/ops/quant.hpp"
#include "gpu_support.hpp"

using namespace gpu_test;
namespace ops = atom::ops;
namespace epi = atom::ops::epi;
using atom::make_view;

namespace {

const ops::Host host;
const ops::Gpu device{};
constexpr float eps = 1e-6f;

const index_t hidden_sizes[] = {7168, 2048, 8, 769, 5125, 8199};
const index_t token_counts[] = {1, 3, 17, 64, 4097};

// Host and device storage for one output format, both poisoned; compare() downloads and checks.
template <class Epi>
struct Out;

template <>
struct Out<epi::Bf16> {
  index_t rows, cols;
  std::vector<bf16> h;
  Poisoned<bf16> d;
  Out(index_t r, index_t c)
      : rows(r), cols(c), h(poisoned<bf16>(static_cast<std::size_t>(r * c))), d((h.size())) {}
  ops::Bf16Act host_act() { return {make_view(h.data(), rows, cols)}; }
  ops::Bf16Act dev_act() { return {make_view(d.data(), rows, cols)}; }
  Diff compare(const std::string& what, bool exact) {
    return compare_bf16(what, d.download(), h, exact ? 0 : 1);
  }
};

template <class Act, index_t (*ScaleCols)(index_t)>
struct Fp8Out {
  index_t rows, cols;
  std::vector<fp8_e4m3> hq;
  std::vector<float> hs;
  Poisoned<fp8_e4m3> dq;
  Poisoned<float> ds;
  Fp8Out(index_t r, index_t c)
      : rows(r),
        cols(c),
        hq(poisoned<fp8_e4m3>(static_cast<std::size_t>(r * c))),
        hs(poisoned<float>(static_cast<std::size_t>(r * ScaleCols(c)))),
        dq((hq.size())),
        ds((hs.size())) {}
  Diff compare(const std::string& what, bool exact) {
    compare_scales(what + " scale", ds.download(), hs,
                   exact ? 0.0 : static_cast<double>(cols + 64) * 0x1p-24);
    return compare_fp8(what + " q", dq.download(), hq, exact ? 0 : 1);
  }
};

inline index_t one_scale(index_t) {
  return 1;
}

template <>
struct Out<epi::Fp8PerToken> : Fp8Out<ops::Fp8TokenAct, one_scale> {
  using Fp8Out::Fp8Out;
  ops::Fp8TokenAct host_act() {
    return {make_view(hq.data(), rows, cols), make_view(hs.data(), rows)};
  }
  ops::Fp8TokenAct dev_act() {
    return {make_view(dq.data(), rows, cols), make_view(ds.data(), rows)};
  }
};

template <>
struct Out<epi::Fp8PerGroup128> : Fp8Out<ops::Fp8GroupAct, ops::fp8_group_cols> {
  using Fp8Out::Fp8Out;
  ops::Fp8GroupAct host_act() {
    return {make_view(hq.data(), rows, cols),
            make_view(hs.data(), rows, ops::fp8_group_cols(cols))};
  }
  ops::Fp8GroupAct dev_act() {
    return {make_view(dq.data(), rows, cols),
            make_view(ds.data(), rows, ops::fp8_group_cols(cols))};
  }
};

template <>
struct Out<epi::Mxfp4> {
  index_t rows, cols;
  std::vector<std::uint8_t> hp;
  std::vector<e8m0> hs;
  Poisoned<std::uint8_t> dp;
  Poisoned<e8m0> ds;
  Out(index_t r, index_t c)
      : rows(r),
        cols(c),
        hp(poisoned<std::uint8_t>(static_cast<std::size_t>(r * ops::mxfp4_packed_cols(c)))),
        hs(poisoned<e8m0>(static_cast<std::size_t>(r * ops::mxfp4_scale_cols(c)))),
        dp((hp.size())),
        ds((hs.size())) {}
  ops::Mxfp4Act host_act() {
    return {make_view(hp.data(), rows, ops::mxfp4_packed_cols(cols)),
            make_view(hs.data(), rows, ops::mxfp4_scale_cols(cols)), cols};
  }
  ops::Mxfp4Act dev_act() {
    return {make_view(dp.data(), rows, ops::mxfp4_packed_cols(cols)),
            make_view(ds.data(), rows, ops::mxfp4_scale_cols(cols)), cols};
  }
  Diff compare(const std::string& what, bool exact) {
    return compare_mxfp4(what, dp.download(), hp, ds.download(), hs, rows, cols, exact ? 0 : 1);
  }
};

void report(const std::string& what, const Diff& d) {
  INFO(what << ": " << d.steps << " of " << d.compared << " differ by one step");
  CHECK(d.fraction() <= 0.01);
  if (d.steps > 0)
    std::cout << what << ": " << d.steps << " of " << d.compared << " differ by one step ("
              << d.fraction() << ")\n";
}

// Input rows: random, with special rows mixed in by `kind`.
enum class Rows { random, zero_rows, huge, tiny, nan };

std::vector<bf16> make_input(Rng& rng, index_t rows, index_t cols, Rows kind) {
  std::vector<bf16> x = rng.bf16s(rows * cols);
  for (index_t r = 0; r < rows; ++r) {
    bf16* row = &x[static_cast<std::size_t>(r * cols)];
    switch (kind) {
      case Rows::random:
        break;
      case Rows::zero_rows:
        if (r % 2 == 0)
          for (index_t c = 0; c < cols; ++c) row[c] = bf16{0};
        break;
      case Rows::huge:
        // Magnitudes up to 2^120 (squares overflow float) and single outliers that dominate the
        // amax, so the other values of the row sit at the bottom of the format.
        for (index_t c = 0; c < cols; ++c)
          if ((c + r) % 7 == 0) row[c] = atom::to_bf16(rng.nonzero(1e30f, 1e36f));
        break;
      case Rows::tiny:
        // Even rows below the fast FP8 division's range (scales under 2^-64), odd rows inside it
        // near its lower end.
        for (index_t c = 0; c < cols; ++c)
          row[c] = atom::to_bf16(atom::to_float(row[c]) * (r % 2 == 0 ? 1e-30f : 1e-16f));
        break;
      case Rows::nan:
        if (r % 2 == 1) row[(r * 31) % cols] = bf16{0x7fc0};
        break;
    }
  }
  return x;
}

template <class Epi>
void check_norms(Rows kind, const std::vector<index_t>& tokens,
                 const std::vector<index_t>& widths = {std::begin(hidden_sizes),
                                                       std::end(hidden_sizes)}) {
  require_gpu();
  Rng rng(1);
  for (index_t cols : widths) {
    for (index_t rows : tokens) {
      const std::string where =
          "rows " + std::to_string(rows) + ", cols " + std::to_string(cols) + ": ";
      INFO(where);
      const std::vector<bf16> x = make_input(rng, rows, cols, kind);
      const std::vector<bf16> w = rng.bf16s(cols, 0.5f, 1.5f);
      const gpu::Buffer<bf16> dx(x);
      const gpu::Buffer<bf16> dw(w);
      const auto xv = make_view(static_cast<const bf16*>(x.data()), rows, cols);
      const auto wv = make_view(static_cast<const bf16*>(w.data()), cols);
      const auto dxv = make_view(static_cast<const bf16*>(dx.data()), rows, cols);
      const auto dwv = make_view(static_cast<const bf16*>(dw.data()), cols);

      Out<Epi> plain(rows, cols);
      ops::rms_norm<Epi>(host, xv, wv, eps, plain.host_act());
      ops::rms_norm<Epi>(device, dxv, dwv, eps, plain.dev_act());
      report(where + "rms_norm", plain.compare(where + "rms_norm", false));

      std::vector<bf16> residual = rng.bf16s(rows * cols);
      gpu::Buffer<bf16> dres(residual);
      Out<Epi> added(rows, cols);
      ops::add_rms_norm<Epi>(host, xv, make_view(residual.data(), rows, cols), wv, eps,
                             added.host_act());
      ops::add_rms_norm<Epi>(device, dxv, make_view(dres.data(), rows, cols), dwv, eps,
                             added.dev_act());
      // The new residual is a bf16 sum of two bf16 values: exact.
      compare_bf16(where + "add_rms_norm residual", dres.download(), residual, 0);
      report(where + "add_rms_norm", added.compare(where + "add_rms_norm", false));

      if constexpr (Epi::format != ops::Format::bf16) {
        Out<Epi> quantized(rows, cols);
        ops::quantize<Epi>(host, xv, quantized.host_act());
        ops::quantize<Epi>(device, dxv, quantized.dev_act());
        quantized.compare(where + "quantize", true);
      }
    }
  }
}

const std::vector<index_t> all_tokens(std::begin(token_counts), std::end(token_counts));
const std::vector<index_t> few_tokens = {1, 17};

}  // namespace

TEMPLATE_TEST_CASE("gpu rms_norm, add_rms_norm, quantize match the host on random rows", "",
                   epi::Bf16, epi::Fp8PerToken, epi::Fp8PerGroup128, epi::Mxfp4) {
  check_norms<TestType>(Rows::random, all_tokens);
}

TEMPLATE_TEST_CASE("gpu norms and quantizers launch and match the host up to the widest row", "",
                   epi::Bf16, epi::Fp8PerToken, epi::Fp8PerGroup128, epi::Mxfp4) {
  check_norms<TestType>(Rows::random, {3, 1025},
                        {ops::gpu_norm_max_cols, ops::gpu_norm_max_cols - 7});
}

TEMPLATE_TEST_CASE("gpu norms and quantizers on all-zero rows", "", epi::Bf16, epi::Fp8PerToken,
                   epi::Fp8PerGroup128, epi::Mxfp4) {
  check_norms<TestType>(Rows::zero_rows, few_tokens);
}

TEMPLATE_TEST_CASE("gpu norms and quantizers on huge values (saturation)", "", epi::Bf16,
                   epi::Fp8PerToken, epi::Fp8PerGroup128, epi::Mxfp4) {
  check_norms<TestType>(Rows::huge, few_tokens);
}

TEMPLATE_TEST_CASE("gpu norms and quantizers on tiny values", "", epi::Bf16, epi::Fp8PerToken,
                   epi::Fp8PerGroup128, epi::Mxfp4) {
  check_norms<TestType>(Rows::tiny, few_tokens);
}

TEMPLATE_TEST_CASE("gpu norms and quantizers propagate NaN as the host does", "", epi::Bf16,
                   epi::Fp8PerToken, epi::Fp8PerGroup128, epi::Mxfp4) {
  check_norms<TestType>(Rows::nan, few_tokens);
}

TEMPLATE_TEST_CASE("gpu qk_norm_fused matches the host", "", epi::Bf16, epi::Fp8PerToken,
                   epi::Fp8PerGroup128, epi::Mxfp4) {
  require_gpu();
  Rng rng(2);
  struct Split {
    index_t q, kv, rope;
  };
  for (const Split s : {Split{1536, 512, 64}, Split{769, 17, 3}, Split{8, 8, 0}}) {
    for (index_t rows : token_counts) {
      const std::string where = "rows " + std::to_string(rows) + ", split " + std::to_string(s.q) +
                                "/" + std::to_string(s.kv) + "/" + std::to_string(s.rope) + ": ";
      INFO(where);
      const index_t cols = s.q + s.kv + s.rope;
      // Rows strided inside a wider buffer, as the fused qkv_a GEMM output is.
      const index_t stride = cols + 8;
      const std::vector<bf16> x = rng.bf16s(rows * stride);
      const std::vector<bf16> qw = rng.bf16s(s.q, 0.5f, 1.5f);
      const std::vector<bf16> kw = rng.bf16s(s.kv, 0.5f, 1.5f);
      const gpu::Buffer<bf16> dx(x), dqw(qw), dkw(kw);
      const atom::View2<const bf16> xv{x.data(), {rows, cols}, {stride, 1}};
      const atom::View2<const bf16> dxv{dx.data(), {rows, cols}, {stride, 1}};
      Out<TestType> q(rows, s.q);
      Out<epi::Bf16> kv(rows, s.kv);
      Out<epi::Bf16> pe(rows, s.rope);
      ops::qk_norm_fused<TestType>(host, xv, make_view(qw.data(), s.q), make_view(kw.data(), s.kv),
                                   eps, q.host_act(), kv.host_act().x, pe.host_act().x);
      ops::qk_norm_fused<TestType>(device, dxv,
                                   make_view(static_cast<const bf16*>(dqw.data()), s.q),
                                   make_view(static_cast<const bf16*>(dkw.data()), s.kv), eps,
                                   q.dev_act(), kv.dev_act().x, pe.dev_act().x);
      report(where + "q", q.compare(where + "q", false));
      report(where + "kv_c", kv.compare(where + "kv_c", false));
      pe.compare(where + "k_pe", true);
    }
  }
}

TEST_CASE("gpu copy is exact on strided rows") {
  require_gpu();
  Rng rng(3);
  for (index_t cols : hidden_sizes) {
    for (index_t rows : {index_t{1}, index_t{17}, index_t{4097}}) {
      const index_t stride = cols + 8;
      const std::vector<bf16> x = rng.bf16s(rows * stride);
      const gpu::Buffer<bf16> dx(x);
      Out<epi::Bf16> out(rows, cols);
      ops::copy(host, atom::View2<const bf16>{x.data(), {rows, cols}, {stride, 1}},
                out.host_act().x);
      ops::copy(device, atom::View2<const bf16>{dx.data(), {rows, cols}, {stride, 1}},
                out.dev_act().x);
      out.compare("copy", true);
    }
  }
}

TEST_CASE("gpu norms reject bad shapes before launching") {
  require_gpu();
  gpu::Buffer<bf16> x(64), w(8), out(64);
  const auto xv = make_view(static_cast<const bf16*>(x.data()), 8, 8);
  REQUIRE_THROWS_AS(
      ops::rms_norm<epi::Bf16>(device, xv, make_view(static_cast<const bf16*>(w.data()), 7), eps,
                               {make_view(out.data(), 8, 8)}),
      atom::ShapeError);
  REQUIRE_THROWS_AS(
      ops::rms_norm<epi::Bf16>(device, xv, make_view(static_cast<const bf16*>(w.data()), 8), eps,
                               {make_view(x.data(), 8, 8)}),
      atom::ShapeError);
  gpu::Buffer<bf16> wide(2 * (ops::gpu_norm_max_cols + 8));
  REQUIRE_THROWS_AS(
      ops::rms_norm<epi::Bf16>(
          device, make_view(static_cast<const bf16*>(wide.data()), 1, ops::gpu_norm_max_cols + 8),
          make_view(static_cast<const bf16*>(wide.data()), ops::gpu_norm_max_cols + 8), eps,
          {make_view(wide.data() + ops::gpu_norm_max_cols + 8, 1, ops::gpu_norm_max_cols + 8)}),
      atom::ShapeError);
}
