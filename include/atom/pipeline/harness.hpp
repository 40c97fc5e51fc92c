// Running one instantiation end to end on fresh deterministic data: the shared driver of
// atom-run, the instantiation tests and the benchmarks.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "atom/dispatch/dispatch.hpp"
#include "atom/pipeline/storage.hpp"

namespace atom::pipeline {

struct RunInputs {
  const ModelConfig* model = nullptr;
  const LayerWeights* weights = nullptr;
  std::vector<std::int32_t> context_lens;  // one sequence each (DecodeState)
  std::uint64_t seed = 1;                  // inputs and cache contents
  std::int64_t dual_stream_threshold = 1024;
  index_t query_tokens = 1;  // per sequence
};

struct RunOutput {
  std::vector<float> out;       // [T, hidden] the block's output
  std::vector<float> residual;  // [T, hidden] the updated residual stream
  double seconds = 0;           // the call through the handle
};

// The run arguments of pipeline P over a decode state and layer weights (host owners or their
// device copies: DecodeState / DeviceDecodeState, LayerWeights / DeviceLayerWeights).
template <policy::PipelineId P, class Weights, class State>
RunArgs<P> make_args(const RunInputs& in, const Weights& w, const State& s, Workspace& ws,
                     void* stream = nullptr) {
  using policy::PipelineId;
  BlockIo io{in.model, nullptr, s.x(), s.residual(), s.out(), &ws};
  io.stream = stream;
  if constexpr (P == PipelineId::mla_attention)
    return MlaArgs{io, &w.mla(), s.batch(), s.mla_cache()};
  else if constexpr (P == PipelineId::qwen3_attention)
    return Qwen3AttentionArgs{io, &w.qwen3(), s.batch(), s.kv_cache()};
  else if constexpr (P == PipelineId::moe_block)
    return MoeArgs{io, &w.moe(), in.dual_stream_threshold, {}};
  else if constexpr (P == PipelineId::dense_mlp)
    return DenseMlpArgs{io, &w.dense()};
  else
    static_assert(policy::unhandled<P>);
}

// The format of the GQA cache a handle reads: the state a harness run makes for it holds one of
// that format (fp8_row for the pipelines without a GQA cache, whose points fold the axis).
template <policy::PipelineId P>
ops::KvCacheFormat kv_format_of(const dispatch::Handle<P>& h) {
  return h.point().template get<policy::KvCacheFormat>();
}

// Whether pipeline p can run on this model (MLA pipelines need an MLA model, and so on).
bool pipeline_fits(policy::PipelineId p, const ModelConfig& model);

// Throws naming the pipeline when `in` lacks a model or weights or pipeline p does not fit it.
void expect_runnable(policy::PipelineId p, const RunInputs& in);

// Runs the handle once on a fresh DecodeState made from `in`.
template <policy::PipelineId P>
RunOutput run_once(const dispatch::Handle<P>& handle, const RunInputs& in);

// Host checks of full-size blocks on a sample. A host run of pipeline p on `in` takes about
// host_macs multiply-adds (its weights' GEMMs per token, the routed and shared experts each token
// reads, the attention's products over each token's context); the sequences a host check runs are
// all of them while that stays within check_budget_macs (seconds of one host core), else evenly
// spaced ones, the first and the last among them, as many as the budget allows (at least one).
inline constexpr double check_budget_macs = 4e9;
double host_macs(policy::PipelineId p, const RunInputs& in);
std::vector<index_t> check_sample(policy::PipelineId p, const RunInputs& in);

// Runs the handle once on the sequences `sample` (increasing) of the DecodeState made from `in`:
// a batch of just those sequences over the same caches, so that each attends to what it does in
// the whole batch. out and residual hold their tokens' rows, in order.
template <policy::PipelineId P>
RunOutput run_sample(const dispatch::Handle<P>& handle, const RunInputs& in,
                     const std::vector<index_t>& sample);

// The rows of the tokens of `sample` in a run of the whole batch of `in`.
RunOutput sample_rows(const RunOutput& whole, const RunInputs& in,
                      const std::vector<index_t>& sample);

// Rank tp's share of the DecodeState made from `in`: the same batch and residual, x as the rank's
// partial sum, the cache of its KV heads (of the attention's format, from in.weights).
DecodeState rank_state(const RunInputs& in, TpShape tp,
                       ops::KvCacheFormat kv_format = ops::KvCacheFormat::fp8_row);

// Runs the handle (host backend) at tensor parallel size `size`: one thread per rank (run_ranks),
// each with its shard of in.weights (pipeline::shard), its share of the DecodeState made from `in`
// and its own workspace. Returns the ranks' outputs summed by the group's all-reduce and the
// residual, which every rank must hold bit for bit (throws otherwise).
template <policy::PipelineId P>
RunOutput run_tp(const dispatch::Handle<P>& handle, const RunInputs& in, index_t size);

// The relative L2 bound of a block at tensor parallel size N against size 1; the reasons are in
// harness.cpp.
double tp_error_bound(policy::PipelineId p, index_t size);

// The check of an instantiation against its all-separate reference (policy::separate_of), shared
// by atom-run and the instantiation tests: out and residual within `bound` (relative L2).
struct ReferenceCheck {
  std::string reference;  // the reference instantiation's name
  double out_error = 0;   // relative L2 against the reference
  double residual_error = 0;
  double bound = 0;
  bool ok = false;
  index_t sequences = 0;          // of the batch
  index_t checked_sequences = 0;  // of them compared (check_sample)
};

// The verdict of a check from its runs: out and residual against `want`'s within `bound`.
ReferenceCheck judge(std::string reference, double bound, const RunOutput& got,
                     const RunOutput& want);

// The relative L2 bound of fused against separate for a pipeline; the reasons are in harness.cpp.
double fused_error_bound(policy::PipelineId p);

template <policy::PipelineId P>
ReferenceCheck check_against_reference(const dispatch::Handle<P>& handle, const RunInputs& in,
                                       RunOutput* got = nullptr);

// Relative L2 error ||a - b|| / ||b||; infinite when either holds a NaN or their sizes differ.
double relative_error(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace atom::pipeline
