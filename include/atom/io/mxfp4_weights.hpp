// MXFP4 weights of a checkpoint, prepared at load into the layout of the GEMM backend that the
// Config selects (ATOM_USE_TRITON_GEMM: 0 = matrix_core "asm", 1 = portable "triton").
//
// Naming rule (that of common MXFP4 checkpoints): a tensor "<p>.weight_scale" of dtype F8_E8M0
// makes "<p>.weight" an MXFP4 weight. "<p>.weight" must then be U8 [N, K / 2] (two e2m1 codes per
// byte, element 2i in the low nibble) and "<p>.weight_scale" F8_E8M0 [N, K / 32], with N >= 1 and
// K a positive multiple of 32 (whole MX blocks, what the GEMM kernels take). A pair that breaks
// any of this is a LoadError naming the file and the tensor, raised when the checkpoint's headers
// are checked, before any data is read. Tensors named otherwise, and "<p>.weight_scale" tensors of
// other dtypes (FP8 per-channel scales, say), are plain tensors.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "atom/env/config.hpp"
#include "atom/io/checkpoint.hpp"
#include "atom/io/gpu_sink.hpp"
#include "atom/io/loader.hpp"
#include "atom/ops/gpu/gemm.hpp"
#include "atom/policy/axes.hpp"

namespace atom::io {

struct Mxfp4Tensors {
  std::string weight;  // "<p>.weight", the key of the prepared weight
  std::string scale;   // "<p>.weight_scale"
  std::int64_t n = 0;
  std::int64_t k = 0;
};

// Every MXFP4 weight of the checkpoint, in name order, its shapes checked.
std::vector<Mxfp4Tensors> find_mxfp4_weights(const Checkpoint& checkpoint);

// Preshuffles one loaded weight for backend G and uploads it. Throws LoadError naming the file
// and the tensor when the shapes or dtypes do not make an MXFP4 weight the kernels take.
template <policy::GemmBackend G>
ops::PreparedMxfp4Weight<G> prepare_mxfp4_weight(const HostTensor& packed, const HostTensor& scale);

template <policy::GemmBackend G>
using PreparedMxfp4Weights = std::map<std::string, ops::PreparedMxfp4Weight<G>, std::less<>>;

using AnyPreparedMxfp4Weights = std::variant<PreparedMxfp4Weights<policy::GemmBackend::matrix_core>,
                                             PreparedMxfp4Weights<policy::GemmBackend::portable>>;

struct DeviceWeights {
  DeviceTensors tensors;          // every tensor that is not part of an MXFP4 weight
  AnyPreparedMxfp4Weights mxfp4;  // keyed by "<p>.weight", for the Config's GEMM backend
};

// ATOM_USE_TRITON_GEMM's backend.
policy::GemmBackend gemm_backend(const env::Config& config);

// Loads a checkpoint onto the GPU with the Config's load mode (ATOM_DISABLE_MMAP). MXFP4 weights
// are collected in host memory, preshuffled for the Config's backend and uploaded as soon as both
// of their tensors have arrived, so host memory holds only pairs whose other half is still to
// come. options.host_names is replaced by the MXFP4 tensors' names.
DeviceWeights load_device_weights(const Checkpoint& checkpoint, const env::Config& config,
                                  GpuSinkOptions options = {});

}  // namespace atom::io
