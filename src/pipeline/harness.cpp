#include "atom/pipeline/harness.hpp"

#include <cmath>
#include <limits>

namespace atom::pipeline {

namespace {

using policy::PipelineId;

std::vector<float> to_floats(View2<const bf16> v) {
  std::vector<float> out;
  out.reserve(static_cast<std::size_t>(v.numel()));
  for (index_t i = 0; i < v.size(0); ++i)
    for (index_t j = 0; j < v.size(1); ++j) out.push_back(to_float(v(i, j)));
  return out;
}

template <PipelineId P>
RunArgs<P> make_args(const RunInputs& in, const DecodeState& s, Workspace& ws) {
  const BlockIo io{in.model, TpShape{}, s.x(), s.residual(), s.out(), &ws};
  BlockIo attention_io = io;
  attention_io.out = s.intermediate();
  if constexpr (P == PipelineId::mla_attention)
    return MlaArgs{io, &in.weights->mla(), s.batch(), s.mla_cache()};
  else if constexpr (P == PipelineId::qwen3_attention)
    return Qwen3AttentionArgs{io, &in.weights->qwen3(), s.batch(), s.kv_cache()};
  else if constexpr (P == PipelineId::moe_block)
    return MoeArgs{io, &in.weights->moe(), in.dual_stream_threshold};
  else if constexpr (P == PipelineId::ds_layer)
    return DsLayerArgs{MlaArgs{attention_io, &in.weights->mla(), s.batch(), s.mla_cache()},
                       &in.weights->moe(), in.dual_stream_threshold, s.out()};
  else
    return Qwen3LayerArgs{
        Qwen3AttentionArgs{attention_io, &in.weights->qwen3(), s.batch(), s.kv_cache()},
        &in.weights->moe(), in.dual_stream_threshold, s.out()};
}

}  // namespace

bool pipeline_fits(PipelineId p, const ModelConfig& m) {
  switch (p) {
    case PipelineId::mla_attention:
    case PipelineId::ds_layer:
      return m.attention == AttentionKind::mla;
    case PipelineId::qwen3_attention:
    case PipelineId::qwen3_layer:
      return m.attention == AttentionKind::gqa;
    case PipelineId::moe_block:
      return true;
  }
  return false;
}

template <PipelineId P>
RunOutput run_once(const dispatch::Handle<P>& handle, const RunInputs& in) {
  expect(in.model != nullptr && in.weights != nullptr, policy::pipeline_name(P),
         "model and weights must be set");
  expect(pipeline_fits(P, *in.model), policy::pipeline_name(P),
         "does not apply to model " + in.model->name);
  const DecodeState state(*in.model, in.context_lens, in.seed);
  Workspace ws;
  const RunArgs<P> args = make_args<P>(in, state, ws);
  const auto start = std::chrono::steady_clock::now();
  handle(args);
  const auto stop = std::chrono::steady_clock::now();
  return {to_floats(state.out()), to_floats(state.residual()),
          std::chrono::duration<double>(stop - start).count()};
}

template RunOutput run_once(const dispatch::Handle<PipelineId::mla_attention>&, const RunInputs&);
template RunOutput run_once(const dispatch::Handle<PipelineId::moe_block>&, const RunInputs&);
template RunOutput run_once(const dispatch::Handle<PipelineId::qwen3_attention>&, const RunInputs&);
template RunOutput run_once(const dispatch::Handle<PipelineId::ds_layer>&, const RunInputs&);
template RunOutput run_once(const dispatch::Handle<PipelineId::qwen3_layer>&, const RunInputs&);

template <PipelineId Attention>
RunOutput run_chained(const dispatch::Handle<Attention>& attention,
                      const dispatch::Handle<PipelineId::moe_block>& moe, const RunInputs& in) {
  const DecodeState state(*in.model, in.context_lens, in.seed);
  Workspace ws;
  auto attention_args = make_args<Attention>(in, state, ws);
  attention_args.io.out = state.intermediate();
  auto moe_args = make_args<PipelineId::moe_block>(in, state, ws);
  moe_args.io.x = state.intermediate();
  attention(attention_args);
  moe(moe_args);
  return {to_floats(state.out()), to_floats(state.residual()), 0.0};
}

template RunOutput run_chained(const dispatch::Handle<PipelineId::mla_attention>&,
                               const dispatch::Handle<PipelineId::moe_block>&, const RunInputs&);
template RunOutput run_chained(const dispatch::Handle<PipelineId::qwen3_attention>&,
                               const dispatch::Handle<PipelineId::moe_block>&, const RunInputs&);

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double diff = 0;
  double ref = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return std::numeric_limits<double>::infinity();
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    ref += double(b[i]) * b[i];
  }
  return ref > 0 ? std::sqrt(diff / ref) : std::sqrt(diff);
}

}  // namespace atom::pipeline
