// A Hugging Face checkpoint's config.json as a model config: DeepseekV3ForCausalLM and
// Qwen3MoeForCausalLM, as the hub's checkpoints write it (rope_scaling, rope_theta at the top
// level, Qwen3's num_experts) and as transformers 5 writes it (rope_parameters holding
// rope_theta, Qwen3's num_local_experts, DeepSeek's head_dim / qk_head_dim / rope_interleave).
//
// Every field the computation depends on is read; one that is absent takes the default of
// transformers' own config class (DeepseekV3Config, Qwen3MoeConfig), from the one table that
// hf_config_defaults() returns. A value that is present but not supported (another
// architecture, q_lora_rank null, an unknown rope type, an activation other than SiLU, ...), of
// the wrong JSON type, or out of its range is a ConfigError naming the file, the field and the
// value. Fields no decoder-layer computation reads (vocab_size, bos_token_id, ...) are ignored.
#pragma once

#include <filesystem>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

#include "atom/pipeline/model.hpp"

namespace atom::model {

class ConfigError : public std::invalid_argument {
 public:
  // what(): "<file>: <field> <what>" (the field left out when empty).
  ConfigError(std::string file, std::string field, const std::string& what);
  const std::string& file() const noexcept { return file_; }
  const std::string& field() const noexcept { return field_; }

 private:
  std::string file_;
  std::string field_;
};

// Parses config.json text; `source_name` names it in errors and becomes the config's name. The
// KV-cache page (block_size, not a checkpoint fact) is 64 tokens for DeepSeek, 16 for Qwen3, as
// in the presets.
// The architecture's model class as config.json names it ("DeepseekV3ForCausalLM", ...).
std::string_view architecture_name(pipeline::Architecture a);

pipeline::ModelConfig parse_hf_config(std::string_view json_text, std::string_view source_name);

// Reads `path`, a config.json or a checkpoint directory holding one.
pipeline::ModelConfig load_hf_config(const std::filesystem::path& path);

// One row of the defaults table: the field (dotted inside rope_parameters / rope_scaling and
// quantization_config), and its default as JSON text for each architecture; empty where the
// architecture does not read the field.
struct HfDefault {
  std::string_view field;
  std::string_view deepseek_v3;
  std::string_view qwen3_moe;
};
std::span<const HfDefault> hf_config_defaults();

}  // namespace atom::model
