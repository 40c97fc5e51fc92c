// Checkpoints loaded into device memory on both paths (mmap, read), through rings of several
// shapes, give the bytes of the host path for every dtype; failed loads leave no allocation.
#include <catch2/catch.hpp>

#include <random>

#include "atom/gpu/device.hpp"
#include "atom/io/checkpoint.hpp"
#include "atom/io/gpu_sink.hpp"
#include "atom/io/writer.hpp"
#include "test_util.hpp"

using namespace atom;
using namespace atom::io;
using namespace atom::io::test;
using Catch::Matchers::Contains;

namespace {

struct Model {
  std::vector<TensorData> tensors;
  std::vector<std::vector<std::byte>> storage;
};

// Every dtype at odd and round element counts, rank 1 and 2, two empty tensors, and one tensor
// past 1 MiB so that pieces are split among copy threads.
Model every_dtype(std::mt19937_64& rng) {
  Model m;
  const auto add = [&](std::string name, Dtype d, std::vector<std::uint64_t> shape) {
    TensorInfo info{name, d, shape, 0, 0};
    m.storage.push_back(random_bytes(rng, info.numel() * dtype_bits(d) / 8));
    m.tensors.push_back({std::move(name), d, std::move(shape), {}});
  };
  const std::uint64_t counts[] = {1, 3, 17, 769, 4096, 12289};
  for (std::size_t d = 0; d < dtype_count; ++d) {
    const auto dtype = static_cast<Dtype>(d);
    // Sub-byte dtypes need element counts that fill whole bytes.
    const std::uint64_t per_byte = dtype_bits(dtype) == 4 ? 2 : dtype_bits(dtype) == 6 ? 4 : 1;
    const std::uint64_t count = counts[d % std::size(counts)] * per_byte;
    const std::string base = "layers." + std::to_string(d) + ".";
    add(base + "flat", dtype, {count});
    add(base + "matrix", dtype, {counts[(d + 2) % std::size(counts)], 3 * per_byte});
  }
  add("empty.vector", Dtype::U8, {0});
  add("empty.matrix", Dtype::F32, {3, 0});
  add("large.weight", Dtype::BF16, {(std::uint64_t{3} << 20) / 2 + 17});
  for (std::size_t i = 0; i < m.tensors.size(); ++i) m.tensors[i].bytes = m.storage[i];
  return m;
}

std::vector<std::byte> download(const DeviceTensor& t) {
  const std::vector<std::byte> out = t.bytes.download();
  return out;
}

// Fills freed device memory with 0xFF, so that a byte the load does not write shows up.
void poison_device_pool(std::uint64_t bytes) {
  gpu::Buffer<std::byte> poison(static_cast<std::size_t>(bytes));
  poison.fill(0xFF);
  gpu::synchronize();
}

void require_same_as_host(const Checkpoint& c, LoadMode mode, const DeviceTensors& device,
                          const Model& m) {
  const HostTensors host = c.load_host(mode);
  REQUIRE(device.size() == host.size());
  REQUIRE(device.size() == m.tensors.size());
  for (std::size_t i = 0; i < m.tensors.size(); ++i) {
    const std::string& name = m.tensors[i].name;
    INFO(name);
    const DeviceTensor& d = device.at(name);
    const HostTensor& h = host.at(name);
    CHECK(d.info.dtype == h.info.dtype);
    CHECK(d.info.shape == h.info.shape);
    CHECK(d.file == h.file);
    REQUIRE(d.bytes.size() == h.bytes.size());
    const std::vector<std::byte> got = download(d);
    CHECK(same_bytes(got, h.bytes.span()));
    CHECK(same_bytes(got, m.storage[i]));
  }
}

struct Variant {
  const char* name;
  GpuSinkOptions options;
};

std::vector<Variant> variants() {
  std::vector<Variant> v;
  v.push_back({"default ring", {}});
  GpuSinkOptions small;
  small.staging_bytes = 3 * 4096;
  small.staging_slots = 2;
  small.copy_threads = 1;
  v.push_back({"two 12 KiB slots, one thread", small});
  GpuSinkOptions threads;
  threads.staging_bytes = std::size_t{1} << 20;
  threads.staging_slots = 3;
  threads.copy_threads = 3;
  v.push_back({"three 1 MiB slots, three threads", threads});
  GpuSinkOptions single;
  single.staging_bytes = 4096;
  single.staging_slots = 1;
  single.copy_threads = 1;
  v.push_back({"one page-sized slot", single});
  GpuSinkOptions direct;
  direct.stage = false;
  v.push_back({"unstaged copies", direct});
  return v;
}

}  // namespace

TEST_CASE("both paths load every dtype into the GPU with the host path's bytes", "[io][gpu]") {
  REQUIRE(gpu::device_count() > 0);
  std::mt19937_64 rng(Catch::rngSeed());
  for (const LoadMode mode : {LoadMode::mmap, LoadMode::read}) {
    for (const Variant& v : variants()) {
      INFO(std::string(load_mode_name(mode)) + ", " + v.name);
      const ScratchDir dir;
      const Model m = every_dtype(rng);  // fresh bytes: no earlier load's leftovers can match
      write_file(dir / "model.safetensors", m.tensors);
      const Checkpoint c = Checkpoint::open(dir.path());
      poison_device_pool(2 * c.data_bytes() + (std::uint64_t{8} << 20));
      const DeviceTensors device = load_device(c, mode, v.options);
      require_same_as_host(c, mode, device, m);
    }
  }
}

TEST_CASE("a multi-shard checkpoint loads into the GPU on both paths", "[io][gpu]") {
  std::mt19937_64 rng(Catch::rngSeed() + 1);
  for (const LoadMode mode : {LoadMode::mmap, LoadMode::read}) {
    INFO(load_mode_name(mode));
    const ScratchDir dir;
    const Model m = every_dtype(rng);
    write_sharded(dir.path(), m.tensors, 300'000);
    const Checkpoint c = Checkpoint::open(dir.path());
    REQUIRE(c.shards().size() >= 3);
    GpuSinkOptions options;
    options.staging_bytes = 16 * 4096;
    poison_device_pool(2 * c.data_bytes() + (std::uint64_t{8} << 20));
    const DeviceTensors device = load_device(c, mode, options);
    require_same_as_host(c, mode, device, m);
  }
}

TEST_CASE("one staging ring and copy pool serve several loads, each with the host's bytes",
          "[io][gpu]") {
  std::mt19937_64 rng(Catch::rngSeed() + 4);
  GpuSinkOptions options;
  options.staging_bytes = 64 * 4096;
  options.staging_slots = 3;
  options.copy_threads = 5;
  options.lane_bytes = 4 * 4096;  // many parts per tensor, lanes taking them in turn
  GpuStaging staging(options);
  for (int load = 0; load < 3; ++load)
    for (const LoadMode mode : {LoadMode::mmap, LoadMode::read}) {
      INFO(std::string(load_mode_name(mode)) + ", load " + std::to_string(load));
      const ScratchDir dir;
      const Model m = every_dtype(rng);
      write_file(dir / "model.safetensors", m.tensors);
      const Checkpoint c = Checkpoint::open(dir.path());
      poison_device_pool(2 * c.data_bytes() + (std::uint64_t{8} << 20));
      const DeviceTensors device = load_device(c, mode, {}, &staging);
      require_same_as_host(c, mode, device, m);
    }
}

TEST_CASE("reads larger than a staging slot go through the loader's buffer", "[io][gpu]") {
  std::mt19937_64 rng(Catch::rngSeed() + 2);
  const ScratchDir dir;
  const Model m = every_dtype(rng);
  write_file(dir / "model.safetensors", m.tensors);
  const Checkpoint c = Checkpoint::open(dir.path());
  GpuSinkOptions options;
  options.staging_bytes = 2 * 4096;
  GpuSink sink(options);
  c.load(LoadMode::read, sink, std::size_t{64} << 10);
  require_same_as_host(c, LoadMode::read, sink.take_device(), m);
}

TEST_CASE("host names are collected in host memory, the rest on the device", "[io][gpu]") {
  std::mt19937_64 rng(Catch::rngSeed() + 3);
  const ScratchDir dir;
  const Model m = every_dtype(rng);
  write_file(dir / "model.safetensors", m.tensors);
  const Checkpoint c = Checkpoint::open(dir.path());
  for (const LoadMode mode : {LoadMode::mmap, LoadMode::read}) {
    GpuSinkOptions options;
    options.staging_bytes = 4 * 4096;
    options.host_names = {"layers.3.flat", "large.weight"};
    GpuSink sink(options);
    c.load(mode, sink, options.staging_bytes);
    const DeviceTensors device = sink.take_device();
    CHECK(device.size() == m.tensors.size() - 2);
    CHECK_FALSE(device.contains("large.weight"));
    REQUIRE(sink.host_tensors().size() == 2);
    for (std::size_t i = 0; i < m.tensors.size(); ++i) {
      const std::string& name = m.tensors[i].name;
      INFO(name);
      if (options.host_names.contains(name))
        CHECK(same_bytes(sink.host_tensors().at(name).bytes.span(), m.storage[i]));
      else
        CHECK(same_bytes(download(device.at(name)), m.storage[i]));
    }
  }
}

TEST_CASE("a shard truncated after open fails the load and frees what it took", "[io][gpu]") {
  std::mt19937_64 rng(Catch::rngSeed() + 4);
  for (const LoadMode mode : {LoadMode::mmap, LoadMode::read}) {
    INFO(load_mode_name(mode));
    const ScratchDir dir;
    const Model m = every_dtype(rng);
    write_sharded(dir.path(), m.tensors, 300'000);
    const Checkpoint c = Checkpoint::open(dir.path());
    REQUIRE(c.shards().size() >= 3);
    const auto last = c.shards().back().path;
    std::filesystem::resize_file(last, std::filesystem::file_size(last) - 5);
    const gpu::LiveAllocations before = gpu::live_allocations();
    REQUIRE_THROWS_WITH(load_device(c, mode), Contains(last.string()));
    const gpu::LiveAllocations after = gpu::live_allocations();
    CHECK(after.device == before.device);
    CHECK(after.pinned == before.pinned);
  }
}

TEST_CASE("a tensor delivered twice is an error naming both files; nothing leaks", "[io][gpu]") {
  std::mt19937_64 rng(Catch::rngSeed() + 5);
  const ScratchDir dir;
  const Model m = every_dtype(rng);
  write_file(dir / "a.safetensors", m.tensors);
  write_file(dir / "b.safetensors", m.tensors);
  for (const LoadMode mode : {LoadMode::mmap, LoadMode::read}) {
    const gpu::LiveAllocations before = gpu::live_allocations();
    {
      GpuSink sink;
      load_file(dir / "a.safetensors", mode, sink);
      REQUIRE_THROWS_WITH(
          load_file(dir / "b.safetensors", mode, sink),
          Contains("b.safetensors") && Contains("a.safetensors") && Contains("already loaded"));
    }
    const gpu::LiveAllocations after = gpu::live_allocations();
    CHECK(after.device == before.device);
    CHECK(after.pinned == before.pinned);
  }
}

TEST_CASE("a checkpoint larger than free device memory is refused before loading", "[io][gpu]") {
  const ScratchDir dir;
  std::mt19937_64 rng(Catch::rngSeed() + 6);
  const Model m = every_dtype(rng);
  write_file(dir / "model.safetensors", m.tensors);
  const Checkpoint c = Checkpoint::open(dir.path());
  REQUIRE_THROWS_WITH(require_device_memory(c, gpu::memory_info().total_bytes + 1),
                      Contains("bytes of device memory") && Contains("model.safetensors"));
}

TEST_CASE("unusable sink options are named", "[io][gpu]") {
  GpuSinkOptions o;
  o.staging_slots = 0;
  CHECK_THROWS_WITH(check_options(o), Contains("staging_slots"));
  o = {};
  o.staging_bytes = 1000;
  CHECK_THROWS_WITH(check_options(o), Contains("staging_bytes"));
  o = {};
  o.copy_threads = 0;
  CHECK_THROWS_WITH(check_options(o), Contains("copy_threads"));
  CHECK_NOTHROW(check_options(GpuSinkOptions{}));
}
