#include "atom/pipeline/layer.hpp"

namespace atom::pipeline {

using policy::PipelineId;

std::string LayerHandles::name() const {
  const auto name_of = [](const auto& h) { return std::string(h.name()); };
  return std::visit(name_of, attention) + " + " + std::visit(name_of, mlp);
}

PipelineId attention_pipeline(const ModelConfig& m) {
  return m.attention == AttentionKind::mla ? PipelineId::mla_attention
                                           : PipelineId::qwen3_attention;
}

PipelineId mlp_pipeline(LayerKind kind) {
  return kind == LayerKind::moe ? PipelineId::moe_block : PipelineId::dense_mlp;
}

LayerHandles resolve_layer(const ModelConfig& m, LayerKind kind, policy::Point point,
                           policy::WeightFormat attention_format, policy::WeightFormat mlp_format,
                           policy::BackendId backend) {
  const policy::Point a = point.with(attention_format);
  const policy::Point f = point.with(mlp_format);
  const auto attention = [&]() -> AttentionHandle {
    if (m.attention == AttentionKind::mla)
      return dispatch::resolve_point<PipelineId::mla_attention>(a, backend);
    return dispatch::resolve_point<PipelineId::qwen3_attention>(a, backend);
  }();
  const auto mlp = [&]() -> MlpHandle {
    if (kind == LayerKind::moe) return dispatch::resolve_point<PipelineId::moe_block>(f, backend);
    return dispatch::resolve_point<PipelineId::dense_mlp>(f, backend);
  }();
  return {attention, mlp};
}

void run_attention(const LayerHandles& layer, const LayerBlockWeights& w, const LayerIo& r) {
  BlockIo attention_io = r.io;
  attention_io.out = r.intermediate;
  std::visit(
      [&]<PipelineId P>(const dispatch::Handle<P>& h) {
        if constexpr (P == PipelineId::mla_attention)
          h(MlaArgs{attention_io, w.mla, r.batch, r.mla_cache});
        else
          h(Qwen3AttentionArgs{attention_io, w.qwen3, r.batch, r.kv_cache});
      },
      layer.attention);
}

void run_mlp(const LayerHandles& layer, const LayerBlockWeights& w, const LayerIo& r) {
  BlockIo mlp_io = r.io;
  mlp_io.x = r.intermediate;
  std::visit(
      [&]<PipelineId P>(const dispatch::Handle<P>& h) {
        if constexpr (P == PipelineId::moe_block)
          h(MoeArgs{mlp_io, w.moe, r.dual_stream_threshold, r.routes});
        else
          h(DenseMlpArgs{mlp_io, w.dense});
      },
      layer.mlp);
}

void run_layer(const LayerHandles& layer, const LayerBlockWeights& w, const LayerIo& r) {
  run_attention(layer, w, r);
  run_mlp(layer, w, r);
}

}  // namespace atom::pipeline
