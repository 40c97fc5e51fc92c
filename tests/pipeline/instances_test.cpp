// Every generated instantiation against its all-separate reference (the same GEMM backend and BMM
// format, every fusion off, one stream) on random tiny-model inputs.
#include <catch2/catch.hpp>

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
  return (p == PipelineId::qwen3_attention || p == PipelineId::qwen3_layer) ? qwen : ds;
}

const pipeline::LayerWeights& weights_for(const pipeline::ModelConfig& m) {
  static std::map<std::string, std::unique_ptr<pipeline::LayerWeights>> cache;
  auto& w = cache[m.name];
  if (!w) w = std::make_unique<pipeline::LayerWeights>(m, 42);
  return *w;
}

// Relative L2 bounds of fused against separate. A fused producer quantizes float values where the
// separate chain quantizes their bf16 rounding. On the coarse e2m1 grid a value next to a rounding
// boundary then lands one step apart (and a block whose amax crosses a power of two gets another
// scale), so the MXFP4 re-quantizations in MLA attention leave differences of the order of MXFP4's
// own quantization noise (~0.1 measured; bound 0.25). In Qwen3 attention the fused op writes K to
// the FP8 cache from float instead of from bf16: a few percent of the codes move by one e4m3 step
// (2^-3 relative), which the attention and the o_proj's MXFP4 re-quantization carry to the output
// (~0.025 measured; bound 0.06). A wrong rotation, norm or cache slot gives errors near 1. The MoE
// block's fusions compute the same function at TP size 1 (the all-reduce is the identity and
// streams only reorder independent work): it must match exactly.
double bound_for(PipelineId p) {
  switch (p) {
    case PipelineId::moe_block:
      return 0.0;
    case PipelineId::qwen3_attention:
    case PipelineId::qwen3_layer:
      return 0.06;
    default:
      return 0.25;
  }
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("each instantiation matches its all-separate reference", "",
                        instances::all) {
  constexpr PipelineId P = TestType::pipeline;
  const auto& model = model_for(P);
  const auto handle = dispatch::resolve_point<P>(TestType::point, TestType::backend);
  const auto reference =
      dispatch::resolve_point<P>(separate_of(P, TestType::point), TestType::backend);
  INFO(handle.name() << " vs " << reference.name());
  for (const auto& contexts : std::vector<std::vector<std::int32_t>>{{1}, {17, 3, 40}}) {
    const pipeline::RunInputs in{&model, &weights_for(model), contexts, 7, 1024};
    const auto got = pipeline::run_once(handle, in);
    const auto want = pipeline::run_once(reference, in);
    const double bound = bound_for(P);
    const double err_residual = pipeline::relative_error(got.residual, want.residual);
    CHECK(err_residual <= bound);
    if (P == PipelineId::ds_layer || P == PipelineId::qwen3_layer) {
      // A layer's MoE output also depends on routing decisions, which a small difference in the
      // attention output may flip; so the layer is checked to be exactly its two blocks chained
      // (each of which is checked against its reference above) and free of NaN.
      constexpr PipelineId A =
          P == PipelineId::ds_layer ? PipelineId::mla_attention : PipelineId::qwen3_attention;
      const auto chained = pipeline::run_chained(
          dispatch::resolve_point<A>(TestType::point, TestType::backend),
          dispatch::resolve_point<PipelineId::moe_block>(TestType::point, TestType::backend), in);
      CHECK(got.out == chained.out);
      CHECK(got.residual == chained.residual);
      CHECK(pipeline::relative_error(got.out, got.out) == 0.0);
    } else {
      CHECK(pipeline::relative_error(got.out, want.out) <= bound);
    }
  }
}
