// atom-codegen: writes instantiations/ from the C++ policy definitions (include/atom/policy).
//
//   atom-codegen <dir>                   one translation unit per pipeline x canonical point x
//                                        backend, the dispatch table, instances.hpp, the CMake
//                                        source list with the named profiles, manifest.json
//   atom-codegen --profile <dir> <names> the dispatch table and instances.hpp of just the named
//                                        instances (the build's profiles smaller than "all")
//
// Files whose content is unchanged are not rewritten, so a regeneration rebuilds nothing.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "atom/codegen/text.hpp"
#include "atom/pipeline/pipelines.hpp"
#include "atom/policy/space.hpp"

namespace fs = std::filesystem;
using namespace atom::policy;
using atom::codegen::identifier;
using atom::codegen::plain_name;
using atom::codegen::write_if_changed;

namespace {

struct Instance {
  PipelineId pipeline;
  BackendId backend;
  Point point;
  std::string name;  // instance_name(): also the file stem
  Key key;
};

// A pipeline as its template declares it (pipeline::Declared) with its canonical points.
struct DeclaredPipeline {
  PipelineId id;
  std::string_view type;
  AxisSet reads;
  std::vector<Point> points;
};

std::vector<DeclaredPipeline> declared_pipelines() {
  std::vector<DeclaredPipeline> out;
  atom::pipeline::for_each_pipeline([&](auto id) {
    using D = atom::pipeline::Declared<decltype(id)::value>;
    const auto& points = canonical_points<D::reads>;
    out.push_back({decltype(id)::value, D::type, D::reads, {points.begin(), points.end()}});
  });
  return out;
}

// The definitions the generated code is written from, checked for what the compiler cannot see:
// names that would collide or not form file names. Throws with a message naming the definition.
void check_definitions(const std::vector<DeclaredPipeline>& declared) {
  std::set<std::string_view> names, tags;
  for_each_axis([&](const auto& axis, std::size_t) {
    const std::string what = "axis '" + std::string(axis.name) + "'";
    if (!plain_name(axis.name) || !plain_name(axis.tag))
      throw std::runtime_error(what + ": name and tag must be lower-case letters, digits and _");
    if (!names.insert(axis.name).second) throw std::runtime_error(what + " is defined twice");
    if (!tags.insert(axis.tag).second)
      throw std::runtime_error(what + ": tag '" + std::string(axis.tag) +
                               "' is another axis's tag");
    std::set<std::string_view> labels;
    for (std::string_view l : axis.labels) {
      if (!plain_name(l))
        throw std::runtime_error(what + ": value label '" + std::string(l) +
                                 "' must be lower-case letters, digits and _");
      if (!labels.insert(l).second)
        throw std::runtime_error(what + ": two values are labelled '" + std::string(l) + "'");
    }
  });
  for (const auto& d : declared) {
    const std::string what = "pipeline '" + std::string(pipeline_name(d.id)) + "'";
    if (!plain_name(pipeline_name(d.id)))
      throw std::runtime_error(what + ": name must be lower-case letters, digits and _");
    if (d.type.empty()) throw std::runtime_error(what + " declares no template name");
  }
}

// Both backends are instantiated for every canonical point. A build without a GPU backend leaves
// the GPU translation units out (instantiations/CMakeLists.txt).
constexpr std::array<BackendId, 2> generated_backends{BackendId::host, BackendId::gpu};

std::vector<Instance> all_instances(const std::vector<DeclaredPipeline>& declared) {
  std::vector<Instance> out;
  for (const auto& d : declared)
    for (BackendId b : generated_backends)
      for (const Point& x : d.points)
        out.push_back(
            {d.id, b, x, instance_name(pipeline_name(d.id), d.reads, b, x), key(d.id, b, x)});
  std::sort(out.begin(), out.end(),
            [](const Instance& a, const Instance& b) { return a.key < b.key; });
  for (std::size_t i = 1; i < out.size(); ++i)
    if (out[i].key == out[i - 1].key || out[i].name == out[i - 1].name)
      throw std::runtime_error("instances '" + out[i - 1].name + "' and '" + out[i].name +
                               "' have the same key or name");
  return out;
}

const DeclaredPipeline& declared_of(const std::vector<DeclaredPipeline>& declared, PipelineId p) {
  return *std::find_if(declared.begin(), declared.end(),
                       [p](const DeclaredPipeline& d) { return d.id == p; });
}

// The generated files are laid out as the repository's .clang-format lays them out (Google
// style, 100 columns), so that they read like the hand-written code and pass the format check.
constexpr std::size_t column_limit = 100;

// `constexpr auto point = policy::make_point({` and one line per axis the pipeline reads (a
// braced list with a trailing comma keeps that layout).
std::string point_literal(Point x, const AxisSet& reads) {
  std::string s = "constexpr auto point = policy::make_point({\n";
  for_each_axis([&](const auto& axis, std::size_t i) {
    if (reads[i])
      s.append("    policy::")
          .append(axis.type_name)
          .append("::")
          .append(axis.enumerators[x[i]])
          .append(",\n");
  });
  return s + "});\n";
}

// `void name(params)<tail>` on one line when it fits, else with the parameters on a continuation
// line indented by four.
std::string function_head(const std::string& name, const std::string& params,
                          const std::string& tail) {
  const std::string one_line = "void " + name + "(" + params + ")" + tail;
  if (one_line.size() <= column_limit) return one_line + "\n";
  return "void " + name + "(\n    " + params + ")" + tail + "\n";
}

// A `//` comment: words filled up to the column limit, continuation lines starting with `cont`.
std::string comment(const std::string& first, const std::string& cont, const std::string& text) {
  std::string out;
  std::string line = first;
  std::istringstream words(text);
  std::string w;
  bool empty = true;
  while (words >> w) {
    if (!empty && line.size() + 1 + w.size() > column_limit) {
      out += line + "\n";
      line = cont;
      empty = true;
    }
    line += (empty ? "" : " ") + w;
    empty = false;
  }
  return out + line + "\n";
}

std::string backend_type(BackendId b) {
  return b == BackendId::host ? "ops::Host" : "ops::Gpu";
}

const char* const banner =
    "// Generated by atom-codegen from the policy axes and the pipeline declarations. Do not\n"
    "// edit: rerun `atom-codegen instantiations` instead.\n";

std::string translation_unit(const Instance& i, const DeclaredPipeline& d) {
  const std::string params =
      "const pipeline::RunArgs<policy::PipelineId::" + std::string(pipeline_name(i.pipeline)) +
      ">& args";
  std::ostringstream o;
  o << banner << "//\n// " << pipeline_name(i.pipeline) << " on the " << backend_name(i.backend)
    << " backend:\n"
    << comment("//   ", "//   ", describe(d.reads, i.point)) << "\n"
    << "#include \"atom/pipeline/pipelines.hpp\"\n\n"
    << "namespace atom::instances {\n\n"
    << "namespace {\n"
    << point_literal(i.point, d.reads) << "}  // namespace\n\n"
    << function_head(identifier(i.name), params, " {") << "  " << d.type << "<point, "
    << backend_type(i.backend) << ">::run(args);\n"
    << "}\n\n"
    << "}  // namespace atom::instances\n";
  return o.str();
}

std::string table_unit(const std::vector<Instance>& list) {
  std::ostringstream o;
  o << banner << "//\n// The dispatch table: every compiled instantiation, sorted by key.\n\n"
    << "#include \"atom/dispatch/table.hpp\"\n\n"
    << "namespace atom::instances {\n";
  for (const auto& i : list)
    o << function_head(identifier(i.name),
                       "const pipeline::RunArgs<policy::PipelineId::" +
                           std::string(pipeline_name(i.pipeline)) + ">&",
                       ";");
  o << "}  // namespace atom::instances\n\nnamespace atom::dispatch {\n";
  for (PipelineId p : pipelines) {
    std::vector<const Instance*> rows;
    for (const auto& i : list)
      if (i.pipeline == p) rows.push_back(&i);
    const std::string entry = "Entry<policy::PipelineId::" + std::string(pipeline_name(p)) + ">";
    const std::string result = "std::span<const " + entry + ">";
    const std::string fn = "table<policy::PipelineId::" + std::string(pipeline_name(p)) + ">() {";
    o << "\ntemplate <>\n"
      << result << (result.size() + 1 + fn.size() <= column_limit ? " " : "\n") << fn << "\n";
    if (rows.empty()) {
      o << "  return {};\n}\n";
      continue;
    }
    o << "  using namespace instances;  // the run functions declared above\n"
      << "  static constexpr " << entry << " rows[] = {\n";
    for (const auto* i : rows) {
      std::ostringstream key;
      key << "      {0x" << std::hex << i->key << "u,";
      const std::string name = "\"" + i->name + "\",";
      const std::string run = "&" + identifier(i->name) + "},";
      // As clang-format packs a row: on one line when it fits, else the key and the name, or the
      // name and the function, share a line when they fit.
      const std::size_t k = key.str().size();
      if (k + 1 + name.size() + 1 + run.size() <= column_limit)
        o << key.str() << " " << name << " " << run << "\n";
      else if (k + 1 + name.size() <= column_limit)
        o << key.str() << " " << name << "\n       " << run << "\n";
      else if (7 + name.size() + 1 + run.size() <= column_limit)
        o << key.str() << "\n       " << name << " " << run << "\n";
      else
        o << key.str() << "\n       " << name << "\n       " << run << "\n";
    }
    o << "  };\n  return rows;\n}\n";
  }
  o << "\n}  // namespace atom::dispatch\n";
  return o.str();
}

std::string instances_header(const std::vector<Instance>& list) {
  std::ostringstream o;
  o << banner
    << "//\n// Every generated instantiation as a type (by key), one list per backend, for tests "
       "that\n"
    << "// cover each one.\n"
    << "#pragma once\n\n#include <tuple>\n\n#include \"atom/dispatch/instance.hpp\"\n\n"
    << "namespace atom::instances {\n";
  // One instance per line under its name, a layout clang-format would repack.
  o << "\n// clang-format off\n";
  for (BackendId b : generated_backends) {
    std::vector<const Instance*> rows;
    for (const auto& i : list)
      if (i.backend == b) rows.push_back(&i);
    o << "using " << backend_name(b) << " = std::tuple<";
    for (std::size_t n = 0; n < rows.size(); ++n)
      o << "\n    // " << rows[n]->name << "\n    dispatch::Instance<0x" << std::hex << rows[n]->key
        << std::dec << "u>" << (n + 1 < rows.size() ? "," : "");
    o << ">;\n";
  }
  o << "// clang-format on\n";
  o << "\n}  // namespace atom::instances\n";
  return o.str();
}

// The points an empty environment reaches with data of any format: its own point with every
// combination of the values of the axes the weights and caches set.
std::vector<Point> default_points() {
  std::vector<Point> out{point_from(atom::env::Config{})};
  for_each_axis([&](const auto& axis, std::size_t a) {
    if (axis.source == AxisSource::environment) return;
    std::vector<Point> next;
    for (const Point& p : out)
      for (std::uint8_t v = 0; v < axis.size; ++v) next.push_back(p.with(a, v));
    out = std::move(next);
  });
  return out;
}

// Named profiles: "all", "default" (what an empty environment reaches with weights and caches of
// any format, with the all-separate references atom-run checks it against), one per pipeline.
std::string sources_cmake(const std::vector<Instance>& list) {
  std::ostringstream o;
  o << "# Generated by atom-codegen. The instantiations and the named build profiles.\n"
    << "set(ATOM_INSTANCES\n";
  for (const auto& i : list) o << "  " << i.name << "\n";
  o << ")\n";
  const std::vector<Point> reachable = default_points();
  o << "set(ATOM_PROFILE_default\n";
  for (const auto& i : list) {
    bool reached = false;
    for (const Point& x : reachable) {
      const Point p = canonical(i.pipeline, x);
      reached = reached || i.point == p || i.point == separate_of(i.pipeline, p);
    }
    if (reached) o << "  " << i.name << "\n";
  }
  o << ")\n";
  for (PipelineId p : pipelines) {
    o << "set(ATOM_PROFILE_" << pipeline_name(p) << "\n";
    for (const auto& i : list)
      if (i.pipeline == p) o << "  " << i.name << "\n";
    o << ")\n";
  }
  return o.str();
}

std::string manifest(const std::vector<Instance>& list) {
  std::ostringstream o;
  o << "{\n  \"generator\": \"atom-codegen\",\n  \"instances\": [\n";
  for (std::size_t n = 0; n < list.size(); ++n) {
    const auto& i = list[n];
    o << "    {\"name\": \"" << i.name << "\", \"key\": " << i.key << ", \"pipeline\": \""
      << pipeline_name(i.pipeline) << "\", \"backend\": \"" << backend_name(i.backend)
      << "\", \"file\": \"" << backend_name(i.backend) << "/" << i.name << ".cpp\", \"axes\": {";
    const AxisSet s = reads(i.pipeline);
    bool first = true;
    for_each_axis([&](const auto& axis, std::size_t a) {
      if (!s[a]) return;
      o << (first ? "" : ", ") << "\"" << axis.name << "\": \"" << axis.label(i.point[a]) << "\"";
      first = false;
    });
    o << "}}" << (n + 1 < list.size() ? "," : "") << "\n";
  }
  o << "  ]\n}\n";
  return o.str();
}

int generate(const fs::path& dir) {
  const auto declared = declared_pipelines();
  check_definitions(declared);
  const auto list = all_instances(declared);
  std::size_t written = 0;
  std::set<fs::path> expected;
  for (const auto& i : list) {
    const fs::path p = dir / std::string(backend_name(i.backend)) / (i.name + ".cpp");
    expected.insert(p);
    written += write_if_changed(p, translation_unit(i, declared_of(declared, i.pipeline)));
  }
  written += write_if_changed(dir / "table.cpp", table_unit(list));
  written += write_if_changed(dir / "instances.hpp", instances_header(list));
  written += write_if_changed(dir / "instances.cmake", sources_cmake(list));
  written += write_if_changed(dir / "manifest.json", manifest(list));
  std::size_t removed = 0;
  for (BackendId b : {BackendId::host, BackendId::gpu}) {
    const fs::path sub = dir / std::string(backend_name(b));
    if (!fs::exists(sub)) continue;
    for (const auto& e : fs::directory_iterator(sub))
      if (e.path().extension() == ".cpp" && !expected.count(e.path())) {
        fs::remove(e.path());
        ++removed;
      }
  }
  std::printf("atom-codegen: %zu instantiations in %s; %zu files written, %zu stale removed\n",
              list.size(), dir.string().c_str(), written, removed);
  return 0;
}

// The dispatch table and instances.hpp of a build profile: just the named instances.
int profile_only(const fs::path& dir, const std::vector<std::string>& names) {
  const auto declared = declared_pipelines();
  check_definitions(declared);
  const auto list = all_instances(declared);
  std::vector<Instance> chosen;
  for (const auto& n : names) {
    const auto it =
        std::find_if(list.begin(), list.end(), [&](const Instance& i) { return i.name == n; });
    if (it == list.end()) {
      std::fprintf(stderr, "atom-codegen: unknown instance '%s'\n", n.c_str());
      return 1;
    }
    chosen.push_back(*it);
  }
  std::sort(chosen.begin(), chosen.end(),
            [](const Instance& a, const Instance& b) { return a.key < b.key; });
  write_if_changed(dir / "table.cpp", table_unit(chosen));
  write_if_changed(dir / "instances.hpp", instances_header(chosen));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (args.size() >= 2 && args[0] == "--profile")
      return profile_only(args[1], std::vector<std::string>(args.begin() + 2, args.end()));
    if (args.size() == 1 && args[0] != "--help" && args[0][0] != '-') return generate(args[0]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "atom-codegen: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr,
               "usage: atom-codegen <dir>\n"
               "       atom-codegen --profile <dir> <instance names...>\n");
  return 2;
}
