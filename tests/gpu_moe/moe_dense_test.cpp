// moe_gemm_a16w16 and moe_gemm_a8w8_block on the GPU against the exact value of every output:
// row r = t * k + j is a[t] (a has T rows) or a[r] (T * k rows) times expert ids(t, j), computed
// in double from the same operands (tests/gpu_gemm/dense_support.hpp, independent of the host
// ops), on fresh random operands, outputs poisoned before each call. The bound is the dense
// GEMMs' (atom/ops/gpu/gemm.hpp): depth * 2^-24 * S * 1.01 plus half a bf16 ulp, depth K for bf16
// and min(K, 128) + ceil(K / 128) + 1 for FP8. Rows of an id outside [0, E) must be NaN; those
// runs poison with a finite value so that an unwritten row shows.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <vector>

#include "atom/ops/gpu/moe.hpp"
#include "dense_support.hpp"

using namespace dense_test;
using atom::make_view;
using atom::ops::Gpu;
namespace gpu = atom::gpu;
namespace ops = atom::ops;

namespace {

// The routing of one run: T tokens, k distinct experts each (as routing picks them), some ids
// optionally replaced by bad ones (-1 and E, alternately).
struct Routing {
  index_t tokens;
  index_t k;
  std::vector<std::int32_t> ids;
  std::vector<bool> bad;

  Routing(index_t t, index_t topk, index_t experts, index_t bad_every)
      : tokens(t), k(topk), bad(at(t * topk), false) {
    std::vector<std::int32_t> order(at(experts));
    for (index_t i = 0; i < t; ++i) {
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng());
      ids.insert(ids.end(), order.begin(), order.begin() + topk);
    }
    for (index_t r = 1; bad_every > 0 && r < t * topk; r += bad_every) {
      bad[at(r)] = true;
      ids[at(r)] = r % 2 == 1 ? -1 : static_cast<std::int32_t>(experts);
    }
  }
  index_t rows() const { return tokens * k; }
};

struct Case {
  index_t experts;
  index_t n;
  index_t k_dim;
  index_t topk;
  index_t tokens;
  bool per_slot;      // a has T * k rows
  index_t bad_every;  // every bad_every-th row (from row 1) gets a bad id; 0: none
};

// Runs op(ids view, out view) and checks every row against exact(a_row, expert, column).
template <class Op, class ExactOf>
void run_and_check(const Case& c, const Routing& routing, double depth, Op op, ExactOf exact) {
  const int poison = c.bad_every > 0 ? finite_poison : nan_poison;
  const index_t rows = routing.rows();
  const gpu::Buffer<std::int32_t> ids_dev(routing.ids);
  gpu::Buffer<bf16> out(at(std::max<index_t>(rows * c.n, 1)));
  out.fill(poison);
  op(make_view(static_cast<const std::int32_t*>(ids_dev.data()), routing.tokens, routing.k),
     make_view(out.data(), rows, c.n));
  const std::vector<bf16> got = out.download();
  index_t bad = 0;
  for (index_t r = 0; r < rows; ++r) {
    const index_t a_row = c.per_slot ? r : r / routing.k;
    for (index_t col = 0; col < c.n; ++col) {
      const bf16 v = got[at(r * c.n + col)];
      if (routing.bad[at(r)])
        bad += std::isnan(atom::to_float(v)) ? 0 : 1;
      else
        bad += matches(v, exact(a_row, routing.ids[at(r)], col), depth) ? 0 : 1;
    }
  }
  CHECK(bad == 0);
}

void check_a16w16(const Case& c) {
  INFO("moe_gemm_a16w16 E = " << c.experts << ", N = " << c.n << ", K = " << c.k_dim
                              << ", T = " << c.tokens << ", k = " << c.topk
                              << (c.per_slot ? ", a has T * k rows" : ", a has T rows")
                              << (c.bad_every > 0 ? ", bad ids" : ""));
  const Routing routing(c.tokens, c.topk, c.experts, c.bad_every);
  const index_t a_rows = c.per_slot ? routing.rows() : c.tokens;
  const Matrix<bf16> a = random_bf16(a_rows, c.k_dim, 2.0f);
  const Matrix<bf16> w = random_bf16(c.experts * c.n, c.k_dim, 0.1f, 3);
  const DeviceMatrix<bf16> a_dev(a);
  const DeviceMatrix<bf16> w_dev(w);
  run_and_check(
      c, routing, bf16_depth(c.k_dim),
      [&](atom::View2<const std::int32_t> ids, atom::View2<bf16> out) {
        ops::moe_gemm_a16w16(Gpu{}, ops::Bf16Act{a_dev.view()}, ids,
                             ops::Bf16Experts{w_dev.experts(c.experts)}, out);
      },
      [&](index_t a_row, std::int32_t e, index_t col) {
        return exact_bf16(a.row(a_row), w.row(e * c.n + col), c.k_dim);
      });
}

void check_a8w8(const Case& c, index_t block_n) {
  INFO("moe_gemm_a8w8_block E = " << c.experts << ", N = " << c.n << ", K = " << c.k_dim
                                  << ", block_n = " << block_n << ", T = " << c.tokens
                                  << ", k = " << c.topk
                                  << (c.per_slot ? ", a has T * k rows" : ", a has T rows")
                                  << (c.bad_every > 0 ? ", bad ids" : ""));
  const Routing routing(c.tokens, c.topk, c.experts, c.bad_every);
  const index_t a_rows = c.per_slot ? routing.rows() : c.tokens;
  const index_t groups = ops::fp8_group_cols(c.k_dim);
  const index_t blocks = ops::ceil_div(c.n, block_n);
  const Matrix<fp8_e4m3> aq = random_fp8(a_rows, c.k_dim);
  const Matrix<float> as = random_scales(a_rows, groups);
  const Matrix<fp8_e4m3> wq = random_fp8(c.experts * c.n, c.k_dim, 3);
  const Matrix<float> ws = random_scales(c.experts * blocks, groups);
  const DeviceMatrix<fp8_e4m3> aq_dev(aq);
  const DeviceMatrix<float> as_dev(as);
  const DeviceMatrix<fp8_e4m3> wq_dev(wq);
  const DeviceMatrix<float> ws_dev(ws);
  run_and_check(
      c, routing, fp8_depth(c.k_dim),
      [&](atom::View2<const std::int32_t> ids, atom::View2<bf16> out) {
        ops::moe_gemm_a8w8_block(
            Gpu{}, ops::Fp8GroupAct{aq_dev.view(), as_dev.view()}, ids,
            ops::Fp8BlockExperts{wq_dev.experts(c.experts), ws_dev.experts(c.experts), block_n},
            out);
      },
      [&](index_t a_row, std::int32_t e, index_t col) {
        return exact_fp8(aq.row(a_row), as.row(a_row), wq.row(e * c.n + col),
                         ws.row(e * blocks + col / block_n), c.k_dim);
      });
}

// Decode-sized batches (T * k <= E: a CTA per row, each expert led by its first row) and larger
// ones (rows grouped by expert first, a CTA per expert); an expert with more rows than one chunk
// (16): 300 rows each at T = 300.
std::vector<Case> cases(index_t bad_every) {
  std::vector<Case> all;
  for (const bool per_slot : {false, true}) {
    for (const index_t t : {1, 3, 17}) all.push_back({5, 17, 200, 2, t, per_slot, bad_every});
    for (const index_t t : {1, 3}) all.push_back({5, 769, 4097, 4, t, per_slot, bad_every});
    all.push_back({64, 33, 128, 8, 17, per_slot, bad_every});
    all.push_back({2, 3, 32, 2, 300, per_slot, bad_every});
    all.push_back({7, 5, 96, 1, 3, per_slot, bad_every});
  }
  return all;
}

}  // namespace

TEST_CASE("gpu moe: moe_gemm_a16w16 is within its bound of the exact products") {
  REQUIRE(have_gpu());
  for (const Case& c : cases(0)) check_a16w16(c);
}

TEST_CASE("gpu moe: moe_gemm_a8w8_block is within its bound, block_n 128 and 3") {
  REQUIRE(have_gpu());
  for (const Case& c : cases(0))
    for (const index_t block_n : {128, 3}) check_a8w8(c, block_n);
}

TEST_CASE("gpu moe: an expert id out of range gives a NaN row in the bf16 and FP8 GEMMs") {
  REQUIRE(have_gpu());
  for (const Case& c : cases(3)) {
    check_a16w16(c);
    check_a8w8(c, 128);
  }
}

TEST_CASE("gpu moe: moe_gemm_a16w16 and moe_gemm_a8w8_block reject bad shapes") {
  REQUIRE(have_gpu());
  const std::vector<std::int32_t> ids(4, 0);
  const gpu::Buffer<std::int32_t> ids_dev(ids);
  const auto ids_view = make_view(static_cast<const std::int32_t*>(ids_dev.data()), 2, 2);
  gpu::Buffer<bf16> out(std::size_t{4} * 8);
  const auto out_view = make_view(out.data(), 4, 8);
  gpu::Buffer<bf16> a(std::size_t{3} * 64);
  gpu::Buffer<bf16> w(std::size_t{2} * 8 * 64);
  CHECK_THROWS_WITH(ops::moe_gemm_a16w16(Gpu{}, ops::Bf16Act{make_view(a.data(), 3, 64)}, ids_view,
                                         ops::Bf16Experts{make_view(w.data(), 2, 8, 64)}, out_view),
                    Catch::Contains("moe_gemm_a16w16") &&
                        Catch::Contains("argument 'a' has 3 rows, expected T = 2 or T * k = 4"));
  gpu::Buffer<fp8_e4m3> aq(std::size_t{2} * 64);
  gpu::Buffer<float> as(std::size_t{2} * 1);
  gpu::Buffer<fp8_e4m3> wq(std::size_t{2} * 8 * 64);
  gpu::Buffer<float> ws(std::size_t{2} * 2 * 1);
  const ops::Fp8GroupAct fp8_a{make_view(aq.data(), 2, 64), make_view(as.data(), 2, 1)};
  // block_n 4 gives two block rows per expert; scales for one are rejected.
  CHECK_THROWS_WITH(ops::moe_gemm_a8w8_block(Gpu{}, fp8_a, ids_view,
                                             ops::Fp8BlockExperts{make_view(wq.data(), 2, 8, 64),
                                                                  make_view(ws.data(), 2, 1, 1), 4},
                                             out_view),
                    Catch::Contains("moe_gemm_a8w8_block") && Catch::Contains("'w.scale'") &&
                        Catch::Contains("expected [2, 2, 1]"));
  CHECK_THROWS_WITH(
      ops::moe_gemm_a8w8_block(
          Gpu{}, fp8_a, ids_view,
          ops::Fp8BlockExperts{make_view(wq.data(), 2, 8, 64), make_view(ws.data(), 2, 2, 1), -1},
          out_view),
      Catch::Contains("moe_gemm_a8w8_block") && Catch::Contains("block_n = -1"));
}
