#include "atom/io/format.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <tuple>

#include "json_checked.hpp"

namespace atom::io {

namespace {

struct DtypeSpec {
  Dtype dtype;
  std::string_view name;
  unsigned bits;
};

constexpr std::array<DtypeSpec, dtype_count> dtype_specs{{
    {Dtype::BOOL, "BOOL", 8},       {Dtype::F4, "F4", 4},           {Dtype::F6_E2M3, "F6_E2M3", 6},
    {Dtype::F6_E3M2, "F6_E3M2", 6}, {Dtype::U8, "U8", 8},           {Dtype::I8, "I8", 8},
    {Dtype::F8_E5M2, "F8_E5M2", 8}, {Dtype::F8_E4M3, "F8_E4M3", 8}, {Dtype::F8_E8M0, "F8_E8M0", 8},
    {Dtype::I16, "I16", 16},        {Dtype::U16, "U16", 16},        {Dtype::F16, "F16", 16},
    {Dtype::BF16, "BF16", 16},      {Dtype::I32, "I32", 32},        {Dtype::U32, "U32", 32},
    {Dtype::F32, "F32", 32},        {Dtype::C64, "C64", 64},        {Dtype::F64, "F64", 64},
    {Dtype::I64, "I64", 64},        {Dtype::U64, "U64", 64},
}};

static_assert([] {
  for (std::size_t i = 0; i < dtype_specs.size(); ++i)
    if (static_cast<std::size_t>(dtype_specs[i].dtype) != i) return false;
  return true;
}());

std::string shape_text(const std::vector<std::uint64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string offsets_text(std::uint64_t begin, std::uint64_t end) {
  // Built piecewise: GCC 12 misreports operator+ chains here (-Wrestrict).
  std::string s = "[";
  s += std::to_string(begin);
  s += ", ";
  s += std::to_string(end);
  s += "]";
  return s;
}

// Reads one tensor entry; checks everything that needs no other tensor.
TensorInfo read_tensor(const std::string& file, const std::string& name, const nlohmann::json& v,
                       std::uint64_t data_bytes) {
  const auto fail = [&](const std::string& what) { throw LoadError(file, name, what); };
  if (!v.is_object()) fail("entry is not an object");
  for (const auto& [key, unused] : v.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      fail("entry has an unknown field \"" + detail::printable(key) + "\"");

  TensorInfo t;
  t.name = name;
  const auto dtype = v.find("dtype");
  if (dtype == v.end() || !dtype->is_string()) fail("entry has no string field \"dtype\"");
  const auto& dtype_text = dtype->get_ref<const std::string&>();
  const auto parsed_dtype = dtype_from_name(dtype_text);
  if (!parsed_dtype) fail("unknown dtype \"" + detail::printable(dtype_text) + "\"");
  t.dtype = *parsed_dtype;

  const auto shape = v.find("shape");
  if (shape == v.end() || !shape->is_array()) fail("entry has no array field \"shape\"");
  for (const auto& d : *shape) {
    if (!d.is_number_unsigned())
      fail("shape holds " + detail::printable(d.dump()) + ", not a non-negative integer");
    t.shape.push_back(d.get<std::uint64_t>());
  }

  const auto offsets = v.find("data_offsets");
  if (offsets == v.end() || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned())
    fail("entry has no field \"data_offsets\" of two non-negative integers");
  t.begin = (*offsets)[0].get<std::uint64_t>();
  t.end = (*offsets)[1].get<std::uint64_t>();
  if (t.begin > t.end) fail("data_offsets " + offsets_text(t.begin, t.end) + " are reversed");
  if (t.end > data_bytes)
    fail("data_offsets " + offsets_text(t.begin, t.end) + " fall outside the data section of " +
         std::to_string(data_bytes) + " bytes (is the file truncated?)");

  std::uint64_t numel = 1;
  for (const auto d : t.shape)
    if (d != 0 && numel > std::numeric_limits<std::uint64_t>::max() / d)
      fail("shape " + shape_text(t.shape) + " overflows 64 bits");
    else
      numel *= d;
  const std::uint64_t bits = dtype_bits(t.dtype);
  if (numel > std::numeric_limits<std::uint64_t>::max() / bits)
    fail("shape " + shape_text(t.shape) + " of " + std::string(dtype_name(t.dtype)) +
         " overflows 64 bits");
  if (numel * bits % 8 != 0)
    fail("shape " + shape_text(t.shape) + " of " + std::string(dtype_name(t.dtype)) +
         " does not fill whole bytes");
  const std::uint64_t expected = numel * bits / 8;
  if (t.nbytes() != expected)
    fail("dtype " + std::string(dtype_name(t.dtype)) + " and shape " + shape_text(t.shape) +
         " need " + std::to_string(expected) + " bytes but data_offsets " +
         offsets_text(t.begin, t.end) + " hold " + std::to_string(t.nbytes()));
  return t;
}

}  // namespace

std::string_view dtype_name(Dtype d) {
  return dtype_specs.at(static_cast<std::size_t>(d)).name;
}

std::optional<Dtype> dtype_from_name(std::string_view name) {
  for (const auto& s : dtype_specs)
    if (s.name == name) return s.dtype;
  return std::nullopt;
}

std::vector<float> float_values(Dtype d, std::span<const std::byte> bytes) {
  std::vector<float> out;
  if (d == Dtype::F32) {
    out.resize(bytes.size() / 4);
    std::memcpy(out.data(), bytes.data(), out.size() * 4);
  } else if (d == Dtype::BF16) {
    out.resize(bytes.size() / 2);
    for (std::size_t i = 0; i < out.size(); ++i) {
      std::uint16_t b;
      std::memcpy(&b, bytes.data() + 2 * i, 2);
      const std::uint32_t f = std::uint32_t{b} << 16;
      std::memcpy(&out[i], &f, 4);
    }
  } else {
    throw std::invalid_argument("float_values: dtype " + std::string(dtype_name(d)) +
                                " is not BF16 or F32");
  }
  return out;
}

unsigned dtype_bits(Dtype d) {
  return dtype_specs.at(static_cast<std::size_t>(d)).bits;
}

LoadError::LoadError(std::string file, std::string tensor, const std::string& what)
    : std::runtime_error(file + (tensor.empty() ? "" : ": tensor \"" + tensor + "\"") + ": " +
                         what),
      file_(std::move(file)),
      tensor_(std::move(tensor)) {}

std::uint64_t TensorInfo::numel() const {
  std::uint64_t n = 1;
  for (const auto d : shape) n *= d;
  return n;
}

const TensorInfo* Header::find(std::string_view name) const {
  const auto it = by_name.find(name);
  return it == by_name.end() ? nullptr : &tensors[it->second];
}

std::uint64_t header_length(std::span<const std::byte> prefix, std::uint64_t file_bytes,
                            std::string_view file) {
  const std::string f(file);
  if (file_bytes < 8 || prefix.size() < 8)
    throw LoadError(
        f, "",
        "file is " + std::to_string(file_bytes) + " bytes, too short for the 8-byte header length");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | std::to_integer<std::uint64_t>(prefix[i]);
  if (n > max_header_bytes)
    throw LoadError(f, "",
                    "header length " + std::to_string(n) + " exceeds the limit of " +
                        std::to_string(max_header_bytes) + " bytes");
  if (n > file_bytes - 8)
    throw LoadError(f, "",
                    "header length " + std::to_string(n) + " is larger than the " +
                        std::to_string(file_bytes - 8) + " bytes after the length field");
  return n;
}

Header parse_header(std::string_view json, std::uint64_t data_bytes, std::string_view file) {
  const std::string f(file);
  const nlohmann::json root = detail::parse_json_checked(json, f, "header");
  if (!root.is_object()) throw LoadError(f, "", "header is not a JSON object");

  Header h;
  h.json_bytes = json.size();
  h.data_bytes = data_bytes;
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      if (value.is_null()) continue;
      if (!value.is_object()) throw LoadError(f, "", "__metadata__ is not an object");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string())
          throw LoadError(
              f, "", "__metadata__ value of \"" + detail::printable(mk) + "\" is not a string");
        h.metadata.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    h.tensors.push_back(read_tensor(f, key, value, data_bytes));
  }

  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    // Zero-byte tensors share offsets; the name makes the order deterministic.
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  std::uint64_t covered = 0;
  const TensorInfo* previous = nullptr;
  for (const auto& t : h.tensors) {
    if (t.begin < covered)
      throw LoadError(f, t.name,
                      "data_offsets " + offsets_text(t.begin, t.end) +
                          " overlap those of tensor \"" + previous->name + "\" " +
                          offsets_text(previous->begin, previous->end));
    if (t.begin > covered)
      throw LoadError(f, t.name,
                      "data_offsets " + offsets_text(t.begin, t.end) + " leave bytes " +
                          offsets_text(covered, t.begin) +
                          " of the data section unused (tensors must tile it)");
    covered = t.end;
    previous = &t;
  }
  for (std::size_t i = 0; i < h.tensors.size(); ++i) h.by_name.emplace(h.tensors[i].name, i);
  if (covered != data_bytes)
    throw LoadError(f, "",
                    "tensors cover " + std::to_string(covered) +
                        " bytes but the data section has " + std::to_string(data_bytes) +
                        " (trailing bytes)");
  return h;
}

Header parse_file_bytes(std::span<const std::byte> bytes, std::string_view file) {
  const std::uint64_t n = header_length(bytes, bytes.size(), file);
  const std::string_view json(reinterpret_cast<const char*>(bytes.data()) + 8, n);
  return parse_header(json, bytes.size() - 8 - n, file);
}

}  // namespace atom::io
