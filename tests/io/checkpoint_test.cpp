// Sharded checkpoints: the index is checked against every shard's header at open, and loads on
// both paths give the same bytes.
#include <catch2/catch.hpp>

#include <map>
#include <random>

#include "atom/io/checkpoint.hpp"
#include "atom/io/writer.hpp"
#include "test_util.hpp"

using namespace atom::io;
using namespace atom::io::test;
using Catch::Matchers::Contains;

namespace {

struct Model {
  std::vector<TensorData> tensors;
  std::vector<std::vector<std::byte>> storage;
};

Model random_model(std::mt19937_64& rng, int layers) {
  Model m;
  const auto add = [&](std::string name, Dtype d, std::vector<std::uint64_t> shape) {
    TensorInfo info{name, d, shape, 0, 0};
    m.storage.push_back(random_bytes(rng, info.numel() * dtype_bits(d) / 8));
    m.tensors.push_back({std::move(name), d, std::move(shape), {}});
  };
  add("model.embed_tokens.weight", Dtype::BF16, {17, 64});
  for (int l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "mlp.down_proj.weight", Dtype::U8, {64, 16});
    add(p + "mlp.down_proj.weight_scale", Dtype::F8_E8M0, {64, 1});
    add(p + "self_attn.q_proj.weight", Dtype::F8_E4M3, {32, 64});
    add(p + "input_layernorm.weight", Dtype::BF16, {64});
  }
  for (std::size_t i = 0; i < m.tensors.size(); ++i) m.tensors[i].bytes = m.storage[i];
  return m;
}

void write_text(const std::filesystem::path& path, const std::string& text) {
  write_bytes(path, as_bytes(text));
}

}  // namespace

TEST_CASE("a sharded checkpoint loads identically on both paths") {
  std::mt19937_64 rng(Catch::rngSeed());
  const Model m = random_model(rng, 5);
  ScratchDir dir;
  const auto index = write_sharded(dir.path(), m.tensors, 3000);
  CHECK(index == dir / "model.safetensors.index.json");
  const Checkpoint c = Checkpoint::open(dir.path());
  CHECK(c.shards().size() > 3);
  CHECK(c.size() == m.tensors.size());
  std::uint64_t total = 0;
  for (const auto& t : m.tensors) total += t.bytes.size();
  CHECK(c.data_bytes() == total);
  CHECK(parse_index(std::string(reinterpret_cast<const char*>(read_bytes(index).data()),
                                read_bytes(index).size()),
                    "i")
            .total_size == total);

  const HostTensors mapped = c.load_host(LoadMode::mmap);
  const HostTensors read = c.load_host(LoadMode::read);
  REQUIRE(mapped.size() == m.tensors.size());
  REQUIRE(read.size() == m.tensors.size());
  for (const auto& t : m.tensors) {
    CHECK(same_bytes(mapped.at(t.name).bytes.span(), t.bytes));
    CHECK(same_bytes(read.at(t.name).bytes.span(), t.bytes));
    CHECK(c.info(t.name).shape == t.shape);
    CHECK(mapped.at(t.name).file == c.shard_of(t.name).path);
  }
  CHECK_THROWS_WITH(c.info("nope"), Contains("tensor \"nope\""));
  // The index file itself and a single shard open as checkpoints too.
  CHECK(Checkpoint::open(index).size() == m.tensors.size());
  CHECK(Checkpoint::open(c.shards()[0].path).shards().size() == 1);
}

TEST_CASE("the mmap path ends each file after its last piece, while its pieces are valid") {
  // A sink that reads every piece only when the file ends (as a GPU sink's copy threads may).
  class Deferred final : public TensorSink {
   public:
    void piece(const std::filesystem::path& file, const TensorInfo& info, std::uint64_t,
               std::span<const std::byte> bytes) override {
      pending_.push_back({file, info.name, bytes});
    }
    void file_end(const std::filesystem::path& file) override {
      ends.push_back(file);
      for (const auto& p : pending_) {
        CHECK(p.file == file);
        copies[p.name].assign(p.bytes.begin(), p.bytes.end());
      }
      pending_.clear();
    }
    std::vector<std::filesystem::path> ends;
    std::map<std::string, std::vector<std::byte>> copies;

   private:
    struct Pending {
      std::filesystem::path file;
      std::string name;
      std::span<const std::byte> bytes;
    };
    std::vector<Pending> pending_;
  };
  std::mt19937_64 rng(Catch::rngSeed() + 7);
  const Model m = random_model(rng, 5);
  ScratchDir dir;
  write_sharded(dir.path(), m.tensors, 3000);
  const Checkpoint c = Checkpoint::open(dir.path());
  Deferred sink;
  c.load(LoadMode::mmap, sink);
  REQUIRE(sink.ends.size() == c.shards().size());
  for (std::size_t i = 0; i < c.shards().size(); ++i) CHECK(sink.ends[i] == c.shards()[i].path);
  for (const auto& t : m.tensors) CHECK(same_bytes(sink.copies.at(t.name), t.bytes));
  Deferred reads;  // the read path has no file_end: its pieces are valid only during piece()
  c.load(LoadMode::read, reads);
  CHECK(reads.ends.empty());
}

TEST_CASE("a folder with model.safetensors is a single-file checkpoint") {
  std::mt19937_64 rng(Catch::rngSeed() + 1);
  const Model m = random_model(rng, 1);
  ScratchDir dir;
  write_file(dir / "model.safetensors", m.tensors);
  const Checkpoint c = Checkpoint::open(dir.path());
  CHECK(c.size() == m.tensors.size());
  ScratchDir empty;
  CHECK_THROWS_WITH(Checkpoint::open(empty.path()), Contains("holds neither"));
}

TEST_CASE("index and shards that disagree are errors naming the shard and the tensor") {
  std::mt19937_64 rng(Catch::rngSeed() + 2);
  const Model m = random_model(rng, 2);
  ScratchDir dir;
  write_sharded(dir.path(), m.tensors, 2500);
  const auto index = dir / "model.safetensors.index.json";
  const Checkpoint good = Checkpoint::open(dir.path());
  REQUIRE(good.shards().size() >= 2);
  const std::string first = good.shards()[0].path.filename().string();
  const std::string second = good.shards()[1].path.filename().string();
  // A tensor of a shard that holds others too, so that the shard stays in the index without it.
  std::size_t home = 0;
  while (home < good.shards().size() && good.shards()[home].header.tensors.size() < 2) ++home;
  REQUIRE(home < good.shards().size());
  const std::string home_name = good.shards()[home].path.filename().string();
  const std::string other = home == 0 ? second : first;
  const std::string first_tensor = good.shards()[home].header.tensors[0].name;

  SECTION("a shard named in the index is missing") {
    std::filesystem::remove(dir / second);
    CHECK_THROWS_WITH(Checkpoint::open(dir.path()),
                      Contains(second) && Contains("is missing") && Contains("tensor \""));
  }
  // The index of `good` with one tensor moved, one dropped or one added.
  const auto index_text = [&](const std::string& moved, const std::string& dropped,
                              const std::string& added, const std::string& added_shard) {
    std::string text = R"({"weight_map":{)";
    for (const auto& s : good.shards())
      for (const auto& t : s.header.tensors)
        if (t.name != dropped)
          text += "\"" + t.name + "\":\"" + (t.name == moved ? other : s.path.filename().string()) +
                  "\",";
    if (!added.empty()) text += "\"" + added + "\":\"" + added_shard + "\",";
    text.back() = '}';
    return text + "}";
  };
  SECTION("a tensor listed in the index is absent from its shard") {
    write_text(index, index_text("", "", "ghost", first));
    CHECK_THROWS_WITH(Checkpoint::open(dir.path()), Contains(first) &&
                                                        Contains("tensor \"ghost\"") &&
                                                        Contains("absent from the shard"));
  }
  SECTION("a tensor in a shard is not listed in the index") {
    write_text(index, index_text("", first_tensor, "", ""));
    CHECK_THROWS_WITH(Checkpoint::open(dir.path()),
                      Contains(home_name) && Contains("tensor \"" + first_tensor + "\"") &&
                          Contains("not listed"));
  }
  SECTION("the index places a tensor in another shard") {
    write_text(index, index_text(first_tensor, "", "", ""));
    CHECK_THROWS_WITH(Checkpoint::open(dir.path()), Contains("tensor \"" + first_tensor + "\"") &&
                                                        Contains("places the tensor in " + other));
  }
  SECTION("a tensor stored in two shards") {
    write_file(dir / "extra.safetensors", std::span(m.tensors).first(1));
    write_text(index, index_text("", "", "x", "extra.safetensors"));
    CHECK_THROWS_WITH(
        Checkpoint::open(dir.path()),
        Contains("extra.safetensors") && Contains("tensor \"" + m.tensors[0].name + "\""));
  }
  SECTION("malformed indexes") {
    const auto fails = [&](const std::string& text) {
      write_text(index, text);
      try {
        Checkpoint::open(dir.path());
      } catch (const LoadError& e) {
        CHECK_THAT(e.what(), Contains(index.string()));
        return std::string(e.what());
      }
      FAIL("accepted: " << text);
      return std::string();
    };
    CHECK_THAT(fails("{"), Contains("not valid JSON"));
    CHECK_THAT(fails("[]"), Contains("not a JSON object"));
    CHECK_THAT(fails("{}"), Contains("weight_map"));
    CHECK_THAT(fails(R"({"weight_map":{"a":1}})"), Contains("tensor \"a\""));
    CHECK_THAT(fails(R"({"weight_map":{"a":"../x.safetensors"}})"), Contains("plain file name"));
    CHECK_THAT(fails(R"({"weight_map":{"a":"/etc/passwd"}})"), Contains("plain file name"));
    CHECK_THAT(fails(R"({"weight_map":{"a":"x","a":"y"}})"), Contains("repeats the key \"a\""));
    CHECK_THAT(fails(R"({"metadata":{"total_size":-1},"weight_map":{}})"), Contains("total_size"));
    CHECK_THAT(fails(std::string(100, '[') + std::string(100, ']')), Contains("nests deeper"));
  }
}
