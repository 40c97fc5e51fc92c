// Runs the extension through atom's resolution: atom's dense MLP and the extension's checked one
// (MYENGINE_CHECK_MLP), and the extension's own add_norm pipeline at both of its fusion values
// (MYENGINE_FUSED_ADD_NORM). Exits non-zero, naming the failed check, when one fails.
#include <cstdio>
#include <cstring>
#include <vector>

#include "atom/dispatch/dispatch.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/pipeline/harness.hpp"
#include "myengine.hpp"

namespace {

using atom::policy::BackendId;
using atom::policy::PipelineId;
namespace pipeline = atom::pipeline;

int failures = 0;
void check(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "ok" : "FAILED", what);
  failures += ok ? 0 : 1;
}

atom::env::Config config_with(const char* name, const char* value) {
  return atom::env::Config::from({{name, value}});
}

// add_norm on random rows at the point the config selects; returns out and the new residual.
std::vector<atom::bf16> add_norm(const atom::env::Config& config, const char** instance) {
  constexpr atom::index_t t = 3, c = 769;
  std::vector<atom::bf16> x(t * c), residual(t * c), weight(c), out(t * c);
  std::uint32_t s = 12345;
  const auto draw = [&] {
    s = s * 1664525u + 1013904223u;
    return atom::to_bf16(static_cast<float>(s >> 8) / 16777216.0f * 4.0f - 2.0f);
  };
  for (auto* v : {&x, &residual, &weight})
    for (auto& e : *v) e = draw();
  for (auto& e : out) e = atom::to_bf16(std::nanf(""));  // poisoned: every element is written
  const auto handle = atom::extend::resolve<myengine::AddNorm>(config, BackendId::host);
  *instance = handle.name().data();
  handle({atom::make_view(x.data(), t, c), atom::make_view(residual.data(), t, c),
          atom::make_view(weight.data(), c), 1e-6f, atom::make_view(out.data(), t, c)});
  out.insert(out.end(), residual.begin(), residual.end());
  return out;
}

}  // namespace

int main() try {
  const auto config = atom::env::Config::from_process();
  const auto chosen = atom::dispatch::resolve<PipelineId::dense_mlp>(config, BackendId::host);
  std::printf("dense_mlp from the environment: %s\n", std::string(chosen.name()).c_str());

  // atom's dense MLP and the checked one on the same random layer: the same bits.
  const auto model = pipeline::preset("deepseek-v3-tiny");
  const pipeline::LayerWeights weights(model, 7);
  pipeline::RunInputs in{&model, &weights, {5, 17, 3}};
  const auto plain =
      atom::dispatch::resolve<PipelineId::dense_mlp>(atom::env::Config{}, BackendId::host);
  const auto checked = atom::dispatch::resolve<PipelineId::dense_mlp>(
      config_with("MYENGINE_CHECK_MLP", "1"), BackendId::host);
  std::printf("atom's: %s\nthe extension's: %s\n", std::string(plain.name()).c_str(),
              std::string(checked.name()).c_str());
  check(std::string_view(plain.name()).starts_with("dense_mlp.host."),
        "atom's instance by default");
  check(std::string_view(checked.name()).starts_with("myengine.dense_mlp.host."),
        "MYENGINE_CHECK_MLP=1 selects the extension's instance");
  check(pipeline::run_once(checked, in).out == pipeline::run_once(plain, in).out,
        "the checked dense MLP equals atom's bit for bit");

  // A NaN in the residual stream reaches the output: the checked MLP fails, naming it.
  {
    pipeline::DecodeState state(model, in.context_lens, in.seed);
    state.residual()(1, 2) = atom::to_bf16(std::nanf(""));
    pipeline::Workspace ws;
    bool threw = false;
    try {
      checked(pipeline::make_args<PipelineId::dense_mlp>(in, weights, state, ws));
    } catch (const std::runtime_error& e) {
      threw = std::strstr(e.what(), "dense_mlp: output (1, ") != nullptr;
      std::printf("NaN input: %s\n", e.what());
    }
    check(threw, "the checked dense MLP names a NaN output");
  }

  // The extension provides no GPU instance: resolving one is an error that says what exists.
  {
    bool threw = false;
    try {
      atom::dispatch::resolve<PipelineId::dense_mlp>(config_with("MYENGINE_CHECK_MLP", "1"),
                                                     BackendId::gpu);
    } catch (const atom::dispatch::DispatchError& e) {
      threw = std::strstr(e.what(), "myengine.mlp_check=on") != nullptr;
      std::printf("on the GPU: %s\n", e.what());
    }
    check(threw, "a backend the extension does not provide is a DispatchError naming its axis");
  }

  // A bad value of an extension's variable is reported as atom's are.
  {
    bool threw = false;
    try {
      config_with("MYENGINE_FUSED_ADD_NORM", "maybe");
    } catch (const atom::env::ConfigError& e) {
      threw =
          std::strstr(e.what(), "MYENGINE_FUSED_ADD_NORM=\"maybe\" is not a valid bool") != nullptr;
    }
    check(threw, "MYENGINE_FUSED_ADD_NORM=maybe is a ConfigError naming it");
  }

  // The extension's own pipeline, both fusion values: the same bits.
  const char* fused = nullptr;
  const char* separate = nullptr;
  const auto a = add_norm(config_with("MYENGINE_FUSED_ADD_NORM", "1"), &fused);
  const auto b = add_norm(config_with("MYENGINE_FUSED_ADD_NORM", "0"), &separate);
  std::printf("add_norm: %s and %s\n", fused, separate);
  check(std::memcmp(a.data(), b.data(), a.size() * sizeof(atom::bf16)) == 0,
        "add_norm fused equals add_norm separate bit for bit");
  const auto from_env = atom::extend::resolve<myengine::AddNorm>(config, BackendId::host);
  std::printf("add_norm from the environment: %s\n", std::string(from_env.name()).c_str());
  std::printf(failures == 0 ? "extension: all checks passed\n" : "extension: %d checks failed\n",
              failures);
  return failures == 0 ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "extension: %s\n", e.what());
  return 1;
}
