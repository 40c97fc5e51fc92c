// gemm_a4w4 on the GPU, both backends, against the host op on fresh random MXFP4 operands.
//
// Tolerance: both sides multiply exactly and differ only in the order of their float sums; the
// host adds K products left to right, the GPU adds exact block sums (at most K / 32 of them plus
// a few reduction steps). Each float result is within K * 2^-24 * S of the exact sum
// (S = sum_k |a_k w_k|), so they differ by at most K * 2^-23 * S, and their bf16 roundings by
// that plus one bf16 ulp (2^-7 relative).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "atom/ops/gemm.hpp"
#include "atom/ops/gpu/gemm.hpp"
#include "atom/ops/quant.hpp"
#include "support.hpp"

using namespace gpu_gemm_test;
using atom::ops::GemmDecodeKernel;
using atom::ops::Gpu;
using atom::ops::Host;
using atom::policy::GemmBackend;

namespace {

const std::vector<index_t> test_rows = {1, 3, 16, 17, 128, 1000, 4096};

// ATOM_TEST_GEMM_ROWS=1,3,16 keeps only those row counts of a shape's list (to split a shape's
// cases over processes, e.g. under compute-sanitizer); unset, every row count runs.
std::vector<index_t> selected_rows(const std::vector<index_t>& ms) {
  const char* only = std::getenv("ATOM_TEST_GEMM_ROWS");
  if (only == nullptr) return ms;
  std::set<index_t> keep;
  std::istringstream in(only);
  for (std::string item; std::getline(in, item, ',');) keep.insert(std::stol(item));
  std::vector<index_t> out;
  for (const index_t m : ms)
    if (keep.count(m) != 0) out.push_back(m);
  return out;
}

// Rows compared with the host: all of a small M, else both ends, the middle and random ones.
std::vector<index_t> rows_to_check(index_t m) {
  std::set<index_t> rows;
  if (m <= 17) {
    for (index_t r = 0; r < m; ++r) rows.insert(r);
  } else {
    rows.insert({0, 1, m / 2, m - 2, m - 1});
    std::uniform_int_distribution<index_t> any(0, m - 1);
    for (int i = 0; i < 3; ++i) rows.insert(any(rng()));
  }
  return {rows.begin(), rows.end()};
}

struct Reference {
  std::vector<index_t> rows;
  std::vector<bf16> out;           // host result [rows, n]
  std::vector<float> abs_product;  // S = sum_k |a_k w_k| [rows, n]
};

Reference host_reference(Mxfp4Host& a, Mxfp4Host& w) {
  Reference ref;
  ref.rows = rows_to_check(a.rows);
  Mxfp4Host sub = a.select_rows(ref.rows);
  const index_t r = sub.rows;
  const index_t n = w.rows;
  ref.out.resize(static_cast<std::size_t>(r * n));
  atom::ops::gemm_a4w4(Host{}, sub.act(), w.weight(), atom::make_view(ref.out.data(), r, n));
  Mxfp4Host sub_abs = sub.magnitude();
  Mxfp4Host w_abs = w.magnitude();
  std::vector<float> a_abs(static_cast<std::size_t>(r * a.cols));
  atom::ops::dequantize(Host{}, sub_abs.act(), atom::make_view(a_abs.data(), r, a.cols));
  ref.abs_product.resize(static_cast<std::size_t>(r * n));
  atom::ops::gemm_w4(Host{}, atom::make_view(static_cast<const float*>(a_abs.data()), r, a.cols),
                     w_abs.weight(), atom::make_view(ref.abs_product.data(), r, n));
  return ref;
}

template <GemmBackend G>
void check_backend(const char* name, const Mxfp4Device& a, index_t n, index_t k,
                   const atom::ops::PreparedMxfp4Weight<G>& w, const Reference& ref,
                   GemmDecodeKernel decode = atom::ops::default_decode_kernel<G>) {
  const index_t m = a.rows;
  atom::gpu::Buffer<bf16> out(static_cast<std::size_t>(m * n));
  out.fill(0xFF);  // NaN in every output until the kernel writes it
  atom::ops::gemm_a4w4(Gpu{}, a.act(), w, atom::make_view(out.data(), m, n), decode);
  const std::vector<bf16> got = out.download();
  index_t unwritten = 0;
  for (const bf16 v : got) unwritten += std::isnan(atom::to_float(v)) ? 1 : 0;
  INFO(name << " M=" << m << " N=" << n << " K=" << k << " decode kernel "
            << static_cast<int>(decode));
  REQUIRE(unwritten == 0);
  index_t bad = 0;
  double worst = 0;
  for (std::size_t i = 0; i < ref.rows.size(); ++i) {
    for (index_t c = 0; c < n; ++c) {
      const std::size_t at = i * static_cast<std::size_t>(n) + static_cast<std::size_t>(c);
      const double want = atom::to_float(ref.out[at]);
      const double have = atom::to_float(got[static_cast<std::size_t>(ref.rows[i] * n + c)]);
      const double tol =
          static_cast<double>(k) * std::ldexp(1.0, -23) * ref.abs_product[at] * 1.01 +
          std::ldexp(1.0, -7) * std::max(std::fabs(want), std::fabs(have));
      const double err = std::fabs(have - want);
      if (!(err <= tol)) ++bad;
      worst = std::max(worst, tol > 0 ? err / tol : err);
    }
  }
  INFO("worst error / tolerance " << worst);
  CHECK(bad == 0);
}

void check_shape(index_t n, index_t k, const std::vector<index_t>& ms = test_rows) {
  REQUIRE(have_gpu());
  Mxfp4Host w = Mxfp4Host::random(n, k);
  const auto w_mc = atom::ops::prepare_weight<GemmBackend::matrix_core>(w.weight());
  const auto w_pt = atom::ops::prepare_weight<GemmBackend::portable>(w.weight());
  for (const index_t m : selected_rows(ms)) {
    Mxfp4Host a = Mxfp4Host::random(m, k);
    const Reference ref = host_reference(a, w);
    const Mxfp4Device a_dev(a);
    check_backend("asm", a_dev, n, k, w_mc, ref);
    check_backend("triton", a_dev, n, k, w_pt, ref);
  }
}

// Every decode kernel (M <= 16) of both backends, not only the default one.
void check_decode_kernels(index_t n, index_t k, const std::vector<index_t>& ms) {
  REQUIRE(have_gpu());
  Mxfp4Host w = Mxfp4Host::random(n, k);
  const auto w_mc = atom::ops::prepare_weight<GemmBackend::matrix_core>(w.weight());
  const auto w_pt = atom::ops::prepare_weight<GemmBackend::portable>(w.weight());
  for (const index_t m : ms) {
    Mxfp4Host a = Mxfp4Host::random(m, k);
    const Reference ref = host_reference(a, w);
    const Mxfp4Device a_dev(a);
    for (const GemmDecodeKernel decode :
         {GemmDecodeKernel::split_k, GemmDecodeKernel::stream_u1, GemmDecodeKernel::stream_u2,
          GemmDecodeKernel::stream_u4, GemmDecodeKernel::stream_u8}) {
      check_backend("asm", a_dev, n, k, w_mc, ref, decode);
      check_backend("triton", a_dev, n, k, w_pt, ref, decode);
    }
  }
}

// Scale codes 0 (2^-127) and 255 (NaN) among ordinary ones, for every decode kernel: an output
// whose host value is NaN must be NaN, every other one within the usual bound. Legitimate NaNs
// hide the NaN poison, so each call runs twice on outputs poisoned with different bytes and the
// two results must match bit for bit (a skipped output keeps its poison).
template <GemmBackend G>
void check_special_scales(const char* name, const Mxfp4Device& a, index_t n, index_t k,
                          const atom::ops::PreparedMxfp4Weight<G>& w, const Reference& ref,
                          GemmDecodeKernel decode) {
  const index_t m = a.rows;
  std::vector<bf16> got[2];
  const unsigned char poison[2] = {0xFF, 0x7F};
  for (int run = 0; run < 2; ++run) {
    atom::gpu::Buffer<bf16> out(static_cast<std::size_t>(m * n));
    out.fill(poison[run]);
    atom::ops::gemm_a4w4(Gpu{}, a.act(), w, atom::make_view(out.data(), m, n), decode);
    got[run] = out.download();
  }
  INFO(name << " M=" << m << " N=" << n << " K=" << k << " decode kernel "
            << static_cast<int>(decode));
  index_t differ = 0;
  for (std::size_t i = 0; i < got[0].size(); ++i) differ += got[0][i].bits != got[1][i].bits;
  REQUIRE(differ == 0);
  index_t bad = 0;
  index_t nans = 0;
  for (std::size_t i = 0; i < ref.rows.size(); ++i) {
    for (index_t c = 0; c < n; ++c) {
      const std::size_t at = i * static_cast<std::size_t>(n) + static_cast<std::size_t>(c);
      const double want = atom::to_float(ref.out[at]);
      const double have = atom::to_float(got[0][static_cast<std::size_t>(ref.rows[i] * n + c)]);
      if (std::isnan(want)) {
        ++nans;
        bad += std::isnan(have) ? 0 : 1;
        continue;
      }
      const double tol =
          static_cast<double>(k) * std::ldexp(1.0, -23) * ref.abs_product[at] * 1.01 +
          std::ldexp(1.0, -7) * std::max(std::fabs(want), std::fabs(have));
      bad += std::fabs(have - want) <= tol ? 0 : 1;
    }
  }
  CHECK(nans > 0);
  CHECK(bad == 0);
}

void check_decode_special_scales(index_t n, index_t k, const std::vector<index_t>& ms) {
  REQUIRE(have_gpu());
  Mxfp4Host w = Mxfp4Host::random(n, k);
  // Code 0 in every 7th weight block, one NaN block in row n / 2.
  for (std::size_t i = 0; i < w.scale.size(); i += 7) w.scale[i] = e8m0{0};
  w.scale[static_cast<std::size_t>((n / 2) * w.scale_cols() + w.scale_cols() / 2)] = e8m0{255};
  const auto w_mc = atom::ops::prepare_weight<GemmBackend::matrix_core>(w.weight());
  const auto w_pt = atom::ops::prepare_weight<GemmBackend::portable>(w.weight());
  for (const index_t m : ms) {
    Mxfp4Host a = Mxfp4Host::random(m, k);
    // Code 0 in every 11th activation block, one NaN block in the last row when M > 1.
    for (std::size_t i = 3; i < a.scale.size(); i += 11) a.scale[i] = e8m0{0};
    if (m > 1) a.scale[static_cast<std::size_t>((m - 1) * a.scale_cols() + 1)] = e8m0{255};
    const Reference ref = host_reference(a, w);
    const Mxfp4Device a_dev(a);
    for (const GemmDecodeKernel decode :
         {GemmDecodeKernel::split_k, GemmDecodeKernel::stream_u1, GemmDecodeKernel::stream_u2,
          GemmDecodeKernel::stream_u4, GemmDecodeKernel::stream_u8}) {
      check_special_scales("asm", a_dev, n, k, w_mc, ref, decode);
      check_special_scales("triton", a_dev, n, k, w_pt, ref, decode);
    }
  }
}

template <GemmBackend G>
void check_unshuffle(index_t n, index_t k) {
  Mxfp4Host w = Mxfp4Host::random(n, k);
  const auto prepared = atom::ops::prepare_weight<G>(w.weight());
  CHECK(prepared.n() == n);
  CHECK(prepared.k() == k);
  const atom::ops::Mxfp4WeightHost back = atom::ops::unshuffle(prepared);
  CHECK(back.packed == w.packed);
  bool scales_equal = back.scale.size() == w.scale.size();
  for (std::size_t i = 0; scales_equal && i < w.scale.size(); ++i)
    scales_equal = back.scale[i].bits == w.scale[i].bits;
  CHECK(scales_equal);
}

}  // namespace

TEST_CASE("gpu gemm: unshuffle inverts prepare_weight for both layouts") {
  REQUIRE(have_gpu());
  for (const auto& [n, k] : std::vector<std::pair<index_t, index_t>>{
           {1, 32}, {3, 96}, {13, 160}, {77, 288}, {40, 1024}, {2112, 7168}}) {
    INFO("N=" << n << " K=" << k);
    check_unshuffle<GemmBackend::matrix_core>(n, k);
    check_unshuffle<GemmBackend::portable>(n, k);
  }
}

TEST_CASE("gpu gemm: the layouts place every byte and scale of a tile exactly once") {
  using Mc = atom::ops::Mxfp4WeightLayout<GemmBackend::matrix_core>;
  using Pt = atom::ops::Mxfp4WeightLayout<GemmBackend::portable>;
  const auto covers = [](auto layout, index_t n, index_t k) {
    using L = decltype(layout);
    std::vector<int> hits(static_cast<std::size_t>(L::packed_bytes(n, k)), 0);
    for (index_t r = 0; r < n; ++r)
      for (index_t i = 0; i < k / 2; ++i)
        ++hits[static_cast<std::size_t>(L::packed_index(r, i, k))];
    std::vector<int> scale_hits(static_cast<std::size_t>(L::scale_count(n, k)), 0);
    for (index_t r = 0; r < n; ++r)
      for (index_t b = 0; b < k / 32; ++b)
        ++scale_hits[static_cast<std::size_t>(L::scale_index(r, b, k))];
    return std::all_of(hits.begin(), hits.end(), [](int h) { return h <= 1; }) &&
           std::all_of(scale_hits.begin(), scale_hits.end(), [](int h) { return h <= 1; }) &&
           std::count(hits.begin(), hits.end(), 1) == n * k / 2 &&
           std::count(scale_hits.begin(), scale_hits.end(), 1) == n * k / 32;
  };
  CHECK(covers(Mc{}, 33, 416));
  CHECK(covers(Pt{}, 33, 416));
  CHECK(covers(Mc{}, 64, 1024));
  CHECK(covers(Pt{}, 64, 1024));
}

TEST_CASE("gpu gemm: unsupported shapes are rejected at weight preparation") {
  REQUIRE(have_gpu());
  Mxfp4Host odd_k = Mxfp4Host::random(8, 100);
  CHECK_THROWS_WITH(atom::ops::prepare_weight<GemmBackend::matrix_core>(odd_k.weight()),
                    Catch::Contains("K = 100") && Catch::Contains("multiple of 32"));
  CHECK_THROWS_WITH(atom::ops::prepare_weight<GemmBackend::portable>(odd_k.weight()),
                    Catch::Contains("K = 100"));
  Mxfp4Host w = Mxfp4Host::random(16, 64);
  const auto prepared = atom::ops::prepare_weight<GemmBackend::portable>(w.weight());
  const Mxfp4Device wrong_k(Mxfp4Host::random(2, 96));
  atom::gpu::Buffer<bf16> out(32);
  CHECK_THROWS_AS(
      atom::ops::gemm_a4w4(Gpu{}, wrong_k.act(), prepared, atom::make_view(out.data(), 2, 16)),
      atom::ShapeError);
  const Mxfp4Device a(Mxfp4Host::random(2, 64));
  CHECK_THROWS_AS(
      atom::ops::gemm_a4w4(Gpu{}, a.act(), prepared, atom::make_view(out.data(), 2, 15)),
      atom::ShapeError);
}

TEST_CASE("gpu gemm: small odd shapes") {
  check_shape(1, 32, {1, 3, 17, 33});
  check_shape(13, 96, {1, 3, 16, 17, 65});
  check_shape(77, 288, {1, 5, 17, 129});
  check_shape(200, 800, {1, 16, 17, 300});
}

TEST_CASE("gpu gemm: every decode kernel, odd and round shapes") {
  check_decode_kernels(13, 96, {1, 2, 3, 5, 8, 9, 16});
  check_decode_kernels(77, 1056, {1, 3, 16});
  check_decode_kernels(2112, 7168, {1, 4, 13, 16});
  check_decode_kernels(200, 16384, {1, 16});
}

TEST_CASE("gpu gemm: scale codes 0 and 255 in every decode kernel") {
  check_decode_special_scales(77, 1056, {1, 3, 16});
  check_decode_special_scales(2112, 7168, {1, 9});
}

TEST_CASE("gpu gemm: DeepSeek qkv_a 7168 -> 2112") {
  check_shape(2112, 7168);
}
TEST_CASE("gpu gemm: DeepSeek q_b 1536 -> 24576") {
  check_shape(24576, 1536);
}
TEST_CASE("gpu gemm: DeepSeek o_proj 16384 -> 7168") {
  check_shape(7168, 16384);
}
TEST_CASE("gpu gemm: DeepSeek expert gate_up 7168 -> 4096") {
  check_shape(4096, 7168);
}
TEST_CASE("gpu gemm: DeepSeek expert down 2048 -> 7168") {
  check_shape(7168, 2048);
}
TEST_CASE("gpu gemm: Qwen3 qkv 2048 -> 5120 and o_proj 4096 -> 2048") {
  check_shape(5120, 2048);
  check_shape(2048, 4096);
}
TEST_CASE("gpu gemm: Qwen3 expert gate_up 2048 -> 1536 and down 768 -> 2048") {
  check_shape(1536, 2048);
  check_shape(2048, 768);
}
TEST_CASE("gpu gemm: M = 16384") {
  check_shape(256, 512, {16384});
}
