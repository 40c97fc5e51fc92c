// The harness of pipeline/harness.hpp on the GPU backend: an instantiation run on device copies
// of the same deterministic data, and its check against the host instantiation of the same point.
// Defined in atom::gpu.
#pragma once

#include "atom/pipeline/device_storage.hpp"
#include "atom/pipeline/harness.hpp"

namespace atom::pipeline {

// Runs a GPU handle on device copies of a fresh DecodeState made from `in`, with `weights`
// (device copies of *in.weights); the MoE block's concurrent shared expert gets a side stream.
// The outputs are those of the first call; `seconds` is that call through the handle until the
// device is idle (its workspace allocated on the way). With timed_calls > 0 that many more calls
// follow on the same state and warm workspace (each updating the residual and caches again), and
// `seconds` is their median, timed with device events.
template <policy::PipelineId P>
RunOutput run_once_gpu(const dispatch::Handle<P>& handle, const RunInputs& in,
                       const DeviceLayerWeights& weights, int timed_calls = 0);

// One rank of a GPU tensor-parallel run of the handle (every rank calls it, each on its own GPU):
// this rank's shard of in.weights copied to the device (MXFP4 prepared for the handle's GEMM
// backend), its share of the DecodeState made from `in` (pipeline::run_tp's), the collectives
// through `comm` (a GpuTpComm over the TP group). Returns the output all-reduced over the group
// and the residual, as every rank holds them.
template <policy::PipelineId P>
RunOutput run_rank_gpu(const dispatch::Handle<P>& handle, const RunInputs& in, TpComm& comm);

// The relative L2 bound of a GPU instantiation against the host instantiation of the same point;
// the reasons are in harness_gpu.cpp.
double gpu_error_bound(policy::PipelineId p);

// A GPU instantiation against the host one of the same point: out and residual within
// gpu_error_bound.
template <policy::PipelineId P>
ReferenceCheck check_against_host(const dispatch::Handle<P>& handle, const RunInputs& in,
                                  const DeviceLayerWeights& weights, RunOutput* got = nullptr);

}  // namespace atom::pipeline
