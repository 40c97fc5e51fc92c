// model/decode.hpp's decode on the GPU backend (the staging path): the layers' weights are device
// copies (pipeline::DeviceLayerWeights, made from the loaded host weights), the caches and the
// step's buffers live in device memory, the step's metadata is planned on the host and uploaded,
// and each layer's output is downloaded for the record. Defined in atom::gpu.
#pragma once

#include "atom/model/decode.hpp"
#include "atom/model/step.hpp"
#include "atom/pipeline/device_storage.hpp"

namespace atom::model {

// device[i]: the device copy of layers[i].weights (with the MXFP4 weights prepared for the GEMM
// backend of `point`). Under tensor parallelism (`tp`: this process's rank of a GPU TP group,
// pipeline/tp_gpu.hpp) the layers are the rank's shards and each recorded output is all-reduced.
std::vector<LayerOutput> decode_sequences_gpu(
    const pipeline::ModelConfig& m, const std::vector<DecodeLayer>& layers,
    const std::vector<const pipeline::DeviceLayerWeights*>& device,
    const std::vector<std::vector<bf16>>& inputs, policy::Point point,
    std::int64_t dual_stream_threshold, pipeline::TpComm* tp = nullptr);

// model/step.hpp's steps on the GPU backend: device[i] is the device copy of setup.layers[i]'s
// weights. step() enqueues on the steps' own stream; capture() and replay() record and run one
// step as a graph.
std::unique_ptr<DecodeSteps> decode_steps_gpu(
    const StepSetup& setup, const std::vector<const pipeline::DeviceLayerWeights*>& device);

}  // namespace atom::model
