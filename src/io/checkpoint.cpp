#include "atom/io/checkpoint.hpp"

#include <fstream>

#include "json_checked.hpp"

namespace atom::io {

namespace {

constexpr std::string_view index_name = "model.safetensors.index.json";
constexpr std::string_view single_name = "model.safetensors";

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw LoadError(path.string(), "", "cannot open");
  in.seekg(0, std::ios::end);
  const auto size = static_cast<std::uint64_t>(in.tellg());
  if (size > max_header_bytes)
    throw LoadError(path.string(), "",
                    "index of " + std::to_string(size) + " bytes exceeds the limit of " +
                        std::to_string(max_header_bytes));
  in.seekg(0);
  std::string text(size, '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  if (!in) throw LoadError(path.string(), "", "read failed");
  return text;
}

bool plain_file_name(std::string_view name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find_first_of(std::string_view("/\0", 2)) == std::string_view::npos;
}

}  // namespace

ShardIndex parse_index(std::string_view json, std::string_view file) {
  const std::string f(file);
  const nlohmann::json root = detail::parse_json_checked(json, f, "index");
  if (!root.is_object()) throw LoadError(f, "", "index is not a JSON object");
  ShardIndex index;
  if (const auto meta = root.find("metadata"); meta != root.end() && !meta->is_null()) {
    if (!meta->is_object()) throw LoadError(f, "", "index \"metadata\" is not an object");
    if (const auto total = meta->find("total_size"); total != meta->end()) {
      if (!total->is_number_unsigned())
        throw LoadError(f, "", "index \"total_size\" is not a non-negative integer");
      index.total_size = total->get<std::uint64_t>();
    }
  }
  const auto map = root.find("weight_map");
  if (map == root.end() || !map->is_object())
    throw LoadError(f, "", "index has no object \"weight_map\"");
  for (const auto& [name, shard] : map->items()) {
    if (!shard.is_string()) throw LoadError(f, name, "weight_map value is not a file name");
    const auto& shard_name = shard.get_ref<const std::string&>();
    if (!plain_file_name(shard_name))
      throw LoadError(f, name,
                      "shard \"" + detail::printable(shard_name) +
                          "\" is not a plain file name in the index's folder");
    index.weight_map.emplace(name, shard_name);
  }
  return index;
}

Checkpoint Checkpoint::open(const std::filesystem::path& path) {
  Checkpoint c;
  c.source_ = path;
  std::error_code ec;
  std::filesystem::path index_path;
  std::filesystem::path single_path;
  if (std::filesystem::is_directory(path, ec)) {
    if (std::filesystem::exists(path / index_name, ec))
      index_path = path / index_name;
    else if (std::filesystem::exists(path / single_name, ec))
      single_path = path / single_name;
    else
      throw LoadError(
          path.string(), "",
          "folder holds neither " + std::string(index_name) + " nor " + std::string(single_name));
  } else if (path.extension() == ".json") {
    index_path = path;
  } else {
    single_path = path;
  }

  if (!single_path.empty()) {
    c.shards_.push_back({single_path, read_header(single_path)});
    for (const auto& t : c.shards_[0].header.tensors) c.tensors_.emplace(t.name, Location{0, &t});
    return c;
  }

  const ShardIndex index = parse_index(read_text(index_path), index_path.string());
  std::map<std::string, std::size_t, std::less<>> shard_slot;
  for (const auto& [name, shard] : index.weight_map) shard_slot.emplace(shard, 0);
  const auto dir = index_path.parent_path();
  for (auto& [shard_name, slot] : shard_slot) {
    const auto shard_path = dir / shard_name;
    if (!std::filesystem::exists(shard_path, ec)) {
      std::string first_tensor;
      for (const auto& [name, shard] : index.weight_map)
        if (shard == shard_name) {
          first_tensor = name;
          break;
        }
      throw LoadError(shard_path.string(), first_tensor,
                      "shard named in " + index_path.string() + " is missing");
    }
    slot = c.shards_.size();
    c.shards_.push_back({shard_path, read_header(shard_path)});
  }
  for (std::size_t s = 0; s < c.shards_.size(); ++s) {
    const Shard& shard = c.shards_[s];
    const std::string shard_name = shard.path.filename().string();
    for (const auto& t : shard.header.tensors) {
      const auto listed = index.weight_map.find(t.name);
      if (listed == index.weight_map.end())
        throw LoadError(shard.path.string(), t.name,
                        "tensor is not listed in " + index_path.string());
      if (listed->second != shard_name)
        throw LoadError(shard.path.string(), t.name,
                        index_path.string() + " places the tensor in " + listed->second);
      c.tensors_.emplace(t.name, Location{s, &t});
    }
  }
  for (const auto& [name, shard] : index.weight_map)
    if (!c.tensors_.contains(name))
      throw LoadError((dir / shard).string(), name,
                      "tensor listed in " + index_path.string() + " is absent from the shard");
  return c;
}

std::uint64_t Checkpoint::data_bytes() const {
  std::uint64_t total = 0;
  for (const auto& s : shards_) total += s.header.data_bytes;
  return total;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, unused] : tensors_) out.push_back(name);
  return out;
}

const Checkpoint::Location& Checkpoint::locate(std::string_view name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end())
    throw LoadError(source_.string(), std::string(name), "no such tensor in the checkpoint");
  return it->second;
}

const Shard& Checkpoint::shard_of(std::string_view name) const {
  return shards_[locate(name).shard];
}

const TensorInfo& Checkpoint::info(std::string_view name) const {
  return *locate(name).info;
}

void Checkpoint::load(LoadMode mode, TensorSink& sink, std::size_t chunk_bytes) const {
  for (const auto& s : shards_) load_file(s.path, mode, sink, chunk_bytes);
}

HostTensors Checkpoint::load_host(LoadMode mode) const {
  HostSink sink;
  load(mode, sink);
  return std::move(sink.tensors());
}

}  // namespace atom::io
