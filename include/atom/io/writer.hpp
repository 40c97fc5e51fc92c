// Writing safetensors files, laid out byte for byte as the reference implementation lays them
// out: tensors ordered by descending dtype then by name, the header as compact JSON with
// "__metadata__" first and tensors in data order, padded with spaces to a multiple of 8 bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "atom/io/format.hpp"

namespace atom::io {

struct TensorData {
  std::string name;
  Dtype dtype = Dtype::U8;
  std::vector<std::uint64_t> shape;
  std::span<const std::byte> bytes;
};

using Metadata = std::map<std::string, std::string, std::less<>>;

// Throws std::invalid_argument naming the tensor when a name repeats or is "__metadata__", or
// when the byte count does not match the dtype and shape.
std::vector<std::byte> serialize(std::span<const TensorData> tensors,
                                 const Metadata& metadata = {});

// Throws std::runtime_error naming the file when it cannot be written.
void write_file(const std::filesystem::path& path, std::span<const TensorData> tensors,
                const Metadata& metadata = {});

// Writes the tensors, in the given order, into shards model-0000i-of-0000n.safetensors holding at
// most `max_shard_bytes` of data each (a larger tensor gets a shard of its own), and
// model.safetensors.index.json mapping every tensor to its shard. Returns the index's path.
std::filesystem::path write_sharded(const std::filesystem::path& dir,
                                    std::span<const TensorData> tensors,
                                    std::uint64_t max_shard_bytes, const Metadata& metadata = {});

}  // namespace atom::io
