// ABI version 2 through libatom_plugin.so: a layer of a committed tiny checkpoint (tests/model/hf,
// in its bf16, FP8 and MXFP4 forms) loaded by load_pipeline and run by run_sequences on a
// per-sequence batch (sequences of one and two query tokens, a padded token) matches the direct
// C++ call on the same checkpoint bit for bit; the sized workspace; version 1's table; and the
// errors of bad folders, layers, kinds, options and batches, each before anything is written.
#include <dlfcn.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

#include "atom/dispatch/dispatch.hpp"
#include "atom/model/checkpoint.hpp"
#include "atom/model/decode.hpp"
#include "atom/pipeline/layer.hpp"
#include "atom/pipeline/storage.hpp"
#include "atom/plugin/atom_plugin.h"
#include "plugin_library.hpp"

namespace {

using namespace atom;
using policy::PipelineId;

atom_plugin_get_api_fn get_api() {
  return plugin_entry();
}

const atom_plugin_api& api() {
  static const atom_plugin_api& a = plugin_table(2);
  return a;
}

std::string checkpoint_dir(const char* model, const char* format) {
  return std::string(ATOM_MODEL_HF_DATA) + "/" + model + "/" + format;
}

// A registration of `settings` (NULL-terminated name/value pairs), released at scope end.
struct Registration {
  atom_plugin_registration* r = nullptr;
  explicit Registration(const std::vector<const char*>& settings = {nullptr}) {
    REQUIRE(api().register_plugin(settings.data(), &r) == ATOM_PLUGIN_OK);
  }
  ~Registration() { api().release_registration(r); }
  Registration(const Registration&) = delete;
  Registration& operator=(const Registration&) = delete;
};

// The test's own per-sequence batch (views of it are what both paths run on).
struct Batch {
  std::vector<std::int32_t> query_start, context_lens, table;
  std::vector<std::int64_t> positions, slots;
  index_t max_blocks = 0;

  pipeline::DecodeBatch view() const {
    const auto s = static_cast<index_t>(context_lens.size());
    const auto t = static_cast<index_t>(slots.size());
    return {make_view(query_start.data(), s + 1), make_view(context_lens.data(), s),
            make_view(table.data(), s, max_blocks), make_view(positions.data(), t),
            make_view(slots.data(), t)};
  }
};

// Sequences over `state` (query_tokens 2 each): sequence s keeps the first queries[s] (1 or 2)
// of its two query tokens, its context ending at the last one kept; then `padding` tokens.
Batch batch_over(const pipeline::DecodeState& state, const std::vector<index_t>& queries,
                 index_t padding) {
  const pipeline::DecodeBatch b = state.batch();
  Batch out;
  out.max_blocks = b.block_table.size(1);
  out.query_start.push_back(0);
  for (index_t s = 0; s < b.sequences(); ++s) {
    const index_t keep = queries[static_cast<std::size_t>(s)];
    const index_t begin = b.query_start(s);
    for (index_t t = begin; t < begin + keep; ++t) {
      out.positions.push_back(b.positions(t));
      out.slots.push_back(b.slots(t));
    }
    out.query_start.push_back(static_cast<std::int32_t>(out.slots.size()));
    out.context_lens.push_back(b.context_lens(s) - static_cast<std::int32_t>(2 - keep));
    for (index_t c = 0; c < out.max_blocks; ++c) out.table.push_back(b.block_table(s, c));
  }
  for (index_t i = 0; i < padding; ++i) {
    out.positions.push_back(0);
    out.slots.push_back(-1);
  }
  return out;
}

// The caches and activations of one run, poisoned outputs, for both paths alike.
struct Buffers {
  std::vector<bf16> x, residual, out, intermediate, mla_cache;
  std::vector<fp8_e4m3> key, value;
  std::vector<float> key_scale, value_scale;
  index_t tokens = 0, num_blocks = 0;
};

Buffers buffers_of(const pipeline::ModelConfig& m, const pipeline::DecodeState& s, index_t tokens) {
  Buffers b;
  b.tokens = tokens;
  const auto n = static_cast<std::size_t>(tokens * m.hidden);
  const auto x = s.x();
  b.x.assign(x.data, x.data + n);
  const auto r = s.residual();
  b.residual.assign(r.data, r.data + n);
  b.out.assign(n, bf16{0x7fc1});
  b.intermediate.assign(n, bf16{0x7fc1});
  if (m.attention == pipeline::AttentionKind::mla) {
    const auto c = s.mla_cache();
    b.num_blocks = c.size(0);
    b.mla_cache.assign(c.data, c.data + c.numel());
  } else {
    const auto kv = s.kv_cache();
    b.num_blocks = kv.num_blocks();
    b.key.assign(kv.key.data, kv.key.data + kv.key.numel());
    b.value.assign(kv.value.data, kv.value.data + kv.value.numel());
    b.key_scale.assign(kv.key_scale.data, kv.key_scale.data + kv.key_scale.numel());
    b.value_scale.assign(kv.value_scale.data, kv.value_scale.data + kv.value_scale.numel());
  }
  return b;
}

View3<bf16> mla_view(const pipeline::ModelConfig& m, Buffers& b) {
  return make_view(b.mla_cache.data(), b.num_blocks, m.block_size, m.kv_lora_rank + m.qk_rope_dim);
}

ops::KvCacheFp8 kv_view(const pipeline::ModelConfig& m, Buffers& b) {
  const index_t bs = m.block_size;
  return {make_view(b.key.data(), b.num_blocks, bs, m.num_kv_heads, m.head_dim),
          make_view(b.value.data(), b.num_blocks, bs, m.num_kv_heads, m.head_dim),
          make_view(b.key_scale.data(), b.num_blocks, bs, m.num_kv_heads),
          make_view(b.value_scale.data(), b.num_blocks, bs, m.num_kv_heads)};
}

// Layer `layer` of the checkpoint run directly (kind "layer", "attention" or "moe").
std::string run_direct(const model::HfCheckpoint& ckpt, index_t layer, const std::string& kind,
                       const Batch& batch, Buffers& b) {
  const pipeline::ModelConfig& m = ckpt.model();
  const auto w = ckpt.layer(layer);
  const auto [fa, fm] = model::block_formats(m, {layer, w.get()});
  const policy::Point point = policy::point_from(env::Config::from({}));
  const auto layer_kind = pipeline::layer_kind(m, layer);
  const bool mla = m.attention == pipeline::AttentionKind::mla;
  const bool moe = layer_kind == pipeline::LayerKind::moe;
  pipeline::Workspace ws;
  const index_t t = b.tokens;
  const pipeline::BlockIo io{&m,
                             {},
                             make_view(static_cast<const bf16*>(b.x.data()), t, m.hidden),
                             make_view(b.residual.data(), t, m.hidden),
                             make_view(b.out.data(), t, m.hidden),
                             &ws};
  const std::int64_t threshold = 1024;
  constexpr auto host = policy::BackendId::host;
  if (kind == "layer") {
    const auto handles = pipeline::resolve_layer(m, layer_kind, point, fa, fm, host);
    pipeline::run_layer(handles,
                        {mla ? &w->mla() : nullptr, mla ? nullptr : &w->qwen3(),
                         moe ? &w->moe() : nullptr, moe ? nullptr : &w->dense()},
                        {io,
                         make_view(b.intermediate.data(), t, m.hidden),
                         batch.view(),
                         mla ? mla_view(m, b) : View3<bf16>{},
                         mla ? ops::KvCacheFp8{} : kv_view(m, b),
                         threshold,
                         {}});
    return handles.name();
  }
  if (kind == "moe") {
    const auto h = dispatch::resolve_point<PipelineId::moe_block>(point.with(fm), host);
    h(pipeline::MoeArgs{io, &w->moe(), threshold, {}});
    return std::string(h.name());
  }
  if (mla) {
    const auto h = dispatch::resolve_point<PipelineId::mla_attention>(point.with(fa), host);
    h(pipeline::MlaArgs{io, &w->mla(), batch.view(), mla_view(m, b)});
    return std::string(h.name());
  }
  const auto h = dispatch::resolve_point<PipelineId::qwen3_attention>(point.with(fa), host);
  h(pipeline::Qwen3AttentionArgs{io, &w->qwen3(), batch.view(), kv_view(m, b)});
  return std::string(h.name());
}

atom_plugin_sequence_args args_of(const Batch& batch, Buffers& b) {
  atom_plugin_sequence_args a{};
  a.shape = {b.tokens, static_cast<std::int64_t>(batch.context_lens.size()), batch.max_blocks,
             b.num_blocks};
  a.x = reinterpret_cast<const std::uint16_t*>(b.x.data());
  a.residual = reinterpret_cast<std::uint16_t*>(b.residual.data());
  a.out = reinterpret_cast<std::uint16_t*>(b.out.data());
  a.x_count = a.residual_count = a.out_count = b.x.size();
  a.query_start = batch.query_start.data();
  a.query_start_count = batch.query_start.size();
  a.context_lens = batch.context_lens.data();
  a.context_lens_count = batch.context_lens.size();
  a.block_table = batch.table.data();
  a.block_table_count = batch.table.size();
  a.positions = batch.positions.data();
  a.positions_count = batch.positions.size();
  a.slots = batch.slots.data();
  a.slots_count = batch.slots.size();
  if (!b.mla_cache.empty()) {
    a.mla_cache = reinterpret_cast<std::uint16_t*>(b.mla_cache.data());
    a.mla_cache_count = b.mla_cache.size();
  } else {
    a.key_cache = reinterpret_cast<std::uint8_t*>(b.key.data());
    a.value_cache = reinterpret_cast<std::uint8_t*>(b.value.data());
    a.key_cache_count = a.value_cache_count = b.key.size();
    a.key_scale = b.key_scale.data();
    a.value_scale = b.value_scale.data();
    a.key_scale_count = a.value_scale_count = b.key_scale.size();
  }
  return a;
}

template <class T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

struct Loaded {
  atom_plugin_pipeline* p = nullptr;
  ~Loaded() { api().destroy_pipeline(p); }
};

void check_checkpoint(const char* model_name, const char* format, index_t layer, const char* kind) {
  CAPTURE(model_name, format, layer, kind);
  const std::string dir = checkpoint_dir(model_name, format);
  const auto ckpt = model::HfCheckpoint::open(dir, io::LoadMode::mmap);
  const pipeline::ModelConfig& m = ckpt.model();
  // Four sequences of two query tokens each over contexts 3, 17, 40 and 70; they keep 1, 2, 1
  // and 2 of them; one padded token follows.
  const pipeline::DecodeState state(m, {3, 17, 40, 70}, 11 + Catch::rngSeed(), 2);
  const Batch batch = batch_over(state, {1, 2, 1, 2}, 1);
  const auto tokens = static_cast<index_t>(batch.slots.size());
  Buffers direct = buffers_of(m, state, tokens);
  Buffers abi = buffers_of(m, state, tokens);
  const std::string direct_instance = run_direct(ckpt, layer, kind, batch, direct);

  Registration r;
  Loaded loaded;
  const atom_plugin_load_options options{"host", 8};
  const auto status = api().load_pipeline(r.r, dir.c_str(), layer, kind, &options, &loaded.p);
  INFO(api().last_error());
  REQUIRE(status == ATOM_PLUGIN_OK);
  atom_plugin_pipeline_info info{};
  REQUIRE(api().pipeline_info(loaded.p, &info) == ATOM_PLUGIN_OK);
  CHECK(std::string(info.instance) == direct_instance);
  CHECK(std::string(info.preset) == dir);
  std::int64_t max_tokens = 0;
  std::size_t bytes_before = 0;
  REQUIRE(api().workspace(loaded.p, &max_tokens, &bytes_before) == ATOM_PLUGIN_OK);
  CHECK(max_tokens == 8);

  const atom_plugin_sequence_args a = args_of(batch, abi);
  const auto ran = api().run_sequences(loaded.p, &a, nullptr);
  INFO(api().last_error());
  REQUIRE(ran == ATOM_PLUGIN_OK);
  std::size_t bytes_after = 0;
  REQUIRE(api().workspace(loaded.p, &max_tokens, &bytes_after) == ATOM_PLUGIN_OK);
  CHECK(bytes_after == bytes_before);  // sized at load: the run took no new workspace memory

  index_t non_finite = 0;
  for (const bf16 v : abi.out) non_finite += !std::isfinite(to_float(v));
  CHECK(non_finite == 0);
  CHECK(same_bytes(abi.out, direct.out));
  CHECK(same_bytes(abi.residual, direct.residual));
  CHECK(same_bytes(abi.mla_cache, direct.mla_cache));
  CHECK(same_bytes(abi.key, direct.key));
  CHECK(same_bytes(abi.value, direct.value));
  CHECK(same_bytes(abi.key_scale, direct.key_scale));
  CHECK(same_bytes(abi.value_scale, direct.value_scale));
  if (std::string(kind) == "attention") {
    // The attention block's output (o_proj of the attention) is zero for the padded token.
    const auto h = static_cast<std::size_t>(m.hidden);
    bool zero = true;
    for (std::size_t i = (static_cast<std::size_t>(tokens) - 1) * h; i < abi.out.size(); ++i)
      zero = zero && to_float(abi.out[i]) == 0.0f;
    CHECK(zero);
  }
}

}  // namespace

TEST_CASE("plugin ABI 2: DeepSeek-V3 checkpoint layers through run_sequences, bit for bit") {
  for (const char* format : {"bf16", "fp8", "mxfp4"}) {
    check_checkpoint("deepseek-v3-tiny", format, 0, "layer");  // dense MLP
    check_checkpoint("deepseek-v3-tiny", format, 2, "layer");  // MoE
    check_checkpoint("deepseek-v3-tiny", format, 1, "attention");
    check_checkpoint("deepseek-v3-tiny", format, 1, "moe");
  }
}

TEST_CASE("plugin ABI 2: Qwen3-MoE checkpoint layers through run_sequences, bit for bit") {
  for (const char* format : {"bf16", "fp8", "mxfp4"}) {
    check_checkpoint("qwen3-30b-a3b-tiny", format, 0, "layer");  // mlp_only_layers: dense
    check_checkpoint("qwen3-30b-a3b-tiny", format, 1, "layer");
    check_checkpoint("qwen3-30b-a3b-tiny", format, 2, "attention");
    check_checkpoint("qwen3-30b-a3b-tiny", format, 2, "moe");
  }
}

TEST_CASE("plugin ABI 2: version 1's table is version 2's without its additions") {
  const atom_plugin_api* v1 = nullptr;
  const char* error = nullptr;
  REQUIRE(get_api()(1, &v1, &error) == ATOM_PLUGIN_OK);
  CHECK(v1->abi_version == 1);
  CHECK(v1->struct_size == offsetof(atom_plugin_api, load_pipeline));
  CHECK(v1->run == api().run);
  CHECK(api().abi_version == 2);
  CHECK(api().struct_size == sizeof(atom_plugin_api));
  const atom_plugin_api* none = nullptr;
  CHECK(get_api()(3, &none, &error) == ATOM_PLUGIN_ERROR_ABI_VERSION);
  CHECK(std::string(error).find("provides versions 1 and 2") != std::string::npos);
  CHECK(none == nullptr);
}

TEST_CASE("plugin ABI 2: bad folders, layers, kinds and options are refused with their names") {
  Registration r;
  const std::string ds = checkpoint_dir("deepseek-v3-tiny", "bf16");
  const auto refused = [&](const char* dir, std::int64_t layer, const char* kind,
                           const atom_plugin_load_options* options, atom_plugin_status want,
                           const std::string& says, const atom_plugin_registration* reg) {
    CAPTURE(dir, layer, kind);
    atom_plugin_pipeline* p = reinterpret_cast<atom_plugin_pipeline*>(&r);
    CHECK(api().load_pipeline(reg, dir, layer, kind, options, &p) == want);
    CHECK(p == nullptr);
    const std::string message = api().last_error();
    CHECK_THAT(message, Catch::Contains("load_pipeline") && Catch::Contains(says));
  };
  refused("/nonexistent/atom-checkpoint", 0, "layer", nullptr, ATOM_PLUGIN_ERROR_CHECKPOINT,
          "/nonexistent/atom-checkpoint", r.r);
  refused(ds.c_str(), 3, "layer", nullptr, ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
          "layer 3 is not a decoder layer", r.r);
  refused(ds.c_str(), -1, "layer", nullptr, ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "layers 0..2", r.r);
  refused(ds.c_str(), 0, "moe", nullptr, ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
          "has a dense MLP, not a MoE block", r.r);
  refused(ds.c_str(), 0, "mlp", nullptr, ATOM_PLUGIN_ERROR_UNKNOWN_NAME, "'mlp'", r.r);
  refused(nullptr, 0, "layer", nullptr, ATOM_PLUGIN_ERROR_NULL_POINTER, "'checkpoint'", r.r);
  const atom_plugin_load_options gpu{"gpu", 8}, tpu{"tpu", 8}, none{"host", 0};
  {
    // "gpu" runs only where the build has a GPU backend and a GPU is present; elsewhere the
    // refusal says which of the two is missing.
    atom_plugin_pipeline* p = nullptr;
    const auto status = api().load_pipeline(r.r, ds.c_str(), 0, "layer", &gpu, &p);
    if (status == ATOM_PLUGIN_OK) {
      atom_plugin_pipeline_info info{};
      REQUIRE(api().pipeline_info(p, &info) == ATOM_PLUGIN_OK);
      CHECK(std::string(info.backend) == "gpu");
      api().destroy_pipeline(p);
    } else {
      CHECK(status == ATOM_PLUGIN_ERROR_NO_INSTANCE);
      CHECK(p == nullptr);
      const std::string message = api().last_error();
      CHECK_THAT(message, Catch::Contains("options.backend is 'gpu', but") &&
                              (Catch::Contains("no GPU backend") || Catch::Contains("no GPU is")));
    }
  }
  refused(ds.c_str(), 0, "layer", &tpu, ATOM_PLUGIN_ERROR_UNKNOWN_NAME, "'tpu'", r.r);
  refused(ds.c_str(), 0, "layer", &none, ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
          "options.max_tokens is 0", r.r);
  Registration no_attention({"ATOM_DISABLE_VLLM_PLUGIN_ATTENTION", "1", nullptr});
  refused(ds.c_str(), 1, "layer", nullptr, ATOM_PLUGIN_ERROR_NOT_REGISTERED,
          "ATOM_DISABLE_VLLM_PLUGIN_ATTENTION", no_attention.r);
}

TEST_CASE("plugin ABI 2: bad per-sequence batches are refused before anything is written") {
  const std::string dir = checkpoint_dir("qwen3-30b-a3b-tiny", "bf16");
  const auto ckpt = model::HfCheckpoint::open(dir, io::LoadMode::mmap);
  const pipeline::ModelConfig& m = ckpt.model();
  const pipeline::DecodeState state(m, {5, 9}, 3, 2);
  const Batch good = batch_over(state, {2, 2}, 0);
  Registration r;
  Loaded loaded;
  const atom_plugin_load_options options{nullptr, 4};
  REQUIRE(api().load_pipeline(r.r, dir.c_str(), 1, "layer", &options, &loaded.p) == ATOM_PLUGIN_OK);

  const auto refused = [&](const Batch& batch, index_t tokens, const std::string& says) {
    Buffers b = buffers_of(m, state, tokens);
    const Buffers before = b;
    const atom_plugin_sequence_args a = args_of(batch, b);
    CHECK(api().run_sequences(loaded.p, &a, nullptr) == ATOM_PLUGIN_ERROR_INVALID_ARGUMENT);
    const std::string message = api().last_error();
    CHECK_THAT(message, Catch::Contains("run_sequences") && Catch::Contains(says));
    CHECK(same_bytes(b.out, before.out));
    CHECK(same_bytes(b.residual, before.residual));
    CHECK(same_bytes(b.key, before.key));
  };
  Batch late = good;
  late.query_start[0] = 1;
  refused(late, 4, "'query_start' must start at 0");
  Batch short_context = good;
  short_context.context_lens[1] = 1;  // below its two query tokens
  refused(short_context, 4, "'context_lens' holds 1 at sequence 1");
  Batch far = good;
  far.table[0] = 100000;
  refused(far, 4, "outside the cache's");
  Batch twice = good;
  twice.slots[3] = twice.slots[2];
  refused(twice, 4, "args.slots[3]");
  Batch stray = good;
  stray.query_start[2] = 3;  // token 3 belongs to no sequence but writes a slot
  refused(stray, 4, "token 3 belongs to no sequence");
  Batch position = good;
  position.positions[0] = m.max_position;
  refused(position, 4, "args.positions[0]");

  // More tokens than the pipeline was sized for.
  const pipeline::DecodeState big(m, {5, 9, 12}, 3, 2);
  const Batch six = batch_over(big, {2, 2, 2}, 0);
  Buffers b = buffers_of(m, big, 6);
  const atom_plugin_sequence_args a = args_of(six, b);
  CHECK(api().run_sequences(loaded.p, &a, nullptr) == ATOM_PLUGIN_ERROR_INVALID_ARGUMENT);
  CHECK_THAT(std::string(api().last_error()), Catch::Contains("above the pipeline's max_tokens 4"));
}
