// The registry of extension instances (atom/extend/extension.hpp defines extensions): the
// axes registered by the extensions linked into the program, and their instances per pipeline
// argument type. Each extension's generated table fills it before main(); resolution reads it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "atom/dispatch/table.hpp"
#include "atom/env/config.hpp"
#include "atom/policy/point.hpp"

namespace atom::extend {

// Limits of the point's extension field: four bits per axis.
inline constexpr std::size_t max_axes = 16;
inline constexpr std::size_t max_values = 16;

// What registration keeps of an axis.
struct AxisInfo {
  std::string_view extension;
  std::string_view name;
  std::string_view tag;
  std::vector<std::string_view> labels;
  std::string_view variable;
};

// Registers an extension's axes and their variables; returns the slot of its first axis in the
// point's extension field (its axes take consecutive slots). Errors (too many axes or values, a
// variable name already taken) are reported by every later env::Config::read().
std::size_t add_axes(std::string_view extension, std::span<const AxisInfo> axes,
                     std::span<const env::VarSpec> variables);
// A string kept for the life of the program (registration's texts).
std::string_view keep(std::string text);
// Every registered extension axis, by slot.
std::vector<AxisInfo> registered_axes();
// "myengine.mlp_check=on ..." for the extension values of a point (empty for none).
std::string describe(std::uint64_t extension);

// One instance of an extension, as its generated table registers it: the pipeline's name, the
// atom backend, the atom point (packed) and the extension values in the point's extension field.
template <class Args>
struct Row {
  std::string_view pipeline;
  policy::BackendId backend;
  policy::Point point;
  std::string_view name;
  void (*run)(const Args&);
};

// The registered rows of every pipeline whose arguments are Args, with the extension fields each
// pipeline reads.
template <class Args>
struct Rows {
  std::vector<Row<Args>> rows;
  std::vector<std::pair<std::string_view, std::uint64_t>> reads;  // pipeline name, field mask

  // The fields any extension's instances of `pipeline` read (several extensions may extend one
  // pipeline: a point with values of two of them set has no instance, and says so).
  std::uint64_t reads_of(std::string_view pipeline) const {
    std::uint64_t all = 0;
    for (const auto& [p, mask] : reads)
      if (p == pipeline) all |= mask;
    return all;
  }
};
template <class Args>
Rows<Args>& rows() {
  static Rows<Args> r;
  return r;
}

// The row of `pipeline` at the canonical point x (its extension field already masked to what the
// pipeline reads) on backend b; nullptr when there is none.
template <class Args>
const Row<Args>* find(std::string_view pipeline, policy::BackendId b, policy::Point x) {
  for (const auto& r : rows<Args>().rows)
    if (r.pipeline == pipeline && r.backend == b && r.point == x) return &r;
  return nullptr;
}

// The message of a miss among an extension's rows, listing what the extensions provide.
template <class Args>
std::string miss_message(std::string_view pipeline, const policy::AxisSet& reads,
                         policy::BackendId b, policy::Point x) {
  std::string msg = "no instance of " + std::string(pipeline) + " on the " +
                    std::string(policy::backend_name(b)) + " backend for " +
                    policy::describe(reads, x) + " " + describe(x.extension) +
                    ": the extensions provide";
  bool any = false;
  for (const auto& r : rows<Args>().rows)
    if (r.pipeline == pipeline) {
      msg += "\n  " + std::string(r.name);
      any = true;
    }
  return msg + (any ? "" : " none");
}

// The extensions' part of every resolution: masks x's extension field to what the extensions'
// instances of `pipeline` read; then nullptr where it is zero (atom's own instance serves x), the
// extension's row where one matches, and a DispatchError naming x's values otherwise.
template <class Args>
const Row<Args>* extension_row(std::string_view pipeline, const policy::AxisSet& reads,
                               policy::BackendId b, policy::Point& x) {
  x.extension &= rows<Args>().reads_of(pipeline);
  if (x.extension == 0) return nullptr;
  if (const Row<Args>* r = find<Args>(pipeline, b, x)) return r;
  throw dispatch::DispatchError(miss_message<Args>(pipeline, reads, b, x));
}

}  // namespace atom::extend
