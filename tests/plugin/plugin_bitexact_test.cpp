// A run through the plugin's C ABI matches the direct C++ call bit for bit: the same preset, the
// same weight seed and the same decode batch, once through dispatch::resolve and once through
// libatom_plugin.so (dlopened, its own copy of atom inside), compared byte by byte in the output,
// the residual stream and the cache.
#include <dlfcn.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "atom/dispatch/dispatch.hpp"
#include "atom/pipeline/layer.hpp"
#include "atom/pipeline/storage.hpp"
#include "atom/plugin/atom_plugin.h"
#include "atom/plugin/models.hpp"
#include "plugin_library.hpp"

namespace {

using namespace atom;
using policy::PipelineId;

const atom_plugin_api& plugin_api() {
  static const atom_plugin_api& api = plugin_table(ATOM_PLUGIN_ABI_VERSION);
  return api;
}

template <class T, int R>
std::vector<unsigned char> bytes(View<T, R> v) {
  const auto* p = reinterpret_cast<const unsigned char*>(v.data);
  return {p, p + static_cast<std::size_t>(v.numel()) * sizeof(T)};
}

struct Snapshot {
  std::vector<unsigned char> out, residual, mla_cache, key, value, key_scale, value_scale;
  bool operator==(const Snapshot&) const = default;
};

Snapshot snapshot(const pipeline::DecodeState& s, bool mla) {
  Snapshot r{bytes(s.out()), bytes(s.residual()), {}, {}, {}, {}, {}};
  if (mla) {
    r.mla_cache = bytes(s.mla_cache());
  } else {
    const auto kv = std::get<ops::KvCacheFp8>(s.kv_cache());  // the presets' caches: fp8_row
    r.key = bytes(kv.key);
    r.value = bytes(kv.value);
    r.key_scale = bytes(kv.key_scale);
    r.value_scale = bytes(kv.value_scale);
  }
  return r;
}

template <PipelineId P>
pipeline::RunArgs<P> direct_args(const pipeline::ModelConfig& m, const pipeline::LayerWeights& w,
                                 const pipeline::DecodeState& s, pipeline::Workspace& ws,
                                 std::int64_t threshold) {
  const pipeline::BlockIo io{&m, {}, s.x(), s.residual(), s.out(), &ws};
  if constexpr (P == PipelineId::mla_attention)
    return pipeline::MlaArgs{io, &w.mla(), s.batch(), s.mla_cache()};
  else if constexpr (P == PipelineId::qwen3_attention)
    return pipeline::Qwen3AttentionArgs{io, &w.qwen3(), s.batch(), s.kv_cache()};
  else
    return pipeline::MoeArgs{io, &w.moe(), threshold, {}};
}

// A decoder layer directly: its attention and MoE blocks composed (pipeline/layer.hpp).
std::string run_direct_layer(const env::Config& c, const pipeline::ModelConfig& m,
                             const pipeline::LayerWeights& w, const pipeline::DecodeState& s) {
  const auto layer = pipeline::resolve_layer(m, pipeline::LayerKind::moe, policy::point_from(c),
                                             policy::WeightFormat::mxfp4,
                                             policy::WeightFormat::mxfp4, policy::BackendId::host);
  pipeline::Workspace ws;
  const bool mla = m.attention == pipeline::AttentionKind::mla;
  pipeline::run_layer(layer,
                      {mla ? &w.mla() : nullptr, mla ? nullptr : &w.qwen3(), &w.moe(), nullptr},
                      {{&m, {}, s.x(), s.residual(), s.out(), &ws},
                       s.intermediate(),
                       s.batch(),
                       s.mla_cache(),
                       s.kv_cache(),
                       c.get<env::Var::dual_stream_moe_token_threshold>(),
                       {}});
  return layer.name();
}

// Runs pipeline P directly; returns the instance name and what the run left in the state.
template <PipelineId P>
std::string run_direct(const env::Config& c, const pipeline::ModelConfig& m,
                       const pipeline::LayerWeights& w, const pipeline::DecodeState& s) {
  const auto handle = dispatch::resolve<P>(c, policy::BackendId::host);
  pipeline::Workspace ws;
  handle(direct_args<P>(m, w, s, ws, c.get<env::Var::dual_stream_moe_token_threshold>()));
  return std::string(handle.name());
}

std::string run_direct(PipelineId p, const env::Config& c, const pipeline::ModelConfig& m,
                       const pipeline::LayerWeights& w, const pipeline::DecodeState& s) {
  switch (p) {
    case PipelineId::mla_attention:
      return run_direct<PipelineId::mla_attention>(c, m, w, s);
    case PipelineId::moe_block:
      return run_direct<PipelineId::moe_block>(c, m, w, s);
    case PipelineId::qwen3_attention:
      return run_direct<PipelineId::qwen3_attention>(c, m, w, s);
    case PipelineId::dense_mlp:
      break;
  }
  return {};
}

// Runs the same pipeline through the ABI on the state's own buffers; returns the instance name.
std::string run_through_abi(const std::vector<const char*>& settings, const char* architecture,
                            const char* kind, const char* preset, std::uint64_t seed,
                            const pipeline::DecodeState& s, bool mla) {
  const atom_plugin_api& api = plugin_api();
  atom_plugin_registration* r = nullptr;
  REQUIRE(api.register_plugin(settings.data(), &r) == ATOM_PLUGIN_OK);
  atom_plugin_pipeline* p = nullptr;
  const auto created = api.create_pipeline(r, architecture, kind, preset, seed, &p);
  api.release_registration(r);
  INFO(api.last_error());
  REQUIRE(created == ATOM_PLUGIN_OK);
  atom_plugin_pipeline_info info{};
  REQUIRE(api.pipeline_info(p, &info) == ATOM_PLUGIN_OK);
  const std::string instance = info.instance;

  const auto batch = s.batch();
  atom_plugin_run_args a{};
  a.shape = {s.tokens(), batch.block_table.size(1), 0};
  const auto n = static_cast<std::size_t>(s.x().numel());
  a.x = reinterpret_cast<const std::uint16_t*>(s.x().data);
  a.residual = reinterpret_cast<std::uint16_t*>(s.residual().data);
  a.out = reinterpret_cast<std::uint16_t*>(s.out().data);
  a.x_count = a.residual_count = a.out_count = n;
  a.positions = batch.positions.data;
  a.slots = batch.slots.data;
  a.context_lens = batch.context_lens.data;
  a.positions_count = a.slots_count = a.context_lens_count = static_cast<std::size_t>(s.tokens());
  a.block_table = batch.block_table.data;
  a.block_table_count = static_cast<std::size_t>(batch.block_table.numel());
  if (mla) {
    const auto c = s.mla_cache();
    a.shape.num_blocks = c.size(0);
    a.mla_cache = reinterpret_cast<std::uint16_t*>(c.data);
    a.mla_cache_count = static_cast<std::size_t>(c.numel());
  } else {
    const auto kv = std::get<ops::KvCacheFp8>(s.kv_cache());
    a.shape.num_blocks = kv.num_blocks();
    a.key_cache = kv.key.data;
    a.value_cache = kv.value.data;
    a.key_cache_count = a.value_cache_count = static_cast<std::size_t>(kv.key.numel());
    a.key_scale = kv.key_scale.data;
    a.value_scale = kv.value_scale.data;
    a.key_scale_count = a.value_scale_count = static_cast<std::size_t>(kv.key_scale.numel());
  }
  const auto ran = api.run(p, &a, nullptr);
  INFO(api.last_error());
  CHECK(ran == ATOM_PLUGIN_OK);
  api.destroy_pipeline(p);
  return instance;
}

// Two settings: everything at its default (fusions on, dual stream), and every fusion off.
const std::vector<std::vector<const char*>>& settings_sets() {
  static const std::vector<std::vector<const char*>> sets{
      {nullptr},
      {"ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION", "0", "ATOM_ENABLE_DS_INPUT_RMSNORM_QUANT_FUSION",
       "0", "ATOM_ENABLE_DS_QKNORM_FUSION", "0", "ATOM_ENABLE_DS_QKNORM_QUANT_FUSION", "0",
       "ATOM_DUAL_STREAM_MOE_TOKEN_THRESHOLD", "0", nullptr}};
  return sets;
}

env::Config config_of(const std::vector<const char*>& settings) {
  env::Environment e;
  for (std::size_t i = 0; settings[i] != nullptr; i += 2) e[settings[i]] = settings[i + 1];
  return env::Config::from(e);
}

// Token t of T gets a context between 1 and 70, different per token.
std::vector<std::int32_t> contexts(std::int32_t tokens) {
  std::vector<std::int32_t> lens;
  for (std::int32_t t = 0; t < tokens; ++t) lens.push_back(1 + (t * 37 + 5) % 70);
  return lens;
}

void check_bit_exact(const plugin::ModelSpec& spec, plugin::Kind kind, const char* preset) {
  const auto model = pipeline::preset(preset);
  const bool mla = model.attention == pipeline::AttentionKind::mla;
  const std::uint64_t weight_seed = 1000 + Catch::rngSeed();
  const pipeline::LayerWeights weights(model, weight_seed);
  for (const auto& settings : settings_sets()) {
    const env::Config config = config_of(settings);
    for (const std::int32_t tokens : {1, 3, 16, 17}) {
      CAPTURE(spec.architecture, plugin::kind_name(kind), tokens, settings.size());
      const auto lens = contexts(tokens);
      const std::uint64_t batch_seed = 7 + Catch::rngSeed() + static_cast<std::uint64_t>(tokens);
      const pipeline::DecodeState direct(model, lens, batch_seed);
      const pipeline::DecodeState through_abi(model, lens, batch_seed);
      REQUIRE(snapshot(direct, mla) == snapshot(through_abi, mla));

      const std::string direct_instance =
          kind == plugin::Kind::layer
              ? run_direct_layer(config, model, weights, direct)
              : run_direct(plugin::pipeline_of(spec, kind), config, model, weights, direct);
      const std::string abi_instance =
          run_through_abi(settings, spec.architecture, plugin::kind_name(kind), preset, weight_seed,
                          through_abi, mla);
      CHECK(abi_instance == direct_instance);

      const Snapshot want = snapshot(direct, mla);
      const Snapshot got = snapshot(through_abi, mla);
      // Every output element was written (the states start with NaN in out), and finite.
      const auto out = through_abi.out();
      index_t non_finite = 0;
      for (index_t i = 0; i < out.numel(); ++i) non_finite += !std::isfinite(to_float(out.data[i]));
      CHECK(non_finite == 0);
      CHECK(got.out == want.out);
      CHECK(got.residual == want.residual);
      CHECK(got.mla_cache == want.mla_cache);
      CHECK(got.key == want.key);
      CHECK(got.value == want.value);
      CHECK(got.key_scale == want.key_scale);
      CHECK(got.value_scale == want.value_scale);
    }
  }
}

}  // namespace

TEST_CASE("plugin ABI run matches the direct call bit for bit: DeepSeek-V3 layer") {
  check_bit_exact(plugin::models[0], plugin::Kind::layer, "deepseek-v3-tiny");
}
TEST_CASE("plugin ABI run matches the direct call bit for bit: MLA attention") {
  check_bit_exact(plugin::models[0], plugin::Kind::attention, "deepseek-v3-tiny");
}
TEST_CASE("plugin ABI run matches the direct call bit for bit: DeepSeek-V3 MoE block") {
  check_bit_exact(plugin::models[0], plugin::Kind::moe, "deepseek-v3-tiny");
}
TEST_CASE("plugin ABI run matches the direct call bit for bit: Qwen3-MoE layer") {
  check_bit_exact(plugin::models[1], plugin::Kind::layer, "qwen3-30b-a3b-tiny");
}
TEST_CASE("plugin ABI run matches the direct call bit for bit: Qwen3 paged GQA attention") {
  check_bit_exact(plugin::models[1], plugin::Kind::attention, "qwen3-30b-a3b-tiny");
}
TEST_CASE("plugin ABI run matches the direct call bit for bit: Qwen3-MoE MoE block") {
  check_bit_exact(plugin::models[1], plugin::Kind::moe, "qwen3-30b-a3b-tiny");
}

TEST_CASE("plugin registration follows the C++ table for every combination of the variables") {
  const atom_plugin_api& api = plugin_api();
  for (const bool disable_plugin : {false, true}) {
    for (const bool disable_attention : {false, true}) {
      CAPTURE(disable_plugin, disable_attention);
      const std::vector<const char*> settings{
          "ATOM_DISABLE_VLLM_PLUGIN", disable_plugin ? "1" : "0",
          "ATOM_DISABLE_VLLM_PLUGIN_ATTENTION", disable_attention ? "1" : "0", nullptr};
      const auto want = plugin::registration_from(config_of(settings));
      CHECK(want.plugin == !disable_plugin);
      CHECK(want.attention == (!disable_plugin && !disable_attention));
      atom_plugin_registration* r = nullptr;
      REQUIRE(api.register_plugin(settings.data(), &r) == ATOM_PLUGIN_OK);
      atom_plugin_registration_info info{};
      REQUIRE(api.registration_info(r, &info) == ATOM_PLUGIN_OK);
      CHECK(info.plugin_enabled == (want.plugin ? 1 : 0));
      CHECK(info.attention_enabled == (want.attention ? 1 : 0));
      CHECK(info.model_count == want.model_count());
      CHECK(info.attention_backend_count == want.attention_backend_count());
      for (std::size_t i = 0; i < info.model_count; ++i) {
        atom_plugin_model m{};
        REQUIRE(api.model(r, i, &m) == ATOM_PLUGIN_OK);
        for (const plugin::Kind k : plugin::kinds) {
          const char* name = k == plugin::Kind::layer       ? m.layer_pipeline
                             : k == plugin::Kind::attention ? m.attention_pipeline
                                                            : m.moe_pipeline;
          CHECK((name != nullptr) == want.serves(k));
          if (name != nullptr && k != plugin::Kind::layer)
            CHECK(std::string(name) ==
                  policy::pipeline_name(plugin::pipeline_of(plugin::models[i], k)));
        }
      }
      api.release_registration(r);
    }
  }
}

TEST_CASE("plugin error messages are per thread") {
  const atom_plugin_api& api = plugin_api();
  atom_plugin_registration* r = nullptr;
  const std::vector<const char*> defaults{nullptr};
  REQUIRE(api.register_plugin(defaults.data(), &r) == ATOM_PLUGIN_OK);
  atom_plugin_pipeline* p = nullptr;
  REQUIRE(api.create_pipeline(r, "GPT2LMHeadModel", "layer", "gpt2", 1, &p) ==
          ATOM_PLUGIN_ERROR_UNKNOWN_ARCHITECTURE);
  const std::string here = api.last_error();
  CHECK(here.find("unknown architecture 'GPT2LMHeadModel'") != std::string::npos);
  std::string there_before;
  std::string there_after;
  std::thread other([&] {
    there_before = api.last_error();
    atom_plugin_pipeline* q = nullptr;
    CHECK(api.create_pipeline(r, "DeepseekV3ForCausalLM", "mlp", "deepseek-v3-tiny", 1, &q) ==
          ATOM_PLUGIN_ERROR_UNKNOWN_NAME);
    there_after = api.last_error();
  });
  other.join();
  CHECK(there_before.empty());
  CHECK(there_after.find("unknown pipeline kind 'mlp'") != std::string::npos);
  CHECK(std::string(api.last_error()) == here);
  api.release_registration(r);
}
