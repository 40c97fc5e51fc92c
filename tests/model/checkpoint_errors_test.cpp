// Bad checkpoints: each defect, made in a copy of a committed transformers checkpoint, is an error
// that names the file, the tensor or field, and what was expected and what was found.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "../io/test_util.hpp"
#include "atom/io/writer.hpp"
#include "atom/model/checkpoint.hpp"
#include "atom/model/hf_config.hpp"

using namespace atom;
using Catch::Matchers::Contains;

namespace {

const std::filesystem::path data = ATOM_MODEL_HF_DATA;

struct Edit {
  std::function<void(nlohmann::json&)> config = [](nlohmann::json&) {};
  // Called with each tensor; return false to leave it out.
  std::function<bool(io::TensorData&, std::vector<std::byte>&)> tensor =
      [](io::TensorData&, std::vector<std::byte>&) { return true; };
};

// A copy of `source` (config.json and model.safetensors) with the edits applied, in `dir`.
void write_copy(const std::filesystem::path& source, const std::filesystem::path& dir,
                const Edit& edit, const std::filesystem::path& config_source = {}) {
  nlohmann::json config = nlohmann::json::parse(std::ifstream(
      config_source.empty() ? source / "config.json" : config_source / "config.json"));
  edit.config(config);
  std::ofstream(dir / "config.json") << config.dump(2);
  const auto tensors = io::Checkpoint::open(source).load_host(io::LoadMode::read);
  std::vector<std::vector<std::byte>> storage;
  storage.reserve(tensors.size());
  std::vector<io::TensorData> out;
  for (const auto& [name, t] : tensors) {
    storage.emplace_back(t.bytes.span().begin(), t.bytes.span().end());
    io::TensorData d{name, t.info.dtype, t.info.shape, {}};
    if (!edit.tensor(d, storage.back())) continue;
    d.bytes = storage.back();
    out.push_back(d);
  }
  io::write_file(dir / "model.safetensors", out);
}

std::string load_error(const std::filesystem::path& dir, index_t layer) {
  try {
    const auto ckpt = model::HfCheckpoint::open(dir, io::LoadMode::read);
    ckpt.layer(layer);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

const auto ds_bf16 = data / "deepseek-v3-tiny" / "bf16";
const auto ds_fp8 = data / "deepseek-v3-tiny" / "fp8";
const auto qwen_mxfp4 = data / "qwen3-30b-a3b-tiny" / "mxfp4";

}  // namespace

TEST_CASE("checkpoint: the committed checkpoints load every layer") {
  for (const auto& dir : {ds_bf16, ds_fp8, qwen_mxfp4}) {
    const auto ckpt = model::HfCheckpoint::open(dir, io::LoadMode::mmap);
    for (index_t l = 0; l < ckpt.model().num_layers; ++l) CHECK_NOTHROW(ckpt.layer(l));
    CHECK_THROWS_AS(ckpt.layer(ckpt.model().num_layers), std::out_of_range);
  }
}

TEST_CASE("checkpoint: a missing tensor is named with the file and the layer") {
  io::test::ScratchDir dir;
  write_copy(ds_bf16, dir.path(), {.tensor = [](io::TensorData& t, std::vector<std::byte>&) {
               return t.name != "model.layers.1.self_attn.q_b_proj.weight";
             }});
  const std::string e = load_error(dir.path(), 1);
  CHECK_THAT(e, Contains("model.layers.1.self_attn.q_b_proj.weight"));
  CHECK_THAT(e, Contains("is missing"));
  CHECK_THAT(e, Contains(dir.path().string()));
  CHECK(load_error(dir.path(), 0) == "no error");  // layer 0 does not need it
}

TEST_CASE("checkpoint: config and tensors that disagree name the shapes") {
  // Twice the heads: q_b_proj's rows are heads x (nope + rope) = 4 x 48, not 8 x 48.
  io::test::ScratchDir dir;
  write_copy(ds_bf16, dir.path(), {.config = [](nlohmann::json& c) {
               c["num_attention_heads"] = 8;
               c["num_key_value_heads"] = 8;
             }});
  const std::string e = load_error(dir.path(), 0);
  CHECK_THAT(e, Contains("model.layers.0.self_attn.q_b_proj.weight"));
  CHECK_THAT(e, Contains("has shape [192, 96], expected [384, 96] from config.json"));
}

TEST_CASE("checkpoint: a wrong dtype names what was expected") {
  io::test::ScratchDir dir;
  write_copy(ds_bf16, dir.path(), {.tensor = [](io::TensorData& t, std::vector<std::byte>& b) {
               if (t.name == "model.layers.0.input_layernorm.weight") {
                 t.dtype = io::Dtype::F16;  // same width, another type
               }
               static_cast<void>(b);
               return true;
             }});
  const std::string e = load_error(dir.path(), 0);
  CHECK_THAT(e, Contains("model.layers.0.input_layernorm.weight"));
  CHECK_THAT(e, Contains("has dtype F16, expected BF16"));
}

TEST_CASE("checkpoint: a tensor format the quantization config does not give is refused") {
  // bf16 tensors under the FP8 checkpoint's config.json.
  io::test::ScratchDir dir;
  write_copy(ds_bf16, dir.path(), {}, ds_fp8);
  const std::string e = load_error(dir.path(), 0);
  CHECK_THAT(e, Contains("model.layers.0.self_attn.q_a_proj.weight"));
  CHECK_THAT(e, Contains("is stored as bf16 (BF16) but config.json's quantization_config gives "
                         "this module fp8"));
  // Quark's exclude list decides too: Qwen3's attention is MXFP4, so excluding it is a mismatch.
  io::test::ScratchDir quark;
  write_copy(qwen_mxfp4, quark.path(), {.config = [](nlohmann::json& c) {
               c["quantization_config"]["exclude"].push_back("re:.*self_attn.*");
             }});
  CHECK_THAT(load_error(quark.path(), 0),
             Contains("is stored as mxfp4 (U8) but config.json's quantization_config gives this "
                      "module bf16"));
}

TEST_CASE("checkpoint: FP8 block scales of the wrong shape are named") {
  io::test::ScratchDir dir;
  write_copy(ds_fp8, dir.path(), {.tensor = [](io::TensorData& t, std::vector<std::byte>& b) {
               if (t.name == "model.layers.0.mlp.down_proj.weight_scale_inv") {
                 t.shape = {4, 1};  // 4 floats, as [2, 2] had
               }
               static_cast<void>(b);
               return true;
             }});
  const std::string e = load_error(dir.path(), 0);
  CHECK_THAT(e, Contains("model.layers.0.mlp.down_proj.weight_scale_inv"));
  CHECK_THAT(e, Contains("has shape [4, 1], expected [2, 2]"));
}

TEST_CASE("checkpoint: a truncated shard and an index naming a missing shard name the file") {
  io::test::ScratchDir dir;
  write_copy(ds_bf16, dir.path(), {});
  const auto file = dir.path() / "model.safetensors";
  std::filesystem::resize_file(file, std::filesystem::file_size(file) - 100);
  CHECK_THAT(load_error(dir.path(), 0), Contains("model.safetensors"));

  io::test::ScratchDir sharded;
  std::ofstream(sharded.path() / "config.json") << std::ifstream(ds_bf16 / "config.json").rdbuf();
  std::ofstream(sharded.path() / "model.safetensors.index.json")
      << R"({"metadata": {}, "weight_map": {"model.layers.0.input_layernorm.weight": )"
      << R"("model-00001-of-00002.safetensors"}})";
  const std::string e = load_error(sharded.path(), 0);
  CHECK_THAT(e, Contains("model-00001-of-00002.safetensors"));
}

TEST_CASE("checkpoint: an unsupported config value names the field") {
  io::test::ScratchDir dir;
  write_copy(ds_bf16, dir.path(), {.config = [](nlohmann::json& c) { c["hidden_act"] = "gelu"; }});
  const std::string e = load_error(dir.path(), 0);
  CHECK_THAT(e, Contains("hidden_act"));
  CHECK_THAT(e, Contains("gelu"));
}
