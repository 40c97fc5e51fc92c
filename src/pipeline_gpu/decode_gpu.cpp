#include "atom/model/decode_gpu.hpp"

#include <stdexcept>

#include "../model/decode_loop.hpp"

namespace atom::model {

namespace {

// Device memory: buffers the Memory owns, zeroed; copies synchronous on the default stream (the
// pipelines' stream), so a download sees the layer's results.
class GpuMemory {
 public:
  static constexpr policy::BackendId backend = policy::BackendId::gpu;

  GpuMemory(const pipeline::ModelConfig& m, const std::vector<DecodeLayer>& layers,
            const std::vector<const pipeline::DeviceLayerWeights*>& device)
      : m_(m), layers_(layers), device_(device), ws_(pipeline::device_workspace()) {}

  template <class T>
  T* alloc(std::size_t n) {
    auto& b = buffers_.emplace_back(std::max<std::size_t>(n, 1) * sizeof(T));
    b.fill(0);
    return reinterpret_cast<T*>(b.data());
  }
  template <class T>
  void put(T* dst, const std::vector<T>& src) {
    gpu::copy_to_device(dst, src.data(), src.size() * sizeof(T));
  }
  template <class T>
  void get(std::vector<T>& dst, const T* src) {
    gpu::synchronize();
    gpu::copy_to_host(dst.data(), src, dst.size() * sizeof(T));
  }
  pipeline::LayerBlockWeights weights(std::size_t l) const {
    return detail::block_weights(m_, layers_[l], *device_[l]);
  }
  pipeline::Workspace& workspace() { return ws_; }
  void* stream() const { return nullptr; }
  void* side_stream() const { return side_.handle(); }

 private:
  const pipeline::ModelConfig& m_;
  const std::vector<DecodeLayer>& layers_;
  const std::vector<const pipeline::DeviceLayerWeights*>& device_;
  std::vector<gpu::Buffer<std::byte>> buffers_;
  pipeline::Workspace ws_;
  gpu::Stream side_;
};

}  // namespace

std::vector<LayerOutput> decode_sequences_gpu(
    const pipeline::ModelConfig& m, const std::vector<DecodeLayer>& layers,
    const std::vector<const pipeline::DeviceLayerWeights*>& device,
    const std::vector<std::vector<bf16>>& inputs, policy::Point point,
    std::int64_t dual_stream_threshold) {
  if (device.size() != layers.size())
    throw std::invalid_argument("decode_sequences_gpu: " + std::to_string(device.size()) +
                                " device weights for " + std::to_string(layers.size()) + " layers");
  GpuMemory mem(m, layers, device);
  return detail::decode_with(mem, m, layers, inputs, point, dual_stream_threshold);
}

}  // namespace atom::model
