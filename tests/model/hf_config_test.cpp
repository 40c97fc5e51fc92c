// config.json into ModelConfig: the hub's checkpoints and transformers 5's files of both
// architectures, the defaults of transformers' config classes for absent fields, and one error per
// kind of bad input, each naming the file, the field and the value. Expected values are written
// from the files and from transformers' config classes, not read from the parser's table.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "atom/model/hf_config.hpp"
#include "same_model.hpp"

using namespace atom;
using namespace atom::model;
using atom::test::check_same_model;
using Catch::Matchers::Contains;
using json = nlohmann::json;
using pipeline::Architecture;
using pipeline::ModelConfig;
using pipeline::QuantMethod;
using Kind = ops::RopeScaling::Kind;

namespace {

const std::filesystem::path data = ATOM_MODEL_TEST_DATA;

json fixture(const std::string& name) {
  std::ifstream in(data / name);
  REQUIRE(in);
  return json::parse(in);
}

ModelConfig parse(const json& j, const std::string& name = "test/config.json") {
  return parse_hf_config(j.dump(), name);
}

// The parse fails with a ConfigError whose message names the file, the field and the value.
void expect_error(const json& j, const std::string& field, const std::string& value) {
  INFO(j.dump());
  CHECK_THROWS_AS(parse(j), ConfigError);
  CHECK_THROWS_WITH(parse(j), Contains("test/config.json") && Contains(field) && Contains(value));
}

}  // namespace

TEST_CASE("DeepSeek-V3's hub config.json is the deepseek-v3 preset, with FP8 block weights",
          "[hf_config]") {
  const ModelConfig m = load_hf_config(data / "deepseek_v3_hub.json");
  check_same_model(m, pipeline::preset("deepseek-v3"));
  CHECK(m.name == (data / "deepseek_v3_hub.json").string());
  // The numbers themselves, from the file.
  CHECK(m.architecture == Architecture::deepseek_v3);
  CHECK(m.hidden == 7168);
  CHECK(m.num_layers == 61);
  CHECK(m.max_position == 163840);
  CHECK(m.rope_theta == 10000.0f);
  CHECK(m.rope_scaling.kind == Kind::yarn);
  CHECK(m.rope_scaling.factor == 40.0);
  CHECK(m.rope_scaling.original_max_position == 4096);
  CHECK(m.rope_scaling.beta_fast == 32.0);
  CHECK(m.rope_scaling.beta_slow == 1.0);
  CHECK(m.rope_scaling.mscale == 1.0);
  CHECK(m.rope_scaling.mscale_all_dim == 1.0);
  CHECK(m.rope_scaling.truncate);
  CHECK(m.rope_style == ops::RopeStyle::interleaved);
  CHECK(m.q_lora_rank == 1536);
  CHECK(m.intermediate == 18432);
  CHECK(m.first_k_dense == 3);
  CHECK(m.num_experts == 256);
  CHECK(m.routed_scaling == 2.5f);
  CHECK(m.quant.method == QuantMethod::fp8_block);
  CHECK(m.quant.block_n == 128);
  CHECK(m.quant.block_k == 128);
  CHECK(m.quant.unquantized.empty());
}

TEST_CASE("Qwen3-30B-A3B's hub config.json is the qwen3-30b-a3b preset", "[hf_config]") {
  const ModelConfig m = load_hf_config(data / "qwen3_30b_a3b_hub.json");
  check_same_model(m, pipeline::preset("qwen3-30b-a3b"));
  CHECK(m.architecture == Architecture::qwen3_moe);
  CHECK(m.num_layers == 48);
  CHECK(m.intermediate == 6144);
  CHECK(m.rope_theta == 1000000.0f);
  CHECK(m.rope_scaling.kind == Kind::none);
  CHECK(m.rope_style == ops::RopeStyle::neox);
  CHECK(m.max_position == 40960);
  CHECK(m.num_experts == 128);
  CHECK(m.renormalize);
  CHECK(m.mlp_only_layers.empty());
  CHECK(m.quant.method == QuantMethod::none);
}

TEST_CASE("A checkpoint directory is read through its config.json", "[hf_config]") {
  const auto dir = std::filesystem::temp_directory_path() / "atom_model_test_checkpoint";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(data / "qwen3_30b_a3b_hub.json", dir / "config.json",
                             std::filesystem::copy_options::overwrite_existing);
  const ModelConfig m = load_hf_config(dir);
  CHECK(m.name == (dir / "config.json").string());
  CHECK(m.num_layers == 48);
  std::filesystem::remove_all(dir);
}

TEST_CASE("transformers 5's DeepSeek-V3 file: rope_parameters, head_dim, qk_head_dim",
          "[hf_config]") {
  const ModelConfig m = load_hf_config(data / "deepseek_v3_transformers5.json");
  check_same_model(m, pipeline::preset("deepseek-v3-tiny"));
  CHECK(m.rope_scaling.kind == Kind::yarn);
  CHECK(m.rope_scaling.factor == 16.0);
  CHECK(m.rope_scaling.original_max_position == 256);
  // Absent in transformers' files: the behaviour of its modeling code.
  CHECK(m.moe_layer_freq == 1);
  CHECK(m.router == pipeline::RouterKind::sigmoid_grouped);
}

TEST_CASE("transformers 5's Qwen3-MoE file: num_local_experts, rope_parameters with YaRN",
          "[hf_config]") {
  const ModelConfig m = load_hf_config(data / "qwen3_moe_transformers5.json");
  CHECK(m.num_experts == 16);
  CHECK(m.top_k == 4);
  CHECK(m.num_layers == 6);
  CHECK(m.decoder_sparse_step == 2);
  CHECK(m.mlp_only_layers == std::vector<index_t>{3});
  CHECK(m.head_dim == 32);
  CHECK(m.num_kv_heads == 2);
  CHECK(m.rope_theta == 1000000.0f);
  CHECK(m.rope_scaling.kind == Kind::yarn);
  CHECK(m.rope_scaling.factor == 4.0);
  CHECK(m.rope_scaling.original_max_position == 1024);
  // transformers' YaRN defaults for what the dictionary leaves out.
  CHECK(m.rope_scaling.beta_fast == 32.0);
  CHECK(m.rope_scaling.beta_slow == 1.0);
  CHECK(m.rope_scaling.mscale == 0.0);
  CHECK(m.rope_scaling.attention_factor == 0.0);
  CHECK(m.rope_scaling.truncate);
  CHECK(m.router == pipeline::RouterKind::softmax);
  CHECK(m.routed_scaling == 1.0f);
  CHECK(m.num_shared_experts == 0);
}

TEST_CASE("rope_scaling (hub) and rope_parameters (transformers 5) give the same model",
          "[hf_config]") {
  const json hub = fixture("deepseek_v3_hub.json");
  json t5 = hub;
  json rope = t5["rope_scaling"];
  rope.erase("type");
  rope["rope_type"] = "yarn";
  rope["rope_theta"] = 10000.0;
  t5.erase("rope_scaling");
  t5.erase("rope_theta");
  t5["rope_parameters"] = rope;
  check_same_model(parse(hub), parse(t5));
  // Both spellings present and equal is the same model too.
  json both = hub;
  both["rope_parameters"] = hub["rope_scaling"];
  check_same_model(parse(hub), parse(both));
}

TEST_CASE("Absent fields take DeepseekV3Config's defaults", "[hf_config]") {
  const ModelConfig m = parse(json{{"architectures", {"DeepseekV3ForCausalLM"}}});
  CHECK(m.hidden == 7168);
  CHECK(m.num_layers == 61);
  CHECK(m.intermediate == 18432);
  CHECK(m.moe_intermediate == 2048);
  CHECK(m.num_heads == 128);
  CHECK(m.num_shared_experts == 1);
  CHECK(m.num_experts == 256);
  CHECK(m.routed_scaling == 2.5f);
  CHECK(m.kv_lora_rank == 512);
  CHECK(m.q_lora_rank == 1536);
  CHECK(m.qk_rope_dim == 64);
  CHECK(m.v_head_dim == 128);
  CHECK(m.qk_nope_dim == 128);
  CHECK(m.n_group == 8);
  CHECK(m.topk_group == 4);
  CHECK(m.top_k == 8);
  CHECK(m.first_k_dense == 3);
  CHECK(m.renormalize);
  CHECK(m.max_position == 4096);
  CHECK(m.rms_eps == 1e-6f);
  CHECK(m.rope_theta == 10000.0f);  // RotaryEmbeddingConfigMixin.default_theta
  CHECK(m.rope_scaling.kind == Kind::none);
  CHECK(m.rope_style == ops::RopeStyle::interleaved);  // rope_interleave = True
  CHECK(m.moe_layer_freq == 1);
  CHECK(m.quant.method == QuantMethod::none);
  CHECK(m.block_size == 64);
}

TEST_CASE("Absent fields take Qwen3MoeConfig's defaults", "[hf_config]") {
  const ModelConfig m = parse(json{{"model_type", "qwen3_moe"}});
  CHECK(m.architecture == Architecture::qwen3_moe);
  CHECK(m.hidden == 2048);
  CHECK(m.intermediate == 6144);
  CHECK(m.num_layers == 24);
  CHECK(m.num_heads == 32);
  CHECK(m.num_kv_heads == 4);
  CHECK(m.head_dim == 64);  // hidden_size // num_attention_heads
  CHECK(m.max_position == 32768);
  CHECK(m.rms_eps == 1e-6f);
  CHECK(m.rope_theta == 10000.0f);
  CHECK(m.decoder_sparse_step == 1);
  CHECK(m.moe_intermediate == 768);
  CHECK(m.top_k == 8);
  CHECK(m.num_experts == 128);
  CHECK_FALSE(m.renormalize);  // norm_topk_prob = False
  CHECK(m.mlp_only_layers.empty());
  CHECK(m.block_size == 16);
}

TEST_CASE("A YaRN dictionary with only its type and factor takes transformers' fallbacks",
          "[hf_config]") {
  json j = fixture("qwen3_30b_a3b_hub.json");
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4}};
  const ModelConfig m = parse(j);
  CHECK(m.rope_scaling.kind == Kind::yarn);
  CHECK(m.rope_scaling.factor == 4.0);
  CHECK(m.rope_scaling.original_max_position == 40960);  // max_position_embeddings
  CHECK(m.rope_scaling.truncate);
  CHECK(m.rope_scaling.attention_factor == 0.0);
  // factor null: max_position_embeddings / original_max_position_embeddings.
  j["rope_scaling"] = {{"rope_type", "yarn"},
                       {"factor", nullptr},
                       {"original_max_position_embeddings", 10240},
                       {"truncate", false}};
  const ModelConfig n = parse(j);
  CHECK(n.rope_scaling.factor == 4.0);
  CHECK_FALSE(n.rope_scaling.truncate);
  j["rope_scaling"] = {{"rope_type", "default"}};
  CHECK(parse(j).rope_scaling.kind == Kind::none);
}

TEST_CASE("FP8 quantization_config with modules_to_not_convert", "[hf_config]") {
  json j = fixture("qwen3_30b_a3b_hub.json");
  j["quantization_config"] = {{"activation_scheme", "dynamic"},
                              {"fmt", "e4m3"},
                              {"quant_method", "fp8"},
                              {"weight_block_size", {128, 128}},
                              {"modules_to_not_convert", {"lm_head", "model.layers.0.mlp.gate"}}};
  const ModelConfig m = parse(j);
  CHECK(m.quant.method == QuantMethod::fp8_block);
  REQUIRE(m.quant.unquantized.size() == 2);
  CHECK(m.quant.unquantized[0] == pipeline::ModulePattern{"lm_head", false});
  CHECK(m.quant.unquantized[1] == pipeline::ModulePattern{"model.layers.0.mlp.gate", false});
  // weight_block_size absent: FineGrainedFP8Config's (128, 128).
  j["quantization_config"].erase("weight_block_size");
  CHECK(parse(j).quant.block_k == 128);
}

TEST_CASE("Quark MXFP4 quantization_config with re: patterns in exclude", "[hf_config]") {
  const ModelConfig m = load_hf_config(data / "deepseek_v3_quark_mxfp4.json");
  CHECK(m.quant.method == QuantMethod::mxfp4_quark);
  REQUIRE(m.quant.unquantized.size() == 3);
  CHECK(m.quant.unquantized[0] == pipeline::ModulePattern{"model.layers.*self_attn.*", true});
  CHECK(m.quant.unquantized[1] == pipeline::ModulePattern{"model.layers.*mlp.gate", true});
  CHECK(m.quant.unquantized[2] == pipeline::ModulePattern{"lm_head", false});
  // A weight-only export (no input spec) would run with other arithmetic than the model's.
  json j = fixture("deepseek_v3_quark_mxfp4.json");
  j["quantization_config"]["global_quant_config"]["input_tensors"] = nullptr;
  expect_error(j, "quantization_config.global_quant_config.input_tensors", "weight-only");
}

TEST_CASE("The defaults table covers both architectures' fields", "[hf_config]") {
  const auto table = hf_config_defaults();
  const auto row = [&](std::string_view field) {
    for (const auto& d : table)
      if (d.field == field) return d;
    FAIL("no row for " << field);
    return HfDefault{};
  };
  CHECK(row("first_k_dense_replace").deepseek_v3 == "3");
  CHECK(row("first_k_dense_replace").qwen3_moe.empty());
  CHECK(row("decoder_sparse_step").qwen3_moe == "1");
  CHECK(row("norm_topk_prob").qwen3_moe == "false");
  for (const auto& d : table) {
    INFO(d.field);
    for (const auto text : {d.deepseek_v3, d.qwen3_moe})
      if (!text.empty()) CHECK_NOTHROW(json::parse(text));
  }
}

// ---- bad input: one kind per test ----

TEST_CASE("Error: another architecture", "[hf_config][error]") {
  json j = fixture("deepseek_v3_hub.json");
  j["architectures"] = {"LlamaForCausalLM"};
  expect_error(j, "architectures", "LlamaForCausalLM");
  j = json{{"model_type", "llama"}};
  expect_error(j, "model_type", "\"llama\"");
}

TEST_CASE("Error: model_type disagreeing with architectures", "[hf_config][error]") {
  json j = fixture("deepseek_v3_hub.json");
  j["model_type"] = "qwen3_moe";
  expect_error(j, "model_type", "\"qwen3_moe\"");
}

TEST_CASE("Error: q_lora_rank null (attention without Q-LoRA)", "[hf_config][error]") {
  json j = fixture("deepseek_v3_hub.json");
  j["q_lora_rank"] = nullptr;
  expect_error(j, "q_lora_rank", "null");
}

TEST_CASE("Error: an unknown rope type", "[hf_config][error]") {
  json j = fixture("deepseek_v3_hub.json");
  j["rope_scaling"]["type"] = "longrope";
  expect_error(j, "rope_scaling.type", "\"longrope\"");
  j = fixture("qwen3_moe_transformers5.json");
  j["rope_parameters"]["rope_type"] = "su";
  expect_error(j, "rope_parameters.rope_type", "\"su\"");
}

TEST_CASE("Error: an activation other than SiLU", "[hf_config][error]") {
  json j = fixture("qwen3_30b_a3b_hub.json");
  j["hidden_act"] = "gelu";
  expect_error(j, "hidden_act", "\"gelu\"");
}

TEST_CASE("Error: DeepSeek scoring_func or topk_method other than sigmoid / noaux_tc",
          "[hf_config][error]") {
  json j = fixture("deepseek_v3_hub.json");
  j["scoring_func"] = "softmax";
  expect_error(j, "scoring_func", "\"softmax\"");
  j = fixture("deepseek_v3_hub.json");
  j["topk_method"] = "greedy";
  expect_error(j, "topk_method", "\"greedy\"");
}

TEST_CASE("Error: a field of the wrong JSON type", "[hf_config][error]") {
  json j = fixture("deepseek_v3_hub.json");
  j["hidden_size"] = "7168";
  expect_error(j, "hidden_size", "\"7168\"");
  j = fixture("qwen3_30b_a3b_hub.json");
  j["norm_topk_prob"] = 1;
  expect_error(j, "norm_topk_prob", "= 1");
  j = fixture("qwen3_30b_a3b_hub.json");
  j["num_experts"] = 128.5;
  expect_error(j, "num_experts", "128.5");
  j = fixture("deepseek_v3_hub.json");
  j["rope_scaling"]["factor"] = "40";
  expect_error(j, "rope_scaling.factor", "\"40\"");
  j = fixture("deepseek_v3_hub.json");
  j["rope_scaling"] = 40;
  expect_error(j, "rope_scaling", "40");
}

TEST_CASE("Error: a value out of its range", "[hf_config][error]") {
  json j = fixture("deepseek_v3_hub.json");
  j["num_hidden_layers"] = 0;
  expect_error(j, "num_hidden_layers", "= 0");
  j = fixture("deepseek_v3_hub.json");
  j["n_group"] = 7;
  expect_error(j, "n_group", "= 7");
  j = fixture("deepseek_v3_hub.json");
  j["topk_group"] = 9;
  expect_error(j, "topk_group", "= 9");
  j = fixture("qwen3_30b_a3b_hub.json");
  j["num_experts_per_tok"] = 129;
  expect_error(j, "num_experts_per_tok", "129");
  j = fixture("qwen3_30b_a3b_hub.json");
  j["num_key_value_heads"] = 5;
  expect_error(j, "num_key_value_heads", "= 5");
  j = fixture("deepseek_v3_hub.json");
  j["rope_scaling"]["factor"] = 0.5;
  expect_error(j, "rope_scaling.factor", "0.5");
}

TEST_CASE("Error: mlp_only_layers naming a layer that does not exist", "[hf_config][error]") {
  json j = fixture("qwen3_30b_a3b_hub.json");
  j["mlp_only_layers"] = {0, 48};
  expect_error(j, "mlp_only_layers", "48");
}

TEST_CASE("Error: rope_interleave false", "[hf_config][error]") {
  json j = fixture("deepseek_v3_transformers5.json");
  j["rope_interleave"] = false;
  expect_error(j, "rope_interleave", "false");
}

TEST_CASE("Error: partial rotary factor", "[hf_config][error]") {
  json j = fixture("qwen3_moe_transformers5.json");
  j["rope_parameters"]["partial_rotary_factor"] = 0.5;
  expect_error(j, "rope_parameters.partial_rotary_factor", "0.5");
}

TEST_CASE("Error: attention bias or sliding window", "[hf_config][error]") {
  json j = fixture("deepseek_v3_hub.json");
  j["attention_bias"] = true;
  expect_error(j, "attention_bias", "true");
  j = fixture("qwen3_30b_a3b_hub.json");
  j["use_sliding_window"] = true;
  expect_error(j, "use_sliding_window", "true");
}

TEST_CASE("Error: two spellings of one field that disagree", "[hf_config][error]") {
  json j = fixture("qwen3_moe_transformers5.json");
  j["num_experts"] = 32;
  expect_error(j, "num_experts", "32");
  j = fixture("deepseek_v3_hub.json");
  j["rope_parameters"] = {{"rope_type", "default"}};
  expect_error(j, "rope_parameters", "\"default\"");
  j = fixture("qwen3_moe_transformers5.json");
  j["rope_theta"] = 10000.0;
  expect_error(j, "rope_theta", "10000");
}

TEST_CASE("Error: DeepSeek head_dim or qk_head_dim inconsistent with the head sizes",
          "[hf_config][error]") {
  json j = fixture("deepseek_v3_transformers5.json");
  j["head_dim"] = 48;
  expect_error(j, "head_dim", "48");
  j = fixture("deepseek_v3_transformers5.json");
  j["qk_head_dim"] = 64;
  expect_error(j, "qk_head_dim", "64");
}

TEST_CASE("Error: unsupported quantization_config", "[hf_config][error]") {
  json j = fixture("qwen3_30b_a3b_hub.json");
  j["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}};
  expect_error(j, "quantization_config.quant_method", "\"gptq\"");
  j = fixture("deepseek_v3_hub.json");
  j["quantization_config"]["weight_block_size"] = {64, 64};
  expect_error(j, "quantization_config.weight_block_size", "[64,64]");
  j = fixture("deepseek_v3_hub.json");
  j["quantization_config"]["fmt"] = "e5m2";
  expect_error(j, "quantization_config.fmt", "\"e5m2\"");
  j = fixture("deepseek_v3_quark_mxfp4.json");
  j["quantization_config"]["global_quant_config"]["weight"]["dtype"] = "fp8_e4m3";
  expect_error(j, "quantization_config.global_quant_config.weight.dtype", "\"fp8_e4m3\"");
  j = fixture("deepseek_v3_quark_mxfp4.json");
  j["quantization_config"]["layer_quant_config"] = {{"*.mlp.*", json::object()}};
  expect_error(j, "quantization_config.layer_quant_config", "*.mlp.*");
  j = fixture("deepseek_v3_quark_mxfp4.json");
  j["quantization_config"]["exclude"] = {"re:model.layers.(*"};
  expect_error(j, "quantization_config.exclude", "re:model.layers.(*");
}

TEST_CASE("Error: text that is not one JSON object", "[hf_config][error]") {
  CHECK_THROWS_WITH(parse_hf_config("{\"hidden_size\": ", "x/config.json"),
                    Contains("x/config.json") && Contains("not valid JSON"));
  CHECK_THROWS_WITH(parse_hf_config("[1]", "x/config.json"), Contains("not a JSON object"));
  CHECK_THROWS_WITH(parse_hf_config(R"({"model_type": "qwen3_moe", "hidden_size": 1,
                                        "hidden_size": 2})",
                                    "x/config.json"),
                    Contains("x/config.json") && Contains("hidden_size") && Contains("twice"));
}

TEST_CASE("Error: a config.json that cannot be read", "[hf_config][error]") {
  const auto missing = data / "no_such_dir" / "config.json";
  CHECK_THROWS_AS(load_hf_config(missing), ConfigError);
  CHECK_THROWS_WITH(load_hf_config(missing), Contains(missing.string()));
}
