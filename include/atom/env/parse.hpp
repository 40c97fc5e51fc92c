// Strict parsers for the value spellings of DESIGN.md. They are constexpr so that the registry's
// defaults are checked by the same code at compile time.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

#include "atom/env/registry.hpp"

namespace atom::env {

struct BoolSpelling {
  std::string_view yes;
  std::string_view no;
};
inline constexpr std::array<BoolSpelling, 4> bool_spellings{
    {{"1", "0"}, {"true", "false"}, {"yes", "no"}, {"on", "off"}}};

inline constexpr std::string_view accepted_bool_text =
    "1/0, true/false, yes/no, on/off (any case), or empty for the default";

constexpr char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c;
}

constexpr bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  return true;
}

constexpr std::optional<bool> parse_bool(std::string_view s) {
  for (const auto& sp : bool_spellings) {
    if (iequals(s, sp.yes)) return true;
    if (iequals(s, sp.no)) return false;
  }
  return std::nullopt;
}

enum class IntError : std::uint8_t { none, not_decimal, overflow };

struct IntParse {
  std::int64_t value = 0;
  IntError error = IntError::none;
};

// Decimal digits with an optional leading '-' or '+'; nothing else (no spaces, no 0x, no 1e3).
// Values beyond int64 are reported as overflow so that the caller can say "out of range".
constexpr IntParse parse_int(std::string_view s) {
  std::size_t i = 0;
  bool negative = false;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
    negative = s[0] == '-';
    i = 1;
  }
  if (i == s.size()) return {0, IntError::not_decimal};
  std::uint64_t magnitude = 0;
  bool overflow = false;
  for (; i < s.size(); ++i) {
    const char c = s[i];
    if (c < '0' || c > '9') return {0, IntError::not_decimal};
    const auto digit = static_cast<std::uint64_t>(c - '0');
    if (magnitude > (std::uint64_t{1} << 62) / 5) overflow = true;  // keeps 10*m below 2^63
    if (!overflow) magnitude = magnitude * 10 + digit;
    if (magnitude > static_cast<std::uint64_t>(INT64_MAX)) overflow = true;
  }
  if (overflow) return {negative ? INT64_MIN : INT64_MAX, IntError::overflow};
  const auto v = static_cast<std::int64_t>(magnitude);
  return {negative ? -v : v, IntError::none};
}

// Host names, IPv4 and IPv6 literals (optionally bracketed); at most 253 characters.
constexpr bool valid_address(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '-' || c == ':' || c == '[' || c == ']' || c == '_';
    if (!ok) return false;
  }
  return true;
}

constexpr bool default_is_valid(const VarSpec& v) {
  switch (v.type) {
    case Type::boolean:
      return parse_bool(v.default_text).has_value();
    case Type::integer: {
      const auto r = parse_int(v.default_text);
      return r.error == IntError::none && r.value >= v.min && r.value <= v.max;
    }
    case Type::string:
      return valid_address(v.default_text);
  }
  return false;
}

constexpr bool all_defaults_valid() {
  for (const auto& v : registry)
    if (!default_is_valid(v)) return false;
  return true;
}
static_assert(all_defaults_valid(), "every registry default must parse with its own parser");

}  // namespace atom::env
