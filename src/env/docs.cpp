#include "atom/env/docs.hpp"

#include <algorithm>

#include "atom/env/parse.hpp"

namespace atom::env {

namespace {

std::string accepted(const VarSpec& s) {
  switch (s.type) {
    case Type::boolean:
      return "1/0, true/false, yes/no, on/off";
    case Type::integer:
      if (s.max == int_max) return ">= " + std::to_string(s.min);
      return std::to_string(s.min) + "..." + std::to_string(s.max);
    case Type::string:
      return "host name or IP address";
  }
  return "";
}

}  // namespace

std::string markdown_table() {
  std::string out =
      "| variable | type | default | accepted | feeds | meaning |\n"
      "|---|---|---|---|---|---|\n";
  for (const auto& s : registry) {
    out += "| " + std::string(s.name) + " | " + std::string(type_name(s.type)) + " | " +
           std::string(s.default_text) + " | " + accepted(s) + " | " + std::string(s.feeds) +
           " | " + std::string(s.doc) + " |\n";
  }
  return out;
}

std::string describe(const Config& config, const Environment& env) {
  std::size_t width = 0;
  for (const auto& s : registry) width = std::max(width, s.name.size());
  std::string out;
  for (const auto& s : registry) {
    std::string line(s.name);
    line.resize(width + 2, ' ');
    std::string value = config.text(s.id);
    line += value;
    line.resize(std::max(line.size() + 2, width + 14), ' ');
    if (config.source(s.id) == Source::environment) {
      line += "(environment: \"" + printable(env.at(std::string(s.name))) + "\")";
    } else {
      const auto it = env.find(s.name);
      line += (it != env.end()) ? "(default: set but empty)" : "(default)";
    }
    out += line + "\n";
  }
  return out;
}

}  // namespace atom::env
