// Extending atom from outside: an extension (a project that uses an installed atom) defines
// variables and axes of its own, and pipelines whose instances either extend one of atom's
// pipelines (at the values of its own axes) or form a pipeline of its own. atom_add_instances()
// (cmake/AtomExtend.cmake) generates the extension's instances and a table that registers them
// before main(); resolution then finds them next to atom's own, so that the dispatch table is
// atom's plus the extension's, never a replacement of atom's.
//
// An extension is a struct with its name, its axes and its pipelines:
//
//   enum class MlpCheck : std::uint8_t { off, on };
//   inline constexpr atom::extend::Axis<MlpCheck, 2> mlp_check{
//       .name = "mlp_check", .tag = "chk", .type_name = "myengine::MlpCheck",
//       .enumerators = {"off", "on"}, .labels = {"off", "on"},
//       .variable = {.name = "MYENGINE_CHECK_MLP", .type = atom::env::Type::boolean,
//                    .default_text = "false", .doc = "..."}};
//
//   struct CheckedMlp : atom::extend::Extends<atom::policy::PipelineId::dense_mlp> {
//     static constexpr std::string_view type = "myengine::CheckedMlp";  // for the generated code
//     using reads = std::tuple<MlpCheck>;  // the extension's axes it reads, in this order
//     static constexpr std::array backends{atom::extend::Backend{host, "atom::ops::Host"}};
//     template <atom::policy::Point P, class Backend, MlpCheck C>
//     static void run(const args& a);
//   };
//   struct Extension {
//     static constexpr std::string_view name = "myengine";
//     static constexpr std::tuple axes{mlp_check};
//     using pipelines = std::tuple<CheckedMlp>;
//   };
//
// A pipeline of the extension's own derives from atom::extend::Own and adds its `name` and its
// `args` type (examples/extension/myengine.hpp has both kinds). The rules:
// - An extension axis is fed by one variable of its own: a bool for two values (false selects the
//   first), an integer 0..N-1 (the value's index) for more. Its first value is the behaviour
//   without the extension: a pipeline that extends one of atom's has instances only where one of
//   the axes it reads is not at its first value, and atom's own instances serve the rest.
// - A pipeline reads the atom axes of `atom_reads` (for an extended atom pipeline, the axes that
//   atom's declares) and the extension axes listed in `reads`; the values of the others fold, as
//   atom's do. Its run() takes the atom point, the backend type and one value per axis of `reads`.
// - `backends` lists the atom backends whose buffers it runs on, each with the backend type its
//   run() is instantiated with: atom's (atom::ops::Host, atom::ops::Gpu) or the extension's own,
//   derived from one of them, whose ops are overloads on that type (atom's ops serve the rest).
// - A point with an extension value set that the extension has no instance for (on a backend it
//   does not list) is a DispatchError naming the extension's values and listing its instances.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "atom/dispatch/dispatch.hpp"
#include "atom/env/config.hpp"
#include "atom/extend/rows.hpp"
#include "atom/pipeline/pipelines.hpp"
#include "atom/policy/point.hpp"

namespace atom::extend {

// The variable that feeds an extension axis (any name; it is read from the process environment
// with atom's spellings and checks).
struct Variable {
  std::string_view name;
  env::Type type = env::Type::boolean;
  std::string_view default_text;
  std::string_view doc;
};

template <class E, std::size_t N>
struct Axis {
  using enum_type = E;
  static constexpr std::size_t size = N;

  std::string_view name;
  std::string_view tag;        // short form used in instance names
  std::string_view type_name;  // the enum's qualified name, for the generated code
  std::array<std::string_view, N> enumerators;
  std::array<std::string_view, N> labels;
  Variable variable;
};

// One atom backend a pipeline runs on, with the type its run() is instantiated with.
struct Backend {
  policy::BackendId id;
  std::string_view type;
};

// The base of a pipeline that extends atom's pipeline P: its name, arguments and atom axes.
template <policy::PipelineId P>
struct Extends {
  static constexpr std::string_view name = policy::pipeline_name(P);
  static constexpr std::optional<policy::PipelineId> extends = P;
  using args = pipeline::RunArgs<P>;
  static constexpr policy::AxisSet atom_reads = pipeline::Declared<P>::reads;
};

// The base of a pipeline of the extension's own: no atom pipeline, no atom axis unless it says so.
struct Own {
  static constexpr std::optional<policy::PipelineId> extends = std::nullopt;
  static constexpr policy::AxisSet atom_reads{};
};

// The position of the axis whose enum is E among the extension's axes (Ext::axes).
template <class Ext, class E>
constexpr std::size_t slot_of() {
  constexpr std::size_t n = std::tuple_size_v<std::decay_t<decltype(Ext::axes)>>;
  std::size_t found = n;
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((std::is_same_v<typename std::decay_t<decltype(std::get<I>(Ext::axes))>::enum_type, E>
          ? (found = I, 0)
          : 0),
     ...);
  }
  (std::make_index_sequence<n>{});
  return found;
}

// One generated instance of pipeline Pl: the atom backend, the atom point (packed) with the
// extension's values in its own packing (four bits per axis of Ext::axes), the name, the
// function.
template <class Pl>
struct Instance {
  policy::BackendId backend;
  policy::Point point;
  std::string_view name;
  void (*run)(const typename Pl::args&);
};

namespace detail {
template <class Ext, class Pl, std::size_t N>
void add_rows(const Instance<Pl> (&group)[N], std::size_t first_slot) {
  auto& r = rows<typename Pl::args>();
  std::uint64_t mask = 0;
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((mask |= std::uint64_t{0xf}
              << (4 * (first_slot + slot_of<Ext, std::tuple_element_t<I, typename Pl::reads>>()))),
     ...);
  }
  (std::make_index_sequence<std::tuple_size_v<typename Pl::reads>>{});
  r.reads.emplace_back(Pl::name, mask);
  for (const Instance<Pl>& i : group)
    r.rows.push_back({Pl::name, i.backend,
                      policy::Point{i.point.packed, i.point.extension << (4 * first_slot)}, i.name,
                      i.run});
}
}  // namespace detail

// Registers an extension: its axes, their variables, and the instances of each of its
// pipelines (one array per pipeline, as the generated table.cpp writes them).
template <class Ext, class... Pl, std::size_t... N>
bool add(const Instance<Pl> (&... groups)[N]) {
  std::vector<AxisInfo> axes;
  std::vector<env::VarSpec> vars;
  std::apply(
      [&](const auto&... a) {
        (
            [&] {
              axes.push_back(
                  {Ext::name, a.name, a.tag, {a.labels.begin(), a.labels.end()}, a.variable.name});
              vars.push_back(
                  {env::extension_var, a.variable.name, a.variable.type, a.variable.default_text, 0,
                   static_cast<std::int64_t>(a.size) - 1,
                   keep("extension " + std::string(Ext::name) + ": axis " + std::string(a.name)),
                   a.variable.doc});
            }(),
            ...);
      },
      Ext::axes);
  const std::size_t first = add_axes(Ext::name, axes, vars);
  if (first >= max_axes) return false;
  (detail::add_rows<Ext>(groups, first), ...);
  return true;
}

// A resolved instance of an extension's own pipeline Pl (those that extend atom's pipelines
// resolve through dispatch::resolve, as atom's do).
template <class Pl>
class Handle {
 public:
  using Args = typename Pl::args;
  Handle(const Row<Args>& r, policy::Point point) : row_(&r), point_(point) {}

  void operator()(const Args& args) const { row_->run(args); }
  std::string_view name() const { return row_->name; }
  policy::BackendId backend() const { return row_->backend; }
  policy::Point point() const { return point_; }

 private:
  const Row<Args>* row_;
  policy::Point point_;
};

template <class Pl>
Handle<Pl> resolve_point(policy::Point x, policy::BackendId b) {
  using Args = typename Pl::args;
  x = policy::canonical(Pl::atom_reads, x);
  if (const Row<Args>* r = extension_row<Args>(Pl::name, Pl::atom_reads, b, x))
    return Handle<Pl>(*r, x);
  // Every value of an own pipeline's axes is the extension's: at the first ones too.
  if (const Row<Args>* r = find<Args>(Pl::name, b, x)) return Handle<Pl>(*r, x);
  throw dispatch::DispatchError(miss_message<Args>(Pl::name, Pl::atom_reads, b, x));
}

// The instance of Pl that the variables of `config` (atom's and the extensions') select.
template <class Pl>
Handle<Pl> resolve(const env::Config& config, policy::BackendId b) {
  return resolve_point<Pl>(policy::point_from(config), b);
}

}  // namespace atom::extend
