#include "atom/ops/bmm.hpp"
#include "support.hpp"

using namespace ops_test;
namespace ops = atom::ops;

namespace {

const ops::Host host;

struct Shape {
  index_t tokens, heads, n, k;
};
const Shape shapes[] = {
    {1, 1, 1, 1}, {3, 4, 512, 128}, {2, 3, 128, 512}, {1, 2, 17, 200}, {3, 1, 5, 129}};

}  // namespace

TEST_CASE("bmm_fp8 matches float64 per head on the dequantized operands") {
  for (const Shape s : shapes) {
    INFO("T " << s.tokens << ", H " << s.heads << ", N " << s.n << ", K " << s.k);
    Fp8GroupBuffer a(s.tokens * s.heads, s.k);
    a.randomize();
    // Weights as an [H * N, K] buffer of random codes, seen as [H, N, K].
    Fp8GroupBuffer wbuf(s.heads * s.n, s.k);
    wbuf.randomize();
    auto head_scale = random_floats(s.heads, 0.001f, 0.01f);
    std::vector<bf16> out(static_cast<std::size_t>(s.tokens * s.heads * s.n), bf16_poison);
    const ops::Fp8HeadWeight w{atom::make_view(wbuf.q.data(), s.heads, s.n, s.k),
                               atom::make_view(head_scale.data(), s.heads)};
    ops::bmm_fp8(host, a.act(), w, atom::make_view(out.data(), s.tokens, s.heads, s.n));
    std::vector<double> want(out.size()), slack(out.size());
    for (index_t t = 0; t < s.tokens; ++t)
      for (index_t h = 0; h < s.heads; ++h)
        for (index_t n = 0; n < s.n; ++n) {
          double sum = 0, abs_sum = 0;
          for (index_t k = 0; k < s.k; ++k) {
            const double p = a.at(t * s.heads + h, k) *
                             fp8_value(wbuf.q[static_cast<std::size_t>((h * s.n + n) * s.k + k)]) *
                             head_scale[static_cast<std::size_t>(h)];
            sum += p;
            abs_sum += std::fabs(p);
          }
          const auto i = static_cast<std::size_t>((t * s.heads + h) * s.n + n);
          want[i] = sum;
          // In-order float sums within and across groups plus the two scale products.
          slack[i] = static_cast<double>(s.k + 4) * 0x1p-24 * abs_sum;
        }
    check_close(
        "out", static_cast<index_t>(out.size()),
        [&](index_t i) { return value(out[static_cast<std::size_t>(i)]); },
        [&](index_t i) { return want[static_cast<std::size_t>(i)]; },
        [&](index_t i) {
          return bf16_tol(want[static_cast<std::size_t>(i)], slack[static_cast<std::size_t>(i)]);
        });
  }
}

TEST_CASE("bmm_mxfp4 matches float64 per head on the dequantized weight") {
  for (const Shape s : shapes) {
    INFO("T " << s.tokens << ", H " << s.heads << ", N " << s.n << ", K " << s.k);
    const auto a = random_bf16(s.tokens * s.heads * s.k);
    Mxfp4Buffer wbuf(s.heads * s.n, s.k);
    wbuf.randomize();
    const index_t pc = ops::mxfp4_packed_cols(s.k), sc = ops::mxfp4_scale_cols(s.k);
    const ops::Mxfp4HeadWeight w{atom::make_view(wbuf.packed.data(), s.heads, s.n, pc),
                                 atom::make_view(wbuf.scale.data(), s.heads, s.n, sc), s.k};
    std::vector<bf16> out(static_cast<std::size_t>(s.tokens * s.heads * s.n), bf16_poison);
    ops::bmm_mxfp4(host, atom::make_view(a.data(), s.tokens, s.heads, s.k), w,
                   atom::make_view(out.data(), s.tokens, s.heads, s.n));
    std::vector<double> want(out.size()), slack(out.size());
    for (index_t t = 0; t < s.tokens; ++t)
      for (index_t h = 0; h < s.heads; ++h)
        for (index_t n = 0; n < s.n; ++n) {
          double sum = 0, abs_sum = 0;
          for (index_t k = 0; k < s.k; ++k) {
            const double p = value(a[static_cast<std::size_t>((t * s.heads + h) * s.k + k)]) *
                             wbuf.at(h * s.n + n, k);
            sum += p;
            abs_sum += std::fabs(p);
          }
          const auto i = static_cast<std::size_t>((t * s.heads + h) * s.n + n);
          want[i] = sum;
          slack[i] = static_cast<double>(s.k) * 0x1p-24 * abs_sum;
        }
    check_close(
        "out", static_cast<index_t>(out.size()),
        [&](index_t i) { return value(out[static_cast<std::size_t>(i)]); },
        [&](index_t i) { return want[static_cast<std::size_t>(i)]; },
        [&](index_t i) {
          return bf16_tol(want[static_cast<std::size_t>(i)], slack[static_cast<std::size_t>(i)]);
        });
  }
}
