// Model dimensions. Presets give DeepSeek-V3 and Qwen3-30B-A3B, and "-tiny" models of the same
// structure (every dimension small) for tests and the demo.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "atom/core/tensor.hpp"

namespace atom::pipeline {

enum class AttentionKind : std::uint8_t { mla, gqa };
enum class RouterKind : std::uint8_t { sigmoid_grouped, softmax };

struct ModelConfig {
  std::string name;
  AttentionKind attention = AttentionKind::mla;
  index_t hidden = 0;
  float rms_eps = 1e-6f;
  float rope_theta = 10000.0f;
  index_t max_position = 0;
  index_t block_size = 16;  // tokens per KV-cache page

  // MLA (DeepSeek)
  index_t q_lora_rank = 0;
  index_t kv_lora_rank = 0;
  index_t qk_rope_dim = 0;
  index_t qk_nope_dim = 0;
  index_t v_head_dim = 0;
  // Attention heads (MLA heads, or GQA query heads) and GQA's KV heads and head size.
  index_t num_heads = 0;
  index_t num_kv_heads = 0;
  index_t head_dim = 0;

  // MoE
  RouterKind router = RouterKind::sigmoid_grouped;
  index_t num_experts = 0;
  index_t top_k = 0;
  index_t n_group = 1;
  index_t topk_group = 1;
  index_t moe_intermediate = 0;
  index_t num_shared_experts = 0;
  float routed_scaling = 1.0f;
  bool renormalize = true;
};

// "deepseek-v3", "deepseek-v3-tiny", "qwen3-30b-a3b", "qwen3-30b-a3b-tiny".
ModelConfig preset(std::string_view name);
std::vector<std::string> preset_names();

// Tensor-parallel position of this process: heads and expert columns are split over `size`.
struct TpShape {
  index_t rank = 0;
  index_t size = 1;
};

}  // namespace atom::pipeline
