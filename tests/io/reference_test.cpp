// Files written by the reference safetensors library (tests/io/data/make_reference.py) read back
// exactly on both paths, and the writer reproduces them byte for byte.
#include <catch2/catch.hpp>

#include "atom/io/checkpoint.hpp"
#include "atom/io/loader.hpp"
#include "atom/io/writer.hpp"
#include "test_util.hpp"

using namespace atom::io;
using namespace atom::io::test;

namespace {

const std::filesystem::path data_dir = ATOM_IO_TEST_DATA;

struct Entry {
  const char* name;
  Dtype dtype;
  std::vector<std::uint64_t> shape;
  unsigned seed;
};

// Mirrors the tables in make_reference.py.
const std::vector<Entry> dtypes_file = {
    {"bf16", Dtype::BF16, {3, 5}, 1},     {"bool", Dtype::BOOL, {17}, 2},
    {"f16", Dtype::F16, {2, 3, 4}, 3},    {"f32", Dtype::F32, {7}, 4},
    {"f64", Dtype::F64, {1, 3}, 5},       {"f8_e4m3", Dtype::F8_E4M3, {4, 17}, 6},
    {"f8_e5m2", Dtype::F8_E5M2, {19}, 7}, {"f8_e8m0", Dtype::F8_E8M0, {5, 1}, 8},
    {"i16", Dtype::I16, {9}, 9},          {"i32", Dtype::I32, {2, 2}, 10},
    {"i64", Dtype::I64, {3}, 11},         {"i8", Dtype::I8, {1}, 12},
    {"u8", Dtype::U8, {6, 2}, 13},        {"scalar", Dtype::F32, {}, 14},
    {"empty", Dtype::BF16, {0, 4}, 15},
};
const std::vector<Entry> mxfp4_file = {
    {"model.layers.0.mlp.down_proj.weight", Dtype::U8, {8, 16}, 21},
    {"model.layers.0.mlp.down_proj.weight_scale", Dtype::F8_E8M0, {8, 1}, 22},
    {"model.layers.0.mlp.gate_up_proj.weight", Dtype::U8, {3, 32}, 23},
    {"model.layers.0.mlp.gate_up_proj.weight_scale", Dtype::F8_E8M0, {3, 2}, 24},
    {"model.layers.0.input_layernorm.weight", Dtype::BF16, {64}, 25},
};
const std::vector<std::pair<const char*, std::vector<Entry>>> shards = {
    {"model-00001-of-00002.safetensors",
     {{"model.embed_tokens.weight", Dtype::BF16, {11, 8}, 31},
      {"model.layers.0.self_attn.q_proj.weight", Dtype::F8_E4M3, {8, 8}, 32},
      {"model.layers.0.self_attn.q_proj.weight_scale", Dtype::F32, {1}, 33}}},
    {"model-00002-of-00002.safetensors",
     {{"model.layers.0.self_attn.o_proj.weight", Dtype::F8_E4M3, {8, 8}, 34},
      {"model.layers.0.self_attn.o_proj.weight_scale", Dtype::F32, {1}, 35},
      {"model.norm.weight", Dtype::BF16, {8}, 36},
      {"lm_head.weight", Dtype::BF16, {11, 8}, 37}}},
};

// The bytes make_reference.py's pattern() gives.
std::vector<std::byte> pattern(const Entry& e) {
  const std::uint64_t n = TensorInfo{"", e.dtype, e.shape, 0, 0}.numel() * dtype_bits(e.dtype) / 8;
  std::vector<std::byte> out(n);
  for (std::uint64_t i = 0; i < n; ++i)
    out[i] = e.dtype == Dtype::BOOL ? static_cast<std::byte>((i * 7 + e.seed) % 3 == 0 ? 1 : 0)
                                    : static_cast<std::byte>((i * 73 + e.seed * 29 + 11) & 0xff);
  return out;
}

// Reads `path` on both paths and checks every tensor; then checks the writer reproduces it.
void check_file(const std::filesystem::path& path, const std::vector<Entry>& table) {
  CAPTURE(path.string());
  std::vector<std::vector<std::byte>> expected;
  std::vector<TensorData> tensors;
  for (const auto& e : table) expected.push_back(pattern(e));
  for (std::size_t i = 0; i < table.size(); ++i)
    tensors.push_back({table[i].name, table[i].dtype, table[i].shape, expected[i]});

  for (const LoadMode mode : {LoadMode::mmap, LoadMode::read}) {
    const SafetensorsFile f = SafetensorsFile::open(path, mode);
    CHECK(f.header().metadata == Metadata{{"format", "pt"}});
    REQUIRE(f.header().tensors.size() == table.size());
    for (std::size_t i = 0; i < table.size(); ++i) {
      const TensorInfo& info = f.info(table[i].name);
      CHECK(info.dtype == table[i].dtype);
      CHECK(info.shape == table[i].shape);
      CHECK(same_bytes(f.bytes(info), expected[i]));
    }
  }
  CHECK(same_bytes(serialize(tensors, {{"format", "pt"}}), read_bytes(path)));
}

}  // namespace

TEST_CASE("reference files of every dtype read back exactly") {
  check_file(data_dir / "dtypes.safetensors", dtypes_file);
}

TEST_CASE("reference MXFP4 weights (packed U8 with E8M0 scales) read back exactly") {
  check_file(data_dir / "mxfp4.safetensors", mxfp4_file);
}

TEST_CASE("a reference sharded checkpoint reads back exactly on both paths") {
  for (const auto& [file, table] : shards) check_file(data_dir / "sharded" / file, table);
  const Checkpoint c = Checkpoint::open(data_dir / "sharded");
  CHECK(c.shards().size() == 2);
  for (const LoadMode mode : {LoadMode::mmap, LoadMode::read}) {
    const HostTensors loaded = c.load_host(mode);
    std::size_t count = 0;
    for (const auto& [file, table] : shards)
      for (const auto& e : table) {
        CHECK(same_bytes(loaded.at(e.name).bytes.span(), pattern(e)));
        CHECK(c.shard_of(e.name).path.filename() == file);
        ++count;
      }
    CHECK(loaded.size() == count);
  }
}
