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

// Relative L2 error ||a - b|| / ||b||; infinite when either holds a NaN or their sizes differ.
double relative_error(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace atom::pipeline
