// What the plugin registers with a host engine: the models (Hugging Face architectures and the
// pipelines that serve them) and the attention backends, and how the two ATOM_DISABLE_VLLM_PLUGIN*
// variables restrict that. The C ABI (atom_plugin.h) reports these tables; C++ hosts and tests
// may read them directly.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "atom/env/config.hpp"
#include "atom/policy/point.hpp"

namespace atom::plugin {

// The pipeline kinds a host asks for by name.
enum class Kind : std::uint8_t { layer, attention, moe };
inline constexpr std::array<Kind, 3> kinds{Kind::layer, Kind::attention, Kind::moe};

constexpr const char* kind_name(Kind k) {
  switch (k) {
    case Kind::layer:
      return "layer";
    case Kind::attention:
      return "attention";
    case Kind::moe:
      return "moe";
  }
  return "?";
}

constexpr std::optional<Kind> kind_from(std::string_view name) {
  for (Kind k : kinds)
    if (name == kind_name(k)) return k;
  return std::nullopt;
}

// A decoder layer holds its attention, so only the MoE kind survives with attention disabled.
constexpr bool contains_attention(Kind k) {
  return k != Kind::moe;
}

struct AttentionBackendSpec {
  const char* name;
  policy::PipelineId pipeline;
  const char* pipeline_name;
  const char* cache_layout;
};

inline constexpr std::array<AttentionBackendSpec, 2> attention_backends{{
    {"mla", policy::PipelineId::mla_attention, "mla_attention",
     "bf16 latent cache [num_blocks, block_size, kv_lora + rope]"},
    {"paged_gqa", policy::PipelineId::qwen3_attention, "qwen3_attention",
     "key and value caches [num_blocks, block_size, kv_heads, head_dim] in the format chosen at "
     "load: fp8_row (fp8 e4m3 with float scales [num_blocks, block_size, kv_heads], the "
     "default), fp8_tensor (fp8 e4m3 with one float scale each for key and value, vLLM's and "
     "SGLang's k_scale and v_scale) or bf16"},
}};

// A model's pipelines by kind: its attention and MoE blocks, and as "layer" the decoder layer
// composed of the two (pipeline/layer.hpp), named "ds_layer" / "qwen3_layer" to hosts.
struct ModelSpec {
  const char* architecture;
  std::array<policy::PipelineId, 2> blocks;   // the attention and MoE pipelines
  std::array<const char*, 3> pipeline_names;  // indexed by Kind
  std::size_t attention_backend;              // index into attention_backends
  std::array<const char*, 2> presets;
};

inline constexpr std::array<ModelSpec, 2> models{{
    {"DeepseekV3ForCausalLM",
     {policy::PipelineId::mla_attention, policy::PipelineId::moe_block},
     {"ds_layer", "mla_attention", "moe_block"},
     0,
     {"deepseek-v3", "deepseek-v3-tiny"}},
    {"Qwen3MoeForCausalLM",
     {policy::PipelineId::qwen3_attention, policy::PipelineId::moe_block},
     {"qwen3_layer", "qwen3_attention", "moe_block"},
     1,
     {"qwen3-30b-a3b", "qwen3-30b-a3b-tiny"}},
}};

constexpr const ModelSpec* find_model(std::string_view architecture) {
  for (const auto& m : models)
    if (architecture == m.architecture) return &m;
  return nullptr;
}

// The block pipeline of the attention and MoE kinds (a layer is both).
constexpr policy::PipelineId pipeline_of(const ModelSpec& m, Kind k) {
  return k == Kind::moe ? m.blocks[1] : m.blocks[0];
}

// What a Config lets the plugin register.
struct Registration {
  bool plugin = true;
  bool attention = true;

  constexpr bool serves(Kind k) const { return plugin && (attention || !contains_attention(k)); }
  constexpr std::size_t model_count() const { return plugin ? models.size() : 0; }
  constexpr std::size_t attention_backend_count() const {
    return plugin && attention ? attention_backends.size() : 0;
  }
};

constexpr Registration registration_of(bool disable_plugin, bool disable_attention) {
  return {!disable_plugin, !disable_plugin && !disable_attention};
}

inline Registration registration_from(const env::Config& c) {
  return registration_of(c.get<env::Var::disable_vllm_plugin>(),
                         c.get<env::Var::disable_vllm_plugin_attention>());
}

}  // namespace atom::plugin
