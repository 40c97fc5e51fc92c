// The host check's sample (pipeline/harness.hpp): a run on some sequences of a batch equals the
// rows of those sequences in a run of the whole batch, bit for bit, for every pipeline (sequences
// of two query tokens, over one set of caches); and which sequences a check takes.
#include <catch2/catch.hpp>

#include <string_view>
#include <vector>

#include "atom/pipeline/harness.hpp"

using namespace atom;
using policy::PipelineId;

namespace {

template <PipelineId P>
void check_sample_rows(const char* preset) {
  CAPTURE(preset, policy::pipeline_name(P));
  const pipeline::ModelConfig m = pipeline::preset(preset);
  const pipeline::LayerWeights w(m, 5);
  const pipeline::RunInputs in{&m, &w, {9, 40, 17, 70, 3}, 11, 1024, 2};
  const auto handle =
      dispatch::resolve_point<P>(policy::point_from(env::Config{}), policy::BackendId::host);
  const pipeline::RunOutput whole = pipeline::run_once(handle, in);
  for (const std::vector<index_t>& sample :
       {std::vector<index_t>{0, 2, 4}, std::vector<index_t>{3}, std::vector<index_t>{1, 2}}) {
    const pipeline::RunOutput part = pipeline::run_sample(handle, in, sample);
    const pipeline::RunOutput want = pipeline::sample_rows(whole, in, sample);
    REQUIRE(part.out.size() == sample.size() * 2 * static_cast<std::size_t>(m.hidden));
    CHECK(part.out == want.out);
    CHECK(part.residual == want.residual);
  }
  CHECK_THROWS_WITH(pipeline::run_sample(handle, in, {2, 1}), Catch::Contains("must increase"));
  CHECK_THROWS_WITH(pipeline::run_sample(handle, in, {5}), Catch::Contains("must increase"));
}

}  // namespace

TEST_CASE("a sample of a batch's sequences runs as those rows of the whole batch, bit for bit") {
  check_sample_rows<PipelineId::mla_attention>("deepseek-v3-tiny");
  check_sample_rows<PipelineId::moe_block>("deepseek-v3-tiny");
  check_sample_rows<PipelineId::dense_mlp>("deepseek-v3-tiny");
  check_sample_rows<PipelineId::qwen3_attention>("qwen3-30b-a3b-tiny");
  check_sample_rows<PipelineId::moe_block>("qwen3-30b-a3b-tiny");
}

TEST_CASE("a host check takes every sequence of a small run, an even sample of a large one") {
  const pipeline::ModelConfig tiny = pipeline::preset("deepseek-v3-tiny");
  const pipeline::RunInputs small{&tiny, nullptr, {40, 50, 64, 33}};
  CHECK(pipeline::check_sample(PipelineId::mla_attention, small) ==
        std::vector<index_t>{0, 1, 2, 3});
  // DeepSeek-V3's MLA over 64 sequences at context 4096: 128 heads x 4096 rows x 1088
  // multiply-adds per token for the attention alone, 37 G in all, beyond the budget.
  const pipeline::ModelConfig ds = pipeline::preset("deepseek-v3");
  const pipeline::RunInputs large{&ds, nullptr, std::vector<std::int32_t>(64, 4096)};
  const double macs = pipeline::host_macs(PipelineId::mla_attention, large);
  CHECK(macs > 64 * 128 * 4096.0 * 1088);
  const std::vector<index_t> sample = pipeline::check_sample(PipelineId::mla_attention, large);
  REQUIRE(sample.size() >= 2);
  CHECK(sample.size() < 64);
  CHECK(sample.front() == 0);
  CHECK(sample.back() == 63);
  CHECK(static_cast<double>(sample.size()) * macs / 64 <= pipeline::check_budget_macs);
  for (std::size_t i = 1; i < sample.size(); ++i) CHECK(sample[i] > sample[i - 1]);
  // Its MoE block over the same tokens: 9 experts x 3 x 2048 x 7168 per token, 25 G.
  CHECK(pipeline::check_sample(PipelineId::moe_block, large).size() < 64);
  // One token whose work alone exceeds the budget is still checked.
  const pipeline::RunInputs one{&ds, nullptr, {163840}};
  CHECK(pipeline::check_sample(PipelineId::mla_attention, one) == std::vector<index_t>{0});
}
