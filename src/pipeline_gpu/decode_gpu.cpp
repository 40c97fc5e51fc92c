#include "atom/model/decode_gpu.hpp"

#include <stdexcept>

#include "../model/step_loop.hpp"
#include "atom/gpu/graph.hpp"
#include "atom/ops/gpu/decode_batch.hpp"
#include "atom/ops/gpu/norm.hpp"

namespace atom::model {

namespace {

// Device memory: buffers the Memory owns, zeroed. The pipelines run on a stream of the Memory's
// own (capturable, unlike the default stream); uploads and downloads are synchronous copies that
// wait for the whole device, so neither races with the stream.
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
    gpu::synchronize();
    gpu::copy_to_device(dst, src.data(), src.size() * sizeof(T));
    gpu::synchronize();  // a pageable upload may return before its DMA has landed
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
  ops::Gpu ops() const { return {main_.handle()}; }
  void* stream() const { return main_.handle(); }
  void* side_stream() const { return side_.handle(); }
  using Marks = gpu::StreamMarks;
  Marks marks() const { return Marks(main_.handle()); }
  double copy_gbs() const { return ops::copy_gbs(ops()); }

 private:
  const pipeline::ModelConfig& m_;
  const std::vector<DecodeLayer>& layers_;
  std::vector<const pipeline::DeviceLayerWeights*> device_;
  std::vector<gpu::Buffer<std::byte>> buffers_;
  pipeline::Workspace ws_;
  gpu::Stream main_;
  gpu::Stream side_;
};

// Steps on the device: eager, or one step captured as a graph and replayed.
class GpuSteps final : public detail::StepsOn<GpuMemory> {
 public:
  GpuSteps(const StepSetup& s, const std::vector<const pipeline::DeviceLayerWeights*>& device)
      : StepsOn(s, device) {
    gpu::synchronize();
  }

  void capture() override {
    if (steps_ == 0)
      throw std::logic_error(
          "decode steps: capture() needs one step() first, which sizes the workspace and the "
          "kernels' scratch memory (a capture cannot allocate)");
    graph_ = gpu::Graph::capture(mem_.stream(), [&] { loop_.enqueue(); });
  }
  void replay() override {
    if (!graph_) throw std::logic_error("decode steps: replay() before capture()");
    graph_.replay(mem_.stream());
    loop_.mirror();
    ++steps_;
  }
  void synchronize() override { gpu::synchronize(); }
  void* stream() const override { return mem_.stream(); }

 private:
  gpu::Graph graph_;
};

}  // namespace

std::unique_ptr<DecodeSteps> decode_steps_gpu(
    const StepSetup& setup, const std::vector<const pipeline::DeviceLayerWeights*>& device) {
  if (device.size() != setup.layers.size())
    throw std::invalid_argument("decode_steps_gpu: " + std::to_string(device.size()) +
                                " device weights for " + std::to_string(setup.layers.size()) +
                                " layers");
  return std::make_unique<GpuSteps>(setup, device);
}

std::vector<LayerOutput> decode_sequences_gpu(
    const pipeline::ModelConfig& m, const std::vector<DecodeLayer>& layers,
    const std::vector<const pipeline::DeviceLayerWeights*>& device,
    const std::vector<std::vector<bf16>>& inputs, policy::Point point,
    std::int64_t dual_stream_threshold, pipeline::TpComm* tp) {
  if (device.size() != layers.size())
    throw std::invalid_argument("decode_sequences_gpu: " + std::to_string(device.size()) +
                                " device weights for " + std::to_string(layers.size()) + " layers");
  GpuMemory mem(m, layers, device);
  return detail::decode_with(mem, m, layers, inputs, point, dual_stream_threshold, tp);
}

}  // namespace atom::model
