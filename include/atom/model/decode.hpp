// Decoding given sequences through a range of decoder layers, as atom-run --input does: the
// sequences run together as one ragged batch (step i feeds token i of every sequence still
// running), each with its own paged caches growing from empty, positions 0..len-1. The hidden
// state entering the first layer is the input (the residual stream starts as it); each layer's
// output, residual included, is recorded as transformers' decoder layer returns it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "atom/pipeline/layer.hpp"
#include "atom/pipeline/storage.hpp"

namespace atom::model {

class HfCheckpoint;  // model/checkpoint.hpp

struct DecodeLayer {
  index_t index = 0;  // the checkpoint's layer index
  const pipeline::LayerWeights* weights = nullptr;
};

struct LayerOutput {
  index_t index = 0;
  std::string instances;                          // the blocks' instantiations (LayerHandles::name)
  std::vector<std::vector<float>> hidden;         // per sequence [len, hidden]
  std::vector<std::vector<std::int32_t>> routes;  // per sequence [len, top_k], ascending; MoE only
};

// The weight formats of a layer's attention and MLP blocks.
inline std::pair<policy::WeightFormat, policy::WeightFormat> block_formats(
    const pipeline::ModelConfig& m, const DecodeLayer& layer) {
  const pipeline::LayerWeights& w = *layer.weights;
  const bool moe = pipeline::layer_kind(m, layer.index) == pipeline::LayerKind::moe;
  return {m.attention == pipeline::AttentionKind::mla ? pipeline::weight_format(w.mla())
                                                      : pipeline::weight_format(w.qwen3()),
          moe ? pipeline::weight_format(w.moe()) : pipeline::weight_format(w.dense())};
}

// inputs: per sequence [len, hidden] bf16 (len >= 1). Host backend; `point` from the environment,
// each block at its weights' format.
std::vector<LayerOutput> decode_sequences(const pipeline::ModelConfig& m,
                                          const std::vector<DecodeLayer>& layers,
                                          const std::vector<std::vector<bf16>>& inputs,
                                          policy::Point point, std::int64_t dual_stream_threshold);

// The same decode at tensor parallel size `tp_size` (host backend): each rank a thread with its
// shard of every layer (pipeline::shard) and its share of the caches, in one HostTpGroup; every
// layer's output is the all-reduce of the ranks' outputs plus the residual, as rank 0 records it.
std::vector<LayerOutput> decode_sequences_tp(const pipeline::ModelConfig& m,
                                             const std::vector<DecodeLayer>& layers,
                                             const std::vector<std::vector<bf16>>& inputs,
                                             policy::Point point,
                                             std::int64_t dual_stream_threshold, index_t tp_size);

// The same, each rank reading only its share of the checkpoint's layers `layers` (first to last)
// (HfCheckpoint::layer at its rank), as engines load a tensor-parallel model.
std::vector<LayerOutput> decode_checkpoint_tp(const HfCheckpoint& checkpoint,
                                              const std::vector<index_t>& layers,
                                              const std::vector<std::vector<bf16>>& inputs,
                                              policy::Point point,
                                              std::int64_t dual_stream_threshold, index_t tp_size);

}  // namespace atom::model
