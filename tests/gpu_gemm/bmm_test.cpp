// The MLA absorbed BMMs on the GPU against the host ops: bit-identical outputs (see
// atom/ops/gpu/bmm.hpp: every product is exact and every sum runs in the host's order), on
// fresh random operands, outputs poisoned before each call.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "atom/ops/bmm.hpp"
#include "atom/ops/gpu/bmm.hpp"
#include "support.hpp"

using namespace gpu_gemm_test;
using atom::fp8_e4m3;
using atom::ops::Gpu;
using atom::ops::Host;

namespace {

std::vector<fp8_e4m3> random_fp8(index_t n) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::vector<fp8_e4m3> v(static_cast<std::size_t>(n));
  for (auto& x : v) {
    int b = byte(rng());
    while ((b & 0x7f) == 0x7f || (b & 0x7f) == 0) b = byte(rng());  // no NaN, no zero
    x = fp8_e4m3{static_cast<std::uint8_t>(b)};
  }
  return v;
}

std::vector<float> random_positive(index_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = d(rng());
  return v;
}

std::vector<bf16> random_bf16(index_t n) {
  std::uniform_real_distribution<float> d(0.01f, 3.0f);
  std::bernoulli_distribution negative(0.5);
  std::vector<bf16> v(static_cast<std::size_t>(n));
  for (auto& x : v) {
    const float m = d(rng());
    x = atom::to_bf16(negative(rng()) ? -m : m);
  }
  return v;
}

// Counts outputs whose bits differ from the host's (a NaN never matches: the host has none).
index_t mismatches(const std::vector<bf16>& got, const std::vector<bf16>& want) {
  index_t bad = 0;
  for (std::size_t i = 0; i < want.size(); ++i)
    bad += (got[i].bits != want[i].bits || std::isnan(atom::to_float(got[i]))) ? 1 : 0;
  return bad;
}

void check_fp8(index_t tokens, index_t heads, index_t n, index_t k) {
  INFO("bmm_fp8 T=" << tokens << " H=" << heads << " N=" << n << " K=" << k);
  const index_t groups = atom::ops::fp8_group_cols(k);
  std::vector<fp8_e4m3> a_q = random_fp8(tokens * heads * k);
  std::vector<float> a_scale = random_positive(tokens * heads * groups, 1e-3f, 1e-2f);
  std::vector<fp8_e4m3> w = random_fp8(heads * n * k);
  std::vector<float> w_scale = random_positive(heads, 1e-3f, 1e-2f);
  std::vector<bf16> want(static_cast<std::size_t>(tokens * heads * n));
  atom::ops::bmm_fp8(
      Host{},
      {atom::make_view(a_q.data(), tokens * heads, k),
       atom::make_view(a_scale.data(), tokens * heads, groups)},
      {atom::make_view(w.data(), heads, n, k), atom::make_view(w_scale.data(), heads)},
      atom::make_view(want.data(), tokens, heads, n));
  atom::gpu::Buffer<fp8_e4m3> d_aq(a_q);
  atom::gpu::Buffer<float> d_as(a_scale);
  atom::gpu::Buffer<fp8_e4m3> d_w(w);
  atom::gpu::Buffer<float> d_ws(w_scale);
  atom::gpu::Buffer<bf16> d_out(want.size());
  d_out.fill(0xFF);
  atom::ops::bmm_fp8(
      Gpu{},
      {atom::make_view(d_aq.data(), tokens * heads, k),
       atom::make_view(d_as.data(), tokens * heads, groups)},
      {atom::make_view(d_w.data(), heads, n, k), atom::make_view(d_ws.data(), heads)},
      atom::make_view(d_out.data(), tokens, heads, n));
  CHECK(mismatches(d_out.download(), want) == 0);
}

void check_mxfp4(index_t tokens, index_t heads, index_t n, index_t k) {
  INFO("bmm_mxfp4 T=" << tokens << " H=" << heads << " N=" << n << " K=" << k);
  const index_t packed_cols = atom::ops::mxfp4_packed_cols(k);
  const index_t scale_cols = atom::ops::mxfp4_scale_cols(k);
  std::vector<bf16> a = random_bf16(tokens * heads * k);
  std::vector<std::uint8_t> w = random_codes(heads * n * packed_cols);
  std::vector<e8m0> w_scale = random_scales(heads * n * scale_cols);
  std::vector<bf16> want(static_cast<std::size_t>(tokens * heads * n));
  atom::ops::bmm_mxfp4(Host{},
                       atom::make_view(static_cast<const bf16*>(a.data()), tokens, heads, k),
                       {atom::make_view(w.data(), heads, n, packed_cols),
                        atom::make_view(w_scale.data(), heads, n, scale_cols), k},
                       atom::make_view(want.data(), tokens, heads, n));
  atom::gpu::Buffer<bf16> d_a(a);
  atom::gpu::Buffer<std::uint8_t> d_w(w);
  atom::gpu::Buffer<e8m0> d_ws(w_scale);
  atom::gpu::Buffer<bf16> d_out(want.size());
  d_out.fill(0xFF);
  atom::ops::bmm_mxfp4(Gpu{},
                       atom::make_view(static_cast<const bf16*>(d_a.data()), tokens, heads, k),
                       {atom::make_view(d_w.data(), heads, n, packed_cols),
                        atom::make_view(d_ws.data(), heads, n, scale_cols), k},
                       atom::make_view(d_out.data(), tokens, heads, n));
  CHECK(mismatches(d_out.download(), want) == 0);
}

}  // namespace

TEST_CASE("gpu bmm: FP8 W_UK and W_UV, 128 heads and 128 / TP") {
  REQUIRE(have_gpu());
  for (const index_t heads : {128, 16})
    for (const index_t tokens : {1, 3, 17, 64}) {
      check_fp8(tokens, heads, 512, 128);
      check_fp8(tokens, heads, 128, 512);
    }
}

TEST_CASE("gpu bmm: FP8 odd shapes (partial K group)") {
  REQUIRE(have_gpu());
  check_fp8(5, 3, 24, 200);
  check_fp8(1, 1, 1, 1);
  check_fp8(7, 2, 130, 129);
}

TEST_CASE("gpu bmm: MXFP4 W_UK and W_UV, 128 heads and 128 / TP") {
  REQUIRE(have_gpu());
  for (const index_t heads : {128, 16})
    for (const index_t tokens : {1, 3, 17, 64}) {
      check_mxfp4(tokens, heads, 512, 128);
      check_mxfp4(tokens, heads, 128, 512);
    }
}

TEST_CASE("gpu bmm: MXFP4 odd shapes (partial MX block)") {
  REQUIRE(have_gpu());
  check_mxfp4(5, 3, 24, 100);
  check_mxfp4(1, 1, 1, 2);
  check_mxfp4(9, 2, 131, 96);
}

TEST_CASE("gpu bmm: mismatched shapes are rejected") {
  REQUIRE(have_gpu());
  atom::gpu::Buffer<bf16> a(2 * 4 * 64);
  atom::gpu::Buffer<std::uint8_t> w(4 * 8 * 32);
  atom::gpu::Buffer<e8m0> ws(4 * 8 * 2);
  atom::gpu::Buffer<bf16> out(2 * 4 * 8);
  const auto a_view = atom::make_view(static_cast<const bf16*>(a.data()), 2, 4, 64);
  CHECK_THROWS_AS(atom::ops::bmm_mxfp4(Gpu{}, a_view,
                                       {atom::make_view(w.data(), 4, 8, 32),
                                        atom::make_view(ws.data(), 4, 8, 2), 96},
                                       atom::make_view(out.data(), 2, 4, 8)),
                  atom::ShapeError);
  CHECK_THROWS_AS(atom::ops::bmm_mxfp4(Gpu{}, a_view,
                                       {atom::make_view(w.data(), 4, 8, 32),
                                        atom::make_view(ws.data(), 4, 8, 2), 64},
                                       atom::make_view(out.data(), 2, 4, 7)),
                  atom::ShapeError);
}
