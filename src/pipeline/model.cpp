#include "atom/pipeline/model.hpp"

#include <stdexcept>

namespace atom::pipeline {

namespace {

ModelConfig deepseek_v3() {
  ModelConfig m;
  m.name = "deepseek-v3";
  m.attention = AttentionKind::mla;
  m.hidden = 7168;
  m.max_position = 163840;
  m.block_size = 64;
  m.q_lora_rank = 1536;
  m.kv_lora_rank = 512;
  m.qk_rope_dim = 64;
  m.qk_nope_dim = 128;
  m.v_head_dim = 128;
  m.num_heads = 128;
  m.router = RouterKind::sigmoid_grouped;
  m.num_experts = 256;
  m.top_k = 8;
  m.n_group = 8;
  m.topk_group = 4;
  m.moe_intermediate = 2048;
  m.num_shared_experts = 1;
  m.routed_scaling = 2.5f;
  return m;
}

ModelConfig qwen3_30b_a3b() {
  ModelConfig m;
  m.name = "qwen3-30b-a3b";
  m.attention = AttentionKind::gqa;
  m.hidden = 2048;
  m.rope_theta = 1000000.0f;
  m.max_position = 40960;
  m.block_size = 16;
  m.num_heads = 32;
  m.num_kv_heads = 4;
  m.head_dim = 128;
  m.router = RouterKind::softmax;
  m.num_experts = 128;
  m.top_k = 8;
  m.moe_intermediate = 768;
  m.num_shared_experts = 0;
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
    m.max_position = 4096;
    m.block_size = 16;
    m.q_lora_rank = 96;
    m.kv_lora_rank = 64;
    m.qk_rope_dim = 16;
    m.qk_nope_dim = 32;
    m.v_head_dim = 32;
    m.num_heads = 4;
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
    m.max_position = 4096;
    m.num_heads = 8;
    m.num_kv_heads = 2;
    m.head_dim = 32;
    m.num_experts = 16;
    m.top_k = 4;
    m.moe_intermediate = 64;
    return m;
  }
  std::string known;
  for (const auto& n : preset_names()) known += (known.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown model preset '" + std::string(name) + "'; known: " + known);
}

}  // namespace atom::pipeline
