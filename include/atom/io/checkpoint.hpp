// A checkpoint: one .safetensors file, or shards listed by a model.safetensors.index.json
// ({"metadata": {"total_size": N}, "weight_map": {tensor: shard file}}). Opening reads every
// shard's header and checks the index against them, so a missing shard or a misplaced tensor is
// reported before any data is read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "atom/io/format.hpp"
#include "atom/io/loader.hpp"

namespace atom::io {

struct ShardIndex {
  std::map<std::string, std::string, std::less<>> weight_map;  // tensor name -> shard file name
  std::optional<std::uint64_t> total_size;
};

// Shard names must be plain file names in the index's folder.
ShardIndex parse_index(std::string_view json, std::string_view file);

struct Shard {
  std::filesystem::path path;
  Header header;
};

class Checkpoint {
 public:
  // `path`: a .safetensors file, an index .json file, or a folder holding
  // model.safetensors.index.json or model.safetensors.
  static Checkpoint open(const std::filesystem::path& path);

  // Moves keep the tensor table valid; copies would not.
  Checkpoint(Checkpoint&&) noexcept = default;
  Checkpoint& operator=(Checkpoint&&) noexcept = default;
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  const std::vector<Shard>& shards() const { return shards_; }
  std::size_t size() const { return tensors_.size(); }
  std::uint64_t data_bytes() const;
  std::vector<std::string> names() const;

  // The shard holding `name` and its entry there; LoadError naming the tensor when absent.
  const Shard& shard_of(std::string_view name) const;
  const TensorInfo& info(std::string_view name) const;
  bool contains(std::string_view name) const { return tensors_.contains(name); }

  // Streams every shard, in file-name order, into `sink`.
  void load(LoadMode mode, TensorSink& sink, std::size_t chunk_bytes = default_chunk_bytes) const;
  HostTensors load_host(LoadMode mode) const;

 private:
  struct Location {
    std::size_t shard;
    const TensorInfo* info;  // in shards_[shard].header, which never moves after open
  };
  Checkpoint() = default;
  const Location& locate(std::string_view name) const;

  std::filesystem::path source_;
  std::vector<Shard> shards_;
  std::map<std::string, Location, std::less<>> tensors_;
};

}  // namespace atom::io
