#include "atom/model/decode.hpp"

#include <algorithm>
#include <chrono>
#include <memory>

#include "atom/model/checkpoint.hpp"
#include "atom/ops/decode_batch.hpp"
#include "atom/ops/norm.hpp"
#include "step_loop.hpp"

namespace atom::model {

namespace {

// Timing points on the host's clock (the host backend runs each op before it returns).
class HostMarks {
 public:
  void mark() { points_.push_back(std::chrono::steady_clock::now()); }
  std::vector<double> intervals_ms() const {
    std::vector<double> out;
    for (std::size_t i = 1; i < points_.size(); ++i)
      out.push_back(std::chrono::duration<double, std::milli>(points_[i] - points_[i - 1]).count());
    return out;
  }

 private:
  std::vector<std::chrono::steady_clock::time_point> points_;
};

// Host memory: vectors the Memory owns.
class HostMemory {
 public:
  static constexpr policy::BackendId backend = policy::BackendId::host;

  explicit HostMemory(const pipeline::ModelConfig& m, const std::vector<DecodeLayer>& layers)
      : m_(m), layers_(layers) {}

  template <class T>
  T* alloc(std::size_t n) {
    blocks_.push_back(std::make_unique<std::byte[]>(std::max<std::size_t>(n, 1) * sizeof(T)));
    std::fill_n(blocks_.back().get(), std::max<std::size_t>(n, 1) * sizeof(T), std::byte{0});
    return reinterpret_cast<T*>(blocks_.back().get());
  }
  template <class T>
  void put(T* dst, const std::vector<T>& src) {
    std::copy(src.begin(), src.end(), dst);
  }
  template <class T>
  void get(std::vector<T>& dst, const T* src) {
    std::copy_n(src, dst.size(), dst.begin());
  }
  pipeline::LayerBlockWeights weights(std::size_t l) const {
    return detail::block_weights(m_, layers_[l], *layers_[l].weights);
  }
  pipeline::Workspace& workspace() { return ws_; }
  ops::Host ops() const { return {}; }
  void* stream() const { return nullptr; }
  void* side_stream() const { return nullptr; }
  using Marks = HostMarks;
  Marks marks() const { return {}; }
  double copy_gbs() const { return ops::copy_gbs(ops()); }

 private:
  const pipeline::ModelConfig& m_;
  const std::vector<DecodeLayer>& layers_;
  std::vector<std::unique_ptr<std::byte[]>> blocks_;
  pipeline::Workspace ws_;
};

// Eager steps on host memory.
class HostSteps final : public detail::StepsOn<HostMemory> {
 public:
  using StepsOn::StepsOn;
  void capture() override { no_graph("capture"); }
  void replay() override { no_graph("replay"); }
  void synchronize() override {}
  void* stream() const override { return nullptr; }

 private:
  [[noreturn]] static void no_graph(const char* what) {
    throw std::logic_error(std::string("decode steps: ") + what +
                           " needs the GPU backend; the host backend runs steps eagerly");
  }
};

}  // namespace

std::unique_ptr<DecodeSteps> decode_steps(const StepSetup& setup) {
  return std::make_unique<HostSteps>(setup);
}

std::vector<LayerOutput> decode_sequences(const pipeline::ModelConfig& m,
                                          const std::vector<DecodeLayer>& layers,
                                          const std::vector<std::vector<bf16>>& inputs,
                                          policy::Point point, std::int64_t dual_stream_threshold) {
  HostMemory mem(m, layers);
  return detail::decode_with(mem, m, layers, inputs, point, dual_stream_threshold);
}

namespace {

// The TP decode of model/decode.hpp: rank tp's weights of the i-th layer from shard_of(i, tp).
template <class ShardOf>
std::vector<LayerOutput> decode_ranks(const pipeline::ModelConfig& m,
                                      const std::vector<index_t>& indices,
                                      const std::vector<std::vector<bf16>>& inputs,
                                      policy::Point point, std::int64_t dual_stream_threshold,
                                      index_t tp_size, const ShardOf& shard_of) {
  std::vector<LayerOutput> out;
  pipeline::run_ranks(tp_size, [&](pipeline::TpComm& comm) {
    const pipeline::TpShape tp{comm.rank(), comm.size()};
    std::vector<std::unique_ptr<pipeline::LayerWeights>> shards;
    std::vector<DecodeLayer> mine;
    for (std::size_t i = 0; i < indices.size(); ++i) {
      shards.push_back(shard_of(i, tp));
      mine.push_back({indices[i], shards.back().get()});
    }
    HostMemory mem(m, mine);
    auto got = detail::decode_with(mem, m, mine, inputs, point, dual_stream_threshold, &comm);
    if (comm.rank() == 0) out = std::move(got);
  });
  return out;
}

}  // namespace

std::vector<LayerOutput> decode_sequences_tp(const pipeline::ModelConfig& m,
                                             const std::vector<DecodeLayer>& layers,
                                             const std::vector<std::vector<bf16>>& inputs,
                                             policy::Point point,
                                             std::int64_t dual_stream_threshold, index_t tp_size) {
  std::vector<index_t> indices;
  for (const DecodeLayer& l : layers) indices.push_back(l.index);
  return decode_ranks(m, indices, inputs, point, dual_stream_threshold, tp_size,
                      [&](std::size_t i, pipeline::TpShape tp) {
                        return pipeline::shard(*layers[i].weights, m, tp);
                      });
}

std::vector<LayerOutput> decode_checkpoint_tp(const HfCheckpoint& checkpoint,
                                              const std::vector<index_t>& layers,
                                              const std::vector<std::vector<bf16>>& inputs,
                                              policy::Point point,
                                              std::int64_t dual_stream_threshold, index_t tp_size) {
  return decode_ranks(
      checkpoint.model(), layers, inputs, point, dual_stream_threshold, tp_size,
      [&](std::size_t i, pipeline::TpShape tp) { return checkpoint.layer(layers[i], tp); });
}

}  // namespace atom::model
