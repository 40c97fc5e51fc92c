// The generator of an extension's instances (atom_add_instances() compiles it with the
// extension's header and runs it at build time): one function per pipeline x backend x canonical
// atom point x value of the extension axes it reads, spread over a fixed number of translation
// units, and table.cpp, which registers them with atom before main(). A definition the generated
// code could not express is an error that names it.
#pragma once

#include <cstdio>
#include <filesystem>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "atom/codegen/text.hpp"
#include "atom/extend/extension.hpp"
#include "atom/policy/space.hpp"

namespace atom::extend {

namespace detail {

// One extension axis as the generator sees it.
struct AxisText {
  std::size_t slot;
  std::string_view tag, type_name;
  std::vector<std::string_view> enumerators, labels;
};

template <class Ext, class Reads>
std::vector<AxisText> read_axes() {
  std::vector<AxisText> out;
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (
        [&] {
          using E = std::tuple_element_t<I, Reads>;
          constexpr std::size_t s = extend::slot_of<Ext, E>();
          static_assert(s < std::tuple_size_v<std::decay_t<decltype(Ext::axes)>>,
                        "a pipeline reads an axis that is not among its extension's axes");
          const auto& a = std::get<s>(Ext::axes);
          out.push_back({s,
                         a.tag,
                         a.type_name,
                         {a.enumerators.begin(), a.enumerators.end()},
                         {a.labels.begin(), a.labels.end()}});
        }(),
        ...);
  }
  (std::make_index_sequence<std::tuple_size_v<Reads>>{});
  return out;
}

struct Generated {
  std::string pipeline_type, function, name, point_literal, run_args;
  policy::BackendId backend;
  policy::Point point;  // atom point; extension = the extension's own packing (4 bits per slot)
};

// `atom::policy::make_point({...})`, one atom axis the pipeline reads per line.
inline std::string point_literal(const policy::AxisSet& reads, policy::Point x) {
  std::string s = "atom::policy::make_point({";
  policy::for_each_axis([&](const auto& axis, std::size_t i) {
    if (reads[i])
      s += "\n      atom::policy::" + std::string(axis.type_name) +
           "::" + std::string(axis.enumerators[x[i]]) + ",";
  });
  return s + (reads.mask != 0 ? "\n  })" : "})");
}

template <class Ext, class Pl>
void add_pipeline(std::vector<Generated>& out) {
  const std::string_view type = Pl::type;
  const std::string what =
      "extension '" + std::string(Ext::name) + "', pipeline '" + std::string(Pl::name) + "'";
  if (!codegen::plain_name(Pl::name))
    throw std::runtime_error(what + ": the name must be [a-z0-9_]");
  if (type.empty()) throw std::runtime_error(what + ": no `type` (its qualified C++ name)");
  const auto axes = read_axes<Ext, typename Pl::reads>();
  if (Pl::extends && axes.empty())
    throw std::runtime_error(what +
                             " extends atom's but reads no axis of the extension: its "
                             "instances would replace atom's own");
  if (Pl::backends.empty()) throw std::runtime_error(what + " lists no backend");
  std::size_t combos = 1;
  for (const auto& a : axes) combos *= a.labels.size();
  for (const Backend& b : Pl::backends)
    for (const policy::Point& x : policy::canonical_points<Pl::atom_reads>) {
      for (std::size_t c = 0; c < combos; ++c) {
        Generated g{.pipeline_type = std::string(type), .backend = b.id, .point = x};
        std::string values, suffix;
        std::size_t rest = c;
        bool any = false;
        for (std::size_t k = axes.size(); k-- > 0;) {  // the last read axis varies fastest
          const auto& a = axes[k];
          const std::size_t v = rest % a.labels.size();
          rest /= a.labels.size();
          any = any || v != 0;
          g.point.extension |= std::uint64_t{v} << (4 * a.slot);
          values = ", " + std::string(a.type_name) + "::" + std::string(a.enumerators[v]) + values;
          suffix = "." + std::string(a.tag) + "-" + std::string(a.labels[v]) + suffix;
        }
        if (Pl::extends && !any) continue;  // atom's own instance serves it
        g.name = std::string(Ext::name) + "." +
                 policy::instance_name(Pl::name, Pl::atom_reads, b.id, x) + suffix;
        g.function = codegen::identifier(g.name);
        g.point_literal = point_literal(Pl::atom_reads, x);
        g.run_args = std::string(b.type) + values;
        out.push_back(std::move(g));
      }
    }
}

}  // namespace detail

// The generator's main: `<dir> <header> <shards> <extension type>` writes
// <dir>/instances_<k>.cpp (k < shards) and <dir>/table.cpp, each including <header>.
template <class Ext>
int generate(int argc, char** argv) {
  using namespace detail;
  using codegen::plain_name;
  using codegen::write_if_changed;
  try {
    if (argc != 5) throw std::runtime_error("usage: <codegen> <dir> <header> <shards> <type>");
    const std::filesystem::path dir = argv[1];
    const std::string header = argv[2];
    const int shards = std::stoi(argv[3]);
    const std::string ext_type = argv[4];
    if (shards < 1) throw std::runtime_error("the shard count must be at least 1");
    const std::string ext(Ext::name);
    if (!plain_name(Ext::name))
      throw std::runtime_error("extension name '" + ext + "' must be [a-z0-9_]");

    // The axes: plain names, tags unique among the extension's and atom's.
    std::set<std::string_view> names, tags, variables;
    policy::for_each_axis([&](const auto& a, std::size_t) { tags.insert(a.tag); });
    std::apply(
        [&](const auto&... a) {
          (
              [&] {
                const std::string what =
                    "extension '" + ext + "', axis '" + std::string(a.name) + "'";
                if (!plain_name(a.name) || !plain_name(a.tag))
                  throw std::runtime_error(what + ": name and tag must be [a-z0-9_]");
                if (!names.insert(a.name).second)
                  throw std::runtime_error(what + " is defined twice");
                if (!tags.insert(a.tag).second)
                  throw std::runtime_error(what + ": tag '" + std::string(a.tag) + "' is taken");
                if (a.type_name.empty()) throw std::runtime_error(what + ": no type_name");
                for (std::size_t v = 0; v < a.size; ++v)
                  if (!plain_name(a.labels[v]) || a.enumerators[v].empty())
                    throw std::runtime_error(what + ": value " + std::to_string(v) +
                                             " needs an enumerator and a [a-z0-9_] label");
                if (a.size < 2 || a.size > max_values)
                  throw std::runtime_error(what + ": 2 to " + std::to_string(max_values) +
                                           " values");
                const bool boolean = a.variable.type == env::Type::boolean;
                for (const auto& v : env::registry)
                  if (v.name == a.variable.name)
                    throw std::runtime_error(what + ": variable " + std::string(v.name) +
                                             " is atom's");
                if (!variables.insert(a.variable.name).second)
                  throw std::runtime_error(what + ": variable " + std::string(a.variable.name) +
                                           " feeds another axis");
                if (a.variable.name.empty() || (boolean && a.size != 2) ||
                    (!boolean && a.variable.type != env::Type::integer))
                  throw std::runtime_error(what +
                                           ": fed by one variable, a bool for two values "
                                           "or an integer (the value's index)");
              }(),
              ...);
        },
        Ext::axes);

    std::vector<Generated> all;
    std::vector<std::string_view> types;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((add_pipeline<Ext, std::tuple_element_t<I, typename Ext::pipelines>>(all),
        types.push_back(std::tuple_element_t<I, typename Ext::pipelines>::type)),
       ...);
    }
    (std::make_index_sequence<std::tuple_size_v<typename Ext::pipelines>>{});
    std::set<std::string> seen;
    for (const auto& g : all)
      if (!seen.insert(g.name).second) throw std::runtime_error("instance '" + g.name + "' twice");

    const std::string banner = "// Generated by atom_add_instances() from extension '" + ext +
                               "'. Do not edit: the build regenerates it.\n";
    const std::string ns = ext + "_instances";
    for (int k = 0; k < shards; ++k) {
      std::ostringstream o;
      o << banner << "#include \"" << header << "\"\n\nnamespace " << ns << " {\n";
      for (std::size_t i = k; i < all.size(); i += shards) {
        const auto& g = all[i];
        o << "\n// " << g.name << "\nvoid " << g.function << "(\n    const " << g.pipeline_type
          << "::args& args) {\n  static constexpr atom::policy::Point point = " << g.point_literal
          << ";\n  " << g.pipeline_type << "::run<point, " << g.run_args << ">(args);\n}\n";
      }
      o << "\n}  // namespace " << ns << "\n";
      write_if_changed(dir / ("instances_" + std::to_string(k) + ".cpp"), o.str());
    }

    std::ostringstream o;
    o << banner << "#include \"" << header << "\"\n\nnamespace " << ns << " {\n";
    for (const auto& g : all)
      o << "void " << g.function << "(const " << g.pipeline_type << "::args&);\n";
    o << "}  // namespace " << ns << "\n\nnamespace {\n\nusing namespace " << ns << ";\n";
    std::string groups;
    for (const std::string_view type : types) {
      const std::string var =
          codegen::identifier(std::string(type.substr(type.rfind(':') + 1))) + "_rows";
      o << "\nconst atom::extend::Instance<" << type << "> " << var << "[] = {\n";
      std::size_t n = 0;
      for (const auto& g : all)
        if (g.pipeline_type == type) {
          std::ostringstream row;
          row << "    {atom::policy::BackendId::" << policy::backend_name(g.backend) << ", {0x"
              << std::hex << g.point.packed << "u, 0x" << g.point.extension << "u}, \"" << g.name
              << "\", &" << g.function << "},\n";
          o << row.str();
          ++n;
        }
      if (n == 0) throw std::runtime_error("pipeline '" + std::string(type) + "' has no instance");
      o << "};\n";
      groups += (groups.empty() ? "" : ", ") + var;
    }
    o << "\n[[maybe_unused]] const bool registered = atom::extend::add<" << ext_type << ">("
      << groups << ");\n\n}  // namespace\n";
    write_if_changed(dir / "table.cpp", o.str());
    std::printf("%s: %zu instances in %d translation units\n", ext.c_str(), all.size(), shards);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "atom_add_instances (extension '%s'): %s\n",
                 std::string(Ext::name).c_str(), e.what());
    return 1;
  }
}

}  // namespace atom::extend
