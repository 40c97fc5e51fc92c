#include "atom/model/hf_config.hpp"

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <vector>

#include "../io/json_checked.hpp"

namespace atom::model {

ConfigError::ConfigError(std::string file, std::string field, const std::string& what)
    : std::invalid_argument(file + ": " + (field.empty() ? "" : field + " ") + what),
      file_(std::move(file)),
      field_(std::move(field)) {}

std::string_view architecture_name(pipeline::Architecture a) {
  using pipeline::Architecture;
  return a == Architecture::deepseek_v3 ? "DeepseekV3ForCausalLM" : "Qwen3MoeForCausalLM";
}

namespace {

using json = nlohmann::json;
using pipeline::Architecture;
using pipeline::ModelConfig;

// The defaults of transformers 5's config classes (DeepseekV3Config.__init__, the Qwen3MoeConfig
// dataclass, RotaryEmbeddingConfigMixin.default_theta, _compute_yarn_parameters' fallbacks,
// FineGrainedFP8Config) for every field read here; "" where an architecture does not read the
// field. Rows marked (*) are not fields of transformers' class: the value is what its modeling
// code does unconditionally (DeepSeek's router is sigmoid scoring with the correction bias,
// noaux_tc; its decoder layer has no layer-frequency test). A field with no row cannot be read.
constexpr std::array defaults_table{
    // field                                        DeepseekV3Config  Qwen3MoeConfig
    HfDefault{"hidden_size", "7168", "2048"},
    HfDefault{"num_hidden_layers", "61", "24"},
    HfDefault{"rms_norm_eps", "1e-6", "1e-6"},
    HfDefault{"rope_theta", "10000.0", "10000.0"},
    HfDefault{"max_position_embeddings", "4096", "32768"},
    HfDefault{"hidden_act", "\"silu\"", "\"silu\""},
    HfDefault{"attention_bias", "false", "false"},
    HfDefault{"num_attention_heads", "128", "32"},
    HfDefault{"intermediate_size", "18432", "6144"},
    HfDefault{"moe_intermediate_size", "2048", "768"},
    HfDefault{"num_experts_per_tok", "8", "8"},
    HfDefault{"norm_topk_prob", "true", "false"},
    HfDefault{"rope_scaling", "null", "null"},  // or rope_parameters; null: plain rope
    HfDefault{"quantization_config", "null", "null"},
    // DeepSeek-V3
    HfDefault{"q_lora_rank", "1536", ""},
    HfDefault{"kv_lora_rank", "512", ""},
    HfDefault{"qk_rope_head_dim", "64", ""},
    HfDefault{"qk_nope_head_dim", "128", ""},
    HfDefault{"v_head_dim", "128", ""},
    HfDefault{"n_routed_experts", "256", ""},  // alias num_local_experts; null: no MoE layer
    HfDefault{"n_shared_experts", "1", ""},
    HfDefault{"routed_scaling_factor", "2.5", ""},
    HfDefault{"n_group", "8", ""},
    HfDefault{"topk_group", "4", ""},
    HfDefault{"first_k_dense_replace", "3", ""},
    HfDefault{"moe_layer_freq", "1", ""},          // (*)
    HfDefault{"topk_method", "\"noaux_tc\"", ""},  // (*)
    HfDefault{"scoring_func", "\"sigmoid\"", ""},  // (*)
    HfDefault{"rope_interleave", "true", ""},
    HfDefault{"head_dim", "null", "null"},  // null: qk_rope_head_dim / hidden_size / heads
    HfDefault{"qk_head_dim", "null", ""},   // null: qk_nope_head_dim + qk_rope_head_dim
    // Qwen3-MoE
    HfDefault{"num_key_value_heads", "", "4"},
    HfDefault{"num_experts", "", "128"},  // hub spelling; transformers 5 writes num_local_experts
    HfDefault{"decoder_sparse_step", "", "1"},
    HfDefault{"mlp_only_layers", "", "[]"},  // null: []
    HfDefault{"use_sliding_window", "", "false"},
    // Inside rope_parameters / rope_scaling.
    HfDefault{"rope.rope_type", "\"default\"", "\"default\""},  // alias type
    HfDefault{"rope.partial_rotary_factor", "1.0", "1.0"},
    HfDefault{"rope.factor", "null", "null"},  // yarn; null: max_position / original
    // yarn; null: max_position_embeddings
    HfDefault{"rope.original_max_position_embeddings", "null", "null"},
    HfDefault{"rope.beta_fast", "32.0", "32.0"},  // null or 0 also mean 32
    HfDefault{"rope.beta_slow", "1.0", "1.0"},    // null or 0 also mean 1
    HfDefault{"rope.mscale", "null", "null"},
    HfDefault{"rope.mscale_all_dim", "null", "null"},
    HfDefault{"rope.attention_factor", "null", "null"},  // null: derived from the mscales
    HfDefault{"rope.truncate", "true", "true"},
    // Inside quantization_config.
    HfDefault{"quantization.fmt", "\"e4m3\"", "\"e4m3\""},
    HfDefault{"quantization.activation_scheme", "\"dynamic\"", "\"dynamic\""},
    HfDefault{"quantization.weight_block_size", "[128, 128]", "[128, 128]"},
    HfDefault{"quantization.modules_to_not_convert", "null", "null"},
    HfDefault{"quantization.exclude", "[]", "[]"},
};

// Reads fields of one JSON object (the root, the rope dictionary or quantization_config) with
// the file's name for errors; `table_prefix` names the object's rows in defaults_table and
// `field_prefix` the object as the file spells it ("rope_scaling.").
class Reader {
 public:
  Reader(const json& object, const std::string& file, Architecture arch, std::string table_prefix,
         std::string field_prefix)
      : object_(object),
        file_(file),
        arch_(arch),
        table_prefix_(std::move(table_prefix)),
        field_prefix_(std::move(field_prefix)) {}

  std::string name(std::string_view key) const { return field_prefix_ + std::string(key); }
  bool has(std::string_view key) const { return object_.contains(key); }

  // The value of `key` (or of its alias when the key is absent), else the table's default.
  json get(std::string_view key, std::string_view alias = {}) const {
    const bool has_key = has(key);
    if (!alias.empty() && has(alias)) {
      if (has_key && object_.at(std::string(key)) != object_.at(std::string(alias)))
        throw ConfigError(file_, name(key),
                          "= " + object_.at(std::string(key)).dump() + " and " + name(alias) +
                              " = " + object_.at(std::string(alias)).dump() +
                              " disagree (two spellings of one field)");
      if (!has_key) return object_.at(std::string(alias));
    }
    if (has_key) return object_.at(std::string(key));
    return fallback(key);
  }

  json fallback(std::string_view key) const {
    const std::string row = table_prefix_ + std::string(key);
    for (const auto& d : defaults_table)
      if (d.field == row) {
        const std::string_view text =
            arch_ == Architecture::deepseek_v3 ? d.deepseek_v3 : d.qwen3_moe;
        if (!text.empty()) return json::parse(text.begin(), text.end());
      }
    throw std::logic_error("hf_config: no default for " + row + " of " +
                           std::string(architecture_name(arch_)));
  }

  [[noreturn]] void fail(std::string_view key, const json& value, const std::string& why) const {
    throw ConfigError(file_, name(key), "= " + value.dump() + ": " + why);
  }

  index_t integer(std::string_view key, index_t min, std::string_view alias = {}) const {
    return integer_value(key, get(key, alias), min);
  }
  index_t integer_value(std::string_view key, const json& v, index_t min) const {
    if (!v.is_number_integer()) fail(key, v, "expected an integer");
    if (v.is_number_unsigned() && v.get<std::uint64_t>() > std::uint64_t{1} << 62)
      fail(key, v, "out of range");
    const auto i = v.get<std::int64_t>();
    if (i < min) fail(key, v, "expected at least " + std::to_string(min));
    return static_cast<index_t>(i);
  }
  double number(std::string_view key) const { return number_value(key, get(key)); }
  double number_value(std::string_view key, const json& v) const {
    if (!v.is_number()) fail(key, v, "expected a number");
    return v.get<double>();
  }
  bool boolean(std::string_view key) const {
    const json v = get(key);
    if (!v.is_boolean()) fail(key, v, "expected true or false");
    return v.get<bool>();
  }
  std::string string(std::string_view key) const {
    const json v = get(key);
    if (!v.is_string()) fail(key, v, "expected a string");
    return v.get<std::string>();
  }
  // A string that must be one of `supported` (the first is the one atom computes).
  void expect_string(std::string_view key, std::string_view supported) const {
    const std::string s = string(key);
    if (s != supported)
      fail(key, s, "not supported (atom implements " + std::string(supported) + ")");
  }
  // An optional integer-valued consistency field: when present and not null it must equal `want`.
  void expect_consistent(std::string_view key, index_t want, const std::string& derived) const {
    const json v = get(key);
    if (v.is_null()) return;
    if (integer_value(key, v, 0) != want)
      fail(key, v, "disagrees with " + derived + " = " + std::to_string(want));
  }

  const json& object() const { return object_; }
  const std::string& file() const { return file_; }
  Architecture arch() const { return arch_; }

 private:
  const json& object_;
  const std::string& file_;
  Architecture arch_;
  std::string table_prefix_;
  std::string field_prefix_;
};

// Rejects a key repeated within one object (nlohmann keeps the last silently) and nesting past
// 64 levels, while parsing.
json parse_checked(std::string_view text, const std::string& file) {
  using io::detail::JsonProblem;
  return io::detail::parse_json_strict(
      text, 64,
      [&](JsonProblem problem, const std::string& key, std::size_t, std::string_view detail) {
        switch (problem) {
          case JsonProblem::too_deep:
            throw ConfigError(file, "", "nests deeper than 64 levels");
          case JsonProblem::repeated_key:
            throw ConfigError(file, key, "appears twice in one object");
          case JsonProblem::invalid:
            break;
        }
        throw ConfigError(file, "", "is not valid JSON: " + std::string(detail));
      });
}

Architecture read_architecture(const json& root, const std::string& file) {
  constexpr std::array<std::pair<std::string_view, std::string_view>, 2> known{
      std::pair{"DeepseekV3ForCausalLM", "deepseek_v3"},
      std::pair{"Qwen3MoeForCausalLM", "qwen3_moe"}};
  const auto from_model_type = [&](const json& v) -> std::optional<Architecture> {
    if (!v.is_string())
      throw ConfigError(file, "model_type", "= " + v.dump() + ": expected a string");
    for (std::size_t i = 0; i < known.size(); ++i)
      if (v.get<std::string>() == known[i].second) return static_cast<Architecture>(i);
    return std::nullopt;
  };
  const json arch = root.value("architectures", json());
  if (arch.is_null()) {
    // A config saved without a model class: model_type alone names the architecture.
    if (!root.contains("model_type"))
      throw ConfigError(file, "architectures",
                        "is missing (and so is model_type): expected [\"DeepseekV3ForCausalLM\"] "
                        "or [\"Qwen3MoeForCausalLM\"]");
    if (const auto a = from_model_type(root.at("model_type"))) return *a;
    throw ConfigError(file, "model_type",
                      "= " + root.at("model_type").dump() +
                          ": not supported (atom implements deepseek_v3 and qwen3_moe)");
  }
  if (!arch.is_array() || arch.size() != 1 || !arch[0].is_string())
    throw ConfigError(file, "architectures",
                      "= " + arch.dump() + ": expected a list of one class name");
  const std::string name = arch[0].get<std::string>();
  for (std::size_t i = 0; i < known.size(); ++i) {
    if (name != known[i].first) continue;
    const auto a = static_cast<Architecture>(i);
    if (root.contains("model_type") && from_model_type(root.at("model_type")) != a)
      throw ConfigError(file, "model_type",
                        "= " + root.at("model_type").dump() + ": disagrees with architectures " +
                            arch.dump() + " (expected \"" + std::string(known[i].second) + "\")");
    return a;
  }
  throw ConfigError(file, "architectures",
                    "= " + arch.dump() +
                        ": not supported (atom implements DeepseekV3ForCausalLM and "
                        "Qwen3MoeForCausalLM)");
}

// rope_theta and the scaling: rope_parameters (transformers 5, holding rope_theta) or
// rope_scaling (the hub's, with rope_theta at the top level).
void read_rope(const Reader& root, ModelConfig& m) {
  const json none;
  const json& object = root.object();
  const json& scaling = object.contains("rope_scaling") ? object.at("rope_scaling") : none;
  const json& parameters = object.contains("rope_parameters") ? object.at("rope_parameters") : none;
  if (!scaling.is_null() && !parameters.is_null() && scaling != parameters)
    throw ConfigError(root.file(), "rope_scaling",
                      "= " + scaling.dump() + " and rope_parameters = " + parameters.dump() +
                          " disagree (two spellings of one field)");
  const bool use_scaling = !scaling.is_null();
  const json& rope = use_scaling ? scaling : parameters;
  const std::string key = use_scaling ? "rope_scaling" : "rope_parameters";
  if (!rope.is_null() && !rope.is_object()) root.fail(key, rope, "expected an object or null");
  const json empty = json::object();
  const Reader r(rope.is_null() ? empty : rope, root.file(), root.arch(), "rope.", key + ".");

  // transformers: the dictionary's rope_theta, else the top-level one, else default_theta.
  if (r.has("rope_theta") && root.has("rope_theta") &&
      r.object().at("rope_theta") != object.at("rope_theta"))
    throw ConfigError(root.file(), r.name("rope_theta"),
                      "= " + r.object().at("rope_theta").dump() +
                          " and rope_theta = " + object.at("rope_theta").dump() + " disagree");
  const double theta = r.has("rope_theta")
                           ? r.number_value("rope_theta", r.object().at("rope_theta"))
                           : root.number("rope_theta");
  if (!(theta > 1.0))
    (r.has("rope_theta") ? r : root).fail("rope_theta", theta, "expected a base above 1");
  m.rope_theta = static_cast<float>(theta);

  for (const Reader* holder : {&r, &root})
    if (holder->has("partial_rotary_factor") &&
        holder->number_value("partial_rotary_factor",
                             holder->object().at("partial_rotary_factor")) != 1.0)
      holder->fail("partial_rotary_factor", holder->object().at("partial_rotary_factor"),
                   "not supported (atom rotates the whole rope dimension)");

  const json type = r.get("rope_type", "type");
  if (!type.is_string()) r.fail("rope_type", type, "expected a string");
  const std::string t = type.get<std::string>();
  const std::string type_key = r.has("rope_type") ? "rope_type" : "type";
  m.rope_scaling = {};
  if (t == "default") return;
  if (t != "yarn")
    r.fail(type_key, type, "unknown or unsupported rope type (atom implements default, yarn)");

  ops::RopeScaling& y = m.rope_scaling;
  y.kind = ops::RopeScaling::Kind::yarn;
  const json original = r.get("original_max_position_embeddings");
  y.original_max_position = original.is_null()
                                ? m.max_position
                                : r.integer_value("original_max_position_embeddings", original, 1);
  const json factor = r.get("factor");
  y.factor = factor.is_null() ? static_cast<double>(m.max_position) /
                                    static_cast<double>(y.original_max_position)
                              : r.number_value("factor", factor);
  if (!(y.factor >= 1.0)) r.fail("factor", factor, "expected a YaRN factor of at least 1");
  const auto optional_number = [&](std::string_view k) {
    const json v = r.get(k);
    return v.is_null() ? 0.0 : r.number_value(k, v);
  };
  y.beta_fast = optional_number("beta_fast");
  y.beta_slow = optional_number("beta_slow");
  y.mscale = optional_number("mscale");
  y.mscale_all_dim = optional_number("mscale_all_dim");
  y.attention_factor = optional_number("attention_factor");
  if (y.attention_factor < 0.0)
    r.fail("attention_factor", y.attention_factor, "expected a positive factor");
  y.truncate = r.boolean("truncate");
}

std::vector<pipeline::ModulePattern> read_patterns(const Reader& q, std::string_view key,
                                                   bool regex_prefix) {
  const json list = q.get(key);
  std::vector<pipeline::ModulePattern> out;
  if (list.is_null()) return out;
  if (!list.is_array()) q.fail(key, list, "expected a list of module names");
  for (const auto& item : list) {
    if (!item.is_string())
      q.fail(key, list, "expected a list of module names, found " + item.dump());
    std::string text = item.get<std::string>();
    pipeline::ModulePattern p;
    if (regex_prefix && text.starts_with("re:")) {
      p.regex = true;
      text.erase(0, 3);
      try {
        const std::regex check(text);
      } catch (const std::regex_error& e) {
        q.fail(key, item, std::string("is not a valid regular expression: ") + e.what());
      }
    }
    p.text = std::move(text);
    out.push_back(std::move(p));
  }
  return out;
}

// A Quark tensor spec (weight or input_tensors) that atom computes: OCP MXFP4, e2m1 values in
// groups of 32 sharing an e8m0 scale.
void expect_mxfp4_spec(const Reader& q, std::string_view key, const json& spec) {
  const auto expect_field = [&](std::string_view k, const json& want) {
    const json v = spec.value(std::string(k), json());
    if (v != want)
      q.fail(std::string(key) + "." + std::string(k), v,
             "not supported (atom reads MXFP4: " + want.dump() + ")");
  };
  expect_field("dtype", "fp4");
  expect_field("qscheme", "per_group");
  expect_field("group_size", 32);
  expect_field("scale_format", "e8m0");
}

void read_quantization(const Reader& root, ModelConfig& m) {
  const json qc = root.get("quantization_config");
  m.quant = {};
  if (qc.is_null()) return;
  if (!qc.is_object()) root.fail("quantization_config", qc, "expected an object or null");
  const Reader q(root.object().at("quantization_config"), root.file(), root.arch(), "quantization.",
                 "quantization_config.");
  if (!q.has("quant_method"))
    throw ConfigError(root.file(), "quantization_config.quant_method", "is missing");
  const std::string method = q.string("quant_method");
  if (method == "fp8") {
    m.quant.method = pipeline::QuantMethod::fp8_block;
    q.expect_string("fmt", "e4m3");
    q.expect_string("activation_scheme", "dynamic");
    const json block = q.get("weight_block_size");
    if (!block.is_array() || block.size() != 2 || !block[0].is_number_integer() ||
        !block[1].is_number_integer() || block[0] != 128 || block[1] != 128)
      q.fail("weight_block_size", block, "not supported (atom reads 128x128 block scales)");
    m.quant.block_n = 128;
    m.quant.block_k = 128;
    m.quant.unquantized = read_patterns(q, "modules_to_not_convert", false);
    return;
  }
  if (method == "quark") {
    m.quant.method = pipeline::QuantMethod::mxfp4_quark;
    const json global = q.object().value("global_quant_config", json());
    if (!global.is_object())
      q.fail("global_quant_config", global, "expected an object with the weight spec");
    const json weight = global.value("weight", json());
    if (!weight.is_object()) q.fail("global_quant_config.weight", weight, "expected an object");
    expect_mxfp4_spec(q, "global_quant_config.weight", weight);
    // atom's MXFP4 GEMMs quantize their inputs to MXFP4 (W4A4): a weight-only export (W4A16)
    // would run with other arithmetic than the model's, so it is refused rather than run so.
    const json input = global.value("input_tensors", json());
    if (!input.is_object())
      q.fail("global_quant_config.input_tensors", input,
             "not supported (atom's MXFP4 GEMMs quantize their inputs to MXFP4: expected the "
             "input spec of a weight-and-activation export, not a weight-only one)");
    expect_mxfp4_spec(q, "global_quant_config.input_tensors", input);
    if (input.value("is_dynamic", json()) != true)
      q.fail("global_quant_config.input_tensors.is_dynamic", input.value("is_dynamic", json()),
             "not supported (atom quantizes activations dynamically)");
    for (const char* k : {"output_tensors", "bias"})
      if (!global.value(k, json()).is_null())
        q.fail(std::string("global_quant_config.") + k, global.at(k),
               "not supported (atom quantizes weights and GEMM inputs only)");
    for (const char* k : {"layer_quant_config", "layer_type_quant_config", "kv_cache_quant_config"})
      if (q.has(k) && !q.object().at(k).is_null() && !q.object().at(k).empty())
        q.fail(k, q.object().at(k), "not supported (atom reads one global spec)");
    if (q.has("export") && q.object().at("export").is_object()) {
      const json format = q.object().at("export").value("weight_format", json());
      if (!format.is_null() && format != "real_quantized")
        q.fail("export.weight_format", format, "not supported (atom reads real_quantized weights)");
    }
    m.quant.unquantized = read_patterns(q, "exclude", true);
    return;
  }
  q.fail("quant_method", method, "not supported (atom reads fp8 and quark)");
}

void read_common(const Reader& r, ModelConfig& m) {
  m.hidden = r.integer("hidden_size", 1);
  m.num_layers = r.integer("num_hidden_layers", 1);
  const double eps = r.number("rms_norm_eps");
  if (!(eps > 0.0)) r.fail("rms_norm_eps", eps, "expected a positive epsilon");
  m.rms_eps = static_cast<float>(eps);
  m.max_position = r.integer("max_position_embeddings", 1);
  r.expect_string("hidden_act", "silu");
  if (r.boolean("attention_bias"))
    r.fail("attention_bias", true, "not supported (atom's attention projections have no bias)");
  m.num_heads = r.integer("num_attention_heads", 1);
  m.intermediate = r.integer("intermediate_size", 1);
  m.moe_intermediate = r.integer("moe_intermediate_size", 1);
  m.renormalize = r.boolean("norm_topk_prob");
}

void read_experts(const Reader& r, ModelConfig& m, std::string_view experts_key,
                  std::string_view experts_alias) {
  const json experts = r.get(experts_key, experts_alias);
  const std::string_view shown =
      r.has(experts_key) || !r.has(experts_alias) ? experts_key : experts_alias;
  // DeepSeek's reference code reads n_routed_experts null as a model without MoE layers.
  m.num_experts = experts.is_null() && m.architecture == Architecture::deepseek_v3
                      ? 0
                      : r.integer_value(shown, experts, 0);
  if (m.num_experts == 0) return;
  const json top_k = r.get("num_experts_per_tok");
  m.top_k = r.integer_value("num_experts_per_tok", top_k, 1);
  if (m.top_k > m.num_experts)
    r.fail("num_experts_per_tok", top_k,
           "exceeds the " + std::to_string(m.num_experts) + " routed experts");
}

void read_deepseek(const Reader& r, ModelConfig& m) {
  m.attention = pipeline::AttentionKind::mla;
  m.router = pipeline::RouterKind::sigmoid_grouped;
  m.block_size = 64;
  const json q_lora = r.get("q_lora_rank");
  if (q_lora.is_null())
    r.fail("q_lora_rank", q_lora,
           "not supported (atom's MLA attention has the Q-LoRA projections q_a_proj / q_b_proj)");
  m.q_lora_rank = r.integer_value("q_lora_rank", q_lora, 1);
  m.kv_lora_rank = r.integer("kv_lora_rank", 1);
  m.qk_rope_dim = r.integer("qk_rope_head_dim", 2);
  if (m.qk_rope_dim % 2 != 0)
    r.fail("qk_rope_head_dim", m.qk_rope_dim, "expected an even rope dimension");
  m.qk_nope_dim = r.integer("qk_nope_head_dim", 1);
  m.v_head_dim = r.integer("v_head_dim", 1);
  // transformers 5 writes the derived sizes too: head_dim (the rope dimension its rotary
  // embedding reads) and qk_head_dim.
  r.expect_consistent("head_dim", m.qk_rope_dim, "qk_rope_head_dim");
  r.expect_consistent("qk_head_dim", m.qk_nope_dim + m.qk_rope_dim,
                      "qk_nope_head_dim + qk_rope_head_dim");
  if (!r.boolean("rope_interleave"))
    r.fail("rope_interleave", false,
           "not supported (atom's MLA rotates q_pe / k_pe as interleaved pairs)");
  m.rope_style = ops::RopeStyle::interleaved;

  read_experts(r, m, "n_routed_experts", "num_local_experts");
  const json shared = r.get("n_shared_experts");
  m.num_shared_experts = shared.is_null() ? 0 : r.integer_value("n_shared_experts", shared, 0);
  m.first_k_dense = r.integer("first_k_dense_replace", 0);
  m.moe_layer_freq = r.integer("moe_layer_freq", 1);
  m.routed_scaling = static_cast<float>(r.number("routed_scaling_factor"));
  r.expect_string("topk_method", "noaux_tc");
  r.expect_string("scoring_func", "sigmoid");
  m.n_group = r.integer("n_group", 1);
  m.topk_group = r.integer("topk_group", 1);
  if (m.num_experts > 0) {
    if (m.num_experts % m.n_group != 0)
      r.fail("n_group", m.n_group,
             "does not divide the " + std::to_string(m.num_experts) + " routed experts");
    if (m.topk_group > m.n_group)
      r.fail("topk_group", m.topk_group, "exceeds n_group = " + std::to_string(m.n_group));
    if (m.top_k > m.topk_group * (m.num_experts / m.n_group))
      r.fail("num_experts_per_tok", m.top_k,
             "exceeds the experts of topk_group groups (" +
                 std::to_string(m.topk_group * (m.num_experts / m.n_group)) + ")");
  }
}

void read_qwen3(const Reader& r, ModelConfig& m) {
  m.attention = pipeline::AttentionKind::gqa;
  m.router = pipeline::RouterKind::softmax;
  m.block_size = 16;
  m.rope_style = ops::RopeStyle::neox;
  m.num_kv_heads = r.integer("num_key_value_heads", 1);
  if (m.num_heads % m.num_kv_heads != 0)
    r.fail("num_key_value_heads", m.num_kv_heads,
           "does not divide num_attention_heads = " + std::to_string(m.num_heads));
  const json head_dim = r.get("head_dim");
  m.head_dim =
      head_dim.is_null() ? m.hidden / m.num_heads : r.integer_value("head_dim", head_dim, 2);
  if (m.head_dim < 2 || m.head_dim % 2 != 0)
    r.fail("head_dim", m.head_dim, "expected an even head dimension");
  if (r.boolean("use_sliding_window"))
    r.fail("use_sliding_window", true, "not supported (atom's attention is full attention)");
  read_experts(r, m, "num_experts", "num_local_experts");
  m.decoder_sparse_step = r.integer("decoder_sparse_step", 1);
  const json layers = r.get("mlp_only_layers");
  m.mlp_only_layers.clear();
  if (!layers.is_null()) {
    if (!layers.is_array()) r.fail("mlp_only_layers", layers, "expected a list of layer indices");
    for (const auto& l : layers) {
      if (!l.is_number_integer() || l.get<std::int64_t>() < 0 ||
          l.get<std::int64_t>() >= m.num_layers)
        r.fail("mlp_only_layers", layers,
               "expected layer indices in [0, " + std::to_string(m.num_layers) + "), found " +
                   l.dump());
      m.mlp_only_layers.push_back(static_cast<index_t>(l.get<std::int64_t>()));
    }
  }
  m.n_group = 1;
  m.topk_group = 1;
  m.num_shared_experts = 0;
  m.routed_scaling = 1.0f;
}

}  // namespace

ModelConfig parse_hf_config(std::string_view json_text, std::string_view source_name) {
  const std::string file(source_name);
  const json root = parse_checked(json_text, file);
  if (!root.is_object()) throw ConfigError(file, "", "is not a JSON object");
  ModelConfig m;
  m.name = file;
  m.architecture = read_architecture(root, file);
  const Reader r(root, file, m.architecture, "", "");
  read_common(r, m);
  if (m.architecture == Architecture::deepseek_v3)
    read_deepseek(r, m);
  else
    read_qwen3(r, m);
  read_rope(r, m);
  read_quantization(r, m);
  return m;
}

ModelConfig load_hf_config(const std::filesystem::path& path) {
  const std::filesystem::path file =
      std::filesystem::is_directory(path) ? path / "config.json" : path;
  std::ifstream in(file, std::ios::binary);
  if (!in)
    throw ConfigError(file.string(), "", std::string("cannot be read: ") + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw ConfigError(file.string(), "", "cannot be read");
  return parse_hf_config(text.str(), file.string());
}

std::span<const HfDefault> hf_config_defaults() {
  return defaults_table;
}

}  // namespace atom::model
