// Every generated instantiation against its all-separate reference (the same GEMM backend and BMM
// format, every fusion off, one stream) on random tiny-model inputs.
#include <catch2/catch.hpp>

#include <cmath>
#include <map>
#include <memory>

#include "atom/pipeline/harness.hpp"
#include "instances.hpp"

using namespace atom;
using namespace atom::policy;

namespace {

const pipeline::ModelConfig& model_for(PipelineId p) {
  static const auto ds = pipeline::preset("deepseek-v3-tiny");
  static const auto qwen = pipeline::preset("qwen3-30b-a3b-tiny");
  return p == PipelineId::qwen3_attention ? qwen : ds;
}

// Random weights in the instance's weight format.
const pipeline::LayerWeights& weights_for(const pipeline::ModelConfig& m, WeightFormat f) {
  static std::map<std::pair<std::string, WeightFormat>, std::unique_ptr<pipeline::LayerWeights>>
      cache;
  auto& w = cache[{m.name, f}];
  if (!w) w = std::make_unique<pipeline::LayerWeights>(m, 42, f);
  return *w;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("each instantiation matches its all-separate reference", "",
                        instances::host) {
  constexpr PipelineId P = TestType::pipeline;
  const auto& model = model_for(P);
  const auto handle = dispatch::resolve_point<P>(TestType::point, TestType::backend);
  for (const auto& contexts : std::vector<std::vector<std::int32_t>>{{1}, {17, 3, 40}}) {
    const pipeline::RunInputs in{&model,
                                 &weights_for(model, TestType::point.template get<WeightFormat>()),
                                 contexts, 7, 1024};
    pipeline::RunOutput got;
    const auto check = pipeline::check_against_reference(handle, in, &got);
    INFO(handle.name() << " vs " << check.reference << ": out error " << check.out_error
                       << ", residual error " << check.residual_error << ", bound " << check.bound);
    CHECK(check.ok);
    CHECK(check.residual_error <= check.bound);
    CHECK(check.out_error <= check.bound);
    for (float v : got.out) REQUIRE_FALSE(std::isnan(v));
  }
}
