// Writer-to-reader round trips on both load paths for every dtype, with odd and round sizes, and
// the guarantees of the streaming protocol.
#include <catch2/catch.hpp>

#include <map>
#include <random>

#include "atom/io/loader.hpp"
#include "atom/io/writer.hpp"
#include "test_util.hpp"

using namespace atom::io;
using namespace atom::io::test;

namespace {

struct Tensors {
  std::vector<TensorData> list;
  std::vector<std::vector<std::byte>> storage;

  void add(std::mt19937_64& rng, std::string name, Dtype dtype, std::vector<std::uint64_t> shape) {
    TensorInfo info{name, dtype, shape, 0, 0};
    storage.push_back(random_bytes(rng, info.numel() * dtype_bits(dtype) / 8));
    list.push_back({std::move(name), dtype, std::move(shape), {}});
  }
  // Spans are taken last: storage may reallocate while tensors are added.
  std::span<const TensorData> done() {
    for (std::size_t i = 0; i < list.size(); ++i) list[i].bytes = storage[i];
    return list;
  }
};

// Every dtype at odd, round and empty sizes; F4 and F6 sizes are whole bytes.
Tensors every_dtype(std::mt19937_64& rng) {
  Tensors t;
  const std::vector<std::vector<std::uint64_t>> shapes = {
      {4}, {3, 4}, {17, 4}, {769, 4}, {64, 32}, {}, {0}, {2, 0, 4}, {1, 1, 1, 4}};
  for (std::size_t d = 0; d < dtype_count; ++d) {
    const auto dtype = static_cast<Dtype>(d);
    for (std::size_t s = 0; s < shapes.size(); ++s) {
      auto shape = shapes[s];
      if (shape.empty() && dtype_bits(dtype) < 8) continue;  // one 4- or 6-bit value is no byte
      t.add(rng, std::string(dtype_name(dtype)) + ".s" + std::to_string(s), dtype, shape);
    }
  }
  return t;
}

// Checks the piece protocol while collecting like HostSink.
class CheckingSink final : public TensorSink {
 public:
  void piece(const std::filesystem::path&, const TensorInfo& info, std::uint64_t offset,
             std::span<const std::byte> bytes) override {
    if (offset == 0) {
      REQUIRE((order.empty() || order.back() != info.name));
      order.push_back(info.name);
      received[info.name] = {};
    }
    REQUIRE(order.back() == info.name);
    auto& got = received[info.name];
    REQUIRE(offset == got.size());
    REQUIRE(offset + bytes.size() <= info.nbytes());
    REQUIRE((!bytes.empty() || info.nbytes() == 0));
    got.insert(got.end(), bytes.begin(), bytes.end());
    ++pieces;
  }
  std::vector<std::string> order;
  std::map<std::string, std::vector<std::byte>> received;
  std::size_t pieces = 0;
};

}  // namespace

TEST_CASE("every dtype round-trips through the writer and both load paths") {
  std::mt19937_64 rng(Catch::rngSeed());
  Tensors t = every_dtype(rng);
  const auto tensors = t.done();
  ScratchDir dir;
  const auto path = dir / "all.safetensors";
  write_file(path, tensors, {{"format", "pt"}, {"note", "üñí\n\"q\""}});
  CHECK(
      same_bytes(read_bytes(path), serialize(tensors, {{"format", "pt"}, {"note", "üñí\n\"q\""}})));

  const SafetensorsFile mapped = SafetensorsFile::open(path, LoadMode::mmap);
  const SafetensorsFile read = SafetensorsFile::open(path, LoadMode::read);
  CHECK(mapped.header().metadata.at("note") == "üñí\n\"q\"");
  REQUIRE(mapped.header().tensors.size() == tensors.size());
  for (const auto& want : tensors) {
    const TensorInfo& info = read.info(want.name);
    CHECK(info.dtype == want.dtype);
    CHECK(info.shape == want.shape);
    CHECK(same_bytes(mapped.bytes(want.name), want.bytes));
    CHECK(same_bytes(read.bytes(want.name), want.bytes));
    // Both paths place a tensor at the same alignment it has in the file.
    CHECK(reinterpret_cast<std::uintptr_t>(mapped.bytes(info).data()) % 4096 ==
          reinterpret_cast<std::uintptr_t>(read.bytes(info).data()) % 4096);
  }
  // Data is laid out by descending dtype, then name, as the reference writer does.
  std::vector<const TensorInfo*> laid_out;
  for (const auto& info : mapped.header().tensors)
    if (info.nbytes() > 0) laid_out.push_back(&info);
  for (std::size_t i = 1; i < laid_out.size(); ++i) {
    const TensorInfo& a = *laid_out[i - 1];
    const TensorInfo& b = *laid_out[i];
    CHECK((a.dtype > b.dtype || (a.dtype == b.dtype && a.name < b.name)));
  }
  CHECK_THROWS_WITH(mapped.info("absent"), Catch::Matchers::Contains(path.string()) &&
                                               Catch::Matchers::Contains("tensor \"absent\""));
}

TEST_CASE("streamed loads deliver every byte on both paths at any chunk size") {
  std::mt19937_64 rng(Catch::rngSeed() + 1);
  Tensors t = every_dtype(rng);
  t.add(rng, "big", Dtype::BF16, {3, 40000});
  const auto tensors = t.done();
  ScratchDir dir;
  const auto path = dir / "stream.safetensors";
  write_file(path, tensors);
  const std::size_t chunks[] = {1, 4096, 5000, 65536, default_chunk_bytes};
  for (const LoadMode mode : {LoadMode::mmap, LoadMode::read}) {
    for (const std::size_t chunk : chunks) {
      CAPTURE(load_mode_name(mode), chunk);
      CheckingSink sink;
      load_file(path, mode, sink, chunk);
      REQUIRE(sink.received.size() == tensors.size());
      for (const auto& want : tensors) CHECK(same_bytes(sink.received.at(want.name), want.bytes));
      // Tensors arrive in file order.
      const Header h = read_header(path);
      for (std::size_t i = 0; i < h.tensors.size(); ++i) CHECK(sink.order[i] == h.tensors[i].name);
      if (mode == LoadMode::mmap) CHECK(sink.pieces == tensors.size());
      if (mode == LoadMode::read && chunk <= 4096) CHECK(sink.pieces > tensors.size());
    }
  }
}

TEST_CASE("the host sink fills fresh aligned buffers, identical on both paths") {
  std::mt19937_64 rng(Catch::rngSeed() + 2);
  Tensors t;
  t.add(rng, "a", Dtype::F32, {769});
  t.add(rng, "b", Dtype::F8_E8M0, {17, 3});
  t.add(rng, "c", Dtype::U8, {1});
  const auto tensors = t.done();
  ScratchDir dir;
  write_file(dir / "h.safetensors", tensors);
  HostSink mapped, read;
  load_file(dir / "h.safetensors", LoadMode::mmap, mapped);
  load_file(dir / "h.safetensors", LoadMode::read, read, 4096);
  for (const auto& want : tensors) {
    const HostTensor& m = mapped.tensors().at(want.name);
    const HostTensor& r = read.tensors().at(want.name);
    CHECK(reinterpret_cast<std::uintptr_t>(m.bytes.data()) % 64 == 0);
    CHECK(same_bytes(m.bytes.span(), want.bytes));
    CHECK(same_bytes(r.bytes.span(), want.bytes));
    CHECK(m.file == dir / "h.safetensors");
  }
  // The same file twice into one sink names the duplicate.
  CHECK_THROWS_WITH(load_file(dir / "h.safetensors", LoadMode::read, read),
                    Catch::Matchers::Contains("already loaded"));
}

TEST_CASE("the writer rejects what the reader would reject") {
  std::vector<std::byte> four(4);
  const TensorData ok{"x", Dtype::F32, {1}, four};
  const TensorData dup[] = {ok, ok};
  CHECK_THROWS_WITH(serialize(dup), Catch::Matchers::Contains("\"x\" appears twice"));
  const TensorData wrong[] = {{"y", Dtype::F32, {2}, four}};
  CHECK_THROWS_WITH(serialize(wrong), Catch::Matchers::Contains("\"y\" of F32 has 4 bytes"));
  const TensorData odd[] = {{"z", Dtype::F4, {3}, std::span(four).first(1)}};
  CHECK_THROWS_AS(serialize(odd), std::invalid_argument);
  const TensorData reserved[] = {{"__metadata__", Dtype::U8, {4}, four}};
  CHECK_THROWS_AS(serialize(reserved), std::invalid_argument);
}

TEST_CASE("ATOM_DISABLE_MMAP picks the read path") {
  using atom::env::Config;
  CHECK(load_mode(Config()) == LoadMode::mmap);
  CHECK(load_mode(Config::from({{"ATOM_DISABLE_MMAP", "true"}})) == LoadMode::read);
  CHECK(load_mode(Config::from({{"ATOM_DISABLE_MMAP", "1"}})) == LoadMode::read);
  CHECK(load_mode(Config::from({{"ATOM_DISABLE_MMAP", "off"}})) == LoadMode::mmap);
}
