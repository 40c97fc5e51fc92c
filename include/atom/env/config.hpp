// An immutable snapshot of the ATOM_* variables, read once and validated as a whole.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "atom/env/registry.hpp"

namespace atom::env {

// Variable name -> raw value, as found in an environment.
using Environment = std::map<std::string, std::string, std::less<>>;

// The ATOM_* entries of this process's environment, copied now.
Environment process_environment();

enum class Source : std::uint8_t { default_value, environment };

struct Reading;

class ConfigError : public std::runtime_error {
 public:
  explicit ConfigError(std::vector<std::string> errors);
  const std::vector<std::string>& errors() const noexcept { return errors_; }

 private:
  std::vector<std::string> errors_;
};

class Config {
 public:
  using Value = std::variant<bool, std::int64_t, std::string>;

  // Every variable at its default.
  Config();

  // Reads the process environment once; throws ConfigError listing every invalid variable.
  static Config from_process();
  // Reads the given map (for tests and embedders); throws ConfigError.
  static Config from(const Environment& env);
  // Reads without throwing.
  static Reading read(const Environment& env);

  template <Var V>
  value_t<V> get() const {
    const auto& v = values_[static_cast<std::size_t>(V)];
    if constexpr (spec(V).type == Type::string)
      return std::string_view(std::get<std::string>(v));
    else
      return std::get<value_t<V>>(v);
  }

  const Value& value(Var v) const { return values_[static_cast<std::size_t>(v)]; }
  Source source(Var v) const { return sources_[static_cast<std::size_t>(v)]; }
  // A variable an extension registered (add_extension_variable); throws std::out_of_range for a
  // name that is not one.
  const Value& value(std::string_view extension_variable) const;
  // The value as text in canonical spelling ("true", "1024", "127.0.0.1").
  std::string text(Var v) const;

  friend bool operator==(const Config&, const Config&) = default;

 private:
  std::array<Value, var_count> values_;
  std::array<Source, var_count> sources_{};
  std::map<std::string, Value, std::less<>> extension_values_;  // by name
};

// Variables defined by extensions (atom/extend): read from the same environment with the same
// spellings, ranges and messages as atom's own, and never reported as unknown.
// An extension's generated table registers them before main(); `feeds` names the extension and
// its axis. A name that atom or another extension already uses, or a default that does not
// parse, is an error that every later Config::read() reports.
bool add_extension_variable(const VarSpec& spec);  // false: an error was recorded
std::vector<VarSpec> extension_variables();
// An error in an extension's definitions found at registration, reported the same way.
void add_extension_error(std::string message);

// The result of reading an environment: a Config when there were no errors, every error
// otherwise (one message each, naming the variable, the value and what is accepted), and
// warnings for unknown ATOM_* names.
struct Reading {
  std::optional<Config> config;
  std::vector<std::string> errors;
  std::vector<std::string> warnings;
};

// Value text made safe to print: non-printable bytes as \xNN, long values shortened.
std::string printable(std::string_view raw);

// The known variable name nearest to `name` by edit distance, if it is plausibly a typo.
std::optional<std::string_view> nearest_name(std::string_view name);

}  // namespace atom::env
