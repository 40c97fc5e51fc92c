#include <algorithm>

#include "atom/ops/quant.hpp"
#include "support.hpp"

using namespace ops_test;
namespace ops = atom::ops;

namespace {

const ops::Host host;

// Expected codes of one row quantized to MXFP4 (blocks of 32) from float64 values.
void check_mx_row(const Mxfp4Buffer& out, index_t r, const std::vector<double>& y, index_t& bad) {
  for (index_t b = 0; b * 32 < out.cols; ++b) {
    const index_t end = std::min(out.cols, (b + 1) * 32);
    double amax = 0;
    for (index_t c = b * 32; c < end; ++c)
      amax = std::max(amax, std::fabs(y[static_cast<std::size_t>(c)]));
    const int scale = ref_mx_scale_code(amax);
    if (out.scale_code(r, b * 32) != scale) ++bad;
    for (index_t c = b * 32; c < end; ++c)
      if (out.code(r, c) != ref_e2m1(y[static_cast<std::size_t>(c)] / e8m0_value(scale))) ++bad;
  }
}

}  // namespace

TEST_CASE("quantize to MXFP4 matches the float64 reference bit for bit") {
  for (index_t cols : {1, 3, 17, 32, 33, 128, 769, 5125}) {
    const index_t rows = 3;
    const auto x = random_bf16(rows * cols, 0.001f, 40.0f);
    Mxfp4Buffer out(rows, cols);
    ops::quantize<ops::epi::Mxfp4>(host, atom::make_view(x.data(), rows, cols), out.act());
    index_t bad = 0;
    for (index_t r = 0; r < rows; ++r) {
      std::vector<double> y(static_cast<std::size_t>(cols));
      for (index_t c = 0; c < cols; ++c)
        y[static_cast<std::size_t>(c)] = value(x[static_cast<std::size_t>(r * cols + c)]);
      check_mx_row(out, r, y, bad);
    }
    INFO("cols " << cols);
    CHECK(bad == 0);
    // Unused high nibble of an odd-length row is zero, so every byte was written.
    if (cols % 2)
      CHECK((out.packed[static_cast<std::size_t>(ops::mxfp4_packed_cols(cols) - 1)] >> 4) == 0);
  }
}

TEST_CASE("quantize to FP8 per token and per group of 128 matches the float64 reference") {
  for (index_t cols : {1, 3, 17, 128, 129, 769, 7168}) {
    const index_t rows = 3;
    const auto x = random_bf16(rows * cols, 0.001f, 40.0f);
    const auto xv = atom::make_view(x.data(), rows, cols);
    Fp8TokenBuffer tok(rows, cols);
    Fp8GroupBuffer grp(rows, cols);
    ops::quantize<ops::epi::Fp8PerToken>(host, xv, tok.act());
    ops::quantize<ops::epi::Fp8PerGroup128>(host, xv, grp.act());
    index_t bad = 0;
    const auto check_range = [&](index_t r, index_t begin, index_t end, float scale,
                                 const fp8_e4m3* q) {
      double amax = 0;
      for (index_t c = begin; c < end; ++c)
        amax = std::max(amax, std::fabs(value(x[static_cast<std::size_t>(r * cols + c)])));
      // The scale is defined as a float division; its float64 quotient rounded once is the same.
      if (scale != static_cast<float>(amax / 448.0)) ++bad;
      for (index_t c = begin; c < end; ++c) {
        const auto v = static_cast<float>(value(x[static_cast<std::size_t>(r * cols + c)]) /
                                          static_cast<double>(scale));
        if (q[c].bits != ref_fp8(v)) ++bad;
      }
    };
    for (index_t r = 0; r < rows; ++r) {
      check_range(r, 0, cols, tok.scale[static_cast<std::size_t>(r)], tok.q.data() + r * cols);
      for (index_t g = 0; g * 128 < cols; ++g)
        check_range(r, g * 128, std::min(cols, (g + 1) * 128), grp.group_scale(r, g * 128),
                    grp.q.data() + r * cols);
    }
    INFO("cols " << cols);
    CHECK(bad == 0);
  }
}

TEST_CASE("FP8 quantization of an all-zero row uses scale 1") {
  const std::vector<bf16> x(5, atom::to_bf16(0.0f));
  Fp8TokenBuffer tok(1, 5);
  ops::quantize<ops::epi::Fp8PerToken>(host, atom::make_view(x.data(), 1, 5), tok.act());
  CHECK(tok.scale[0] == 1.0f);
  for (const auto& q : tok.q) CHECK(q.bits == 0);
}

TEST_CASE("dequantize returns the values the formats stand for") {
  const index_t rows = 3, cols = 161;
  Mxfp4Buffer mx(rows, cols);
  mx.randomize();
  Fp8GroupBuffer grp(rows, cols);
  grp.randomize();
  std::vector<float> out(static_cast<std::size_t>(rows * cols), float_poison);
  const auto ov = atom::make_view(out.data(), rows, cols);
  ops::dequantize(host, mx.act(), ov);
  check_close(
      "mxfp4", rows * cols, [&](index_t i) { return double(out[static_cast<std::size_t>(i)]); },
      [&](index_t i) { return mx.at(i / cols, i % cols); }, [](index_t) { return 0.0; });
  std::fill(out.begin(), out.end(), float_poison);
  ops::dequantize(host, grp.act(), ov);
  // value * scale rounded once to float.
  check_close(
      "fp8 group", rows * cols, [&](index_t i) { return double(out[static_cast<std::size_t>(i)]); },
      [&](index_t i) { return grp.at(i / cols, i % cols); },
      [&](index_t i) { return std::fabs(grp.at(i / cols, i % cols)) * 0x1p-24; });
  const ops::Mxfp4Weight w{mx.act().packed, mx.act().scale, cols};
  std::fill(out.begin(), out.end(), float_poison);
  ops::dequantize(host, w, ov);
  check_close(
      "mxfp4 weight", rows * cols,
      [&](index_t i) { return double(out[static_cast<std::size_t>(i)]); },
      [&](index_t i) { return mx.at(i / cols, i % cols); }, [](index_t) { return 0.0; });
}
