// A decoder layer composed of its blocks' instantiations: the attention block (MLA or Qwen3),
// then the MLP block (MoE or dense) on the attention's output. Each block is resolved once at its
// own point (the environment's axes with the block's weight format) and called through its
// handle, so a layer costs one indirect call per block and no layer is instantiated over the
// product of its blocks' axes. A fusion across the block boundary (the tensor-parallel all-reduce
// into the next norm) lives at the entry of the next block.
#pragma once

#include <string>
#include <variant>

#include "atom/dispatch/dispatch.hpp"
#include "atom/pipeline/args.hpp"

namespace atom::pipeline {

using AttentionHandle = std::variant<dispatch::Handle<policy::PipelineId::mla_attention>,
                                     dispatch::Handle<policy::PipelineId::qwen3_attention>>;
using MlpHandle = std::variant<dispatch::Handle<policy::PipelineId::moe_block>,
                               dispatch::Handle<policy::PipelineId::dense_mlp>>;

struct LayerHandles {
  AttentionHandle attention;
  MlpHandle mlp;

  // "<attention instance> + <MLP instance>".
  std::string name() const;
};

// The attention pipeline of the model's attention kind, the MLP pipeline of the layer kind.
policy::PipelineId attention_pipeline(const ModelConfig& m);
policy::PipelineId mlp_pipeline(LayerKind kind);

// The blocks of a layer of `kind`: `point` (from the environment, with the format of the GQA cache
// the layer will be given) with each block's weight format.
LayerHandles resolve_layer(const ModelConfig& m, LayerKind kind, policy::Point point,
                           policy::WeightFormat attention_format, policy::WeightFormat mlp_format,
                           policy::BackendId backend);

// One layer's weights: the attention block's (mla or qwen3, by the model) and the MLP block's
// (moe or dense, by the MLP handle).
struct LayerBlockWeights {
  const MlaWeights* mla = nullptr;
  const Qwen3AttentionWeights* qwen3 = nullptr;
  const MoeWeights* moe = nullptr;
  const DenseMlpWeights* dense = nullptr;
};

// The blocks of a layer of `kind` from its weights' owner (LayerWeights, or their device copies).
template <class Weights>
LayerBlockWeights block_weights(const ModelConfig& m, LayerKind kind, const Weights& w) {
  const bool mla = m.attention == AttentionKind::mla;
  const bool moe = kind == LayerKind::moe;
  return {mla ? &w.mla() : nullptr, mla ? nullptr : &w.qwen3(), moe ? &w.moe() : nullptr,
          moe ? nullptr : &w.dense()};
}

// A layer run: io.x enters the attention block (io.residual is updated by both blocks), the
// attention output goes to `intermediate` [T, hidden], the MLP block's to io.out.
struct LayerIo {
  BlockIo io;
  View2<bf16> intermediate;
  DecodeBatch batch;
  View3<bf16> mla_cache;     // MLA models
  ops::AnyKvCache kv_cache;  // GQA models
  std::int64_t dual_stream_threshold = 0;
  View2<std::int32_t> routes;  // optional [T, top_k]: the MoE block's experts (MoeArgs::routes)
};

void run_layer(const LayerHandles& layer, const LayerBlockWeights& weights, const LayerIo& io);
// Its two blocks one at a time (run_layer is run_attention then run_mlp), for a caller that marks
// the boundary between them.
void run_attention(const LayerHandles& layer, const LayerBlockWeights& weights, const LayerIo& io);
void run_mlp(const LayerHandles& layer, const LayerBlockWeights& weights, const LayerIo& io);

}  // namespace atom::pipeline
