#include "atom/pipeline/model.hpp"

#include <algorithm>
#include <stdexcept>

namespace atom::pipeline {

namespace {

ModelConfig deepseek_v3() {
  ModelConfig m;
  m.name = "deepseek-v3";
  m.architecture = Architecture::deepseek_v3;
  m.attention = AttentionKind::mla;
  m.hidden = 7168;
  m.num_layers = 61;
  m.rms_eps = 1e-6f;
  m.rope_theta = 10000.0f;
  m.rope_scaling.kind = ops::RopeScaling::Kind::yarn;
  m.rope_scaling.factor = 40.0;
  m.rope_scaling.original_max_position = 4096;
  m.rope_scaling.beta_fast = 32.0;
  m.rope_scaling.beta_slow = 1.0;
  m.rope_scaling.mscale = 1.0;
  m.rope_scaling.mscale_all_dim = 1.0;
  m.rope_style = ops::RopeStyle::interleaved;
  m.max_position = 163840;
  m.block_size = 64;
  m.q_lora_rank = 1536;
  m.kv_lora_rank = 512;
  m.qk_rope_dim = 64;
  m.qk_nope_dim = 128;
  m.v_head_dim = 128;
  m.num_heads = 128;
  m.intermediate = 18432;
  m.first_k_dense = 3;
  m.moe_layer_freq = 1;
  m.router = RouterKind::sigmoid_grouped;
  m.num_experts = 256;
  m.top_k = 8;
  m.n_group = 8;
  m.topk_group = 4;
  m.moe_intermediate = 2048;
  m.num_shared_experts = 1;
  m.routed_scaling = 2.5f;
  m.renormalize = true;
  return m;
}

ModelConfig qwen3_30b_a3b() {
  ModelConfig m;
  m.name = "qwen3-30b-a3b";
  m.architecture = Architecture::qwen3_moe;
  m.attention = AttentionKind::gqa;
  m.hidden = 2048;
  m.num_layers = 48;
  m.rms_eps = 1e-6f;
  m.rope_theta = 1000000.0f;
  m.rope_style = ops::RopeStyle::neox;
  m.max_position = 40960;
  m.block_size = 16;
  m.num_heads = 32;
  m.num_kv_heads = 4;
  m.head_dim = 128;
  m.intermediate = 6144;
  m.decoder_sparse_step = 1;
  m.router = RouterKind::softmax;
  m.num_experts = 128;
  m.top_k = 8;
  m.moe_intermediate = 768;
  m.num_shared_experts = 0;
  m.renormalize = true;
  return m;
}

}  // namespace

std::vector<std::string> preset_names() {
  return {"deepseek-v3", "deepseek-v3-tiny", "qwen3-30b-a3b", "qwen3-30b-a3b-tiny"};
}

ModelConfig preset(std::string_view name) {
  if (name == "deepseek-v3") return deepseek_v3();
  if (name == "qwen3-30b-a3b") return qwen3_30b_a3b();
  if (name == "deepseek-v3-tiny") {
    ModelConfig m = deepseek_v3();
    m.name = "deepseek-v3-tiny";
    m.hidden = 256;
    m.num_layers = 4;
    // YaRN over a short original context, so that the scaling changes every table row past 256.
    m.rope_scaling.factor = 16.0;
    m.rope_scaling.original_max_position = 256;
    m.max_position = 4096;
    m.block_size = 16;
    m.q_lora_rank = 96;
    m.kv_lora_rank = 64;
    m.qk_rope_dim = 16;
    m.qk_nope_dim = 32;
    m.v_head_dim = 32;
    m.num_heads = 4;
    m.intermediate = 192;
    m.first_k_dense = 1;
    m.num_experts = 16;
    m.top_k = 4;
    m.n_group = 4;
    m.topk_group = 2;
    m.moe_intermediate = 64;
    return m;
  }
  if (name == "qwen3-30b-a3b-tiny") {
    ModelConfig m = qwen3_30b_a3b();
    m.name = "qwen3-30b-a3b-tiny";
    m.hidden = 256;
    m.num_layers = 4;
    m.max_position = 4096;
    m.num_heads = 8;
    m.num_kv_heads = 2;
    m.head_dim = 32;
    m.intermediate = 192;
    m.num_experts = 16;
    m.top_k = 4;
    m.moe_intermediate = 64;
    return m;
  }
  std::string known;
  for (const auto& n : preset_names()) known += (known.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown model preset '" + std::string(name) + "'; known: " + known);
}

LayerKind layer_kind(const ModelConfig& m, index_t layer) {
  if (layer < 0 || layer >= m.num_layers)
    throw std::out_of_range("model " + m.name + ": layer " + std::to_string(layer) +
                            " is not a decoder layer (num_hidden_layers " +
                            std::to_string(m.num_layers) + ")");
  if (m.num_experts <= 0) return LayerKind::dense_mlp;
  if (m.architecture == Architecture::deepseek_v3)
    return layer >= m.first_k_dense && layer % m.moe_layer_freq == 0 ? LayerKind::moe
                                                                     : LayerKind::dense_mlp;
  const bool mlp_only = std::find(m.mlp_only_layers.begin(), m.mlp_only_layers.end(), layer) !=
                        m.mlp_only_layers.end();
  return !mlp_only && (layer + 1) % m.decoder_sparse_step == 0 ? LayerKind::moe
                                                               : LayerKind::dense_mlp;
}

float mla_softmax_scale(const ModelConfig& m) {
  return static_cast<float>(ops::mla_softmax_scale(m.qk_nope_dim + m.qk_rope_dim, m.rope_scaling));
}

}  // namespace atom::pipeline
