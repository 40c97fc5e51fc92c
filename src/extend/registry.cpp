#include <atomic>
#include <deque>
#include <mutex>
#include <string>

#include "atom/extend/rows.hpp"

namespace atom::extend {

namespace {

// The registered axes (this file's; extension_values below reads them too).
struct Registry {
  std::mutex mutex;
  std::vector<AxisInfo> axes;      // by slot
  std::atomic<std::size_t> count;  // axes.size(), read without the lock
};
Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

std::size_t add_axes(std::string_view extension, std::span<const AxisInfo> axes,
                     std::span<const env::VarSpec> variables) {
  Registry& r = registry();
  const std::lock_guard lock(r.mutex);
  const std::size_t first = r.axes.size();
  const std::string what = "extension '" + std::string(extension) + "'";
  if (first + axes.size() > max_axes) {
    env::add_extension_error(what + " brings the extensions' axes to " +
                             std::to_string(first + axes.size()) + ", more than the " +
                             std::to_string(max_axes) + " a point holds");
    return max_axes;  // its values are never read: every row of it stays unreachable
  }
  // An axis whose definition has an error keeps its slot (its rows were generated for it) but
  // no variable: its value stays the first.
  for (std::size_t i = 0; i < axes.size(); ++i) {
    AxisInfo a = axes[i];
    if (a.labels.size() > max_values) {
      env::add_extension_error(what + ": axis '" + std::string(a.name) + "' has " +
                               std::to_string(a.labels.size()) + " values, more than " +
                               std::to_string(max_values));
      a.variable = {};
    } else if (i >= variables.size() || !env::add_extension_variable(variables[i])) {
      a.variable = {};
    }
    r.axes.push_back(a);
  }
  r.count.store(r.axes.size(), std::memory_order_release);
  return first;
}

std::string_view keep(std::string text) {
  static std::deque<std::string> kept;  // registration runs before main(), under the lock below
  Registry& r = registry();
  const std::lock_guard lock(r.mutex);
  return kept.emplace_back(std::move(text));
}

std::vector<AxisInfo> registered_axes() {
  Registry& r = registry();
  const std::lock_guard lock(r.mutex);
  return r.axes;
}

namespace {
std::uint8_t slot_value(std::uint64_t extension, std::size_t slot) {
  return static_cast<std::uint8_t>((extension >> (4 * slot)) & 0xf);
}
}  // namespace

std::string describe(std::uint64_t extension) {
  std::string out;
  const auto axes = registered_axes();
  for (std::size_t s = 0; s < axes.size(); ++s) {
    const std::uint8_t v = slot_value(extension, s);
    if (v == 0) continue;
    out += (out.empty() ? "" : " ") + std::string(axes[s].extension) + "." +
           std::string(axes[s].name) + "=" +
           (v < axes[s].labels.size() ? std::string(axes[s].labels[v]) : std::to_string(v));
  }
  return out;
}

}  // namespace atom::extend

namespace atom::policy {

// Read in place under the registry's lock (resolution calls it once per Config): no copy of the
// axes, and not even the lock where no extension registered one.
std::uint64_t extension_values(const env::Config& c) {
  extend::Registry& r = extend::registry();
  if (r.count.load(std::memory_order_acquire) == 0) return 0;
  const std::lock_guard lock(r.mutex);
  std::uint64_t out = 0;
  for (std::size_t s = 0; s < r.axes.size(); ++s) {
    if (r.axes[s].variable.empty()) continue;
    const auto& value = c.value(r.axes[s].variable);
    const std::uint64_t v = std::holds_alternative<bool>(value)
                                ? std::uint64_t{std::get<bool>(value)}
                                : static_cast<std::uint64_t>(std::get<std::int64_t>(value));
    out |= (v & 0xf) << (4 * s);
  }
  return out;
}

}  // namespace atom::policy
