// libFuzzer target: arbitrary ATOM_* environments. Each input line is NAME=VALUE; a line that
// starts with a byte below 0x20 names the registry's variable of that index instead. Anything but
// a Config with its warnings, or errors naming the variables, is a finding.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "atom/env/config.hpp"
#include "atom/env/registry.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  atom::env::Environment e;
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t end = text.find('\n', at);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(at, end - at);
    at = end + 1;
    std::string name;
    if (!line.empty() && static_cast<unsigned char>(line[0]) < 0x20) {
      name = std::string(
          atom::env::registry[static_cast<unsigned char>(line[0]) % atom::env::registry.size()]
              .name);
      line.remove_prefix(1);
      e[name] = std::string(line);
      continue;
    }
    const std::size_t eq = line.find('=');
    if (eq == std::string_view::npos) continue;
    e[std::string(line.substr(0, eq))] = std::string(line.substr(eq + 1));
  }
  const atom::env::Reading r = atom::env::Config::read(e);
  if (r.config.has_value() == !r.errors.empty()) __builtin_trap();
  return 0;
}
