#include "atom/env/config.hpp"

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <string>

#include "atom/env/parse.hpp"

extern char** environ;  // NOLINT(readability-redundant-declaration): POSIX, not in a header

namespace atom::env {

namespace {

constexpr std::string_view prefix = "ATOM_";

std::string quoted(std::string_view raw) {
  std::string out = printable(raw);
  out.insert(out.begin(),
             '"');  // appended piecewise: GCC 12 misreports operator+ here (-Wrestrict)
  out.push_back('"');
  return out;
}

std::string range_text(const VarSpec& s) {
  if (s.max == int_max) return ">= " + std::to_string(s.min);
  return std::to_string(s.min) + ".." + std::to_string(s.max);
}

// Parses one raw value; returns the value or an error message.
std::variant<Config::Value, std::string> parse_value(const VarSpec& s, std::string_view raw) {
  const std::string head = std::string(s.name) + "=" + quoted(raw);
  switch (s.type) {
    case Type::boolean:
      if (auto b = parse_bool(raw)) return Config::Value{*b};
      return head + " is not a valid bool; accepted: " + std::string(accepted_bool_text) + " (" +
             std::string(s.default_text) + ")";
    case Type::integer: {
      const auto r = parse_int(raw);
      if (r.error == IntError::not_decimal)
        return head + " is not a decimal integer; accepted: an integer " + range_text(s) +
               ", or empty for the default (" + std::string(s.default_text) + ")";
      if (r.error == IntError::overflow || r.value < s.min || r.value > s.max)
        return head + " is out of range; accepted: an integer " + range_text(s) +
               ", or empty for the default (" + std::string(s.default_text) + ")";
      return Config::Value{r.value};
    }
    case Type::string:
      if (valid_address(raw)) return Config::Value{std::string(raw)};
      return head +
             " is not a valid address; accepted: a host name, IPv4 or IPv6 address of at most "
             "253 characters [A-Za-z0-9.:_-[]], or empty for the default (" +
             std::string(s.default_text) + ")";
  }
  return head + " has an unknown type";
}

Config::Value default_value(const VarSpec& s) {
  return std::get<Config::Value>(parse_value(s, s.default_text));
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      const bool same = ascii_lower(a[i - 1]) == ascii_lower(b[j - 1]);
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (same ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

const VarSpec* find(std::string_view name) {
  for (const auto& s : registry)
    if (s.name == name) return &s;
  return nullptr;
}

bool named(const std::vector<VarSpec>& vars, std::string_view name) {
  return std::any_of(vars.begin(), vars.end(), [name](const VarSpec& v) { return v.name == name; });
}

// The extensions' variables and the errors of their registration, filled before main().
struct Extensions {
  std::mutex mutex;
  std::vector<VarSpec> vars;
  std::vector<std::string> errors;
};
Extensions& extensions() {
  static Extensions e;
  return e;
}

}  // namespace

bool add_extension_variable(const VarSpec& spec) {
  Extensions& e = extensions();
  const std::lock_guard lock(e.mutex);
  const std::string what =
      "variable " + printable(spec.name) + " (" + std::string(spec.feeds) + ")";
  const bool taken = find(spec.name) != nullptr || named(e.vars, spec.name);
  if (spec.name.empty() || taken) {
    e.errors.push_back(what + ": the name is empty or already defined by atom or an extension");
  } else if (spec.type == Type::string) {
    e.errors.push_back(what + ": an extension variable is a bool or an integer");
  } else if (const auto parsed = parse_value(spec, spec.default_text);
             const auto* msg = std::get_if<std::string>(&parsed)) {
    e.errors.push_back(what + ": its default does not parse: " + *msg);
  } else {
    VarSpec s = spec;
    s.id = extension_var;
    e.vars.push_back(s);
    return true;
  }
  return false;
}

void add_extension_error(std::string message) {
  Extensions& e = extensions();
  const std::lock_guard lock(e.mutex);
  e.errors.push_back(std::move(message));
}

std::vector<VarSpec> extension_variables() {
  Extensions& e = extensions();
  const std::lock_guard lock(e.mutex);
  return e.vars;
}

ConfigError::ConfigError(std::vector<std::string> errors)
    : std::runtime_error([&] {
        std::string all = "invalid ATOM_* environment:";
        for (const auto& e : errors) all += "\n  " + e;
        return all;
      }()),
      errors_(std::move(errors)) {}

Config::Config() {
  for (const auto& s : registry) values_[static_cast<std::size_t>(s.id)] = default_value(s);
  for (const auto& s : extension_variables())
    extension_values_.emplace(std::string(s.name), default_value(s));
}

const Config::Value& Config::value(std::string_view extension_variable) const {
  const auto it = extension_values_.find(extension_variable);
  if (it == extension_values_.end())
    throw std::out_of_range(printable(extension_variable) + " is not an extension's variable");
  return it->second;
}

Environment process_environment() {
  const std::vector<VarSpec> ext = extension_variables();
  Environment env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const auto eq = entry.find('=');
    if (eq == std::string_view::npos) continue;
    const std::string_view name = entry.substr(0, eq);
    if (!name.starts_with(prefix) && !named(ext, name)) continue;
    env.emplace(name, entry.substr(eq + 1));
  }
  return env;
}

Reading Config::read(const Environment& env) {
  Reading r;
  Config c;
  // The value of one variable, when the environment sets it; an error otherwise.
  const auto set = [&](const VarSpec& s) -> std::optional<Value> {
    const auto it = env.find(s.name);
    if (it == env.end() || it->second.empty()) return std::nullopt;  // empty means the default
    auto parsed = parse_value(s, it->second);
    if (auto* msg = std::get_if<std::string>(&parsed)) {
      r.errors.push_back(std::move(*msg));
      return std::nullopt;
    }
    return std::get<Value>(std::move(parsed));
  };
  for (const auto& s : registry) {
    if (auto v = set(s)) {
      const auto i = static_cast<std::size_t>(s.id);
      c.values_[i] = std::move(*v);
      c.sources_[i] = Source::environment;
    }
  }
  const std::vector<VarSpec> ext = extension_variables();
  for (const auto& s : ext)
    if (auto v = set(s)) c.extension_values_[std::string(s.name)] = std::move(*v);
  {
    Extensions& e = extensions();
    const std::lock_guard lock(e.mutex);
    r.errors.insert(r.errors.end(), e.errors.begin(), e.errors.end());
  }
  if (r.errors.empty()) {
    const auto rank = c.get<Var::dp_rank>();
    const auto size = c.get<Var::dp_size>();
    if (rank >= size)
      r.errors.push_back("ATOM_DP_RANK=" + std::to_string(rank) +
                         " must be less than ATOM_DP_SIZE=" + std::to_string(size));
  }
  for (const auto& [name, value] : env) {
    if (!std::string_view(name).starts_with(prefix) || find(name) != nullptr || named(ext, name))
      continue;
    std::string w = "unknown variable " + printable(name) + " is ignored";
    if (auto near = nearest_name(name)) w += "; did you mean " + std::string(*near) + "?";
    r.warnings.push_back(std::move(w));
  }
  if (r.errors.empty()) r.config = std::move(c);
  return r;
}

Config Config::from(const Environment& env) {
  Reading r = read(env);
  if (!r.errors.empty()) throw ConfigError(std::move(r.errors));
  return std::move(*r.config);
}

Config Config::from_process() {
  return from(process_environment());
}

std::string Config::text(Var v) const {
  const auto& val = value(v);
  if (const bool* b = std::get_if<bool>(&val)) return *b ? "true" : "false";
  if (const auto* i = std::get_if<std::int64_t>(&val)) return std::to_string(*i);
  return std::get<std::string>(val);
}

std::string printable(std::string_view raw) {
  constexpr std::size_t shown = 48;
  std::string out;
  for (std::size_t i = 0; i < raw.size() && i < shown; ++i) {
    const auto c = static_cast<unsigned char>(raw[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '"') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  if (raw.size() > shown) out += "...(" + std::to_string(raw.size()) + " bytes)";
  return out;
}

std::optional<std::string_view> nearest_name(std::string_view name) {
  const VarSpec* best = nullptr;
  std::size_t best_d = SIZE_MAX;
  for (const auto& s : registry) {
    const std::size_t d = edit_distance(name, s.name);
    if (d < best_d) {
      best_d = d;
      best = &s;
    }
  }
  // A typo is a few edits away; beyond a third of the name it is a different word.
  if (best == nullptr || best_d > std::max<std::size_t>(3, best->name.size() / 3))
    return std::nullopt;
  return best->name;
}

}  // namespace atom::env
