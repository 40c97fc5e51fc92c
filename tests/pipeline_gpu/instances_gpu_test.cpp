// Every GPU instantiation against the host instantiation of the same point (same weights, inputs
// and caches, uploaded), on random tiny-model inputs; and the GPU backend's own contract: a weight
// not prepared for the point's GEMM backend is a clear error.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <map>
#include <memory>

#include "atom/pipeline/harness_gpu.hpp"
#include "instances.hpp"

using namespace atom;
using namespace atom::policy;

namespace {

const pipeline::ModelConfig& model_for(PipelineId p) {
  static const auto ds = pipeline::preset("deepseek-v3-tiny");
  static const auto qwen = pipeline::preset("qwen3-30b-a3b-tiny");
  return p == PipelineId::qwen3_attention ? qwen : ds;
}

struct Weights {
  pipeline::LayerWeights host;
  pipeline::DeviceLayerWeights device;
  Weights(const pipeline::ModelConfig& m, WeightFormat f)
      : host(m, 42, f), device(m, host, {GemmBackend::matrix_core, GemmBackend::portable}) {}
};

// Random weights in the instance's weight format, on the host and the device.
const Weights& weights_for(const pipeline::ModelConfig& m, WeightFormat f) {
  // Thread-local, so that it is freed before the GPU runtime shuts down at exit.
  thread_local std::map<std::pair<std::string, WeightFormat>, std::unique_ptr<Weights>> cache;
  auto& w = cache[{m.name, f}];
  if (!w) w = std::make_unique<Weights>(m, f);
  return *w;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("each GPU instantiation matches the host one of its point", "",
                        instances::gpu) {
  constexpr PipelineId P = TestType::pipeline;
  const auto& model = model_for(P);
  const auto& w = weights_for(model, TestType::point.template get<WeightFormat>());
  const auto handle = dispatch::resolve_point<P>(TestType::point, BackendId::gpu);
  for (const auto& contexts :
       std::vector<std::vector<std::int32_t>>{{1}, {17, 3, 40}, {64, 1, 129, 5, 33}}) {
    const pipeline::RunInputs in{&model, &w.host, contexts, 7, 1024};
    pipeline::RunOutput got;
    const auto check = pipeline::check_against_host(handle, in, w.device, &got);
    INFO(handle.name() << " vs " << check.reference << ", " << contexts.size()
                       << " tokens: out error " << check.out_error << ", residual error "
                       << check.residual_error << ", bound " << check.bound);
    CHECK(check.ok);
    CHECK(check.residual_error <= check.bound);
    CHECK(check.out_error <= check.bound);
    for (float v : got.out) REQUIRE_FALSE(std::isnan(v));
    // The measured errors, printed for the bounds in harness_gpu.cpp.
    std::printf("error %s T=%zu out %.3e residual %.3e\n", std::string(handle.name()).c_str(),
                contexts.size(), check.out_error, check.residual_error);
  }
}

TEST_CASE("a GPU pipeline without its GEMM backend's weights names the backend") {
  const auto& model = model_for(PipelineId::moe_block);
  const pipeline::LayerWeights host(model, 42);
  const pipeline::DeviceLayerWeights portable_only(model, host, {GemmBackend::portable});
  const auto handle = dispatch::resolve_point<PipelineId::moe_block>(
      make_point({GemmBackend::matrix_core}), BackendId::gpu);
  const pipeline::RunInputs in{&model, &host, {5, 9}, 7, 1024};
  CHECK_THROWS_WITH(pipeline::run_once_gpu(handle, in, portable_only),
                    Catch::Contains("no device copy prepared for GEMM backend asm"));
}

TEST_CASE("GPU runs are deterministic and leave the inputs' copies alone") {
  const auto& model = model_for(PipelineId::mla_attention);
  const auto& w = weights_for(model, WeightFormat::mxfp4);
  const auto handle = dispatch::resolve<PipelineId::mla_attention>(env::Config{}, BackendId::gpu);
  const pipeline::RunInputs in{&model, &w.host, {40, 1, 77}, 3, 1024};
  const auto a = pipeline::run_once_gpu(handle, in, w.device);
  const auto b = pipeline::run_once_gpu(handle, in, w.device);
  CHECK(a.out == b.out);
  CHECK(a.residual == b.residual);
}
