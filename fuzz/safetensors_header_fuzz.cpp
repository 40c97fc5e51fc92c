// libFuzzer target: arbitrary bytes as a whole safetensors file and as a shard index. Anything but
// a valid header or a LoadError (a crash, a hang, another exception, an out-of-bounds read under
// AddressSanitizer, or a header whose tensors leave the input) is a finding.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "atom/io/checkpoint.hpp"
#include "atom/io/format.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    const atom::io::Header h = atom::io::parse_file_bytes(bytes, "fuzz.safetensors");
    for (const auto& t : h.tensors)
      if (h.data_start() + t.end > size || t.begin > t.end) __builtin_trap();
  } catch (const atom::io::LoadError&) {
  }
  try {
    atom::io::parse_index(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.json");
  } catch (const atom::io::LoadError&) {
  }
  return 0;
}
