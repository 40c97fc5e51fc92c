// gemm_a16w16 and gemm_a8w8_block on the GPU against the exact value of every output, computed in
// double from the same operands (dense_support.hpp; independent of the host ops), on fresh random
// operands, outputs poisoned before each call.
//
// Bound: |got - exact| <= depth * 2^-24 * S * 1.01 + 2^-8 * max(|got|, |exact|), S = sum of the
// terms' magnitudes, depth K for bf16 and min(K, 128) + ceil(K / 128) + 1 for FP8 (the float sum's
// error bound of atom/ops/gpu/gemm.hpp, then half a bf16 ulp for the final rounding). The host's
// float result keeps the same kind of bound around the same exact value, which is where the
// header's bound against the host (twice the float term plus one bf16 ulp) comes from.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "atom/ops/gpu/gemm.hpp"
#include "dense_support.hpp"

using namespace dense_test;
using atom::ops::Gpu;
namespace gpu = atom::gpu;
namespace ops = atom::ops;

namespace {

const std::vector<index_t> test_m = {1, 3, 17};
const std::vector<index_t> test_n = {1, 3, 17, 769};

// An output [m, n] in device memory, rows n + pad apart, every byte `poison`.
struct Output {
  index_t m;
  index_t n;
  index_t stride;
  int poison;
  gpu::Buffer<bf16> buffer;

  Output(index_t rows, index_t cols, index_t pad, int poison_byte)
      : m(rows),
        n(cols),
        stride(cols + pad),
        poison(poison_byte),
        buffer(at(std::max<index_t>(rows * (cols + pad), 1))) {
    buffer.fill(poison);
  }
  atom::View2<bf16> view() const { return {buffer.data(), {m, n}, {stride, 1}}; }
};

// Every output against exact(r, c) within the bound of `depth`, and the row padding untouched.
template <class ExactOf>
void expect_outputs(const Output& out, double depth, ExactOf exact) {
  const std::vector<bf16> got = out.buffer.download();
  const auto poison_bits = static_cast<std::uint16_t>(out.poison * 0x101);
  index_t bad = 0;
  index_t padding_written = 0;
  for (index_t r = 0; r < out.m; ++r)
    for (index_t c = 0; c < out.stride; ++c) {
      const bf16 v = got[at(r * out.stride + c)];
      if (c >= out.n)
        padding_written += v.bits != poison_bits ? 1 : 0;
      else
        bad += matches(v, exact(r, c), depth) ? 0 : 1;
    }
  CHECK(bad == 0);
  CHECK(padding_written == 0);
}

void check_a16w16(index_t m, index_t n, index_t k, index_t pad = 0) {
  INFO("gemm_a16w16 M = " << m << ", N = " << n << ", K = " << k << ", row padding " << pad);
  const Matrix<bf16> a = random_bf16(m, k, 2.0f, pad);
  const Matrix<bf16> w = random_bf16(n, k, 0.1f, pad);
  const DeviceMatrix<bf16> a_dev(a);
  const DeviceMatrix<bf16> w_dev(w);
  const Output out(m, n, pad, nan_poison);
  ops::gemm_a16w16(Gpu{}, ops::Bf16Act{a_dev.view()}, ops::Bf16Weight{w_dev.view()}, out.view());
  expect_outputs(out, bf16_depth(k),
                 [&](index_t r, index_t c) { return exact_bf16(a.row(r), w.row(c), k); });
}

// With `nan_scales`, one weight block scale (the last block row, group 0) and one activation group
// scale (row 1, the last group) are NaN: the outputs they reach must become NaN.
void check_a8w8(index_t m, index_t n, index_t k, index_t block_n, index_t pad = 0,
                bool nan_scales = false) {
  INFO("gemm_a8w8_block M = " << m << ", N = " << n << ", K = " << k << ", block_n = " << block_n
                              << ", row padding " << pad << (nan_scales ? ", NaN scales" : ""));
  const index_t groups = ops::fp8_group_cols(k);
  const Matrix<fp8_e4m3> aq = random_fp8(m, k, pad);
  Matrix<float> as = random_scales(m, groups);
  const Matrix<fp8_e4m3> wq = random_fp8(n, k, pad);
  Matrix<float> ws = random_scales(ops::ceil_div(n, block_n), groups);
  if (nan_scales) {
    ws.row(ws.rows - 1)[0] = std::numeric_limits<float>::quiet_NaN();
    if (m > 1) as.row(1)[groups - 1] = std::numeric_limits<float>::quiet_NaN();
  }
  const DeviceMatrix<fp8_e4m3> aq_dev(aq);
  const DeviceMatrix<float> as_dev(as);
  const DeviceMatrix<fp8_e4m3> wq_dev(wq);
  const DeviceMatrix<float> ws_dev(ws);
  const Output out(m, n, pad, nan_scales ? finite_poison : nan_poison);
  ops::gemm_a8w8_block(Gpu{}, ops::Fp8GroupAct{aq_dev.view(), as_dev.view()},
                       ops::Fp8BlockWeight{wq_dev.view(), ws_dev.view(), block_n}, out.view());
  expect_outputs(out, fp8_depth(k), [&](index_t r, index_t c) {
    return exact_fp8(aq.row(r), as.row(r), wq.row(c), ws.row(c / block_n), k);
  });
}

}  // namespace

TEST_CASE("gpu gemm: gemm_a16w16 is within its bound of the exact products, odd sizes") {
  REQUIRE(have_gpu());
  for (const index_t n : test_n)
    for (const index_t k : {32, 128, 200, 4097})
      for (const index_t m : test_m) check_a16w16(m, n, k);
}

TEST_CASE("gpu gemm: gemm_a16w16 with padded rows, many rows, K = 0 and M = 0") {
  REQUIRE(have_gpu());
  check_a16w16(3, 17, 200, 5);
  check_a16w16(100, 33, 77, 3);
  check_a16w16(1000, 20, 64);
  check_a16w16(5, 9, 0);
  check_a16w16(0, 9, 64);
}

TEST_CASE("gpu gemm: gemm_a8w8_block is within its bound, partial groups and blocks") {
  REQUIRE(have_gpu());
  for (const index_t n : test_n)
    for (const index_t k : {32, 128, 200, 4097})
      for (const index_t m : test_m)
        for (const index_t block_n : {128, 3}) check_a8w8(m, n, k, block_n);
}

TEST_CASE("gpu gemm: gemm_a8w8_block with padded rows, many rows, block_n past N, K = 0") {
  REQUIRE(have_gpu());
  check_a8w8(3, 17, 200, 128, 5);
  check_a8w8(100, 33, 300, 7, 3);
  check_a8w8(1000, 20, 129, 1);
  check_a8w8(2, 769, 256, 1000);
  check_a8w8(5, 9, 0, 128);
}

TEST_CASE("gpu gemm: a NaN FP8 scale makes exactly the outputs it reaches NaN") {
  REQUIRE(have_gpu());
  check_a8w8(3, 300, 200, 128, 0, true);
  check_a8w8(17, 17, 4097, 3, 2, true);
}

TEST_CASE("gpu gemm: gemm_a16w16 and gemm_a8w8_block reject bad shapes naming op and argument") {
  REQUIRE(have_gpu());
  gpu::Buffer<bf16> a(std::size_t{2} * 64);
  gpu::Buffer<bf16> w(std::size_t{8} * 64);
  gpu::Buffer<bf16> out(std::size_t{2} * 8);
  const auto a_view = atom::make_view(a.data(), 2, 64);
  const auto out_view = atom::make_view(out.data(), 2, 8);
  CHECK_THROWS_WITH(ops::gemm_a16w16(Gpu{}, ops::Bf16Act{a_view},
                                     ops::Bf16Weight{atom::make_view(w.data(), 8, 63)}, out_view),
                    Catch::Contains("gemm_a16w16") && Catch::Contains("'w.w'") &&
                        Catch::Contains("expected [*, 64]"));
  CHECK_THROWS_WITH(
      ops::gemm_a16w16(Gpu{}, ops::Bf16Act{a_view},
                       ops::Bf16Weight{atom::make_view(w.data(), 8, 64)},
                       atom::make_view(out.data(), 2, 7)),
      Catch::Contains("gemm_a16w16") && Catch::Contains("'out'") && Catch::Contains("[2, 8]"));
  CHECK_THROWS_WITH(ops::gemm_a16w16(Gpu{}, ops::Bf16Act{a_view},
                                     ops::Bf16Weight{atom::make_view(w.data(), 8, 64)},
                                     atom::make_view(a.data(), 2, 8)),
                    Catch::Contains("gemm_a16w16") && Catch::Contains("overlaps input 'a.x'"));

  gpu::Buffer<fp8_e4m3> aq(std::size_t{2} * 200);
  gpu::Buffer<float> as(std::size_t{2} * 2);
  gpu::Buffer<fp8_e4m3> wq(std::size_t{8} * 200);
  gpu::Buffer<float> ws(std::size_t{2} * 2);
  const ops::Fp8GroupAct fp8_a{atom::make_view(aq.data(), 2, 200),
                               atom::make_view(as.data(), 2, 2)};
  CHECK_THROWS_WITH(ops::gemm_a8w8_block(Gpu{}, fp8_a,
                                         ops::Fp8BlockWeight{atom::make_view(wq.data(), 8, 200),
                                                             atom::make_view(ws.data(), 1, 2), 0},
                                         out_view),
                    Catch::Contains("gemm_a8w8_block") && Catch::Contains("block_n = 0"));
  // One block of 128 rows covers N = 8: the scales must be [1, 2].
  CHECK_THROWS_WITH(ops::gemm_a8w8_block(Gpu{}, fp8_a,
                                         ops::Fp8BlockWeight{atom::make_view(wq.data(), 8, 200),
                                                             atom::make_view(ws.data(), 2, 2), 128},
                                         out_view),
                    Catch::Contains("gemm_a8w8_block") && Catch::Contains("'w.scale'") &&
                        Catch::Contains("expected [1, 2]"));
}
