// MXFP4 weights found by the naming rule are prepared at load for the Config's GEMM backend and
// round-trip through unshuffle; shapes the kernels do not take are refused before any data is
// read, naming the file and the tensor.
#include <catch2/catch.hpp>

#include <functional>
#include <random>

#include "atom/env/config.hpp"
#include "atom/gpu/device.hpp"
#include "atom/io/checkpoint.hpp"
#include "atom/io/mxfp4_weights.hpp"
#include "atom/io/writer.hpp"
#include "test_util.hpp"

using namespace atom;
using namespace atom::io;
using namespace atom::io::test;
using Catch::Matchers::Contains;
using policy::GemmBackend;

namespace {

struct Model {
  std::vector<TensorData> tensors;
  std::vector<std::vector<std::byte>> storage;
  void add(std::mt19937_64& rng, std::string name, Dtype d, std::vector<std::uint64_t> shape) {
    TensorInfo info{name, d, shape, 0, 0};
    storage.push_back(random_bytes(rng, info.numel() * dtype_bits(d) / 8));
    tensors.push_back({std::move(name), d, std::move(shape), {}});
  }
  void add_mxfp4(std::mt19937_64& rng, const std::string& p, std::uint64_t n, std::uint64_t k) {
    add(rng, p + ".weight", Dtype::U8, {n, k / 2});
    add(rng, p + ".weight_scale", Dtype::F8_E8M0, {n, k / 32});
  }
  std::span<const std::byte> bytes(std::string_view name) const {
    for (std::size_t i = 0; i < tensors.size(); ++i)
      if (tensors[i].name == name) return storage[i];
    throw std::out_of_range(std::string(name));
  }
  void bind() {
    for (std::size_t i = 0; i < tensors.size(); ++i) tensors[i].bytes = storage[i];
  }
};

struct Shape {
  std::uint64_t n;
  std::uint64_t k;
};
constexpr Shape shapes[] = {{1, 32}, {3, 64}, {17, 96}, {33, 288}, {8, 256}, {40, 4096}};

// MXFP4 weights of odd and round shapes next to plain tensors, among them an FP8 weight whose
// F32 "weight_scale" is not an MXFP4 scale.
Model mixed_model(std::mt19937_64& rng) {
  Model m;
  m.add(rng, "model.embed_tokens.weight", Dtype::BF16, {17, 64});
  for (std::size_t i = 0; i < std::size(shapes); ++i)
    m.add_mxfp4(rng, "layers." + std::to_string(i) + ".mlp.proj", shapes[i].n, shapes[i].k);
  m.add(rng, "layers.0.attn.o.weight", Dtype::F8_E4M3, {3, 128});
  m.add(rng, "layers.0.attn.o.weight_scale", Dtype::F32, {3});
  m.add(rng, "model.norm.weight", Dtype::BF16, {769});
  m.bind();
  return m;
}

env::Config config(bool triton, bool disable_mmap) {
  return env::Config::from({{"ATOM_USE_TRITON_GEMM", triton ? "1" : "0"},
                            {"ATOM_DISABLE_MMAP", disable_mmap ? "1" : "0"}});
}

bool same(const std::vector<std::uint8_t>& a, std::span<const std::byte> b) {
  return same_bytes(std::as_bytes(std::span(a)), b);
}

bool same(const std::vector<e8m0>& a, std::span<const std::byte> b) {
  return same_bytes(std::as_bytes(std::span(a)), b);
}

template <GemmBackend G>
void require_round_trip(const PreparedMxfp4Weights<G>& prepared, const Model& m) {
  REQUIRE(prepared.size() == std::size(shapes));
  for (std::size_t i = 0; i < std::size(shapes); ++i) {
    const std::string p = "layers." + std::to_string(i) + ".mlp.proj";
    INFO(p);
    const auto& w = prepared.at(p + ".weight");
    CHECK(w.n() == static_cast<index_t>(shapes[i].n));
    CHECK(w.k() == static_cast<index_t>(shapes[i].k));
    const ops::Mxfp4WeightHost back = ops::unshuffle<G>(w);
    CHECK(same(back.packed, m.bytes(p + ".weight")));
    CHECK(same(back.scale, m.bytes(p + ".weight_scale")));
  }
}

template <GemmBackend G>
void check_load(const Checkpoint& c, const env::Config& cfg, const Model& m) {
  GpuSinkOptions options;
  options.staging_bytes = 4 * 4096;  // pieces of the larger weights span several slots
  const DeviceWeights w = load_device_weights(c, cfg, options);
  REQUIRE(std::holds_alternative<PreparedMxfp4Weights<G>>(w.mxfp4));
  require_round_trip(std::get<PreparedMxfp4Weights<G>>(w.mxfp4), m);
  // Plain tensors (the FP8 weight and its F32 scale among them) are on the device as they are.
  REQUIRE(w.tensors.size() == 4);
  for (const char* name : {"model.embed_tokens.weight", "layers.0.attn.o.weight",
                           "layers.0.attn.o.weight_scale", "model.norm.weight"}) {
    INFO(name);
    CHECK(same_bytes(w.tensors.at(name).bytes.download(), m.bytes(name)));
  }
}

}  // namespace

TEST_CASE("MXFP4 weights are prepared at load for the Config's backend", "[io][gpu]") {
  std::mt19937_64 rng(Catch::rngSeed());
  const Model m = mixed_model(rng);
  const ScratchDir dir;
  // Small shards: some weights land in another shard than their scales.
  write_sharded(dir.path(), m.tensors, 20'000);
  const Checkpoint c = Checkpoint::open(dir.path());
  REQUIRE(c.shards().size() >= 3);
  REQUIRE(find_mxfp4_weights(c).size() == std::size(shapes));
  for (const bool disable_mmap : {false, true}) {
    INFO("ATOM_DISABLE_MMAP=" << disable_mmap);
    check_load<GemmBackend::matrix_core>(c, config(false, disable_mmap), m);
    check_load<GemmBackend::portable>(c, config(true, disable_mmap), m);
  }
}

TEST_CASE("a weight and its scales in different shards are paired", "[io][gpu]") {
  std::mt19937_64 rng(Catch::rngSeed() + 1);
  Model m;
  m.add_mxfp4(rng, "a", 5, 160);
  m.add(rng, "between", Dtype::F32, {4099});
  m.bind();
  // Scales first, then the weight, each in a shard of its own.
  std::vector<TensorData> order = {m.tensors[1], m.tensors[2], m.tensors[0]};
  const ScratchDir dir;
  write_sharded(dir.path(), order, 1);
  const Checkpoint c = Checkpoint::open(dir.path());
  REQUIRE(c.shards().size() == 3);
  REQUIRE(c.shard_of("a.weight").path != c.shard_of("a.weight_scale").path);
  const DeviceWeights w = load_device_weights(c, config(true, false));
  const auto& prepared = std::get<PreparedMxfp4Weights<GemmBackend::portable>>(w.mxfp4);
  const ops::Mxfp4WeightHost back = ops::unshuffle(prepared.at("a.weight"));
  CHECK(same(back.packed, m.bytes("a.weight")));
  CHECK(same(back.scale, m.bytes("a.weight_scale")));
  CHECK(w.tensors.size() == 1);
}

TEST_CASE("prepare_mxfp4_weight round-trips host tensors for both backends", "[io][gpu]") {
  std::mt19937_64 rng(Catch::rngSeed() + 2);
  const Model m = mixed_model(rng);
  const ScratchDir dir;
  write_file(dir / "model.safetensors", m.tensors);
  const Checkpoint c = Checkpoint::open(dir.path());
  const HostTensors host = c.load_host(LoadMode::mmap);
  for (std::size_t i = 0; i < std::size(shapes); ++i) {
    const std::string p = "layers." + std::to_string(i) + ".mlp.proj";
    INFO(p);
    const HostTensor& packed = host.at(p + ".weight");
    const HostTensor& scale = host.at(p + ".weight_scale");
    const auto a = ops::unshuffle(prepare_mxfp4_weight<GemmBackend::matrix_core>(packed, scale));
    const auto b = ops::unshuffle(prepare_mxfp4_weight<GemmBackend::portable>(packed, scale));
    CHECK(same(a.packed, packed.bytes.span()));
    CHECK(same(a.scale, scale.bytes.span()));
    CHECK(same(b.packed, packed.bytes.span()));
    CHECK(same(b.scale, scale.bytes.span()));
  }
}

TEST_CASE("MXFP4 pairs the kernels do not take are refused naming file and tensor", "[io][gpu]") {
  std::mt19937_64 rng(Catch::rngSeed() + 3);
  struct Bad {
    const char* what;
    std::function<void(Model&)> build;
    const char* tensor;
    const char* message;
  };
  const Bad cases[] = {
      {"K not a multiple of 32",
       [&](Model& m) {
         m.add(rng, "p.weight", Dtype::U8, {4, 8});
         m.add(rng, "p.weight_scale", Dtype::F8_E8M0, {4, 1});
       },
       "p.weight", "multiple of 32"},
      {"scale columns that do not match K",
       [&](Model& m) {
         m.add(rng, "p.weight", Dtype::U8, {3, 48});
         m.add(rng, "p.weight_scale", Dtype::F8_E8M0, {3, 2});
       },
       "p.weight_scale", "expected [3, 3]"},
      {"scale rows that do not match N",
       [&](Model& m) {
         m.add(rng, "p.weight", Dtype::U8, {3, 16});
         m.add(rng, "p.weight_scale", Dtype::F8_E8M0, {1, 1});
       },
       "p.weight_scale", "expected [3, 1]"},
      {"a weight that is not U8",
       [&](Model& m) {
         m.add(rng, "p.weight", Dtype::BF16, {3, 16});
         m.add(rng, "p.weight_scale", Dtype::F8_E8M0, {3, 1});
       },
       "p.weight", "expected U8"},
      {"a weight of rank 3",
       [&](Model& m) {
         m.add(rng, "p.weight", Dtype::U8, {2, 3, 16});
         m.add(rng, "p.weight_scale", Dtype::F8_E8M0, {2, 3, 1});
       },
       "p.weight", "is not [N, K / 2]"},
      {"scales without a weight",
       [&](Model& m) {
         m.add(rng, "p.weight_scale", Dtype::F8_E8M0, {3, 1});
       },
       "p.weight_scale", "without their weight"},
  };
  for (const Bad& bad : cases) {
    INFO(bad.what);
    Model m;
    m.add(rng, "plain", Dtype::F32, {17});
    bad.build(m);
    m.bind();
    const ScratchDir dir;
    write_file(dir / "model.safetensors", m.tensors);
    const Checkpoint c = Checkpoint::open(dir.path());
    try {
      (void)find_mxfp4_weights(c);
      FAIL("no error");
    } catch (const LoadError& e) {
      CHECK(e.tensor() == bad.tensor);
      CHECK_THAT(e.file(), Contains("model.safetensors"));
      CHECK_THAT(e.what(), Contains(bad.message));
    }
    const gpu::LiveAllocations before = gpu::live_allocations();
    CHECK_THROWS_AS(load_device_weights(c, config(false, false)), LoadError);
    const gpu::LiveAllocations after = gpu::live_allocations();
    CHECK(after.device == before.device);
    CHECK(after.pinned == before.pinned);
  }
}

TEST_CASE("a load failing after MXFP4 weights were prepared frees them", "[io][gpu]") {
  std::mt19937_64 rng(Catch::rngSeed() + 4);
  Model m;
  m.add_mxfp4(rng, "good", 9, 64);
  m.add(rng, "plain", Dtype::BF16, {1000});
  m.bind();
  const ScratchDir dir;
  write_sharded(dir.path(), m.tensors, 1);
  const Checkpoint c = Checkpoint::open(dir.path());
  const auto last = c.shards().back().path;
  std::filesystem::resize_file(last, std::filesystem::file_size(last) - 1);
  for (const bool triton : {false, true}) {
    const gpu::LiveAllocations before = gpu::live_allocations();
    CHECK_THROWS_WITH(load_device_weights(c, config(triton, false)), Contains(last.string()));
    const gpu::LiveAllocations after = gpu::live_allocations();
    CHECK(after.device == before.device);
    CHECK(after.pinned == before.pinned);
  }
}
