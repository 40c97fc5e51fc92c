// Device copies of the pipeline owners of pipeline/storage.hpp, for the GPU backend: a layer's
// weights (bf16 and FP8 as they are, every MXFP4 linear and expert weight preshuffled for the
// chosen GEMM backends), and
// a decode batch with its caches and buffers. Made from the host owners, so a GPU run and a host
// run see identical bytes. Defined in atom::gpu.
#pragma once

#include <memory>
#include <type_traits>
#include <vector>

#include "atom/gpu/device.hpp"
#include "atom/pipeline/storage.hpp"

namespace atom::pipeline {

class DeviceLayerWeights {
 public:
  // Uploads `host` and prepares its MXFP4 weights for each backend in `gemm_backends` (a GPU
  // pipeline reads the copy of its point's backend).
  DeviceLayerWeights(const ModelConfig& model, const LayerWeights& host,
                     const std::vector<policy::GemmBackend>& gemm_backends);
  ~DeviceLayerWeights();
  DeviceLayerWeights(const DeviceLayerWeights&) = delete;
  DeviceLayerWeights& operator=(const DeviceLayerWeights&) = delete;

  const MlaWeights& mla() const { return mla_; }
  const Qwen3AttentionWeights& qwen3() const { return qwen3_; }
  const MoeWeights& moe() const { return moe_; }
  const DenseMlpWeights& dense() const { return dense_; }

 private:
  struct Owned;
  std::unique_ptr<Owned> owned_;
  MlaWeights mla_;
  Qwen3AttentionWeights qwen3_;
  MoeWeights moe_;
  DenseMlpWeights dense_;
};

class DeviceDecodeState {
 public:
  explicit DeviceDecodeState(const DecodeState& host);
  ~DeviceDecodeState();
  DeviceDecodeState(const DeviceDecodeState&) = delete;
  DeviceDecodeState& operator=(const DeviceDecodeState&) = delete;

  index_t tokens() const { return x_.size(0); }
  DecodeBatch batch() const { return batch_; }
  View2<const bf16> x() const { return x_; }
  View2<bf16> residual() const { return residual_; }
  View2<bf16> out() const { return out_; }
  View2<bf16> intermediate() const { return intermediate_; }
  View3<bf16> mla_cache() const { return mla_cache_; }
  ops::AnyKvCache kv_cache() const { return kv_cache_; }

 private:
  std::vector<gpu::Buffer<std::byte>> buffers_;
  DecodeBatch batch_;
  View2<bf16> x_;
  View2<bf16> residual_;
  View2<bf16> out_;
  View2<bf16> intermediate_;
  View3<bf16> mla_cache_;
  ops::AnyKvCache kv_cache_;
};

// A workspace over device memory, for GPU runs.
Workspace device_workspace();

// A contiguous device view's values in host memory.
template <class T, int R>
std::vector<std::remove_const_t<T>> download(View<T, R> device) {
  std::vector<std::remove_const_t<T>> host(static_cast<std::size_t>(device.numel()));
  gpu::copy_to_host(host.data(), device.data, host.size() * sizeof(T));
  return host;
}

}  // namespace atom::pipeline
