// Tensor parallelism in the pipelines, on the host (ranks as threads): every instantiation at
// TP 2, 4 and 8 against TP 1 on the same weights, the fused and the separate all-reduce against
// each other, the splits (KV heads replicated, experts parallel, blocks replicated) and their
// errors, and a dead or stuck rank.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <stdexcept>
#include <thread>

#include "atom/dist/tp.hpp"
#include "atom/pipeline/harness.hpp"
#include "atom/pipeline/tp.hpp"
#include "instances.hpp"

using namespace atom;
using namespace atom::policy;
using pipeline::ModelConfig;
using pipeline::Part;
using pipeline::TpShape;

namespace {

// The tiny presets with dimensions that split at 2, 4 and 8 ranks. DeepSeek: 8 heads of 32
// value columns (at TP 8 an FP8 o_proj would cut its 128-column blocks: the attention is
// replicated there), a dense MLP of 1024 and experts of 256 (at TP 4 and 8 FP8 experts would cut
// a block: expert parallel). Qwen3: 8 query heads over 2 KV heads (split at TP 2, replicated at
// 4 and 8).
const ModelConfig& model_for(PipelineId p) {
  static const ModelConfig ds = [] {
    ModelConfig m = pipeline::preset("deepseek-v3-tiny");
    m.num_heads = 8;
    m.intermediate = 1024;
    m.moe_intermediate = 256;
    return m;
  }();
  static const ModelConfig qwen = pipeline::preset("qwen3-30b-a3b-tiny");
  return p == PipelineId::qwen3_attention ? qwen : ds;
}

const pipeline::LayerWeights& weights_for(const ModelConfig& m, WeightFormat f) {
  static std::map<std::pair<std::string, WeightFormat>, std::unique_ptr<pipeline::LayerWeights>>
      cache;
  auto& w = cache[{m.name, f}];
  if (!w) w = std::make_unique<pipeline::LayerWeights>(m, 42, f);
  return *w;
}

pipeline::RunInputs inputs_for(PipelineId p, WeightFormat f) {
  const ModelConfig& m = model_for(p);
  return {&m, &weights_for(m, f), {17, 3, 40, 1}, 7, 1024};
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("TP 2, 4 and 8 match TP 1 for every instantiation", "[tp]",
                        instances::host) {
  constexpr PipelineId P = TestType::pipeline;
  const auto handle = dispatch::resolve_point<P>(TestType::point, TestType::backend);
  const auto in = inputs_for(P, TestType::point.template get<WeightFormat>());
  const pipeline::RunOutput want = pipeline::run_once(handle, in);
  for (const index_t size : {2, 4, 8}) {
    const pipeline::RunOutput got = pipeline::run_tp(handle, in, size);
    const double out_error = pipeline::relative_error(got.out, want.out);
    const double bound = pipeline::tp_error_bound(P, size);
    INFO(handle.name() << " at TP " << size << ": out error " << out_error << ", bound " << bound);
    // The residual add sees exactly the size-1 input.
    CHECK(got.residual == want.residual);
    CHECK(out_error <= bound);
    for (float v : got.out) REQUIRE_FALSE(std::isnan(v));
  }
}

TEMPLATE_LIST_TEST_CASE("TP: the fused and the separate all-reduce compute the same bits", "[tp]",
                        instances::host) {
  constexpr PipelineId P = TestType::pipeline;
  constexpr Point fused = TestType::point;
  if constexpr (fused.template get<AllReduceNorm>() == AllReduceNorm::fused) {
    const Point separate = canonical(P, fused.with(AllReduceNorm::separate));
    if (dispatch::find<P>(key(P, BackendId::host, separate)) == nullptr) return;  // not built
    const auto a = dispatch::resolve_point<P>(fused, BackendId::host);
    const auto b = dispatch::resolve_point<P>(separate, BackendId::host);
    const auto in = inputs_for(P, fused.template get<WeightFormat>());
    INFO(a.name() << " against " << b.name() << " at TP 2");
    const auto x = pipeline::run_tp(a, in, 2);
    const auto y = pipeline::run_tp(b, in, 2);
    CHECK(x.out == y.out);
    CHECK(x.residual == y.residual);
  }
}

TEST_CASE("TP splits: heads, KV heads, experts and replicated blocks", "[tp]") {
  const ModelConfig qwen = pipeline::preset("qwen3-30b-a3b");  // 32 heads, 4 KV heads, 128 experts
  SECTION("KV heads split while the size divides them, replicated beyond") {
    auto s = pipeline::attention_split(qwen, {1, 2}, WeightFormat::mxfp4);
    CHECK(s.heads.begin == 16);
    CHECK(s.heads.count == 16);
    CHECK(s.kv_heads.begin == 2);
    CHECK(s.kv_heads.count == 2);
    for (index_t r = 0; r < 8; ++r) {
      s = pipeline::attention_split(qwen, {r, 8}, WeightFormat::bf16);
      CHECK(s.heads.count == 4);
      CHECK(s.kv_heads.begin == r / 2);  // each KV head on two ranks, with its query heads
      CHECK(s.kv_heads.count == 1);
      CHECK((s.heads.begin / 8) == s.kv_heads.begin);
      CHECK_FALSE(s.replicated);
    }
  }
  SECTION("experts split on whole quant groups, expert parallel where a split would cut one") {
    // moe_intermediate 768: 384 = 3 x 128 at TP 2, 192 at TP 4 (cuts a 128-block), 96 at TP 8.
    auto e = pipeline::expert_split(qwen, {1, 2}, WeightFormat::fp8_block);
    CHECK_FALSE(e.expert_parallel);
    CHECK(e.intermediate.begin == 384);
    CHECK(e.intermediate.count == 384);
    e = pipeline::expert_split(qwen, {3, 4}, WeightFormat::fp8_block);
    CHECK(e.expert_parallel);
    CHECK(e.experts.begin == 96);
    CHECK(e.experts.count == 32);
    CHECK(e.intermediate.count == 768);
    e = pipeline::expert_split(qwen, {7, 8}, WeightFormat::mxfp4);  // 96 = 3 x 32
    CHECK_FALSE(e.expert_parallel);
    CHECK(e.intermediate.begin == 672);
  }
  SECTION("a dense MLP that would cut a group is computed by rank 0 alone") {
    CHECK_FALSE(pipeline::mlp_split(18432, {0, 8}, WeightFormat::fp8_block).replicated);
    const auto d = pipeline::mlp_split(192, {1, 2}, WeightFormat::fp8_block);
    CHECK(d.replicated);
    CHECK_FALSE(d.computes({1, 2}));
    CHECK(d.computes({0, 2}));
  }
  SECTION("impossible splits are clear errors") {
    CHECK_THROWS_WITH(pipeline::attention_split(qwen, {0, 3}, WeightFormat::mxfp4),
                      Catch::Contains("32 query heads are not divisible by the size") &&
                          Catch::Contains("tensor parallel size 3 cannot split qwen3-30b-a3b"));
    ModelConfig odd = qwen;
    odd.num_heads = 12;
    odd.num_kv_heads = 3;
    CHECK_THROWS_WITH(pipeline::attention_split(odd, {0, 2}, WeightFormat::mxfp4),
                      Catch::Contains("3 KV heads neither divide nor are divided by the size"));
    const ModelConfig few = pipeline::preset("qwen3-30b-a3b-tiny");  // 64-wide experts, 16 of them
    CHECK_THROWS_WITH(pipeline::expert_split(few, {0, 3}, WeightFormat::fp8_block),
                      Catch::Contains("16 experts are not divisible by the size"));
    CHECK_THROWS_WITH(pipeline::attention_split(qwen, {2, 2}, WeightFormat::mxfp4),
                      Catch::Contains("rank 2 of size 2 is not a rank of the group"));
  }
}

TEST_CASE("TP: a rank that fails or never arrives ends every rank with a clear error", "[tp]") {
  using namespace std::chrono_literals;
  std::vector<bf16> data(4 * 8, to_bf16(1.0f));
  SECTION("a rank that throws: the others' collectives stop at once, its error is rethrown") {
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::string> seen(4);
    CHECK_THROWS_WITH(pipeline::run_ranks(
                          4,
                          [&](pipeline::TpComm& comm) {
                            std::vector<bf16> mine = data;
                            const auto v = make_view(mine.data(), index_t{4}, index_t{8});
                            if (comm.rank() == 2)
                              throw std::runtime_error("rank 2 lost its device");
                            try {
                              comm.all_reduce(v, v, nullptr);
                            } catch (const dist::TpError& e) {
                              seen[static_cast<std::size_t>(comm.rank())] = e.what();
                              throw;
                            }
                          },
                          10s),
                      Catch::Equals("rank 2 lost its device"));
    CHECK(std::chrono::steady_clock::now() - start < 5s);
    for (index_t r : {0, 1, 3})
      CHECK_THAT(seen[static_cast<std::size_t>(r)],
                 Catch::Contains("all_reduce failed: rank 2 failed: rank 2 lost its device"));
  }
  SECTION("a rank that never arrives: the others give up after the timeout, naming it") {
    CHECK_THROWS_WITH(pipeline::run_ranks(
                          3,
                          [&](pipeline::TpComm& comm) {
                            if (comm.rank() == 1) return;  // stuck: never calls the collective
                            std::vector<bf16> mine = data;
                            const auto v = make_view(mine.data(), index_t{4}, index_t{8});
                            comm.all_reduce(v, v, nullptr);
                          },
                          200ms),
                      Catch::Contains("for rank(s) 1, which did not arrive"));
  }
  SECTION("the sum is taken in rank order and every rank holds it") {
    pipeline::run_ranks(3, [&](pipeline::TpComm& comm) {
      std::vector<bf16> mine(4 * 8, to_bf16(static_cast<float>(comm.rank() + 1)));
      const auto v = make_view(mine.data(), index_t{4}, index_t{8});
      comm.all_reduce(v, v, nullptr);
      for (const bf16 x : mine) REQUIRE(to_float(x) == 6.0f);
    });
  }
  SECTION("a group size outside 1..8 is refused") {
    CHECK_THROWS_WITH(pipeline::HostTpGroup(9), Catch::Contains("size 9 is outside 1..8"));
  }
}
