// atom-codegen: writes instantiations/ from the C++ policy definitions (include/atom/policy).
//
//   atom-codegen <dir>                   one translation unit per pipeline x canonical point x
//                                        backend, the dispatch table, instances.hpp, the CMake
//                                        source list with the named profiles, manifest.json
//   atom-codegen --table <file> <names>  only the dispatch table, for the named instances (the
//                                        build uses it for profiles smaller than "all")
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

#include "atom/policy/space.hpp"

namespace fs = std::filesystem;
using namespace atom::policy;

namespace {

struct Instance {
  PipelineId pipeline;
  BackendId backend;
  Point point;
  std::string name;  // instance_name(): also the file stem
  Key key;
};

// Both backends are instantiated for every canonical point. A build without a GPU backend leaves
// the GPU translation units out (instantiations/CMakeLists.txt).
constexpr std::array<BackendId, 2> generated_backends{BackendId::host, BackendId::gpu};

std::vector<Instance> all_instances() {
  std::vector<Instance> out;
  auto add = [&out](PipelineId p, const auto& points) {
    for (BackendId b : generated_backends)
      for (const Point& x : points) out.push_back({p, b, x, instance_name(p, b, x), key(p, b, x)});
  };
  add(PipelineId::mla_attention, canonical_points<PipelineId::mla_attention>);
  add(PipelineId::moe_block, canonical_points<PipelineId::moe_block>);
  add(PipelineId::qwen3_attention, canonical_points<PipelineId::qwen3_attention>);
  add(PipelineId::ds_layer, canonical_points<PipelineId::ds_layer>);
  add(PipelineId::qwen3_layer, canonical_points<PipelineId::qwen3_layer>);
  std::sort(out.begin(), out.end(),
            [](const Instance& a, const Instance& b) { return a.key < b.key; });
  return out;
}

std::string cpp_identifier(const std::string& name) {
  std::string id = name;
  for (char& c : id)
    if (c == '.' || c == '-') c = '_';
  return id;
}

// The generated files are laid out as the repository's .clang-format lays them out (Google
// style, 100 columns), so that they read like the hand-written code and pass the format check.
constexpr std::size_t column_limit = 100;

// `<lead>policy::Point<var>{.gemm = policy::GemmBackend::portable,` then one designated
// initializer per line, aligned after the brace (every point is too long for one line). `lead` is
// what precedes `policy::Point` on the first line, `var` an optional variable name, `indent` the
// column at which the first line starts.
std::string point_literal(Point x, const std::string& lead, const std::string& var,
                          std::size_t indent) {
  const char* fields[] = {"gemm",    "bmm",         "allreduce_norm",    "input_norm_quant",
                          "qk_norm", "moe_streams", "qk_norm_rope_cache"};
  const char* enums[] = {"GemmBackend", "BmmFormat",  "AllReduceNorm",  "InputNormQuant",
                         "QkNorm",      "MoeStreams", "QkNormRopeCache"};
  const std::vector<std::vector<const char*>> enumerators{{"matrix_core", "portable"},
                                                          {"fp8", "mxfp4"},
                                                          {"separate", "fused"},
                                                          {"separate", "fused"},
                                                          {"separate", "fused", "fused_quant"},
                                                          {"single", "dual"},
                                                          {"separate", "fused"}};
  const std::string head = lead + "policy::Point" + (var.empty() ? "" : " " + var) + "{";
  const std::string align(indent + head.size(), ' ');
  std::string s = head;
  for (std::size_t a = 0; a < axis_count; ++a) {
    if (a > 0) s += ",\n" + align;
    s += std::string(".") + fields[a] + " = policy::" + enums[a] +
         "::" + enumerators[a][x.get(static_cast<AxisId>(a))];
  }
  return s + "}";
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

std::string pipeline_type(PipelineId p) {
  switch (p) {
    case PipelineId::mla_attention:
      return "pipeline::MlaAttention";
    case PipelineId::moe_block:
      return "pipeline::MoeBlock";
    case PipelineId::qwen3_attention:
      return "pipeline::Qwen3Attention";
    case PipelineId::ds_layer:
      return "pipeline::DsLayer";
    case PipelineId::qwen3_layer:
      return "pipeline::Qwen3Layer";
  }
  return "";
}

std::string backend_type(BackendId b) {
  return b == BackendId::host ? "ops::Host" : "ops::Gpu";
}

const char* const banner =
    "// Generated by atom-codegen from include/atom/policy. Do not edit: rerun\n"
    "// `atom-codegen instantiations` instead.\n";

std::string translation_unit(const Instance& i) {
  const std::string params =
      "const pipeline::RunArgs<policy::PipelineId::" + std::string(pipeline_name(i.pipeline)) +
      ">& args";
  std::ostringstream o;
  o << banner << "//\n// " << pipeline_name(i.pipeline) << " on the " << backend_name(i.backend)
    << " backend:\n"
    << comment("//   ", "//   ", describe(i.pipeline, i.point)) << "\n"
    << "#include \"atom/pipeline/pipelines.hpp\"\n\n"
    << "namespace atom::instances {\n\n"
    << "namespace {\n"
    << point_literal(i.point, "constexpr ", "point", 0) << ";\n"
    << "}  // namespace\n\n"
    << function_head(cpp_identifier(i.name), params, " {") << "  " << pipeline_type(i.pipeline)
    << "<point, " << backend_type(i.backend) << ">::run(args);\n"
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
    o << function_head(cpp_identifier(i.name),
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
      // Key and name share a line when they fit, as clang-format packs them.
      o << key.str() << (key.str().size() + 1 + name.size() <= column_limit ? " " : "\n       ")
        << name << "\n       &" << cpp_identifier(i->name) << "},\n";
    }
    o << "  };\n  return rows;\n}\n";
  }
  o << "\n}  // namespace atom::dispatch\n";
  return o.str();
}

std::string instances_header(const std::vector<Instance>& list) {
  std::ostringstream o;
  o << banner
    << "//\n// Every generated instantiation as a type, one list per backend, for tests that "
       "cover\n"
    << "// each one.\n"
    << "#pragma once\n\n#include <tuple>\n\n#include \"atom/dispatch/instance.hpp\"\n\n"
    << "namespace atom::instances {\n";
  for (BackendId b : generated_backends) {
    std::vector<const Instance*> rows;
    for (const auto& i : list)
      if (i.backend == b) rows.push_back(&i);
    o << "\nusing " << backend_name(b) << " = std::tuple<\n";
    for (std::size_t n = 0; n < rows.size(); ++n) {
      const auto& i = *rows[n];
      const std::string lead = "    dispatch::Instance<";
      o << lead << "policy::PipelineId::" << pipeline_name(i.pipeline)
        << ", policy::BackendId::" << backend_name(i.backend) << ",\n"
        << std::string(lead.size(), ' ') << point_literal(i.point, "", "", lead.size()) << ">"
        << (n + 1 < rows.size() ? ",\n" : ">;\n");
    }
  }
  o << "\n}  // namespace atom::instances\n";
  return o.str();
}

// Named profiles: "all", "default" (what an empty environment reaches, with the all-separate
// references atom-run checks it against), one per pipeline.
std::string sources_cmake(const std::vector<Instance>& list) {
  std::ostringstream o;
  o << "# Generated by atom-codegen. The instantiations and the named build profiles.\n"
    << "set(ATOM_INSTANCES\n";
  for (const auto& i : list) o << "  " << i.name << "\n";
  o << ")\n";
  const atom::env::Config defaults;
  o << "set(ATOM_PROFILE_default\n";
  for (const auto& i : list)
    if (i.point == resolve(i.pipeline, defaults) ||
        i.point == separate_of(i.pipeline, resolve(i.pipeline, defaults)))
      o << "  " << i.name << "\n";
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
    const AxisSet s = axes_of(i.pipeline);
    bool first = true;
    for_each_axis([&](const auto& axis) {
      if (!uses(s, axis.id)) return;
      using E = typename std::decay_t<decltype(axis)>::enum_type;
      o << (first ? "" : ", ") << "\"" << axis.name << "\": \""
        << axis.value_name(static_cast<E>(i.point.get(axis.id))) << "\"";
      first = false;
    });
    o << "}}" << (n + 1 < list.size() ? "," : "") << "\n";
  }
  o << "  ]\n}\n";
  return o.str();
}

// Writes the file only when its content differs; returns whether it wrote.
bool write_if_changed(const fs::path& path, const std::string& content) {
  {
    std::ifstream in(path, std::ios::binary);
    if (in) {
      const std::string old((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (old == content) return false;
    }
  }
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  if (!out) throw std::runtime_error("cannot write " + path.string());
  return true;
}

int generate(const fs::path& dir) {
  const auto list = all_instances();
  std::size_t written = 0;
  std::set<fs::path> expected;
  for (const auto& i : list) {
    const fs::path p = dir / std::string(backend_name(i.backend)) / (i.name + ".cpp");
    expected.insert(p);
    written += write_if_changed(p, translation_unit(i));
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

int table_only(const fs::path& file, const std::vector<std::string>& names) {
  const auto list = all_instances();
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
  write_if_changed(file, table_unit(chosen));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (args.size() >= 2 && args[0] == "--table")
      return table_only(args[1], std::vector<std::string>(args.begin() + 2, args.end()));
    if (args.size() == 1 && args[0] != "--help" && args[0][0] != '-') return generate(args[0]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "atom-codegen: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr,
               "usage: atom-codegen <dir>\n"
               "       atom-codegen --table <file> <instance names...>\n");
  return 2;
}
