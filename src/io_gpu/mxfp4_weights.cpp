#include "atom/io/mxfp4_weights.hpp"

#include <climits>
#include <cstring>
#include <set>
#include <string_view>
#include <utility>

#include "atom/core/tensor.hpp"
#include "atom/numeric/mxfp4.hpp"
#include "atom/policy/point.hpp"

namespace atom::io {

namespace {

using policy::GemmBackend;

constexpr std::string_view weight_suffix = ".weight";
constexpr std::string_view scale_suffix = ".weight_scale";
constexpr std::int64_t mx_block = 32;
constexpr std::int64_t max_extent = INT_MAX / 2;  // what the GEMM kernels index

std::string shape_text(const std::vector<std::uint64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i)
    s += (i == 0 ? "" : ", ") + std::to_string(shape[i]);
  return s + "]";
}

// Checks that `packed` and `scale` make an MXFP4 weight the kernels take; returns {N, K}. Errors
// name `packed_file` / `scale_file` and the offending tensor.
std::pair<std::int64_t, std::int64_t> check_pair(const TensorInfo& packed,
                                                 const std::string& packed_file,
                                                 const TensorInfo& scale,
                                                 const std::string& scale_file) {
  const auto fail_packed = [&](const std::string& what) {
    throw LoadError(packed_file, packed.name,
                    "MXFP4 weight (scales in " + scale.name + "): " + what);
  };
  const auto fail_scale = [&](const std::string& what) {
    throw LoadError(scale_file, scale.name, "MXFP4 scales of " + packed.name + ": " + what);
  };
  if (scale.dtype != Dtype::F8_E8M0)
    fail_scale("dtype " + std::string(dtype_name(scale.dtype)) + ", expected F8_E8M0");
  if (packed.dtype != Dtype::U8)
    fail_packed("dtype " + std::string(dtype_name(packed.dtype)) +
                ", expected U8 (two e2m1 codes per byte)");
  if (packed.shape.size() != 2)
    fail_packed("shape " + shape_text(packed.shape) + " is not [N, K / 2]");
  if (scale.shape.size() != 2)
    fail_scale("shape " + shape_text(scale.shape) + " is not [N, K / 32]");
  const std::uint64_t n = packed.shape[0];
  const std::uint64_t k = 2 * packed.shape[1];
  if (n == 0 || k == 0) fail_packed("shape " + shape_text(packed.shape) + " is empty");
  if (k % mx_block != 0)
    fail_packed("K = " + std::to_string(k) + " (shape " + shape_text(packed.shape) +
                ") is not a multiple of 32: the GPU GEMM takes whole MX blocks");
  if (n > max_extent || k > max_extent)
    fail_packed("N = " + std::to_string(n) + ", K = " + std::to_string(k) +
                " exceeds the GEMM's limit of " + std::to_string(max_extent));
  if (scale.shape[0] != n || scale.shape[1] != k / mx_block)
    fail_scale("shape " + shape_text(scale.shape) + ", expected [" + std::to_string(n) + ", " +
               std::to_string(k / mx_block) + "] for K = " + std::to_string(k));
  return {static_cast<std::int64_t>(n), static_cast<std::int64_t>(k)};
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

template <GemmBackend G>
class Mxfp4Sink final : public TensorSink {
 public:
  Mxfp4Sink(GpuSinkOptions options, const std::vector<Mxfp4Tensors>& weights)
      : gpu_(std::move(options)) {
    for (const Mxfp4Tensors& w : weights) {
      partner_.emplace(w.weight, w.scale);
      partner_.emplace(w.scale, w.weight);
      is_weight_.insert(w.weight);
    }
  }

  void piece(const std::filesystem::path& file, const TensorInfo& info, std::uint64_t offset,
             std::span<const std::byte> bytes) override {
    gpu_.piece(file, info, offset, bytes);
    const auto partner = partner_.find(info.name);
    if (partner == partner_.end() || offset + bytes.size() != info.nbytes()) return;
    HostTensors& host = gpu_.host_tensors();
    const auto other = host.find(partner->second);
    if (other == host.end() || !complete_.contains(partner->second)) {
      complete_.insert(info.name);
      return;
    }
    const bool weight_first = is_weight_.contains(info.name);
    const std::string weight = weight_first ? info.name : partner->second;
    const std::string scale = weight_first ? partner->second : info.name;
    prepared_.emplace(weight, prepare_mxfp4_weight<G>(host.at(weight), host.at(scale)));
    host.erase(weight);
    host.erase(scale);
    complete_.erase(partner->second);
  }

  std::span<std::byte> read_buffer(std::size_t bytes) override { return gpu_.read_buffer(bytes); }
  // The device sink's copies may still read the mapping: it must hear that the file ends.
  void file_end(const std::filesystem::path& file) override { gpu_.file_end(file); }

  DeviceWeights take() {
    if (!complete_.empty()) {
      const std::string& name = *complete_.begin();
      const HostTensor& t = gpu_.host_tensors().at(name);
      throw LoadError(t.file.string(), name,
                      "MXFP4 tensor loaded without its partner " + partner_.at(name));
    }
    DeviceWeights out{gpu_.take_device(), std::move(prepared_)};
    return out;
  }

 private:
  GpuSink gpu_;
  std::map<std::string, std::string, std::less<>> partner_;
  std::set<std::string, std::less<>> is_weight_;
  std::set<std::string, std::less<>> complete_;  // arrived, waiting for the partner
  PreparedMxfp4Weights<G> prepared_;
};

template <GemmBackend G>
DeviceWeights load_for(const Checkpoint& checkpoint, LoadMode mode, GpuSinkOptions options,
                       const std::vector<Mxfp4Tensors>& weights) {
  options.host_names.clear();
  for (const Mxfp4Tensors& w : weights) {
    options.host_names.insert(w.weight);
    options.host_names.insert(w.scale);
  }
  const std::size_t chunk = options.staging_bytes;
  Mxfp4Sink<G> sink(std::move(options), weights);
  checkpoint.load(mode, sink, chunk);
  return sink.take();
}

}  // namespace

std::vector<Mxfp4Tensors> find_mxfp4_weights(const Checkpoint& checkpoint) {
  std::vector<Mxfp4Tensors> out;
  for (const std::string& name : checkpoint.names()) {
    if (!ends_with(name, scale_suffix)) continue;
    const TensorInfo& scale = checkpoint.info(name);
    if (scale.dtype != Dtype::F8_E8M0) continue;
    const std::string scale_file = checkpoint.shard_of(name).path.string();
    const std::string weight =
        name.substr(0, name.size() - scale_suffix.size()) + std::string(weight_suffix);
    if (!checkpoint.contains(weight))
      throw LoadError(scale_file, name, "MXFP4 scales without their weight " + weight);
    const auto [n, k] = check_pair(checkpoint.info(weight),
                                   checkpoint.shard_of(weight).path.string(), scale, scale_file);
    out.push_back({weight, name, n, k});
  }
  return out;
}

template <GemmBackend G>
ops::PreparedMxfp4Weight<G> prepare_mxfp4_weight(const HostTensor& packed,
                                                 const HostTensor& scale) {
  const auto [n, k] =
      check_pair(packed.info, packed.file.string(), scale.info, scale.file.string());
  // The scales are copied into e8m0 objects rather than aliased through a cast.
  std::vector<e8m0> scales(static_cast<std::size_t>(n * (k / mx_block)));
  std::memcpy(scales.data(), scale.bytes.data(), scales.size());
  auto* codes = reinterpret_cast<std::uint8_t*>(const_cast<std::byte*>(packed.bytes.data()));
  const ops::Mxfp4Weight logical{make_view(codes, n, k / 2),
                                 make_view(scales.data(), n, k / mx_block), k};
  try {
    return ops::prepare_weight<G>(logical);
  } catch (const ShapeError& e) {
    throw LoadError(packed.file.string(), packed.info.name, e.what());
  }
}

template ops::PreparedMxfp4Weight<GemmBackend::matrix_core>
prepare_mxfp4_weight<GemmBackend::matrix_core>(const HostTensor&, const HostTensor&);
template ops::PreparedMxfp4Weight<GemmBackend::portable>
prepare_mxfp4_weight<GemmBackend::portable>(const HostTensor&, const HostTensor&);

policy::GemmBackend gemm_backend(const env::Config& config) {
  return policy::point_from(config).get<policy::GemmBackend>();
}

DeviceWeights load_device_weights(const Checkpoint& checkpoint, const env::Config& config,
                                  GpuSinkOptions options) {
  const std::vector<Mxfp4Tensors> weights = find_mxfp4_weights(checkpoint);
  require_device_memory(checkpoint, checkpoint.data_bytes());
  const LoadMode mode = load_mode(config);
  if (gemm_backend(config) == GemmBackend::portable)
    return load_for<GemmBackend::portable>(checkpoint, mode, std::move(options), weights);
  return load_for<GemmBackend::matrix_core>(checkpoint, mode, std::move(options), weights);
}

}  // namespace atom::io
