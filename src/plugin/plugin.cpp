// libatom_plugin.so: the C ABI of atom_plugin.h over the dispatch table, the host and (in a GPU
// build) GPU pipelines and the checkpoint loader.
// Every entry point catches everything: a host sees a status and a message, never an exception.
#include "atom/plugin/atom_plugin.h"

// Whether the dispatch table holds GPU instantiations (atom::instances defines it; builds of the
// plugin's sources without it, the fuzzer's, are host only).
#ifndef ATOM_GPU_INSTANCES
#define ATOM_GPU_INSTANCES 0
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <numeric>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "atom/dispatch/dispatch.hpp"
#include "atom/dist/tp.hpp"
#include "atom/io/loader.hpp"
#include "atom/model/checkpoint.hpp"
#include "atom/model/decode.hpp"
#include "atom/model/hf_config.hpp"
#include "atom/ops/cache.hpp"
#include "atom/ops/norm.hpp"
#include "atom/pipeline/layer.hpp"
#include "atom/pipeline/storage.hpp"
#include "atom/pipeline/tp.hpp"
#include "atom/plugin/models.hpp"
#if ATOM_GPU_INSTANCES
#include "atom/gpu/device.hpp"
#include "atom/ops/gpu/norm.hpp"
#include "atom/pipeline/device_storage.hpp"
#endif

using namespace atom;
using policy::PipelineId;

struct atom_plugin_registration {
  plugin::Registration allowed;
  env::Config config;
  std::string warnings;
};

namespace {

// A block, or a decoder layer composed of the attention and MoE blocks.
using AnyHandle =
    std::variant<dispatch::Handle<PipelineId::mla_attention>,
                 dispatch::Handle<PipelineId::moe_block>,
                 dispatch::Handle<PipelineId::qwen3_attention>, pipeline::LayerHandles>;

// The handle of `kind` at `point` (from the settings) with the blocks' weight formats and the
// format of the GQA cache it will be given (the axis the other pipelines fold).
AnyHandle resolve_handle(const plugin::ModelSpec& spec, plugin::Kind kind,
                         const pipeline::ModelConfig& model, pipeline::LayerKind layer_kind,
                         policy::Point settings, ops::KvCacheFormat kv_format,
                         policy::WeightFormat attention_format, policy::WeightFormat mlp_format,
                         policy::BackendId host) {
  const policy::Point point = settings.with(kv_format);
  if (kind == plugin::Kind::layer)
    return pipeline::resolve_layer(model, layer_kind, point, attention_format, mlp_format, host);
  const policy::Point a = point.with(attention_format);
  switch (plugin::pipeline_of(spec, kind)) {
    case PipelineId::mla_attention:
      return dispatch::resolve_point<PipelineId::mla_attention>(a, host);
    case PipelineId::moe_block:
      return dispatch::resolve_point<PipelineId::moe_block>(point.with(mlp_format), host);
    case PipelineId::qwen3_attention:
      return dispatch::resolve_point<PipelineId::qwen3_attention>(a, host);
    case PipelineId::dense_mlp:
      break;
  }
  throw std::logic_error("a plugin kind without a pipeline");
}

#if ATOM_GPU_INSTANCES
// A GPU pipeline's device side: its weights' device copies, a layer's intermediate (the attention
// block's output) for max_tokens tokens, and the MoE block's side stream.
struct DeviceSide {
  DeviceSide(const pipeline::ModelConfig& m, const pipeline::LayerWeights& host,
             policy::GemmBackend gemm, std::int64_t max_tokens)
      : weights(m, host, {gemm}), intermediate(static_cast<std::size_t>(max_tokens * m.hidden)) {}

  pipeline::DeviceLayerWeights weights;
  gpu::Buffer<bf16> intermediate;
  gpu::Stream side;
};
#endif

class EngineComm;

}  // namespace

struct atom_plugin_pipeline {
  atom_plugin_pipeline(const plugin::ModelSpec& s, plugin::Kind k, pipeline::ModelConfig m,
                       std::string from, const env::Config& config, AnyHandle h)
      : spec(&s),
        kind(k),
        model(std::move(m)),
        source(std::move(from)),
        dual_stream_threshold(config.get<env::Var::dual_stream_moe_token_threshold>()),
        handle(std::move(h)),
        instance(std::visit([](const auto& x) { return std::string(x.name()); }, handle)) {}

  const plugin::ModelSpec* spec = nullptr;
  plugin::Kind kind = plugin::Kind::layer;
  pipeline::ModelConfig model;
  // The GQA cache format the handle reads (ABI 4's options.kv_cache); MLA and moe: unused.
  ops::KvCacheFormat kv_format = ops::KvCacheFormat::fp8_row;
  std::string source;  // the preset, or the checkpoint folder
  // A loaded layer's checkpoint: its files stay open while the weights may map them.
  std::unique_ptr<model::HfCheckpoint> checkpoint;
  std::unique_ptr<pipeline::LayerWeights> weights;  // host weights (released once on the GPU)
  pipeline::LayerKind layer_kind = pipeline::LayerKind::moe;
  policy::BackendId backend = policy::BackendId::host;
  pipeline::LayerBlockWeights blocks;  // the weights the handle reads, in the backend's memory
  std::int64_t dual_stream_threshold = 0;
  AnyHandle handle;
  std::string instance;
  std::int64_t max_tokens = 0;  // 0: no bound (version 1's pipelines size on demand)
  pipeline::Workspace workspace;
  std::vector<bf16> host_intermediate;  // a layer's attention output, the MLP block's input
  std::vector<std::int32_t> starts;     // 0, 1, ..., tokens: ABI 1's token t is sequence t
  // Tensor parallelism (ABI 3): the KV heads this rank's cache holds, and the engine's
  // communicator (null at size 1; the rank's place is its rank and size).
  pipeline::Part kv_heads{0, model.num_kv_heads};
  std::unique_ptr<EngineComm> comm;
#if ATOM_GPU_INSTANCES
  std::unique_ptr<DeviceSide> device;  // GPU pipelines only
#endif

  View2<bf16> intermediate(index_t tokens) {
#if ATOM_GPU_INSTANCES
    if (device) return make_view(device->intermediate.data(), tokens, model.hidden);
#endif
    host_intermediate.resize(static_cast<std::size_t>(tokens * model.hidden));
    return make_view(host_intermediate.data(), tokens, model.hidden);
  }
  void* side_stream() const {
#if ATOM_GPU_INSTANCES
    if (device) return device->side.handle();
#endif
    return nullptr;
  }
};

namespace {

thread_local std::string last_error_text;

// A failure with the status the host sees; thrown inside an entry point, caught at its edge.
struct Failure {
  atom_plugin_status status;
  std::string message;
};

[[noreturn]] void raise(atom_plugin_status status, std::string message) {
  throw Failure{status, std::move(message)};
}

template <class T>
void require(const T* p, std::string_view name) {
  if (p == nullptr)
    raise(ATOM_PLUGIN_ERROR_NULL_POINTER, "argument '" + std::string(name) + "' is NULL");
}

// An engine's communicator (ABI 3) as the blocks' TpComm. Its fused all-reduce + norm is the
// all-reduce into scratch memory followed by the norm (the arithmetic of HostTpGroup's fused
// form). Until engage(), reductions stay local (out := x): the load's sizing run runs the blocks
// without calling into the engine, so that the ranks load independently.
class EngineComm final : public pipeline::TpComm {
 public:
  EngineComm(const atom_plugin_communicator& c, policy::BackendId backend, index_t max_values)
      : c_(c), backend_(backend) {
#if ATOM_GPU_INSTANCES
    if (backend == policy::BackendId::gpu) {
      device_scratch_ = std::make_unique<gpu::Buffer<bf16>>(static_cast<std::size_t>(max_values));
      return;
    }
#endif
    host_scratch_.resize(static_cast<std::size_t>(max_values));
  }
  index_t rank() const noexcept override {
    return c_.rank;
  }
  index_t size() const noexcept override {
    return c_.size;
  }
  void engage() {
    engaged_ = true;
  }

  void all_reduce(View2<const bf16> x, View2<bf16> out, void* stream) override {
    if (!engaged_) {
      if (out.data != x.data) on_backend(stream, [&](const auto& b) { ops::copy(b, x, out); });
      return;
    }
    const std::int32_t rc = c_.all_reduce_bf16(
        c_.context, reinterpret_cast<const std::uint16_t*>(x.data),
        reinterpret_cast<std::uint16_t*>(out.data), static_cast<std::uint64_t>(x.numel()), stream);
    if (rc != 0)
      raise(ATOM_PLUGIN_ERROR_COMMUNICATOR,
            "the engine's all_reduce_bf16 returned " + std::to_string(rc) + " on rank " +
                std::to_string(c_.rank) + " of " + std::to_string(c_.size) + " (" +
                std::to_string(x.numel()) + " values); the run's outputs are unspecified");
  }

  void all_reduce_add_rms_norm(View2<const bf16> x, View2<bf16> residual, View1<const bf16> weight,
                               float eps, const pipeline::NormOutput& out, void* stream) override {
    const auto sum = make_view(scratch(x.numel()), x.size(0), x.size(1));
    all_reduce(x, sum, stream);
    on_backend(stream, [&](const auto& b) {
      pipeline::add_rms_norm_into(b, View2<const bf16>(sum), residual, weight, eps, out);
    });
  }

 private:
  template <class F>
  void on_backend(void* stream, F&& f) const {
#if ATOM_GPU_INSTANCES
    if (backend_ == policy::BackendId::gpu) return f(ops::Gpu{stream});
#endif
    static_cast<void>(stream);
    f(ops::Host{});
  }
  bf16* scratch(index_t n) {
#if ATOM_GPU_INSTANCES
    if (device_scratch_) {
      if (static_cast<std::size_t>(n) > device_scratch_->size())
        raise(ATOM_PLUGIN_ERROR_INTERNAL, "a reduction larger than the load sized");
      return device_scratch_->data();
    }
#endif
    if (static_cast<std::size_t>(n) > host_scratch_.size())
      raise(ATOM_PLUGIN_ERROR_INTERNAL, "a reduction larger than the load sized");
    return host_scratch_.data();
  }

  atom_plugin_communicator c_;
  policy::BackendId backend_;
  bool engaged_ = false;
  std::vector<bf16> host_scratch_;
#if ATOM_GPU_INSTANCES
  std::unique_ptr<gpu::Buffer<bf16>> device_scratch_;
#endif
};

std::string joined(const std::vector<std::string>& lines, std::string_view sep) {
  std::string out;
  for (const auto& l : lines) out += (out.empty() ? "" : std::string(sep)) + l;
  return out;
}

template <class F>
atom_plugin_status guarded(std::string_view function, F&& body) noexcept {
  auto fail = [&](atom_plugin_status s, std::string_view what) noexcept {
    try {
      last_error_text = std::string(function) + ": " + std::string(what);
    } catch (...) {
      last_error_text.clear();
    }
    return s;
  };
  try {
    body();
    return ATOM_PLUGIN_OK;
  } catch (const Failure& e) {
    return fail(e.status, e.message);
  } catch (const env::ConfigError& e) {
    return fail(ATOM_PLUGIN_ERROR_CONFIG, joined(e.errors(), "; "));
  } catch (const dispatch::DispatchError& e) {
    return fail(ATOM_PLUGIN_ERROR_NO_INSTANCE, e.what());
  } catch (const std::invalid_argument& e) {
    return fail(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, e.what());
  } catch (const std::bad_alloc&) {
    return fail(ATOM_PLUGIN_ERROR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail(ATOM_PLUGIN_ERROR_INTERNAL, e.what());
  } catch (...) {
    return fail(ATOM_PLUGIN_ERROR_INTERNAL, "unknown exception");
  }
}

const char* last_error() {
  return last_error_text.c_str();
}

// The name/value list of register_plugin, checked against the registry.
env::Environment settings_environment(const char* const* settings) {
  env::Environment e;
  for (std::size_t i = 0; settings[i] != nullptr; i += 2) {
    const std::string_view name = settings[i];
    if (settings[i + 1] == nullptr)
      raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
            "settings[" + std::to_string(i) + "] = '" + env::printable(name) +
                "' has no value; the list holds name/value pairs and ends with NULL");
    const bool known = std::any_of(env::registry.begin(), env::registry.end(),
                                   [&](const env::VarSpec& s) { return s.name == name; });
    if (!known) {
      std::string msg =
          "settings[" + std::to_string(i) + "]: unknown variable '" + env::printable(name) + "'";
      if (auto near = env::nearest_name(name)) msg += "; did you mean " + std::string(*near) + "?";
      raise(ATOM_PLUGIN_ERROR_UNKNOWN_NAME, msg);
    }
    if (!e.emplace(std::string(name), settings[i + 1]).second)
      raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
            "settings[" + std::to_string(i) + "]: " + std::string(name) + " is given twice");
  }
  return e;
}

atom_plugin_status register_plugin(const char* const* settings, atom_plugin_registration** out) {
  if (out != nullptr) *out = nullptr;
  return guarded("register_plugin", [&] {
    require(out, "out");
    const env::Environment environment =
        settings == nullptr ? env::process_environment() : settings_environment(settings);
    env::Reading reading = env::Config::read(environment);
    if (!reading.config) raise(ATOM_PLUGIN_ERROR_CONFIG, joined(reading.errors, "; "));
    auto r = std::make_unique<atom_plugin_registration>(
        atom_plugin_registration{plugin::registration_from(*reading.config), *reading.config,
                                 joined(reading.warnings, "\n")});
    *out = r.release();
  });
}

void release_registration(atom_plugin_registration* r) {
  delete r;
}

atom_plugin_status registration_info(const atom_plugin_registration* r,
                                     atom_plugin_registration_info* out) {
  return guarded("registration_info", [&] {
    require(r, "registration");
    require(out, "out");
    *out = {r->allowed.plugin ? 1 : 0, r->allowed.attention ? 1 : 0, r->allowed.model_count(),
            r->allowed.attention_backend_count(), r->warnings.c_str()};
  });
}

void expect_index(std::size_t index, std::size_t count, std::string_view what,
                  const atom_plugin_registration& r) {
  if (index < count) return;
  std::string why = "index " + std::to_string(index) + " is not below the " +
                    std::to_string(count) + " registered " + std::string(what);
  if (!r.allowed.plugin)
    why += " (ATOM_DISABLE_VLLM_PLUGIN is set)";
  else if (what == "attention backends" && !r.allowed.attention)
    why += " (ATOM_DISABLE_VLLM_PLUGIN_ATTENTION is set)";
  raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, why);
}

atom_plugin_status model(const atom_plugin_registration* r, std::size_t index,
                         atom_plugin_model* out) {
  return guarded("model", [&] {
    require(r, "registration");
    require(out, "out");
    expect_index(index, r->allowed.model_count(), "models", *r);
    const plugin::ModelSpec& m = plugin::models[index];
    auto name_of = [&](plugin::Kind k) {
      return r->allowed.serves(k) ? m.pipeline_names[static_cast<std::size_t>(k)] : nullptr;
    };
    *out = {m.architecture,
            name_of(plugin::Kind::layer),
            name_of(plugin::Kind::attention),
            name_of(plugin::Kind::moe),
            r->allowed.attention ? plugin::attention_backends[m.attention_backend].name : nullptr,
            m.presets.data(),
            m.presets.size()};
  });
}

atom_plugin_status attention_backend(const atom_plugin_registration* r, std::size_t index,
                                     atom_plugin_attention_backend* out) {
  return guarded("attention_backend", [&] {
    require(r, "registration");
    require(out, "out");
    expect_index(index, r->allowed.attention_backend_count(), "attention backends", *r);
    const auto& b = plugin::attention_backends[index];
    *out = {b.name, b.pipeline_name, b.cache_layout};
  });
}

std::string known_architectures() {
  std::string s;
  for (const auto& m : plugin::models) s += (s.empty() ? "" : ", ") + std::string(m.architecture);
  return s;
}

// The kind named `kind` of `spec`, if the registration serves it.
plugin::Kind served_kind(const atom_plugin_registration& r, const plugin::ModelSpec& spec,
                         const char* kind) {
  const auto k = plugin::kind_from(kind);
  if (!k)
    raise(ATOM_PLUGIN_ERROR_UNKNOWN_NAME,
          "unknown pipeline kind '" + env::printable(kind) + "'; expected layer, attention or moe");
  if (!r.allowed.plugin)
    raise(ATOM_PLUGIN_ERROR_NOT_REGISTERED, std::string(spec.architecture) +
                                                " is not registered: ATOM_DISABLE_VLLM_PLUGIN "
                                                "is set, so atom registers nothing");
  if (!r.allowed.serves(*k))
    raise(ATOM_PLUGIN_ERROR_NOT_REGISTERED,
          "the " + std::string(kind) + " pipeline of " + spec.architecture +
              " contains attention, and ATOM_DISABLE_VLLM_PLUGIN_ATTENTION is set: the host "
              "engine's attention is used; only the moe kind is registered");
  return *k;
}

atom_plugin_status create_pipeline(const atom_plugin_registration* r, const char* architecture,
                                   const char* kind, const char* preset, std::uint64_t seed,
                                   atom_plugin_pipeline** out) {
  if (out != nullptr) *out = nullptr;
  return guarded("create_pipeline", [&] {
    require(r, "registration");
    require(architecture, "architecture");
    require(kind, "kind");
    require(preset, "preset");
    require(out, "out");
    const plugin::ModelSpec* spec = plugin::find_model(architecture);
    if (spec == nullptr)
      raise(ATOM_PLUGIN_ERROR_UNKNOWN_ARCHITECTURE, "unknown architecture '" +
                                                        env::printable(architecture) +
                                                        "'; atom serves " + known_architectures());
    const plugin::Kind k = served_kind(*r, *spec, kind);
    const auto preset_it =
        std::find_if(spec->presets.begin(), spec->presets.end(),
                     [&](const char* p) { return std::string_view(p) == preset; });
    if (preset_it == spec->presets.end())
      raise(ATOM_PLUGIN_ERROR_UNKNOWN_NAME,
            "preset '" + env::printable(preset) + "' is not a model of " + spec->architecture +
                "; expected " + spec->presets[0] + " or " + spec->presets[1]);

    const pipeline::ModelConfig model = pipeline::preset(*preset_it);
    // The presets' generated weights are MXFP4 throughout.
    constexpr auto mxfp4 = policy::WeightFormat::mxfp4;
    auto p = std::make_unique<atom_plugin_pipeline>(
        *spec, k, model, *preset_it, r->config,
        resolve_handle(*spec, k, model, pipeline::LayerKind::moe, policy::point_from(r->config),
                       ops::KvCacheFormat::fp8_row, mxfp4, mxfp4, policy::BackendId::host));
    p->weights = std::make_unique<pipeline::LayerWeights>(p->model, seed);
    p->blocks = pipeline::block_weights(p->model, p->layer_kind, *p->weights);
    *out = p.release();
  });
}

void destroy_pipeline(atom_plugin_pipeline* p) {
  delete p;
}

bool reads_batch(plugin::Kind kind) {
  return kind != plugin::Kind::moe;
}

atom_plugin_cache_kind kv_cache_kind(ops::KvCacheFormat f) {
  switch (f) {
    case ops::KvCacheFormat::fp8_row:
      return ATOM_PLUGIN_CACHE_FP8_KV;
    case ops::KvCacheFormat::fp8_tensor:
      return ATOM_PLUGIN_CACHE_KV_FP8_TENSOR;
    case ops::KvCacheFormat::bf16:
      return ATOM_PLUGIN_CACHE_KV_BF16;
  }
  throw std::logic_error("a KV cache format without a cache kind");
}

atom_plugin_cache_kind cache_kind_of(const atom_plugin_pipeline& p) {
  if (!reads_batch(p.kind)) return ATOM_PLUGIN_CACHE_NONE;
  return p.model.attention == pipeline::AttentionKind::mla ? ATOM_PLUGIN_CACHE_MLA_LATENT
                                                           : kv_cache_kind(p.kv_format);
}

// Whether the pipeline reads a GQA key/value cache (of any format).
bool reads_kv_cache(const atom_plugin_pipeline& p) {
  return reads_batch(p.kind) && p.model.attention == pipeline::AttentionKind::gqa;
}

// Elements of one cache slot: MLA's latent row, or the KV heads this rank's cache holds.
index_t cache_row(const atom_plugin_pipeline& p) {
  const pipeline::ModelConfig& m = p.model;
  return m.attention == pipeline::AttentionKind::mla ? m.kv_lora_rank + m.qk_rope_dim
                                                     : p.kv_heads.count * m.head_dim;
}

atom_plugin_status pipeline_info(const atom_plugin_pipeline* p, atom_plugin_pipeline_info* out) {
  return guarded("pipeline_info", [&] {
    require(p, "pipeline");
    require(out, "out");
    const bool kv = reads_kv_cache(*p);
    *out = {p->spec->architecture,
            plugin::kind_name(p->kind),
            p->source.c_str(),
            p->spec->pipeline_names[static_cast<std::size_t>(p->kind)],
            p->instance.c_str(),
            p->backend == policy::BackendId::gpu ? "gpu" : "host",
            p->model.hidden,
            p->model.block_size,
            p->model.max_position,
            cache_kind_of(*p),
            cache_kind_of(*p) == ATOM_PLUGIN_CACHE_NONE ? 0 : cache_row(*p),
            kv ? p->kv_heads.count : 0,
            kv ? p->model.head_dim : 0};
  });
}

// Bounds that keep every element count below 2^63 for any model, so no size computation
// overflows; far beyond what a host can allocate anyway.
constexpr std::int64_t max_tokens = std::int64_t{1} << 24;
constexpr std::int64_t max_blocks_per_token = std::int64_t{1} << 24;
constexpr std::int64_t max_num_blocks = std::numeric_limits<std::int32_t>::max();

void expect_extent(std::string_view name, std::int64_t v, std::int64_t max) {
  if (v < 1 || v > max)
    raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "shape." + std::string(name) + " is " +
                                                  std::to_string(v) + ", expected 1.." +
                                                  std::to_string(max));
}

// The cache buffers' element counts of either version's sizes: the key/value caches in the
// format's elements, its scales one per row (fp8_row), one per tensor (fp8_tensor) or none.
template <class Sizes>
void set_cache_sizes(const atom_plugin_pipeline& p, std::int64_t num_blocks, Sizes& z) {
  const auto slots = static_cast<std::size_t>(num_blocks * p.model.block_size);
  if (cache_kind_of(p) == ATOM_PLUGIN_CACHE_MLA_LATENT) {
    z.mla_cache = slots * static_cast<std::size_t>(cache_row(p));
    return;
  }
  z.key_cache = z.value_cache = slots * static_cast<std::size_t>(cache_row(p));
  switch (p.kv_format) {
    case ops::KvCacheFormat::fp8_row:
      z.key_scale = z.value_scale = slots * static_cast<std::size_t>(p.kv_heads.count);
      break;
    case ops::KvCacheFormat::fp8_tensor:
      z.key_scale = z.value_scale = 1;
      break;
    case ops::KvCacheFormat::bf16:
      z.key_scale = z.value_scale = 0;
      break;
  }
}

// Bytes of one element of the key/value caches.
std::size_t kv_element_size(const atom_plugin_pipeline& p) {
  return p.kv_format == ops::KvCacheFormat::bf16 ? sizeof(bf16) : sizeof(fp8_e4m3);
}

// A run's token count: within the ABI's limit and the pipeline's max_tokens (its workspace and
// a tensor-parallel rank's reduction scratch are sized for that many at load; version 1's
// pipelines have no bound and size on demand).
void expect_tokens(const atom_plugin_pipeline& p, std::int64_t tokens) {
  expect_extent("tokens", tokens, max_tokens);
  if (p.max_tokens > 0 && tokens > p.max_tokens)
    raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
          "shape.tokens is " + std::to_string(tokens) + ", above the pipeline's max_tokens " +
              std::to_string(p.max_tokens) + " (atom_plugin_load_options.max_tokens)");
}

atom_plugin_buffer_sizes sizes_for(const atom_plugin_pipeline& p,
                                   const atom_plugin_batch_shape& s) {
  expect_tokens(p, s.tokens);
  const auto t = static_cast<std::size_t>(s.tokens);
  const auto act = t * static_cast<std::size_t>(p.model.hidden);
  atom_plugin_buffer_sizes z{};
  z.x = z.residual = z.out = act;
  if (!reads_batch(p.kind)) return z;
  expect_extent("max_blocks_per_token", s.max_blocks_per_token, max_blocks_per_token);
  expect_extent("num_blocks", s.num_blocks, max_num_blocks);
  z.positions = z.slots = z.context_lens = t;
  z.block_table = t * static_cast<std::size_t>(s.max_blocks_per_token);
  set_cache_sizes(p, s.num_blocks, z);
  return z;
}

atom_plugin_status buffer_sizes(const atom_plugin_pipeline* p, const atom_plugin_batch_shape* s,
                                atom_plugin_buffer_sizes* out) {
  return guarded("buffer_sizes", [&] {
    require(p, "pipeline");
    require(s, "shape");
    require(out, "out");
    *out = sizes_for(*p, *s);
  });
}

// One host buffer of run's arguments, for the pointer, size and overlap checks.
struct Buffer {
  const char* name;
  const void* data;
  std::size_t count;
  std::size_t element_size;
  std::size_t needed;
  const char* layout;
  bool written;
};

void expect_buffers(const std::vector<Buffer>& buffers) {
  for (const auto& b : buffers) {
    if (b.needed == 0) continue;
    if (b.data == nullptr)
      raise(ATOM_PLUGIN_ERROR_NULL_POINTER, "args." + std::string(b.name) + " is NULL");
    if (b.count < b.needed)
      raise(ATOM_PLUGIN_ERROR_BUFFER_TOO_SMALL,
            "args." + std::string(b.name) + " holds " + std::to_string(b.count) + " elements; " +
                b.layout + " needs " + std::to_string(b.needed));
  }
  // A buffer the run writes must not alias any other, or the run would read what it has written.
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    for (std::size_t j = i + 1; j < buffers.size(); ++j) {
      const Buffer& a = buffers[i];
      const Buffer& b = buffers[j];
      if (a.needed == 0 || b.needed == 0 || !(a.written || b.written)) continue;
      const auto a0 = reinterpret_cast<std::uintptr_t>(a.data);
      const auto b0 = reinterpret_cast<std::uintptr_t>(b.data);
      if (a0 < b0 + b.needed * b.element_size && b0 < a0 + a.needed * a.element_size)
        raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
              "args." + std::string(a.name) + " overlaps args." + b.name);
    }
  }
}

// Positions inside the model's range (padded tokens too: their rotation is computed) and slots
// -1 or inside the cache of `capacity` rows, each written by one token at most.
void expect_positions_and_slots(const atom_plugin_pipeline& p, const std::int64_t* positions,
                                const std::int64_t* slots, std::int64_t tokens,
                                std::int64_t capacity) {
  std::set<std::int64_t> written;
  for (std::int64_t t = 0; t < tokens; ++t) {
    // Messages are built only on failure: this loop runs on every call.
    auto entry = [t](const char* name) {
      return "args." + std::string(name) + "[" + std::to_string(t) + "]";
    };
    const std::int64_t pos = positions[t];
    if (pos < 0 || pos >= p.model.max_position)
      raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, entry("positions") + " is " + std::to_string(pos) +
                                                    ", expected 0.." +
                                                    std::to_string(p.model.max_position - 1));
    const std::int64_t slot = slots[t];
    if (slot == -1) continue;
    if (slot < 0 || slot >= capacity)
      raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, entry("slots") + " is " + std::to_string(slot) +
                                                    ", expected -1 or 0.." +
                                                    std::to_string(capacity - 1));
    if (!written.insert(slot).second)
      raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
            entry("slots") + " is " + std::to_string(slot) + ", written by an earlier token");
  }
}

// Every entry a version 1 run will index, checked before anything is written.
void expect_batch(const atom_plugin_pipeline& p, const atom_plugin_run_args& a) {
  const auto& s = a.shape;
  const std::int64_t bs = p.model.block_size;
  const std::int64_t max_context = std::min(p.model.max_position, s.max_blocks_per_token * bs);
  for (std::int64_t t = 0; t < s.tokens; ++t) {
    const std::int64_t len = a.context_lens[t];
    if (len < 1 || len > max_context)
      raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
            "args.context_lens[" + std::to_string(t) + "] is " + std::to_string(len) +
                ", expected 1.." + std::to_string(max_context) + " (max_position " +
                std::to_string(p.model.max_position) + ", " +
                std::to_string(s.max_blocks_per_token) + " blocks of " + std::to_string(bs) +
                " per token)");
    for (std::int64_t b = 0; b < (len + bs - 1) / bs; ++b) {
      const std::int32_t id = a.block_table[t * s.max_blocks_per_token + b];
      if (id < 0 || id >= s.num_blocks)
        raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
              "args.block_table[" + std::to_string(t) + ", " + std::to_string(b) + "] is " +
                  std::to_string(id) + ", outside the cache's " + std::to_string(s.num_blocks) +
                  " blocks");
    }
  }
  expect_positions_and_slots(p, a.positions, a.slots, s.tokens, s.num_blocks * bs);
}

// What one run reads and writes, from either version's arguments (or the sizing run).
struct RunViews {
  View2<const bf16> x;
  View2<bf16> residual, out;
  pipeline::DecodeBatch batch;
  View3<bf16> mla_cache;
  ops::AnyKvCache kv_cache;
  void* stream = nullptr;
};

template <class Args>
View3<bf16> mla_cache_view(const atom_plugin_pipeline& p, const Args& a) {
  return make_view(reinterpret_cast<bf16*>(a.mla_cache), a.shape.num_blocks, p.model.block_size,
                   cache_row(p));
}

// One of the key/value caches, [num_blocks, block_size, kv_heads, head_dim] elements T.
template <class T, class Args>
View4<T> kv_codes(const atom_plugin_pipeline& p, const Args& a, void* data) {
  return make_view(static_cast<T*>(data), a.shape.num_blocks, p.model.block_size, p.kv_heads.count,
                   p.model.head_dim);
}

// The key/value cache of the pipeline's format over the run's buffers.
template <class Args>
ops::AnyKvCache kv_cache_view(const atom_plugin_pipeline& p, const Args& a) {
  switch (p.kv_format) {
    case ops::KvCacheFormat::fp8_row: {
      const index_t blocks = a.shape.num_blocks;
      const index_t bs = p.model.block_size;
      const index_t kvh = p.kv_heads.count;
      return ops::KvCacheFp8{
          kv_codes<fp8_e4m3>(p, a, a.key_cache), kv_codes<fp8_e4m3>(p, a, a.value_cache),
          make_view(a.key_scale, blocks, bs, kvh), make_view(a.value_scale, blocks, bs, kvh)};
    }
    case ops::KvCacheFormat::fp8_tensor:
      return ops::per_tensor_fp8_cache(kv_codes<fp8_e4m3>(p, a, a.key_cache),
                                       kv_codes<fp8_e4m3>(p, a, a.value_cache), a.key_scale,
                                       a.value_scale);
    case ops::KvCacheFormat::bf16:
      return ops::bf16_cache(kv_codes<bf16>(p, a, a.key_cache),
                             kv_codes<bf16>(p, a, a.value_cache));
  }
  throw std::logic_error("a KV cache format without views");
}

// The activations and the cache of the pipeline's cache kind (the moe kind ignores the cache's
// extents, which may then be anything).
template <class Args>
RunViews activations(const atom_plugin_pipeline& p, const Args& a) {
  const index_t t = a.shape.tokens;
  const index_t h = p.model.hidden;
  RunViews v{make_view(reinterpret_cast<const bf16*>(a.x), t, h),
             make_view(reinterpret_cast<bf16*>(a.residual), t, h),
             make_view(reinterpret_cast<bf16*>(a.out), t, h),
             {},
             {},
             {}};
  if (cache_kind_of(p) == ATOM_PLUGIN_CACHE_MLA_LATENT)
    v.mla_cache = mla_cache_view(p, a);
  else if (reads_kv_cache(p))
    v.kv_cache = kv_cache_view(p, a);
  return v;
}

// Version 1's per-token batch in the per-sequence form: every token a sequence of its own.
RunViews views_of(atom_plugin_pipeline& p, const atom_plugin_run_args& a) {
  RunViews v = activations(p, a);
  if (!reads_batch(p.kind)) return v;  // the moe kind ignores the batch's extents
  const index_t t = a.shape.tokens;
  p.starts.resize(static_cast<std::size_t>(t + 1));
  std::iota(p.starts.begin(), p.starts.end(), 0);
  v.batch = {make_view(static_cast<const std::int32_t*>(p.starts.data()), t + 1),
             make_view(a.context_lens, t),
             make_view(a.block_table, t, a.shape.max_blocks_per_token), make_view(a.positions, t),
             make_view(a.slots, t)};
  return v;
}

pipeline::DecodeBatch batch_of(const atom_plugin_sequence_args& a) {
  const index_t t = a.shape.tokens;
  const index_t s = a.shape.sequences;
  return {make_view(a.query_start, s + 1), make_view(a.context_lens, s),
          make_view(a.block_table, s, a.shape.max_blocks_per_sequence), make_view(a.positions, t),
          make_view(a.slots, t)};
}

RunViews views_of(const atom_plugin_pipeline& p, const atom_plugin_sequence_args& a) {
  RunViews v = activations(p, a);
  if (reads_batch(p.kind)) v.batch = batch_of(a);  // the moe kind ignores the batch's extents
  return v;
}

// The run of a block or layer on the views.
struct Run {
  atom_plugin_pipeline& p;
  const RunViews& v;

  pipeline::BlockIo io() const {
    pipeline::BlockIo io{&p.model, p.comm.get(), v.x, v.residual, v.out, &p.workspace};
    io.stream = v.stream;
    io.side_stream = p.side_stream();
    return io;
  }
  void operator()(const dispatch::Handle<PipelineId::mla_attention>& h) const {
    h(pipeline::MlaArgs{io(), p.blocks.mla, v.batch, v.mla_cache});
  }
  void operator()(const dispatch::Handle<PipelineId::qwen3_attention>& h) const {
    h(pipeline::Qwen3AttentionArgs{io(), p.blocks.qwen3, v.batch, v.kv_cache});
  }
  void operator()(const dispatch::Handle<PipelineId::moe_block>& h) const {
    h(pipeline::MoeArgs{io(), p.blocks.moe, p.dual_stream_threshold, {}});
  }
  void operator()(const pipeline::LayerHandles& layer) const {
    const bool mla = p.model.attention == pipeline::AttentionKind::mla;
    pipeline::run_layer(layer, p.blocks,
                        {io(),
                         p.intermediate(v.x.size(0)),
                         v.batch,
                         mla ? v.mla_cache : View3<bf16>{},
                         mla ? ops::AnyKvCache{} : v.kv_cache,
                         p.dual_stream_threshold,
                         {}});
  }
};

void run_views(atom_plugin_pipeline& p, const RunViews& v) {
  std::visit(Run{p, v}, p.handle);
  p.workspace.reset();
}

// The buffers of a run of either version with their layouts in words, for expect_buffers.
template <class Args, class Sizes>
std::vector<Buffer> buffers_of(const atom_plugin_pipeline& p, const Args& a, const Sizes& n,
                               const std::vector<Buffer>& batch) {
  thread_local std::string act, cache, scale_layout;
  act = "[tokens, hidden] = [" + std::to_string(a.shape.tokens) + ", " +
        std::to_string(p.model.hidden) + "]";
  cache = "[num_blocks, block_size, ...] = [" + std::to_string(a.shape.num_blocks) + ", " +
          std::to_string(p.model.block_size) + ", ...]";
  const char* c = cache.c_str();
  scale_layout = p.kv_format == ops::KvCacheFormat::fp8_tensor
                     ? std::string("the fp8_tensor cache's one scale")
                     : cache;
  const char* scales = scale_layout.c_str();
  const std::size_t kv = kv_element_size(p);
  std::vector<Buffer> all{
      {"x", a.x, a.x_count, 2, n.x, act.c_str(), false},
      {"residual", a.residual, a.residual_count, 2, n.residual, act.c_str(), true},
      {"out", a.out, a.out_count, 2, n.out, act.c_str(), true}};
  all.insert(all.end(), batch.begin(), batch.end());
  all.insert(all.end(),
             {{"mla_cache", a.mla_cache, a.mla_cache_count, 2, n.mla_cache, c, true},
              {"key_cache", a.key_cache, a.key_cache_count, kv, n.key_cache, c, true},
              {"value_cache", a.value_cache, a.value_cache_count, kv, n.value_cache, c, true},
              // fp8_tensor's scales are only read, but the cache ops take no scale shared with
              // another view of the cache: checked as the written buffers are.
              {"key_scale", a.key_scale, a.key_scale_count, 4, n.key_scale, scales, true},
              {"value_scale", a.value_scale, a.value_scale_count, 4, n.value_scale, scales, true}});
  return all;
}

// A per-tensor FP8 cache's scales on the host backend: each positive and finite (on the GPU they
// are device memory, not read before the launch).
template <class Args>
void expect_tensor_scales(const atom_plugin_pipeline& p, const Args& a) {
  if (!reads_kv_cache(p) || p.kv_format != ops::KvCacheFormat::fp8_tensor ||
      p.backend != policy::BackendId::host)
    return;
  for (const auto& [name, scale] :
       {std::pair{"key_scale", a.key_scale[0]}, std::pair{"value_scale", a.value_scale[0]}})
    if (!(scale > 0.0f) || !std::isfinite(scale)) {
      std::ostringstream value;
      value << scale;
      raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
            "args." + std::string(name) + "[0] is " + value.str() +
                "; the fp8_tensor cache's scale must be positive and finite");
    }
}

atom_plugin_status run(atom_plugin_pipeline* p, const atom_plugin_run_args* a, void* stream) {
  // The host backend runs synchronously on the calling thread; device backends take the stream.
  static_cast<void>(stream);
  return guarded("run", [&] {
    require(p, "pipeline");
    require(a, "args");
    if (p->backend != policy::BackendId::host)
      raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
            "the pipeline runs on the GPU backend; version 1's run takes host buffers, "
            "run_sequences takes device buffers");
    const atom_plugin_buffer_sizes n = sizes_for(*p, a->shape);
    const std::string per_token = "[tokens] = [" + std::to_string(a->shape.tokens) + "]";
    const std::string table = "[tokens, max_blocks_per_token] = [" +
                              std::to_string(a->shape.tokens) + ", " +
                              std::to_string(a->shape.max_blocks_per_token) + "]";
    const char* pt = per_token.c_str();
    expect_buffers(buffers_of(
        *p, *a, n,
        {{"positions", a->positions, a->positions_count, 8, n.positions, pt, false},
         {"slots", a->slots, a->slots_count, 8, n.slots, pt, false},
         {"block_table", a->block_table, a->block_table_count, 4, n.block_table, table.c_str(),
          false},
         {"context_lens", a->context_lens, a->context_lens_count, 4, n.context_lens, pt, false}}));
    if (reads_batch(p->kind)) expect_batch(*p, *a);
    expect_tensor_scales(*p, *a);
    run_views(*p, views_of(*p, *a));
  });
}

// Version 2.

constexpr std::int64_t default_max_tokens = 256;

atom_plugin_sequence_sizes sequence_sizes_for(const atom_plugin_pipeline& p,
                                              const atom_plugin_sequence_shape& s) {
  expect_tokens(p, s.tokens);
  const auto t = static_cast<std::size_t>(s.tokens);
  atom_plugin_sequence_sizes z{};
  z.x = z.residual = z.out = t * static_cast<std::size_t>(p.model.hidden);
  if (!reads_batch(p.kind)) return z;
  expect_extent("sequences", s.sequences, max_tokens);
  expect_extent("max_blocks_per_sequence", s.max_blocks_per_sequence, max_blocks_per_token);
  expect_extent("num_blocks", s.num_blocks, max_num_blocks);
  const auto seqs = static_cast<std::size_t>(s.sequences);
  z.query_start = seqs + 1;
  z.context_lens = seqs;
  z.block_table = seqs * static_cast<std::size_t>(s.max_blocks_per_sequence);
  z.positions = z.slots = t;
  set_cache_sizes(p, s.num_blocks, z);
  return z;
}

atom_plugin_status sequence_sizes(const atom_plugin_pipeline* p,
                                  const atom_plugin_sequence_shape* s,
                                  atom_plugin_sequence_sizes* out) {
  return guarded("sequence_sizes", [&] {
    require(p, "pipeline");
    require(s, "shape");
    require(out, "out");
    *out = sequence_sizes_for(*p, *s);
  });
}

// Every entry a per-sequence run will index (ops/decode_batch.hpp's contract, and the positions
// and slots), checked before anything is written.
void expect_sequence_batch(const atom_plugin_pipeline& p, const atom_plugin_sequence_args& a) {
  const auto& s = a.shape;
  const std::int64_t bs = p.model.block_size;
  try {
    ops::expect_batch_contents("args", batch_of(a), s.num_blocks, bs);
  } catch (const ShapeError& e) {
    raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, e.what());
  }
  const std::int64_t max_context = std::min(p.model.max_position, s.max_blocks_per_sequence * bs);
  for (std::int64_t q = 0; q < s.sequences; ++q)
    if (a.context_lens[q] > max_context)
      raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
            "args.context_lens[" + std::to_string(q) + "] is " + std::to_string(a.context_lens[q]) +
                ", above max_position " + std::to_string(p.model.max_position));
  expect_positions_and_slots(p, a.positions, a.slots, s.tokens, s.num_blocks * bs);
}

atom_plugin_status run_sequences(atom_plugin_pipeline* p, const atom_plugin_sequence_args* a,
                                 void* stream) {
  // The host backend runs synchronously on the calling thread; the GPU backend on `stream`.
  return guarded("run_sequences", [&] {
    require(p, "pipeline");
    require(a, "args");
    const atom_plugin_sequence_sizes n = sequence_sizes_for(*p, a->shape);
    const std::string per_token = "[tokens] = [" + std::to_string(a->shape.tokens) + "]";
    const std::string starts = "[sequences + 1] = [" + std::to_string(a->shape.sequences + 1) + "]";
    const std::string per_seq = "[sequences] = [" + std::to_string(a->shape.sequences) + "]";
    const std::string table = "[sequences, max_blocks_per_sequence] = [" +
                              std::to_string(a->shape.sequences) + ", " +
                              std::to_string(a->shape.max_blocks_per_sequence) + "]";
    const char* pt = per_token.c_str();
    expect_buffers(
        buffers_of(*p, *a, n,
                   {{"query_start", a->query_start, a->query_start_count, 4, n.query_start,
                     starts.c_str(), false},
                    {"context_lens", a->context_lens, a->context_lens_count, 4, n.context_lens,
                     per_seq.c_str(), false},
                    {"block_table", a->block_table, a->block_table_count, 4, n.block_table,
                     table.c_str(), false},
                    {"positions", a->positions, a->positions_count, 8, n.positions, pt, false},
                    {"slots", a->slots, a->slots_count, 8, n.slots, pt, false}}));
    // A GPU pipeline's batch lives in device memory: its kernels check every entry instead.
    if (reads_batch(p->kind) && p->backend == policy::BackendId::host)
      expect_sequence_batch(*p, *a);
    expect_tensor_scales(*p, *a);
    RunViews v = views_of(*p, *a);
    v.stream = stream;
    run_views(*p, v);
  });
}

// Sizes the workspace for `p.max_tokens` tokens: one run on a batch of that many one-token
// sequences (context 1) of the plugin's own, after which runs up to that size take no new
// workspace memory.
void size_workspace(atom_plugin_pipeline& p) {
  const pipeline::DecodeState state(
      p.model, std::vector<std::int32_t>(static_cast<std::size_t>(p.max_tokens), 1), 1,
      pipeline::tp_shape(p.comm.get()), p.kv_heads, 1, p.kv_format);
  const auto views = [](const auto& s) -> RunViews {
    return {s.x(), s.residual(), s.out(), s.batch(), s.mla_cache(), s.kv_cache()};
  };
#if ATOM_GPU_INSTANCES
  if (p.device) {
    const pipeline::DeviceDecodeState device(state);
    run_views(p, views(device));
    gpu::synchronize();
    return;
  }
#endif
  run_views(p, views(state));
}

// The backend `name` asks for ("auto": the GPU where this build has one and a GPU is present).
policy::BackendId backend_named(std::string_view name) {
  const bool built = ATOM_GPU_INSTANCES != 0;
  bool present = false;
#if ATOM_GPU_INSTANCES
  present = gpu::device_count() > 0;
#endif
  if (name == "host") return policy::BackendId::host;
  if (name == "auto") return present ? policy::BackendId::gpu : policy::BackendId::host;
  if (name != "gpu")
    raise(ATOM_PLUGIN_ERROR_UNKNOWN_NAME,
          "options.backend is '" + env::printable(name) + "'; expected auto, host or gpu");
  if (!built)
    raise(ATOM_PLUGIN_ERROR_NO_INSTANCE,
          "options.backend is 'gpu', but this build of the plugin has no GPU backend (it was "
          "built without a GPU toolchain): the host backend only");
  if (!present)
    raise(ATOM_PLUGIN_ERROR_NO_INSTANCE, "options.backend is 'gpu', but no GPU is present");
  return policy::BackendId::gpu;
}

// A failure of the checkpoint (a missing file, tensor or field, a wrong dtype or shape), with
// the loader's message.
template <class F>
auto from_checkpoint(F&& read) {
  try {
    return read();
  } catch (const Failure&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    raise(ATOM_PLUGIN_ERROR_CHECKPOINT, e.what());
  }
}

// The options a load through version `version`'s table was given: version 4's struct whole, the
// earlier versions' up to kv_cache (which they end before: the cache is then the default).
atom_plugin_load_options options_of(const atom_plugin_load_options* options,
                                    std::uint32_t version) {
  atom_plugin_load_options o{nullptr, default_max_tokens, ATOM_PLUGIN_CACHE_NONE};
  if (options != nullptr)
    std::memcpy(&o, options,
                version >= 4 ? sizeof o : offsetof(atom_plugin_load_options, kv_cache));
  return o;
}

// The GQA cache format options.kv_cache names. A value of no kind is refused for every model; the
// MLA latent kind for a model whose cache is GQA's; the GQA kinds are ignored (fp8_row) where the
// pipeline keeps no GQA cache.
ops::KvCacheFormat kv_format_of(atom_plugin_cache_kind k, const pipeline::ModelConfig& m,
                                plugin::Kind kind) {
  const bool gqa = m.attention == pipeline::AttentionKind::gqa && reads_batch(kind);
  const std::string expected =
      "; expected ATOM_PLUGIN_CACHE_FP8_KV (2), ATOM_PLUGIN_CACHE_KV_FP8_TENSOR (3), "
      "ATOM_PLUGIN_CACHE_KV_BF16 (4) or ATOM_PLUGIN_CACHE_NONE (0: the default, FP8_KV)";
  switch (k) {
    case ATOM_PLUGIN_CACHE_NONE:
    case ATOM_PLUGIN_CACHE_FP8_KV:
      return ops::KvCacheFormat::fp8_row;
    case ATOM_PLUGIN_CACHE_KV_FP8_TENSOR:
      return gqa ? ops::KvCacheFormat::fp8_tensor : ops::KvCacheFormat::fp8_row;
    case ATOM_PLUGIN_CACHE_KV_BF16:
      return gqa ? ops::KvCacheFormat::bf16 : ops::KvCacheFormat::fp8_row;
    case ATOM_PLUGIN_CACHE_MLA_LATENT:
      if (m.attention == pipeline::AttentionKind::mla || !reads_batch(kind))
        return ops::KvCacheFormat::fp8_row;
      raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
            "options.kv_cache is ATOM_PLUGIN_CACHE_MLA_LATENT (1), but " + m.name +
                " keeps a paged key/value cache, not MLA's latent one" + expected);
    default:
      raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
            "options.kv_cache is " + std::to_string(k) + ", not a cache kind" + expected);
  }
}

// load_pipeline and load_pipeline_tp: rank `c` of its group (null: the whole layer).
void load(const atom_plugin_registration* r, const char* checkpoint, std::int64_t layer,
          const char* kind, const atom_plugin_load_options& o, const atom_plugin_communicator* c,
          atom_plugin_pipeline** out) {
  require(r, "registration");
  require(checkpoint, "checkpoint");
  require(kind, "kind");
  require(out, "out");
  pipeline::TpShape tp;
  if (c != nullptr) {
    if (c->all_reduce_bf16 == nullptr)
      raise(ATOM_PLUGIN_ERROR_NULL_POINTER, "communicator->all_reduce_bf16 is NULL");
    if (c->size < 1 || c->size > dist::tp_max_ranks)
      raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "communicator->size is " + std::to_string(c->size) +
                                                    ", expected 1.." +
                                                    std::to_string(dist::tp_max_ranks));
    if (c->rank < 0 || c->rank >= c->size)
      raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "communicator->rank is " + std::to_string(c->rank) +
                                                    ", expected 0.." + std::to_string(c->size - 1));
    tp = {c->rank, c->size};
  }
  const policy::BackendId backend = backend_named(o.backend == nullptr ? "auto" : o.backend);
  if (o.max_tokens < 1 || o.max_tokens > max_tokens)
    raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "options.max_tokens is " +
                                                  std::to_string(o.max_tokens) + ", expected 1.." +
                                                  std::to_string(max_tokens));
  auto ckpt = from_checkpoint([&] {
    return std::make_unique<model::HfCheckpoint>(
        model::HfCheckpoint::open(checkpoint, io::load_mode(r->config)));
  });
  const pipeline::ModelConfig& m = ckpt->model();
  const plugin::ModelSpec* spec = plugin::find_model(model::architecture_name(m.architecture));
  if (spec == nullptr)
    raise(ATOM_PLUGIN_ERROR_UNKNOWN_ARCHITECTURE,
          std::string(checkpoint) + " holds a model atom does not serve");
  const plugin::Kind k = served_kind(*r, *spec, kind);
  const ops::KvCacheFormat kv_format = kv_format_of(o.kv_cache, m, k);
  if (layer < 0 || layer >= m.num_layers)
    raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
          "layer " + std::to_string(layer) + " is not a decoder layer of " + checkpoint +
              ", which has layers 0.." + std::to_string(m.num_layers - 1));
  const pipeline::LayerKind layer_kind = pipeline::layer_kind(m, layer);
  if (k == plugin::Kind::moe && layer_kind != pipeline::LayerKind::moe)
    raise(ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
          "layer " + std::to_string(layer) + " of " + checkpoint +
              " has a dense MLP, not a MoE block; kind 'layer' runs it");
  // A split the dimensions do not allow is the caller's error, not the checkpoint's: checked
  // before the rank's share is read (the heads and experts do not depend on the formats).
  pipeline::attention_split(m, tp, policy::WeightFormat::bf16);
  if (layer_kind == pipeline::LayerKind::moe)
    pipeline::expert_split(m, tp, policy::WeightFormat::bf16);
  auto weights = from_checkpoint([&] { return ckpt->layer(layer, tp); });
  const auto [attention_format, mlp_format] = model::block_formats(m, {layer, weights.get()});
  auto p = std::make_unique<atom_plugin_pipeline>(
      *spec, k, m, checkpoint, r->config,
      resolve_handle(*spec, k, m, layer_kind, policy::point_from(r->config), kv_format,
                     attention_format, mlp_format, backend));
  p->kv_format = kv_format;
  p->checkpoint = std::move(ckpt);
  p->weights = std::move(weights);
  p->layer_kind = layer_kind;
  p->max_tokens = o.max_tokens;
  p->backend = backend;
  p->kv_heads = pipeline::attention_split(m, tp, attention_format).kv_heads;
  if (tp.size > 1) p->comm = std::make_unique<EngineComm>(*c, backend, o.max_tokens * m.hidden);
  p->blocks = pipeline::block_weights(p->model, layer_kind, *p->weights);
#if ATOM_GPU_INSTANCES
  if (backend == policy::BackendId::gpu) {
    // The device copies are made from the host weights, which are released after.
    const auto gemm = policy::point_from(r->config).get<policy::GemmBackend>();
    p->device = std::make_unique<DeviceSide>(p->model, *p->weights, gemm, p->max_tokens);
    p->blocks = pipeline::block_weights(p->model, layer_kind, p->device->weights);
    p->weights.reset();
    p->checkpoint.reset();
    p->workspace = pipeline::device_workspace();
  }
#endif
  size_workspace(*p);
  if (p->comm) p->comm->engage();
  *out = p.release();
}

// The load functions of the tables of `Version`, which read that version's options struct.
template <std::uint32_t Version>
atom_plugin_status load_pipeline(const atom_plugin_registration* r, const char* checkpoint,
                                 std::int64_t layer, const char* kind,
                                 const atom_plugin_load_options* options,
                                 atom_plugin_pipeline** out) {
  if (out != nullptr) *out = nullptr;
  return guarded("load_pipeline", [&] {
    load(r, checkpoint, layer, kind, options_of(options, Version), nullptr, out);
  });
}

template <std::uint32_t Version>
atom_plugin_status load_pipeline_tp(const atom_plugin_registration* r, const char* checkpoint,
                                    std::int64_t layer, const char* kind,
                                    const atom_plugin_load_options* options,
                                    const atom_plugin_communicator* communicator,
                                    atom_plugin_pipeline** out) {
  if (out != nullptr) *out = nullptr;
  return guarded("load_pipeline_tp", [&] {
    require(communicator, "communicator");
    load(r, checkpoint, layer, kind, options_of(options, Version), communicator, out);
  });
}

atom_plugin_status workspace(const atom_plugin_pipeline* p, std::int64_t* max_tokens_out,
                             std::size_t* bytes) {
  return guarded("workspace", [&] {
    require(p, "pipeline");
    require(max_tokens_out, "max_tokens");
    require(bytes, "bytes");
    *max_tokens_out = p->max_tokens;
    *bytes = p->workspace.capacity() + p->host_intermediate.capacity() * sizeof(bf16);
#if ATOM_GPU_INSTANCES
    if (p->device) *bytes += p->device->intermediate.size() * sizeof(bf16);
#endif
  });
}

constexpr atom_plugin_api api_v4{4,
                                 sizeof(atom_plugin_api),
                                 last_error,
                                 register_plugin,
                                 release_registration,
                                 registration_info,
                                 model,
                                 attention_backend,
                                 create_pipeline,
                                 destroy_pipeline,
                                 pipeline_info,
                                 buffer_sizes,
                                 run,
                                 load_pipeline<4>,
                                 sequence_sizes,
                                 run_sequences,
                                 workspace,
                                 load_pipeline_tp<4>};

// Version 3's table: version 4's functions, its loads reading the options up to kv_cache (the run
// arguments are laid out alike in both versions: version 4 retyped the key and value caches only).
constexpr atom_plugin_api version_3(atom_plugin_api t) {
  t.abi_version = 3;
  t.load_pipeline = load_pipeline<3>;
  t.load_pipeline_tp = load_pipeline_tp<3>;
  return t;
}
constexpr atom_plugin_api api_v3 = version_3(api_v4);

// Version 2's table: version 3's, its struct ending before version 3's addition.
constexpr atom_plugin_api version_2(atom_plugin_api t) {
  t.abi_version = 2;
  t.struct_size = offsetof(atom_plugin_api, load_pipeline_tp);
  t.load_pipeline_tp = nullptr;
  return t;
}
constexpr atom_plugin_api api_v2 = version_2(api_v3);

// Version 1's table: version 2's, its struct ending before version 2's additions.
constexpr atom_plugin_api version_1(atom_plugin_api t) {
  t.abi_version = 1;
  t.struct_size = offsetof(atom_plugin_api, load_pipeline);
  t.load_pipeline = nullptr;
  t.sequence_sizes = nullptr;
  t.run_sequences = nullptr;
  t.workspace = nullptr;
  return t;
}
constexpr atom_plugin_api api_v1 = version_1(api_v2);

}  // namespace

extern "C" __attribute__((visibility("default"))) atom_plugin_status atom_plugin_get_api(
    std::uint32_t abi_version, const atom_plugin_api** api, const char** error) {
  if (api != nullptr) *api = nullptr;
  const atom_plugin_status s = guarded("atom_plugin_get_api", [&] {
    require(api, "api");
    if (abi_version < 1 || abi_version > 4)
      raise(ATOM_PLUGIN_ERROR_ABI_VERSION, "the host asks for ABI version " +
                                               std::to_string(abi_version) +
                                               "; this plugin provides versions 1 to 4");
    static constexpr const atom_plugin_api* tables[] = {&api_v1, &api_v2, &api_v3, &api_v4};
    *api = tables[abi_version - 1];
  });
  if (error != nullptr) *error = s == ATOM_PLUGIN_OK ? "" : last_error_text.c_str();
  return s;
}
