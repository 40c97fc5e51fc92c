// JSON parsing shared by the safetensors header and the shard index: nlohmann-json with a nesting
// limit and duplicate-key rejection, both applied while parsing, before a deep or ambiguous
// document is built.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace atom::io::detail {

// Throws LoadError naming `file` when `text` is not JSON, nests deeper than max_json_depth or
// repeats a key within one object.
nlohmann::json parse_json_checked(std::string_view text, const std::string& file,
                                  std::string_view what);

// Text made safe for an error message: non-printable bytes as \xNN, at most `limit` bytes shown.
std::string printable(std::string_view raw, std::size_t limit = 120);

}  // namespace atom::io::detail
