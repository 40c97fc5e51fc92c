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
  std::vector<std::int32_t> context_lens;  // one decode token each
  std::uint64_t seed = 1;                  // inputs and cache contents
  std::int64_t dual_stream_threshold = 1024;
};

struct RunOutput {
  std::vector<float> out;       // [T, hidden] the block's output
  std::vector<float> residual;  // [T, hidden] the updated residual stream
  double seconds = 0;           // the call through the handle
};

// Whether pipeline p can run on this model (MLA pipelines need an MLA model, and so on).
bool pipeline_fits(policy::PipelineId p, const ModelConfig& model);

// Runs the handle once on a fresh DecodeState made from `in`.
template <policy::PipelineId P>
RunOutput run_once(const dispatch::Handle<P>& handle, const RunInputs& in);

// Runs an attention handle and then a MoE handle on its output, as two separate calls on one
// fresh DecodeState: what a decoder layer instantiation must compute.
template <policy::PipelineId Attention>
RunOutput run_chained(const dispatch::Handle<Attention>& attention,
                      const dispatch::Handle<policy::PipelineId::moe_block>& moe,
                      const RunInputs& in);

// The check of an instantiation against its all-separate reference (policy::separate_of), shared
// by atom-run and the instantiation tests. Attention and MoE blocks: out and residual within
// `bound` (relative L2). Decoder layers: the residual within the attention's bound, and out exactly
// equal to the attention and MoE instantiations run one after the other (the MoE output of a layer
// also depends on routing decisions that a small difference in the attention output may flip).
struct ReferenceCheck {
  std::string reference;  // the reference instantiation's name
  double out_error = 0;   // relative L2 against the reference (layers: against the chained blocks)
  double residual_error = 0;
  double bound = 0;
  bool ok = false;
};

// The relative L2 bound of fused against separate for a pipeline; the reasons are in harness.cpp.
double fused_error_bound(policy::PipelineId p);

template <policy::PipelineId P>
ReferenceCheck check_against_reference(const dispatch::Handle<P>& handle, const RunInputs& in,
                                       RunOutput* got = nullptr);

// Relative L2 error ||a - b|| / ||b||; infinite when either holds a NaN or their sizes differ.
double relative_error(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace atom::pipeline
