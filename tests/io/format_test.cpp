// Header validation: every malformed input is a LoadError naming the file (and the tensor where
// one is involved); random corruption never escapes as anything else.
#include <catch2/catch.hpp>

#include <cctype>
#include <random>
#include <string>

#include "atom/io/format.hpp"
#include "atom/io/loader.hpp"
#include "atom/io/writer.hpp"
#include "test_util.hpp"

using namespace atom::io;
using namespace atom::io::test;
using Catch::Matchers::Contains;

namespace {

// The LoadError message of parsing `bytes` as file "bad.safetensors"; fails when it parses.
std::string error_of(const std::vector<std::byte>& bytes) {
  try {
    parse_file_bytes(bytes, "bad.safetensors");
  } catch (const LoadError& e) {
    CHECK(e.file() == "bad.safetensors");
    return e.what();
  }
  FAIL("a malformed file was accepted");
  return {};
}

std::string tensor_of(const std::vector<std::byte>& bytes) {
  try {
    parse_file_bytes(bytes, "bad.safetensors");
  } catch (const LoadError& e) {
    return e.tensor();
  }
  return {};
}

const std::string f32_entry = R"({"dtype":"F32","shape":[2,3],"data_offsets":[0,24]})";

}  // namespace

TEST_CASE("dtype names and widths follow the format") {
  for (std::size_t i = 0; i < dtype_count; ++i) {
    const auto d = static_cast<Dtype>(i);
    CHECK(dtype_from_name(dtype_name(d)) == d);
  }
  CHECK(dtype_bits(Dtype::F4) == 4);
  CHECK(dtype_bits(Dtype::F8_E8M0) == 8);
  CHECK(dtype_bits(Dtype::BF16) == 16);
  CHECK(dtype_bits(Dtype::I64) == 64);
  CHECK_FALSE(dtype_from_name("F8_E4M3FN").has_value());
  CHECK_FALSE(dtype_from_name("").has_value());
}

TEST_CASE("a well-formed header parses with its offsets, metadata and dtypes") {
  const std::string json =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"F8_E8M0","shape":[3],"data_offsets":[24,27]},"a":)" +
      f32_entry + R"(,"c":{"dtype":"F4","shape":[2,3],"data_offsets":[27,30]}})";
  const Header h = parse_file_bytes(raw_file(json, 30), "ok.safetensors");
  REQUIRE(h.tensors.size() == 3);
  CHECK(h.tensors[0].name == "a");
  CHECK(h.tensors[1].name == "b");
  CHECK(h.tensors[1].dtype == Dtype::F8_E8M0);
  CHECK(h.tensors[2].dtype == Dtype::F4);
  CHECK(h.tensors[2].nbytes() == 3);
  CHECK(h.metadata.at("format") == "pt");
  CHECK(h.find("c") == &h.tensors[2]);
  CHECK(h.find("d") == nullptr);
  CHECK(h.data_start() == 8 + json.size());
}

TEST_CASE("short files and bad header lengths are errors") {
  CHECK_THAT(error_of({}), Contains("0 bytes, too short"));
  CHECK_THAT(error_of(std::vector<std::byte>(5)), Contains("5 bytes, too short"));
  const std::string json = R"({"a":)" + f32_entry + "}";
  CHECK_THAT(error_of(raw_file(json, 24, json.size() + 25)), Contains("is larger than"));
  CHECK_THAT(error_of(raw_file(json, 24, std::uint64_t{1} << 63)), Contains("exceeds the limit"));
  CHECK_THAT(error_of(raw_file(json, 24, ~std::uint64_t{0})), Contains("exceeds the limit"));
  // Every truncation of a valid file is an error, never a read past the end.
  const auto whole = raw_file(json, 24);
  for (std::size_t n = 0; n < whole.size(); ++n)
    CHECK_THROWS_AS(parse_file_bytes(std::span(whole).first(n), "cut.safetensors"), LoadError);
}

TEST_CASE("headers that are not JSON objects, or nest absurdly, are errors") {
  CHECK_THAT(error_of(raw_file("{\"a\":", 0)), Contains("header is not valid JSON"));
  CHECK_THAT(error_of(raw_file("not json", 0)), Contains("header is not valid JSON"));
  CHECK_THAT(error_of(raw_file("{\"a\xff\":1}", 0)), Contains("header is not valid JSON"));
  CHECK_THAT(error_of(raw_file("[1,2]", 0)), Contains("not a JSON object"));
  CHECK_THAT(error_of(raw_file(std::string(200000, '[') + std::string(200000, ']'), 0)),
             Contains("nests deeper than"));
  std::string objects;
  for (int i = 0; i < 50000; ++i) objects += "{\"k\":";
  CHECK_THAT(error_of(raw_file(objects + "1" + std::string(50000, '}'), 0)),
             Contains("nests deeper than"));
}

TEST_CASE("duplicate names are errors naming the tensor") {
  const std::string json = R"({"a":)" + f32_entry + R"(,"a":)" + f32_entry + "}";
  CHECK_THAT(error_of(raw_file(json, 24)), Contains("repeats the key \"a\""));
  CHECK(tensor_of(raw_file(json, 24)) == "a");
}

TEST_CASE("offsets that overlap, leave gaps or fall outside the data are errors") {
  const auto entry = [](const char* dtype, const char* shape, int b, int e) {
    return std::string(R"({"dtype":")") + dtype + R"(","shape":)" + shape + R"(,"data_offsets":[)" +
           std::to_string(b) + "," + std::to_string(e) + "]}";
  };
  SECTION("overlap") {
    const std::string json =
        R"({"x":)" + entry("F32", "[4]", 0, 16) + R"(,"y":)" + entry("F32", "[4]", 8, 24) + "}";
    CHECK_THAT(error_of(raw_file(json, 24)),
               Contains("tensor \"y\"") && Contains("overlap") && Contains("\"x\" [0, 16]"));
  }
  SECTION("the same range twice") {
    const std::string json =
        R"({"x":)" + entry("F32", "[4]", 0, 16) + R"(,"y":)" + entry("F32", "[4]", 0, 16) + "}";
    CHECK_THAT(error_of(raw_file(json, 16)), Contains("overlap"));
  }
  SECTION("gap") {
    const std::string json =
        R"({"x":)" + entry("F32", "[4]", 0, 16) + R"(,"y":)" + entry("F32", "[4]", 20, 36) + "}";
    CHECK_THAT(error_of(raw_file(json, 36)), Contains("tensor \"y\"") && Contains("unused"));
  }
  SECTION("past the end: a truncated file") {
    const std::string json = R"({"x":)" + entry("F32", "[4]", 0, 16) + "}";
    CHECK_THAT(error_of(raw_file(json, 15)),
               Contains("tensor \"x\"") && Contains("outside the data section of 15 bytes"));
  }
  SECTION("trailing bytes") {
    const std::string json = R"({"x":)" + entry("F32", "[4]", 0, 16) + "}";
    CHECK_THAT(error_of(raw_file(json, 17)), Contains("cover 16 bytes") && Contains("has 17"));
  }
  SECTION("reversed") {
    const std::string json = R"({"x":)" + entry("U8", "[0]", 8, 0) + "}";
    CHECK_THAT(error_of(raw_file(json, 8)), Contains("reversed"));
  }
  SECTION("offsets beyond 64 bits") {
    const std::string json =
        R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,18446744073709551616]}})";
    CHECK_THAT(error_of(raw_file(json, 1)), Contains("data_offsets"));
  }
}

TEST_CASE("dtype, shape and byte-count mismatches are errors naming the tensor") {
  const auto one = [](const std::string& body, std::size_t data) {
    return error_of(raw_file(R"({"t":)" + body + "}", data));
  };
  CHECK_THAT(one(R"({"dtype":"F32","shape":[2,3],"data_offsets":[0,20]})", 20),
             Contains("tensor \"t\"") && Contains("need 24 bytes") && Contains("hold 20"));
  CHECK_THAT(one(R"({"dtype":"F33","shape":[1],"data_offsets":[0,4]})", 4),
             Contains("unknown dtype \"F33\""));
  CHECK_THAT(one(R"({"dtype":7,"shape":[1],"data_offsets":[0,4]})", 4), Contains("\"dtype\""));
  CHECK_THAT(one(R"({"dtype":"U8","shape":[-1],"data_offsets":[0,4]})", 4),
             Contains("not a non-negative integer"));
  CHECK_THAT(one(R"({"dtype":"U8","shape":[1.5],"data_offsets":[0,4]})", 4),
             Contains("not a non-negative integer"));
  CHECK_THAT(one(R"({"dtype":"U8","shape":"4","data_offsets":[0,4]})", 4), Contains("\"shape\""));
  CHECK_THAT(one(R"({"dtype":"U8","shape":[4],"data_offsets":[0]})", 4), Contains("data_offsets"));
  CHECK_THAT(one(R"({"dtype":"U8","shape":[4]})", 4), Contains("data_offsets"));
  CHECK_THAT(one(R"({"dtype":"U8","shape":[4],"data_offsets":[0,4],"extra":1})", 4),
             Contains("unknown field \"extra\""));
  CHECK_THAT(one(R"([1])", 0), Contains("not an object"));
  CHECK_THAT(one(R"({"dtype":"F4","shape":[3],"data_offsets":[0,2]})", 2),
             Contains("does not fill whole bytes"));
  CHECK_THAT(one(R"({"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]})", 8),
             Contains("overflows 64 bits"));
  CHECK_THAT(one(R"({"dtype":"F64","shape":[3074457345618258603],"data_offsets":[0,8]})", 8),
             Contains("overflows 64 bits"));
  CHECK_THAT(error_of(raw_file(R"({"__metadata__":{"k":1}})", 0)), Contains("__metadata__"));
  CHECK_THAT(error_of(raw_file(R"({"__metadata__":[]})", 0)), Contains("__metadata__"));
}

TEST_CASE("zero-sized and scalar tensors are valid") {
  const std::string json =
      R"({"s":{"dtype":"I64","shape":[],"data_offsets":[0,8]},"z":{"dtype":"BF16","shape":[0,7],"data_offsets":[8,8]},"z2":{"dtype":"U8","shape":[0],"data_offsets":[8,8]}})";
  const Header h = parse_file_bytes(raw_file(json, 8), "ok.safetensors");
  REQUIRE(h.tensors.size() == 3);
  CHECK(h.find("s")->numel() == 1);
  CHECK(h.find("z")->nbytes() == 0);
}

TEST_CASE("randomly corrupted files give a header or a LoadError, never anything else") {
  std::mt19937_64 rng(Catch::rngSeed());
  std::vector<TensorData> tensors;
  std::vector<std::vector<std::byte>> storage;
  const std::uint64_t sizes[] = {1, 3, 17, 0, 64};
  const char* names[] = {"t0", "t1", "t2", "t3", "t4"};
  for (std::size_t i = 0; i < std::size(sizes); ++i) {
    const auto d = static_cast<Dtype>(rng() % dtype_count);
    const std::uint64_t n = sizes[i] * 4;  // whole bytes for every width, 4 and 6 bits included
    storage.push_back(random_bytes(rng, n * dtype_bits(d) / 8));
    tensors.push_back({names[i], d, {n}, storage.back()});
  }
  const auto valid = serialize(tensors, {{"format", "pt"}});
  std::size_t accepted = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    auto bytes = valid;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const std::size_t at = rng() % bytes.size();
      switch (rng() % 4) {
        case 0:
          bytes[at] = static_cast<std::byte>(rng() & 0xff);
          break;
        case 1:
          bytes.resize(at);
          break;
        case 2:
          bytes.insert(bytes.begin() + static_cast<std::ptrdiff_t>(at),
                       static_cast<std::byte>(rng() & 0xff));
          break;
        default:  // a digit in the header changed, to reach the offset and shape checks
          if (at < bytes.size() && std::isdigit(static_cast<unsigned char>(bytes[at])))
            bytes[at] = static_cast<std::byte>('0' + rng() % 10);
      }
      if (bytes.empty()) break;
    }
    try {
      const Header h = parse_file_bytes(bytes, "fuzzed.safetensors");
      for (const auto& t : h.tensors) REQUIRE(h.data_start() + t.end <= bytes.size());
      ++accepted;
    } catch (const LoadError& e) {
      CHECK_THAT(e.what(), Contains("fuzzed.safetensors"));
    }
  }
  CHECK(accepted < 3000);
}

TEST_CASE("errors from files on disk name the path on both load paths") {
  ScratchDir dir;
  const auto path = dir / "cut.safetensors";
  const std::string json = R"({"w":{"dtype":"BF16","shape":[16],"data_offsets":[0,32]}})";
  write_bytes(path, raw_file(json, 31));
  for (const LoadMode mode : {LoadMode::mmap, LoadMode::read}) {
    CHECK_THROWS_WITH(SafetensorsFile::open(path, mode), Contains(path.string()) &&
                                                             Contains("tensor \"w\"") &&
                                                             Contains("is the file truncated?"));
    HostSink sink;
    CHECK_THROWS_AS(load_file(path, mode, sink), LoadError);
    CHECK(sink.tensors().empty());
  }
  CHECK_THROWS_WITH(read_header(dir / "absent.safetensors"),
                    Contains("absent.safetensors") && Contains("cannot open"));
  CHECK_THROWS_WITH(read_header(dir.path()), Contains("not a regular file"));
}
