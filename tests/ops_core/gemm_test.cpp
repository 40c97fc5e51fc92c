#include "atom/ops/gemm.hpp"
#include "support.hpp"

using namespace ops_test;
namespace ops = atom::ops;

namespace {

const ops::Host host;

// Float accumulation of K terms in order: each add rounds by at most 2^-24 of the running sum,
// so the error is within K * 2^-24 * sum |terms|.
double accumulation_slack(index_t k, double abs_sum) {
  return static_cast<double>(k) * 0x1p-24 * abs_sum;
}

}  // namespace

TEST_CASE("gemm_a4w4 matches float64 on the dequantized operands") {
  struct Shape {
    index_t m, n, k;
  };
  for (const Shape s : {Shape{1, 1, 1}, Shape{3, 17, 3}, Shape{4, 33, 17}, Shape{3, 5, 769},
                        Shape{4, 1024, 512}, Shape{1, 64, 7168}, Shape{2, 31, 33}}) {
    INFO("M " << s.m << ", N " << s.n << ", K " << s.k);
    Mxfp4Buffer a(s.m, s.k), w(s.n, s.k);
    a.randomize();
    w.randomize();
    Bf16Buffer out(s.m, s.n);
    const ops::Mxfp4Act wa = w.act();
    ops::gemm_a4w4(host, a.act(), ops::Mxfp4Weight{wa.packed, wa.scale, s.k}, out.view());
    std::vector<double> want(static_cast<std::size_t>(s.m * s.n)), slack(want.size());
    for (index_t m = 0; m < s.m; ++m)
      for (index_t n = 0; n < s.n; ++n) {
        double sum = 0, abs_sum = 0;
        for (index_t k = 0; k < s.k; ++k) {
          sum += a.at(m, k) * w.at(n, k);
          abs_sum += std::fabs(a.at(m, k) * w.at(n, k));
        }
        want[static_cast<std::size_t>(m * s.n + n)] = sum;
        slack[static_cast<std::size_t>(m * s.n + n)] = accumulation_slack(s.k, abs_sum);
      }
    check_close(
        "out", s.m * s.n, [&](index_t i) { return out.at(i / s.n, i % s.n); },
        [&](index_t i) { return want[static_cast<std::size_t>(i)]; },
        [&](index_t i) {
          return bf16_tol(want[static_cast<std::size_t>(i)], slack[static_cast<std::size_t>(i)]);
        });
  }
}

TEST_CASE("gemm_bf16 and gemm_f32 match float64") {
  struct Shape {
    index_t m, n, k;
  };
  for (const Shape s : {Shape{1, 1, 1}, Shape{3, 17, 3}, Shape{4, 256, 7168}, Shape{3, 129, 769}}) {
    INFO("M " << s.m << ", N " << s.n << ", K " << s.k);
    const auto a = random_bf16(s.m * s.k);
    const auto w = random_bf16(s.n * s.k);
    std::vector<float> out(static_cast<std::size_t>(s.m * s.n), float_poison);
    ops::gemm_bf16(host, atom::make_view(a.data(), s.m, s.k), atom::make_view(w.data(), s.n, s.k),
                   atom::make_view(out.data(), s.m, s.n));
    const auto af = random_floats(s.m * s.k);
    const auto wf = random_floats(s.n * s.k);
    std::vector<float> out_f(static_cast<std::size_t>(s.m * s.n), float_poison);
    ops::gemm_f32(host, atom::make_view(af.data(), s.m, s.k), atom::make_view(wf.data(), s.n, s.k),
                  atom::make_view(out_f.data(), s.m, s.n));
    std::vector<double> want(out.size()), slack(out.size()), want_f(out.size()),
        slack_f(out.size());
    for (index_t m = 0; m < s.m; ++m)
      for (index_t n = 0; n < s.n; ++n) {
        double sum = 0, abs_sum = 0, sum_f = 0, abs_sum_f = 0;
        for (index_t k = 0; k < s.k; ++k) {
          const double p = value(a[static_cast<std::size_t>(m * s.k + k)]) *
                           value(w[static_cast<std::size_t>(n * s.k + k)]);
          sum += p;
          abs_sum += std::fabs(p);
          const double pf = double(af[static_cast<std::size_t>(m * s.k + k)]) *
                            double(wf[static_cast<std::size_t>(n * s.k + k)]);
          sum_f += pf;
          abs_sum_f += std::fabs(pf);
        }
        const auto i = static_cast<std::size_t>(m * s.n + n);
        want[i] = sum;
        slack[i] = accumulation_slack(s.k, abs_sum);
        want_f[i] = sum_f;
        // Products of arbitrary floats also round once each.
        slack_f[i] = accumulation_slack(s.k + 1, abs_sum_f);
      }
    check_close(
        "gemm_bf16", s.m * s.n, [&](index_t i) { return double(out[static_cast<std::size_t>(i)]); },
        [&](index_t i) { return want[static_cast<std::size_t>(i)]; },
        [&](index_t i) { return slack[static_cast<std::size_t>(i)]; });
    check_close(
        "gemm_f32", s.m * s.n,
        [&](index_t i) { return double(out_f[static_cast<std::size_t>(i)]); },
        [&](index_t i) { return want_f[static_cast<std::size_t>(i)]; },
        [&](index_t i) { return slack_f[static_cast<std::size_t>(i)]; });
  }
}

TEST_CASE("gemm_a4w4 writes through strided output rows and is deterministic") {
  const index_t m = 3, n = 40, k = 65;
  Mxfp4Buffer a(m, k), w(n, k);
  a.randomize();
  w.randomize();
  const ops::Mxfp4Act wa = w.act();
  const ops::Mxfp4Weight weight{wa.packed, wa.scale, k};
  Bf16Buffer dense(m, n);
  ops::gemm_a4w4(host, a.act(), weight, dense.view());
  Bf16Buffer wide(m, n + 7);
  ops::gemm_a4w4(host, a.act(), weight, wide.view().slice(1, 7, n));
  index_t bad = 0, untouched = 0;
  for (index_t r = 0; r < m; ++r) {
    for (index_t c = 0; c < n; ++c)
      bad += dense.data[static_cast<std::size_t>(r * n + c)].bits !=
             wide.data[static_cast<std::size_t>(r * (n + 7) + 7 + c)].bits;
    for (index_t c = 0; c < 7; ++c)
      untouched += wide.data[static_cast<std::size_t>(r * (n + 7) + c)].bits == bf16_poison.bits;
  }
  CHECK(bad == 0);
  CHECK(untouched == m * 7);
}
