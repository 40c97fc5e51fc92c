// The committed transformers checkpoints (tests/model/hf, written by tools/hf-compare): atom's
// config parser reads both the hub-style config.json and the one transformers 5 writes to the same
// model, and the tensors atom's reader finds have the names, dtypes and shapes that model implies
// in each weight format.
#include <catch2/catch.hpp>

#include <filesystem>
#include <string>

#include "atom/io/checkpoint.hpp"
#include "atom/model/hf_config.hpp"
#include "same_model.hpp"

using namespace atom;
using pipeline::Architecture;
using pipeline::ModelConfig;
using pipeline::QuantMethod;

namespace {

const std::filesystem::path data = ATOM_MODEL_HF_DATA;

std::uint64_t ceil_div(std::uint64_t a, std::uint64_t b) {
  return (a + b - 1) / b;
}

// The tensor `name` as one linear weight [n, k] of the checkpoint's format.
void check_linear(const io::Checkpoint& ckpt, const ModelConfig& m, const std::string& name,
                  std::uint64_t n, std::uint64_t k, bool quantized) {
  INFO(name);
  const auto& w = ckpt.info(name + ".weight");
  if (!quantized || m.quant.method == QuantMethod::none) {
    CHECK(w.dtype == io::Dtype::BF16);
    CHECK(w.shape == std::vector<std::uint64_t>{n, k});
  } else if (m.quant.method == QuantMethod::fp8_block) {
    CHECK(w.dtype == io::Dtype::F8_E4M3);
    CHECK(w.shape == std::vector<std::uint64_t>{n, k});
    const auto& s = ckpt.info(name + ".weight_scale_inv");
    CHECK((s.dtype == io::Dtype::F32 || s.dtype == io::Dtype::BF16));
    CHECK(s.shape == std::vector<std::uint64_t>{ceil_div(n, 128), ceil_div(k, 128)});
  } else {
    CHECK(w.dtype == io::Dtype::U8);
    CHECK(w.shape == std::vector<std::uint64_t>{n, k / 2});
    const auto& s = ckpt.info(name + ".weight_scale");
    CHECK((s.dtype == io::Dtype::U8 || s.dtype == io::Dtype::F8_E8M0));
    CHECK(s.shape == std::vector<std::uint64_t>{n, k / 32});
  }
}

void check_checkpoint(const std::string& model, const std::string& format,
                      Architecture architecture, QuantMethod method) {
  const auto dir = data / model / format;
  INFO(dir.string());
  const ModelConfig m = model::load_hf_config(dir / "config.json");
  const ModelConfig t5 = model::load_hf_config(dir / "config.transformers.json");
  test::check_same_model(m, t5);
  CHECK(m.quant.method == t5.quant.method);
  CHECK(m.quant.unquantized == t5.quant.unquantized);
  if (m.attention == pipeline::AttentionKind::mla)
    CHECK(mla_softmax_scale(m) == mla_softmax_scale(t5));
  CHECK(m.architecture == architecture);
  CHECK(m.quant.method == method);
  REQUIRE(m.num_layers == 3);
  CHECK(pipeline::layer_kind(m, 0) == pipeline::LayerKind::dense_mlp);
  CHECK(pipeline::layer_kind(m, 1) == pipeline::LayerKind::moe);
  CHECK(pipeline::layer_kind(m, 2) == pipeline::LayerKind::moe);

  const auto ckpt = io::Checkpoint::open(dir);
  const auto h = static_cast<std::uint64_t>(m.hidden);
  // Quark leaves attention in bf16 where its exclude list says so (DeepSeek's does).
  const bool attention_quantized =
      !(method == QuantMethod::mxfp4_quark && architecture == Architecture::deepseek_v3);
  for (index_t l = 0; l < m.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    if (architecture == Architecture::deepseek_v3) {
      const auto heads = static_cast<std::uint64_t>(m.num_heads);
      const auto q_lora = static_cast<std::uint64_t>(m.q_lora_rank);
      const auto kv_lora = static_cast<std::uint64_t>(m.kv_lora_rank);
      const auto rope = static_cast<std::uint64_t>(m.qk_rope_dim);
      const auto nope = static_cast<std::uint64_t>(m.qk_nope_dim);
      const auto v = static_cast<std::uint64_t>(m.v_head_dim);
      check_linear(ckpt, m, p + "self_attn.q_a_proj", q_lora, h, attention_quantized);
      check_linear(ckpt, m, p + "self_attn.q_b_proj", heads * (nope + rope), q_lora,
                   attention_quantized);
      check_linear(ckpt, m, p + "self_attn.kv_a_proj_with_mqa", kv_lora + rope, h,
                   attention_quantized);
      check_linear(ckpt, m, p + "self_attn.kv_b_proj", heads * (nope + v), kv_lora,
                   attention_quantized);
      check_linear(ckpt, m, p + "self_attn.o_proj", h, heads * v, attention_quantized);
      CHECK(ckpt.info(p + "self_attn.q_a_layernorm.weight").shape ==
            std::vector<std::uint64_t>{q_lora});
      CHECK(ckpt.info(p + "self_attn.kv_a_layernorm.weight").shape ==
            std::vector<std::uint64_t>{kv_lora});
    } else {
      const auto q = static_cast<std::uint64_t>(m.num_heads * m.head_dim);
      const auto kv = static_cast<std::uint64_t>(m.num_kv_heads * m.head_dim);
      check_linear(ckpt, m, p + "self_attn.q_proj", q, h, attention_quantized);
      check_linear(ckpt, m, p + "self_attn.k_proj", kv, h, attention_quantized);
      check_linear(ckpt, m, p + "self_attn.v_proj", kv, h, attention_quantized);
      check_linear(ckpt, m, p + "self_attn.o_proj", h, q, attention_quantized);
      CHECK(ckpt.info(p + "self_attn.q_norm.weight").shape ==
            std::vector<std::uint64_t>{static_cast<std::uint64_t>(m.head_dim)});
    }
    CHECK(ckpt.contains(p + "input_layernorm.weight"));
    CHECK(ckpt.contains(p + "post_attention_layernorm.weight"));
    if (pipeline::layer_kind(m, l) == pipeline::LayerKind::dense_mlp) {
      const auto inter = static_cast<std::uint64_t>(m.intermediate);
      check_linear(ckpt, m, p + "mlp.gate_proj", inter, h, true);
      check_linear(ckpt, m, p + "mlp.up_proj", inter, h, true);
      check_linear(ckpt, m, p + "mlp.down_proj", h, inter, true);
      continue;
    }
    const auto experts = static_cast<std::uint64_t>(m.num_experts);
    const auto inter = static_cast<std::uint64_t>(m.moe_intermediate);
    const auto& router = ckpt.info(p + "mlp.gate.weight");  // kept in bf16 by every format
    CHECK(router.dtype == io::Dtype::BF16);
    CHECK(router.shape == std::vector<std::uint64_t>{experts, h});
    if (architecture == Architecture::deepseek_v3) {
      CHECK(ckpt.info(p + "mlp.gate.e_score_correction_bias").shape ==
            std::vector<std::uint64_t>{experts});
      const auto shared = inter * static_cast<std::uint64_t>(m.num_shared_experts);
      check_linear(ckpt, m, p + "mlp.shared_experts.gate_proj", shared, h, true);
      check_linear(ckpt, m, p + "mlp.shared_experts.down_proj", h, shared, true);
    }
    for (std::uint64_t e = 0; e < experts; ++e) {
      const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
      check_linear(ckpt, m, x + "gate_proj", inter, h, true);
      check_linear(ckpt, m, x + "up_proj", inter, h, true);
      check_linear(ckpt, m, x + "down_proj", h, inter, true);
    }
  }
}

}  // namespace

TEST_CASE("transformers' tiny DeepSeek-V3 checkpoints: config and tensors in every format") {
  check_checkpoint("deepseek-v3-tiny", "bf16", Architecture::deepseek_v3, QuantMethod::none);
  check_checkpoint("deepseek-v3-tiny", "fp8", Architecture::deepseek_v3, QuantMethod::fp8_block);
  check_checkpoint("deepseek-v3-tiny", "mxfp4", Architecture::deepseek_v3,
                   QuantMethod::mxfp4_quark);
}

TEST_CASE("transformers' tiny Qwen3-MoE checkpoints: config and tensors in every format") {
  check_checkpoint("qwen3-30b-a3b-tiny", "bf16", Architecture::qwen3_moe, QuantMethod::none);
  check_checkpoint("qwen3-30b-a3b-tiny", "fp8", Architecture::qwen3_moe, QuantMethod::fp8_block);
  check_checkpoint("qwen3-30b-a3b-tiny", "mxfp4", Architecture::qwen3_moe,
                   QuantMethod::mxfp4_quark);
}
