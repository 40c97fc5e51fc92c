#include "json_checked.hpp"

#include <cstdio>
#include <set>
#include <vector>

#include "atom/io/format.hpp"

namespace atom::io::detail {

std::string printable(std::string_view raw, std::size_t limit) {
  std::string out;
  for (std::size_t i = 0; i < raw.size() && i < limit; ++i) {
    const auto c = static_cast<unsigned char>(raw[i]);
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  if (raw.size() > limit) out += "...";
  return out;
}

nlohmann::json parse_json_strict(std::string_view text, std::size_t max_depth,
                                 const JsonFail& fail) {
  using json = nlohmann::json;
  // One key set per open container (arrays keep an empty one) so that the stack depth is the
  // nesting depth.
  std::vector<std::set<std::string, std::less<>>> open;
  const auto check = [&](int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (open.size() >= max_depth) fail(JsonProblem::too_deep, "", open.size(), "");
        open.emplace_back();
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        open.pop_back();
        break;
      case json::parse_event_t::key: {
        const auto& key = parsed.get_ref<const std::string&>();
        if (!open.empty() && !open.back().insert(key).second)
          fail(JsonProblem::repeated_key, key, open.size(), "");
        break;
      }
      case json::parse_event_t::value:
        break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), check);
  } catch (const json::exception& e) {
    fail(JsonProblem::invalid, "", 0, e.what());
    throw;  // fail() throws; this is not reached
  }
}

nlohmann::json parse_json_checked(std::string_view text, const std::string& file,
                                  std::string_view what) {
  return parse_json_strict(
      text, static_cast<std::size_t>(max_json_depth),
      [&](JsonProblem problem, const std::string& key, std::size_t depth, std::string_view detail) {
        switch (problem) {
          case JsonProblem::too_deep:
            throw LoadError(file, "",
                            std::string(what) + " nests deeper than " +
                                std::to_string(max_json_depth) + " levels");
          case JsonProblem::repeated_key:
            throw LoadError(file, depth == 1 ? key : "",
                            std::string(what) + " repeats the key \"" + printable(key) + "\"");
          case JsonProblem::invalid:
            break;
        }
        throw LoadError(file, "",
                        std::string(what) + " is not valid JSON: " + printable(detail, 300));
      });
}

}  // namespace atom::io::detail
