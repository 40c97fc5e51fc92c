// A Hugging Face checkpoint folder (config.json and its safetensors: one file or a sharded index)
// read into pipeline weights by the tensor names the models use, in the formats the checkpoint
// stores: bf16, FP8 e4m3 with 128x128 block scales (weight_scale_inv, F32 or BF16), and MXFP4 as
// Quark exports it (U8 codes [N, K/2], element 2i in the low nibble, e8m0 scales [N, K/32] as U8
// or F8_E8M0). Each block's weights keep their stored format; the block's point takes it.
//
// The fusions atom's pipelines read are made at load: q_a_proj with kv_a_proj_with_mqa, q_proj
// with k_proj and v_proj, each MLP's gate_proj with up_proj (rows concatenated, each source keeping
// its own scales: FP8 block rows that do not start a 128-row block in the concatenation are given
// one scale row per weight row, the same values). Two stated conversions: kv_b_proj is split into
// the absorbed W_UK / W_UV and requantized into both BMM formats (FP8 with one scale per head,
// MXFP4 along K), from its exact values whatever its stored format; norm weights are read as bf16
// and the DeepSeek router bias (F32 or BF16) as float.
//
// Errors name the file, the tensor or field, and what was expected and found: a missing tensor,
// a wrong dtype or shape, a format the config's quantization_config does not give that module.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "atom/io/checkpoint.hpp"
#include "atom/io/loader.hpp"
#include "atom/pipeline/storage.hpp"

namespace atom::model {

class HfCheckpoint {
 public:
  // `dir`: a folder holding config.json and model.safetensors or model.safetensors.index.json.
  static HfCheckpoint open(const std::filesystem::path& dir, io::LoadMode mode);

  HfCheckpoint(HfCheckpoint&&) noexcept;
  HfCheckpoint& operator=(HfCheckpoint&&) noexcept;
  ~HfCheckpoint();

  const pipeline::ModelConfig& model() const { return model_; }
  const io::Checkpoint& tensors() const { return *checkpoint_; }

  // Decoder layer `layer` (0 <= layer < num_hidden_layers) in host memory: the attention block
  // and the MLP block of its kind (pipeline::layer_kind). At tensor parallel rank `tp` only that
  // rank's share is read (pipeline/tp.hpp; the same bytes as pipeline::shard of the whole layer).
  std::unique_ptr<pipeline::LayerWeights> layer(index_t layer, pipeline::TpShape tp = {}) const;

  // The open shard files (defined in checkpoint.cpp).
  struct Files;

 private:
  HfCheckpoint() = default;

  std::filesystem::path dir_;
  io::LoadMode mode_ = io::LoadMode::mmap;
  pipeline::ModelConfig model_;
  std::unique_ptr<io::Checkpoint> checkpoint_;
  std::unique_ptr<Files> files_;
};

}  // namespace atom::model
