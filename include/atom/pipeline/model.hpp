// Model dimensions and the semantics that follow from a checkpoint's config.json. Presets give
// DeepSeek-V3 and Qwen3-30B-A3B, and "-tiny" models of the same structure (every dimension small)
// for tests and the demo; atom/model/hf_config.hpp reads the same type from a config.json.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "atom/core/tensor.hpp"
#include "atom/ops/rope.hpp"

namespace atom::pipeline {

enum class Architecture : std::uint8_t { deepseek_v3, qwen3_moe };
enum class AttentionKind : std::uint8_t { mla, gqa };
enum class RouterKind : std::uint8_t { sigmoid_grouped, softmax };

// How a checkpoint stores its linear weights (config.json's quantization_config).
enum class QuantMethod : std::uint8_t {
  none,         // bf16 (no quantization_config)
  fp8_block,    // quant_method "fp8": e4m3 with block scales weight_scale_inv
  mxfp4_quark,  // quant_method "quark": MXFP4 weights (e2m1 codes, e8m0 scales per 32)
};

// A module name pattern from modules_to_not_convert (fp8) or exclude (quark). A Quark pattern
// written "re:<regex>" is stored as the regex with `regex` set; anything else is a plain name.
struct ModulePattern {
  std::string text;
  bool regex = false;
  bool operator==(const ModulePattern&) const = default;
};

struct QuantConfig {
  QuantMethod method = QuantMethod::none;
  // fp8_block: weight_block_size [block_n, block_k] (rows, columns of one scale).
  index_t block_n = 0;
  index_t block_k = 0;
  // Modules kept in bf16: fp8's modules_to_not_convert, quark's exclude.
  std::vector<ModulePattern> unquantized;
};

struct ModelConfig {
  std::string name;
  Architecture architecture = Architecture::deepseek_v3;
  AttentionKind attention = AttentionKind::mla;
  index_t hidden = 0;
  index_t num_layers = 0;  // num_hidden_layers: decoder layers 0..num_layers-1
  float rms_eps = 1e-6f;
  float rope_theta = 10000.0f;
  ops::RopeScaling rope_scaling;  // none, or YaRN with its parameters
  // The pairing of q/k elements the rope rotates: DeepSeek's rope_interleave (its default, true)
  // rotates (2i, 2i + 1); Qwen3 rotates (i, i + dim / 2).
  ops::RopeStyle rope_style = ops::RopeStyle::interleaved;
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

  // Dense MLP (DeepSeek's first layers, Qwen3's mlp_only_layers): intermediate_size.
  index_t intermediate = 0;
  // Which layers are MoE (see layer_kind): DeepSeek's first_k_dense_replace and moe_layer_freq,
  // Qwen3's decoder_sparse_step and mlp_only_layers.
  index_t first_k_dense = 0;
  index_t moe_layer_freq = 1;
  index_t decoder_sparse_step = 1;
  std::vector<index_t> mlp_only_layers;

  // MoE
  RouterKind router = RouterKind::sigmoid_grouped;
  index_t num_experts = 0;
  index_t top_k = 0;
  index_t n_group = 1;
  index_t topk_group = 1;
  index_t moe_intermediate = 0;
  index_t num_shared_experts = 0;
  float routed_scaling = 1.0f;
  bool renormalize = true;  // norm_topk_prob

  QuantConfig quant;
};

// "deepseek-v3", "deepseek-v3-tiny", "qwen3-30b-a3b", "qwen3-30b-a3b-tiny".
ModelConfig preset(std::string_view name);
std::vector<std::string> preset_names();

enum class LayerKind : std::uint8_t { dense_mlp, moe };

// The MLP block of decoder layer `layer`, as the models' modeling code builds it. DeepSeek: MoE
// iff num_experts > 0, layer >= first_k_dense and layer % moe_layer_freq == 0 (transformers'
// DeepseekV3DecoderLayer tests only layer >= first_k_dense_replace; the two agree for
// moe_layer_freq 1, every published DeepSeek-V3). Qwen3: MoE iff layer is not in mlp_only_layers,
// num_experts > 0 and (layer + 1) % decoder_sparse_step == 0 (Qwen3MoeDecoderLayer).
// Throws std::out_of_range for a layer outside [0, num_layers): layers at or above
// num_hidden_layers (DeepSeek's next-token-prediction module) are not decoder layers.
LayerKind layer_kind(const ModelConfig& m, index_t layer);

// The softmax scale of MLA attention (ops::mla_softmax_scale over qk_nope_dim + qk_rope_dim and
// the model's rope scaling): 192^-0.5 * (0.1 ln 40 + 1)^2 for DeepSeek-V3.
float mla_softmax_scale(const ModelConfig& m);

// Tensor-parallel position of this process: heads and expert columns are split over `size`.
struct TpShape {
  index_t rank = 0;
  index_t size = 1;
};

}  // namespace atom::pipeline
