#include <catch2/catch.hpp>

#include "atom/dispatch/dispatch.hpp"
#include "atom/pipeline/pipelines.hpp"
#include "atom/policy/space.hpp"
#include "built.hpp"

using namespace atom;
using namespace atom::policy;

namespace {
bool built(PipelineId p, BackendId b, const env::Config& c) {
  return test::built(key(p, b, resolve(p, c)));
}
}  // namespace

TEST_CASE("the table is sorted by key and names each entry by its point") {
  const auto rows = dispatch::table<PipelineId::mla_attention>();
  std::size_t listed = 0;
  for (const Point& x : canonical_points<pipeline::Declared<PipelineId::mla_attention>::reads>)
    for (BackendId b : {BackendId::host, BackendId::gpu})
      listed += test::built(key(PipelineId::mla_attention, b, x));
  REQUIRE(rows.size() == listed);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (i > 0) CHECK(rows[i - 1].key < rows[i].key);
    CHECK(rows[i].name == instance_name(PipelineId::mla_attention, key_backend(rows[i].key),
                                        key_point(rows[i].key)));
    CHECK(rows[i].run != nullptr);
  }
}

TEST_CASE("resolving the default environment") {
  if (!built(PipelineId::mla_attention, BackendId::host, env::Config{}) ||
      !built(PipelineId::qwen3_attention, BackendId::host,
             env::Config::from({{"ATOM_USE_TRITON_GEMM", "yes"},
                                {"ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION", "on"}}))) {
    WARN("this build profile has not compiled the instances this test names");
    return;
  }
  const auto h = dispatch::resolve<PipelineId::mla_attention>(env::Config{}, BackendId::host);
  CHECK(h.name() ==
        "mla_attention.host.gemm-asm.bmm-fp8.ar-fused.inq-fused.qk-fused_quant.w-mxfp4");
  CHECK(h.point().get<QkNorm>() == QkNorm::fused_quant);
  const auto q = dispatch::resolve<PipelineId::qwen3_attention>(
      env::Config::from(
          {{"ATOM_USE_TRITON_GEMM", "yes"}, {"ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION", "on"}}),
      BackendId::host);
  CHECK(q.name() == "qwen3_attention.host.gemm-triton.ar-fused.qkrc-fused.w-mxfp4.kv-fp8row");
}

TEST_CASE("a miss names the requested point, the missing axis value and what exists") {
  // A table without GPU instantiations (a build without a GPU backend): the miss says so and
  // lists the table.
  std::vector<std::pair<Key, std::string_view>> host_only;
  for (const auto& e : dispatch::table<PipelineId::moe_block>())
    if (key_backend(e.key) == BackendId::host) host_only.emplace_back(e.key, e.name);
  const std::string no_gpu =
      dispatch::miss_message(PipelineId::moe_block, BackendId::gpu,
                             resolve(PipelineId::moe_block, env::Config{}), host_only);
  CHECK_THAT(no_gpu,
             Catch::StartsWith(
                 "no instantiation of moe_block on the gpu backend for "
                 "gemm_backend=asm allreduce_norm=fused moe_streams=dual weight_format=mxfp4: "));
  CHECK_THAT(no_gpu, Catch::Contains("this build has no gpu instantiation of it"));
  CHECK_THAT(no_gpu, Catch::Contains("\n  moe_block.host.gemm-asm.ar-separate.moe-single.w-mxfp4"));
  if (built(PipelineId::moe_block, BackendId::gpu, env::Config{})) {
    const auto h = dispatch::resolve<PipelineId::moe_block>(env::Config{}, BackendId::gpu);
    CHECK(h.name() == "moe_block.gpu.gemm-asm.ar-fused.moe-dual.w-mxfp4");
  } else {
    CHECK_THROWS_AS(dispatch::resolve<PipelineId::moe_block>(env::Config{}, BackendId::gpu),
                    dispatch::DispatchError);
  }
  // A profile without any triton GEMM: the miss names that axis value.
  const Point want = make_point({GemmBackend::portable});
  std::vector<std::pair<Key, std::string_view>> available;
  for (const auto& p : canonical_points<pipeline::Declared<PipelineId::moe_block>::reads>)
    if (p.get<GemmBackend>() == GemmBackend::matrix_core)
      available.emplace_back(key(PipelineId::moe_block, BackendId::host, p), "x");
  const std::string m = dispatch::miss_message(PipelineId::moe_block, BackendId::host,
                                               canonical(PipelineId::moe_block, want), available);
  CHECK_THAT(m, Catch::Contains(": no instantiation has gemm_backend=triton; available:"));
  // Every value present but not the combination.
  available.resize(1);
  const Point combo = make_point({AllReduceNorm::fused});
  available.emplace_back(
      key(PipelineId::moe_block, BackendId::host, make_point({MoeStreams::dual})), "y");
  const std::string c = dispatch::miss_message(
      PipelineId::moe_block, BackendId::host,
      canonical(PipelineId::moe_block, combo.with(MoeStreams::dual)), available);
  CHECK_THAT(c, Catch::Contains("no instantiation has allreduce_norm=fused"));
}
