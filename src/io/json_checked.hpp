// JSON parsing shared by the safetensors header, the shard index and config.json: nlohmann-json
// with a nesting limit and duplicate-key rejection, both applied while parsing, before a deep or
// ambiguous document is built.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace atom::io::detail {

enum class JsonProblem { invalid, too_deep, repeated_key };
// Reports a problem by throwing: `key` is the repeated key (else empty), `depth` the nesting depth
// at which it occurred, `detail` the parser's message for invalid JSON.
using JsonFail = std::function<void(JsonProblem, const std::string& key, std::size_t depth,
                                    std::string_view detail)>;

// `text` parsed, with `fail` called (and expected to throw) for invalid JSON, nesting deeper than
// `max_depth` or a key repeated within one object.
nlohmann::json parse_json_strict(std::string_view text, std::size_t max_depth,
                                 const JsonFail& fail);

// Throws LoadError naming `file` when `text` is not JSON, nests deeper than max_json_depth or
// repeats a key within one object.
nlohmann::json parse_json_checked(std::string_view text, const std::string& file,
                                  std::string_view what);

// Text made safe for an error message: non-printable bytes as \xNN, at most `limit` bytes shown.
std::string printable(std::string_view raw, std::size_t limit = 120);

}  // namespace atom::io::detail
