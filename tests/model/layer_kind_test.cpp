// Which decoder layers are MoE: DeepSeek's first_k_dense_replace / moe_layer_freq and Qwen3's
// decoder_sparse_step / mlp_only_layers, as the models' modeling code builds them; layers at or
// above num_hidden_layers are not decoder layers.
#include <catch2/catch.hpp>

#include <stdexcept>
#include <vector>

#include "atom/pipeline/model.hpp"

using namespace atom;
using namespace atom::pipeline;
using Catch::Matchers::Contains;

namespace {

std::vector<LayerKind> kinds(const ModelConfig& m) {
  std::vector<LayerKind> out;
  for (index_t l = 0; l < m.num_layers; ++l) out.push_back(layer_kind(m, l));
  return out;
}

constexpr LayerKind D = LayerKind::dense_mlp;
constexpr LayerKind E = LayerKind::moe;

}  // namespace

TEST_CASE(
    "DeepSeek-V3: three dense layers, then 58 MoE layers, and layer 61 is not a decoder layer",
    "[layer_kind]") {
  const ModelConfig m = preset("deepseek-v3");
  for (index_t l = 0; l < 3; ++l) CHECK(layer_kind(m, l) == D);
  for (index_t l = 3; l < 61; ++l) CHECK(layer_kind(m, l) == E);
  CHECK_THROWS_AS(layer_kind(m, 61), std::out_of_range);
  CHECK_THROWS_WITH(layer_kind(m, 61), Contains("layer 61") && Contains("num_hidden_layers 61"));
  CHECK_THROWS_AS(layer_kind(m, -1), std::out_of_range);
}

TEST_CASE("DeepSeek: moe_layer_freq and a model without routed experts", "[layer_kind]") {
  ModelConfig m = preset("deepseek-v3-tiny");
  m.num_layers = 7;
  m.first_k_dense = 1;
  m.moe_layer_freq = 2;
  CHECK(kinds(m) == std::vector<LayerKind>{D, D, E, D, E, D, E});
  m.first_k_dense = 0;
  m.moe_layer_freq = 3;
  CHECK(kinds(m) == std::vector<LayerKind>{E, D, D, E, D, D, E});
  m.num_experts = 0;
  CHECK(kinds(m) == std::vector<LayerKind>(7, D));
}

TEST_CASE("Qwen3: every layer MoE by default, then decoder_sparse_step and mlp_only_layers",
          "[layer_kind]") {
  ModelConfig m = preset("qwen3-30b-a3b");
  CHECK(kinds(m) == std::vector<LayerKind>(48, E));
  CHECK_THROWS_AS(layer_kind(m, 48), std::out_of_range);
  m.num_layers = 6;
  m.decoder_sparse_step = 2;  // (l + 1) % 2 == 0: layers 1, 3, 5
  CHECK(kinds(m) == std::vector<LayerKind>{D, E, D, E, D, E});
  m.mlp_only_layers = {3};
  CHECK(kinds(m) == std::vector<LayerKind>{D, E, D, D, D, E});
  m.decoder_sparse_step = 1;
  m.mlp_only_layers = {0, 5};
  CHECK(kinds(m) == std::vector<LayerKind>{D, E, E, E, E, D});
  m.num_experts = 0;
  CHECK(kinds(m) == std::vector<LayerKind>(6, D));
}
