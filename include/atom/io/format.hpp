// The safetensors format: dtypes, the per-tensor header entries and the validated header of one
// file. A file is an 8-byte little-endian header length N, N bytes of JSON
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the
// data section. Validation follows the reference implementation: offsets are relative to the data
// section, sorted by offset the tensors tile it exactly (no gaps, no overlaps), and every tensor's
// byte count equals its element count times its dtype's width.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace atom::io {

// In the reference implementation's order: the writer lays tensors out by descending dtype, then
// by name, so this order is part of the byte-exact file layout.
enum class Dtype : std::uint8_t {
  BOOL,
  F4,
  F6_E2M3,
  F6_E3M2,
  U8,
  I8,
  F8_E5M2,
  F8_E4M3,
  F8_E8M0,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  C64,
  F64,
  I64,
  U64,
};

inline constexpr std::size_t dtype_count = 20;

std::string_view dtype_name(Dtype d);
std::optional<Dtype> dtype_from_name(std::string_view name);
// Bits per element: 4 for F4 (two values per byte), 6 for the F6 formats, 8..64 otherwise.
unsigned dtype_bits(Dtype d);

// The values of `bytes` holding elements of dtype BF16 or F32, as floats (both exactly); another
// dtype is a std::invalid_argument naming it.
std::vector<float> float_values(Dtype d, std::span<const std::byte> bytes);

// A file, header or index that cannot be read; the message names the file and, where one is
// involved, the tensor.
class LoadError : public std::runtime_error {
 public:
  LoadError(std::string file, std::string tensor, const std::string& what);
  const std::string& file() const noexcept { return file_; }
  const std::string& tensor() const noexcept { return tensor_; }

 private:
  std::string file_;
  std::string tensor_;
};

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::U8;
  std::vector<std::uint64_t> shape;
  std::uint64_t begin = 0;  // byte offsets within the data section
  std::uint64_t end = 0;

  std::uint64_t numel() const;
  std::uint64_t nbytes() const { return end - begin; }
};

// Limits applied before anything is allocated from a header's claims.
inline constexpr std::uint64_t max_header_bytes = 100'000'000;
inline constexpr int max_json_depth = 8;

struct Header {
  std::uint64_t json_bytes = 0;  // N; the data section starts at file offset 8 + N
  std::uint64_t data_bytes = 0;
  std::vector<TensorInfo> tensors;  // sorted by offset
  std::map<std::string, std::string, std::less<>> metadata;
  std::map<std::string, std::size_t, std::less<>> by_name;  // index into tensors

  std::uint64_t data_start() const { return 8 + json_bytes; }
  // nullptr when absent.
  const TensorInfo* find(std::string_view name) const;
};

// Reads N from the first 8 bytes and checks it against the file size and the header limit.
std::uint64_t header_length(std::span<const std::byte> prefix, std::uint64_t file_bytes,
                            std::string_view file);
// Parses and validates the JSON header for a data section of `data_bytes` bytes.
Header parse_header(std::string_view json, std::uint64_t data_bytes, std::string_view file);
// Validates a whole file held in memory and returns its header.
Header parse_file_bytes(std::span<const std::byte> bytes, std::string_view file);

}  // namespace atom::io
