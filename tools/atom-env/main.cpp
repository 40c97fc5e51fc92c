// atom-env: the resolved ATOM_* configuration, the variable docs, and validation.
#include <cstdio>
#include <cstring>
#include <string_view>

#include "atom/dispatch/dispatch.hpp"
#include "atom/env/config.hpp"
#include "atom/env/docs.hpp"

namespace {

constexpr const char* usage =
    "usage: atom-env [--markdown | --check | --instances | --help]\n"
    "  (no flag)   print every ATOM_* variable with its resolved value and its source\n"
    "  --markdown  print the docs table generated from the variable registry\n"
    "  --check     validate the environment; exit 1 with every error when any is invalid\n"
    "  --instances list the dispatch table: each instantiation, the variable settings that reach\n"
    "              it, and '<- selected' on those the current environment selects\n";

void print_warnings(const atom::env::Reading& r) {
  for (const auto& w : r.warnings) std::fprintf(stderr, "atom-env: warning: %s\n", w.c_str());
}

template <atom::policy::PipelineId P>
void list_instances(const atom::env::Config& config) {
  using namespace atom;
  const policy::Point selected = policy::resolve(P, config);
  for (const auto& e : dispatch::table<P>()) {
    const policy::Point x = policy::key_point(e.key);
    const bool chosen = x == selected && policy::key_backend(e.key) == policy::BackendId::host;
    std::printf("%s%s\n    %s\n", std::string(e.name).c_str(), chosen ? "  <- selected" : "",
                policy::settings_for(P, x).c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace atom::env;
  const std::string_view flag = argc > 1 ? argv[1] : "";
  if (argc > 2 || (!flag.empty() && flag != "--markdown" && flag != "--check" &&
                   flag != "--instances" && flag != "--help")) {
    std::fprintf(stderr, "atom-env: unknown argument '%s'\n%s", argv[argc > 2 ? 2 : 1], usage);
    return 2;
  }
  if (flag == "--help") {
    std::fputs(usage, stdout);
    return 0;
  }
  if (flag == "--markdown") {
    std::fputs(markdown_table().c_str(), stdout);
    return 0;
  }
  const Environment env = process_environment();
  const Reading r = Config::read(env);
  print_warnings(r);
  for (const auto& e : r.errors) std::fprintf(stderr, "atom-env: error: %s\n", e.c_str());
  if (!r.errors.empty()) return 1;
  if (flag == "--instances") {
    using atom::policy::PipelineId;
    list_instances<PipelineId::mla_attention>(*r.config);
    list_instances<PipelineId::moe_block>(*r.config);
    list_instances<PipelineId::qwen3_attention>(*r.config);
    list_instances<PipelineId::dense_mlp>(*r.config);
    return 0;
  }
  if (flag == "--check") {
    std::puts("atom-env: configuration is valid");
    return 0;
  }
  std::fputs(describe(*r.config, env).c_str(), stdout);
  return 0;
}
