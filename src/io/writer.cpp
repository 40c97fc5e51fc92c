#include "atom/io/writer.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

namespace atom::io {

namespace {

void check(std::span<const TensorData> tensors) {
  std::set<std::string_view> names;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__")
      throw std::invalid_argument("safetensors writer: \"__metadata__\" is not a tensor name");
    if (!names.insert(t.name).second)
      throw std::invalid_argument("safetensors writer: tensor \"" + t.name + "\" appears twice");
    TensorInfo info{t.name, t.dtype, t.shape, 0, 0};
    const std::uint64_t bits = info.numel() * dtype_bits(t.dtype);
    if (bits % 8 != 0 || bits / 8 != t.bytes.size())
      throw std::invalid_argument(
          "safetensors writer: tensor \"" + t.name + "\" of " + std::string(dtype_name(t.dtype)) +
          " has " + std::to_string(t.bytes.size()) + " bytes, its shape needs " +
          (bits % 8 ? "a whole number of bytes" : std::to_string(bits / 8)));
  }
}

// The header bytes (padded) and the tensors in data order.
std::pair<std::string, std::vector<const TensorData*>> prepare(std::span<const TensorData> tensors,
                                                               const Metadata& metadata) {
  check(tensors);
  std::vector<const TensorData*> order;
  for (const auto& t : tensors) order.push_back(&t);
  std::stable_sort(order.begin(), order.end(), [](const TensorData* a, const TensorData* b) {
    return a->dtype != b->dtype ? a->dtype > b->dtype : a->name < b->name;
  });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  std::uint64_t offset = 0;
  for (const TensorData* t : order) {
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = std::string(dtype_name(t->dtype));
    entry["shape"] = t->shape;
    entry["data_offsets"] = {offset, offset + t->bytes.size()};
    offset += t->bytes.size();
    header[t->name] = std::move(entry);
  }
  // Non-ASCII stays UTF-8 and invalid UTF-8 in a name is an error, as in the reference.
  std::string json = header.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::strict);
  json.append((8 - json.size() % 8) % 8, ' ');
  return {std::move(json), std::move(order)};
}

void put_length(std::byte* out, std::uint64_t n) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<std::byte>((n >> (8 * i)) & 0xff);
}

}  // namespace

std::vector<std::byte> serialize(std::span<const TensorData> tensors, const Metadata& metadata) {
  const auto [json, order] = prepare(tensors, metadata);
  std::size_t total = 8 + json.size();
  for (const auto* t : order) total += t->bytes.size();
  std::vector<std::byte> out(total);
  put_length(out.data(), json.size());
  std::memcpy(out.data() + 8, json.data(), json.size());
  std::size_t at = 8 + json.size();
  for (const auto* t : order) {
    if (!t->bytes.empty()) std::memcpy(out.data() + at, t->bytes.data(), t->bytes.size());
    at += t->bytes.size();
  }
  return out;
}

void write_file(const std::filesystem::path& path, std::span<const TensorData> tensors,
                const Metadata& metadata) {
  const auto [json, order] = prepare(tensors, metadata);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error(path.string() + ": cannot open for writing");
  std::byte length[8];
  put_length(length, json.size());
  out.write(reinterpret_cast<const char*>(length), 8);
  out.write(json.data(), static_cast<std::streamsize>(json.size()));
  for (const auto* t : order)
    out.write(reinterpret_cast<const char*>(t->bytes.data()),
              static_cast<std::streamsize>(t->bytes.size()));
  out.close();
  if (!out) throw std::runtime_error(path.string() + ": write failed");
}

std::filesystem::path write_sharded(const std::filesystem::path& dir,
                                    std::span<const TensorData> tensors,
                                    std::uint64_t max_shard_bytes, const Metadata& metadata) {
  check(tensors);
  std::vector<std::span<const TensorData>> shards;
  std::size_t first = 0;
  std::uint64_t bytes = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (i > first && bytes + tensors[i].bytes.size() > max_shard_bytes) {
      shards.push_back(tensors.subspan(first, i - first));
      first = i;
      bytes = 0;
    }
    bytes += tensors[i].bytes.size();
  }
  if (first < tensors.size() || shards.empty())
    shards.push_back(tensors.subspan(first, tensors.size() - first));

  std::filesystem::create_directories(dir);
  nlohmann::json weight_map = nlohmann::json::object();
  std::uint64_t total = 0;
  for (std::size_t s = 0; s < shards.size(); ++s) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    write_file(dir / name, shards[s], metadata);
    for (const auto& t : shards[s]) {
      weight_map[t.name] = name;
      total += t.bytes.size();
    }
  }
  const nlohmann::json index = {{"metadata", {{"total_size", total}}},
                                {"weight_map", std::move(weight_map)}};
  const auto path = dir / "model.safetensors.index.json";
  std::ofstream out(path, std::ios::trunc);
  if (!out) throw std::runtime_error(path.string() + ": cannot open for writing");
  out << index.dump(2) << '\n';
  out.close();
  if (!out) throw std::runtime_error(path.string() + ": write failed");
  return path;
}

}  // namespace atom::io
