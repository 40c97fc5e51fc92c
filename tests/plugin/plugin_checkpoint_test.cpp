// ABI version 2 through libatom_plugin.so: a layer of a committed tiny checkpoint (tests/model/hf,
// in its bf16, FP8 and MXFP4 forms) loaded by load_pipeline and run by run_sequences on a
// per-sequence batch (sequences of one and two query tokens, a padded token) matches the direct
// C++ call on the same checkpoint bit for bit; the sized workspace; versions 1 to 3's tables; the
// errors of bad folders, layers, kinds, options and batches, each before anything is written;
// ABI 3's tensor-parallel ranks (load_pipeline_tp with an engine's communicator) against the same
// ranks run by atom in its own group, bit for bit, with the errors of bad communicators; and ABI
// 4's KV cache kinds (fp8_row, fp8_tensor, bf16 chosen at load) against atom's own instantiation
// of the same format on the same cache, bit for bit, with the errors of bad kinds and scales.
#include <dlfcn.h>

#include <barrier>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "atom/dispatch/dispatch.hpp"
#include "atom/model/checkpoint.hpp"
#include "atom/model/decode.hpp"
#include "atom/pipeline/layer.hpp"
#include "atom/pipeline/storage.hpp"
#include "atom/pipeline/tp.hpp"
#include "atom/plugin/atom_plugin.h"
#include "plugin_library.hpp"

namespace {

using namespace atom;
using policy::PipelineId;

atom_plugin_get_api_fn get_api() {
  return plugin_entry();
}

const atom_plugin_api& api() {
  static const atom_plugin_api& a = plugin_table(4);
  return a;
}

// The ABI's name of a GQA cache format (the value of options.kv_cache).
atom_plugin_cache_kind cache_kind_of(ops::KvCacheFormat f) {
  switch (f) {
    case ops::KvCacheFormat::fp8_row:
      return ATOM_PLUGIN_CACHE_FP8_KV;
    case ops::KvCacheFormat::fp8_tensor:
      return ATOM_PLUGIN_CACHE_KV_FP8_TENSOR;
    case ops::KvCacheFormat::bf16:
      return ATOM_PLUGIN_CACHE_KV_BF16;
  }
  return -1;
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

// The caches and activations of one run, poisoned outputs, for both paths alike. The GQA cache in
// its format: key and value as bytes (FP8 codes or bf16), the scales one per row (fp8_row), one
// each (fp8_tensor) or none (bf16).
struct Buffers {
  std::vector<bf16> x, residual, out, intermediate, mla_cache;
  std::vector<std::uint8_t> key, value;
  std::vector<float> key_scale, value_scale;
  index_t tokens = 0, num_blocks = 0, kv_heads = 0;
  ops::KvCacheFormat kv_format = ops::KvCacheFormat::fp8_row;

  std::size_t kv_element_size() const {
    return kv_format == ops::KvCacheFormat::bf16 ? sizeof(bf16) : sizeof(fp8_e4m3);
  }
};

template <class T>
std::vector<std::uint8_t> bytes_of(const T* data, index_t n) {
  const auto* p = reinterpret_cast<const std::uint8_t*>(data);
  return {p, p + static_cast<std::size_t>(n) * sizeof(T)};
}

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
    std::visit(
        [&](const auto& kv) {
          constexpr ops::KvCacheFormat f = std::decay_t<decltype(kv)>::format;
          b.kv_format = f;
          b.num_blocks = kv.num_blocks();
          b.kv_heads = kv.kv_heads();
          b.key = bytes_of(kv.key.data, kv.key.numel());
          b.value = bytes_of(kv.value.data, kv.value.numel());
          // fp8_tensor's scale views repeat their one float (strides 0).
          const index_t scales = f == ops::KvCacheFormat::fp8_row      ? kv.key_scale.numel()
                                 : f == ops::KvCacheFormat::fp8_tensor ? 1
                                                                       : 0;
          b.key_scale.assign(kv.key_scale.data, kv.key_scale.data + scales);
          b.value_scale.assign(kv.value_scale.data, kv.value_scale.data + scales);
        },
        s.kv_cache());
  }
  return b;
}

View3<bf16> mla_view(const pipeline::ModelConfig& m, Buffers& b) {
  return make_view(b.mla_cache.data(), b.num_blocks, m.block_size, m.kv_lora_rank + m.qk_rope_dim);
}

// The GQA cache of the buffers, in their format, as atom's own run takes it.
ops::AnyKvCache kv_view(const pipeline::ModelConfig& m, Buffers& b) {
  const index_t n = b.num_blocks;
  const index_t bs = m.block_size;
  const index_t h = b.kv_heads;
  const index_t d = m.head_dim;
  const auto codes = [&](std::vector<std::uint8_t>& v) {
    return make_view(reinterpret_cast<fp8_e4m3*>(v.data()), n, bs, h, d);
  };
  switch (b.kv_format) {
    case ops::KvCacheFormat::fp8_row:
      return ops::KvCacheFp8{codes(b.key), codes(b.value), make_view(b.key_scale.data(), n, bs, h),
                             make_view(b.value_scale.data(), n, bs, h)};
    case ops::KvCacheFormat::fp8_tensor:
      return ops::per_tensor_fp8_cache(codes(b.key), codes(b.value), b.key_scale.data(),
                                       b.value_scale.data());
    case ops::KvCacheFormat::bf16:
      return ops::bf16_cache(make_view(reinterpret_cast<bf16*>(b.key.data()), n, bs, h, d),
                             make_view(reinterpret_cast<bf16*>(b.value.data()), n, bs, h, d));
  }
  throw std::logic_error("unknown KV cache format");
}

// Layer `layer` of the checkpoint run directly (kind "layer", "attention" or "moe"), at the format
// of the buffers' cache; with `tp`, as that rank of its group.
std::string run_direct(const model::HfCheckpoint& ckpt, index_t layer, const std::string& kind,
                       const Batch& batch, Buffers& b, pipeline::TpComm* tp = nullptr) {
  const pipeline::ModelConfig& m = ckpt.model();
  const auto w = ckpt.layer(layer, pipeline::tp_shape(tp));
  const auto [fa, fm] = model::block_formats(m, {layer, w.get()});
  const policy::Point point = policy::point_from(env::Config::from({})).with(b.kv_format);
  const auto layer_kind = pipeline::layer_kind(m, layer);
  const bool mla = m.attention == pipeline::AttentionKind::mla;
  const bool moe = layer_kind == pipeline::LayerKind::moe;
  pipeline::Workspace ws;
  const index_t t = b.tokens;
  const pipeline::BlockIo io{&m,
                             tp,
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
                         mla ? ops::AnyKvCache{} : kv_view(m, b),
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
    a.key_cache = b.key.data();
    a.value_cache = b.value.data();
    a.key_cache_count = a.value_cache_count = b.key.size() / b.kv_element_size();
    a.key_scale = b.key_scale.empty() ? nullptr : b.key_scale.data();
    a.value_scale = b.value_scale.empty() ? nullptr : b.value_scale.data();
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

// `kv_format`: the GQA cache the layer is loaded for (options.kv_cache) and atom's own run reads.
void check_checkpoint(const char* model_name, const char* format, index_t layer, const char* kind,
                      ops::KvCacheFormat kv_format = ops::KvCacheFormat::fp8_row) {
  CAPTURE(model_name, format, layer, kind, ops::kv_cache_format_name(kv_format));
  const std::string dir = checkpoint_dir(model_name, format);
  const auto ckpt = model::HfCheckpoint::open(dir, io::LoadMode::mmap);
  const pipeline::ModelConfig& m = ckpt.model();
  // Four sequences of two query tokens each over contexts 3, 17, 40 and 70; they keep 1, 2, 1
  // and 2 of them; one padded token follows.
  const pipeline::DecodeState state(m, {3, 17, 40, 70}, 11 + Catch::rngSeed(), 2, kv_format);
  const Batch batch = batch_over(state, {1, 2, 1, 2}, 1);
  const auto tokens = static_cast<index_t>(batch.slots.size());
  Buffers direct = buffers_of(m, state, tokens);
  Buffers abi = buffers_of(m, state, tokens);
  const std::string direct_instance = run_direct(ckpt, layer, kind, batch, direct);

  Registration r;
  Loaded loaded;
  const atom_plugin_load_options options{"host", 8, cache_kind_of(kv_format)};
  const auto status = api().load_pipeline(r.r, dir.c_str(), layer, kind, &options, &loaded.p);
  INFO(api().last_error());
  REQUIRE(status == ATOM_PLUGIN_OK);
  atom_plugin_pipeline_info info{};
  REQUIRE(api().pipeline_info(loaded.p, &info) == ATOM_PLUGIN_OK);
  CHECK(std::string(info.instance) == direct_instance);
  CHECK(std::string(info.preset) == dir);
  const bool gqa = m.attention == pipeline::AttentionKind::gqa && std::string(kind) != "moe";
  if (gqa) {
    CHECK(info.cache_kind == cache_kind_of(kv_format));
    CHECK(info.cache_kv_heads == abi.kv_heads);
    CHECK(info.cache_head_dim == m.head_dim);
    CHECK(info.cache_row == abi.kv_heads * m.head_dim);
    // The sizes of the format: the caches in its elements, its scales per row, one or none.
    const atom_plugin_sequence_shape shape{tokens, 4, batch.max_blocks, abi.num_blocks};
    atom_plugin_sequence_sizes sizes{};
    REQUIRE(api().sequence_sizes(loaded.p, &shape, &sizes) == ATOM_PLUGIN_OK);
    CHECK(sizes.key_cache * abi.kv_element_size() == abi.key.size());
    CHECK(sizes.value_cache == sizes.key_cache);
    CHECK(sizes.key_scale == abi.key_scale.size());
    CHECK(sizes.value_scale == abi.value_scale.size());
  }
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

// An engine's communicator as the tests hold one: ranks are threads; a sum is taken in float in
// rank order and rounded to bf16 once (the arithmetic of atom's own HostTpGroup), so that a rank
// run through the ABI can equal the same rank run by atom directly, bit for bit. `failing` makes
// that rank's reductions fail.
struct TestGroup {
  explicit TestGroup(int n) : size(n), sync(n), inputs(static_cast<std::size_t>(n)) {
    for (int r = 0; r < n; ++r) ranks.push_back({this, r});
  }
  struct Rank {
    TestGroup* group;
    int rank;
  };
  atom_plugin_communicator communicator(int r) {
    return {r, size, &ranks[static_cast<std::size_t>(r)], &all_reduce};
  }
  static std::int32_t all_reduce(void* context, const std::uint16_t* x, std::uint16_t* out,
                                 std::uint64_t count, void*) {
    const Rank& me = *static_cast<Rank*>(context);
    TestGroup& g = *me.group;
    if (me.rank == g.failing) return 7;
    g.inputs[static_cast<std::size_t>(me.rank)] = x;
    g.sync.arrive_and_wait();
    std::vector<bf16> sum(count);
    for (std::uint64_t i = 0; i < count; ++i) {
      float acc = 0.0f;
      for (const std::uint16_t* peer : g.inputs) {
        bf16 v;
        std::memcpy(&v, peer + i, sizeof v);
        acc += to_float(v);
      }
      sum[i] = to_bf16(acc);
    }
    g.sync.arrive_and_wait();  // every rank has read every input before any writes (out may be x)
    std::memcpy(out, sum.data(), count * sizeof(bf16));
    return 0;
  }

  int size;
  int failing = -1;
  std::barrier<> sync;
  std::vector<const std::uint16_t*> inputs;
  std::vector<Rank> ranks;
};

// Rank r of `size` through load_pipeline_tp and run_sequences against the same rank run directly
// in a HostTpGroup (pipeline::run_ranks), each on its share of one DecodeState (its GQA cache in
// `kv_format`).
void check_tp(const char* model_name, const char* format, index_t layer, const char* kind, int size,
              ops::KvCacheFormat kv_format = ops::KvCacheFormat::fp8_row) {
  CAPTURE(model_name, format, layer, kind, size, ops::kv_cache_format_name(kv_format));
  const std::string dir = checkpoint_dir(model_name, format);
  const auto ckpt = model::HfCheckpoint::open(dir, io::LoadMode::mmap);
  const pipeline::ModelConfig& m = ckpt.model();
  const auto whole = ckpt.layer(layer);
  const auto attention_format = model::block_formats(m, {layer, whole.get()}).first;
  const std::vector<std::int32_t> contexts{3, 17, 40, 70};
  const auto seed = 11 + Catch::rngSeed();
  // The states of each rank, made alike for both paths.
  const auto state_of = [&](int r) {
    const pipeline::TpShape tp{r, size};
    return std::make_unique<pipeline::DecodeState>(
        m, contexts, seed, tp, pipeline::attention_split(m, tp, attention_format).kv_heads, 2,
        kv_format);
  };
  std::vector<std::unique_ptr<pipeline::DecodeState>> states;
  for (int r = 0; r < size; ++r) states.push_back(state_of(r));
  const Batch batch = batch_over(*states[0], {1, 2, 1, 2}, 1);
  const auto tokens = static_cast<index_t>(batch.slots.size());
  std::vector<Buffers> direct, abi;
  for (int r = 0; r < size; ++r) {
    direct.push_back(buffers_of(m, *states[static_cast<std::size_t>(r)], tokens));
    abi.push_back(buffers_of(m, *states[static_cast<std::size_t>(r)], tokens));
  }
  pipeline::run_ranks(size, [&](pipeline::TpComm& comm) {
    run_direct(ckpt, layer, kind, batch, direct[static_cast<std::size_t>(comm.rank())], &comm);
  });

  Registration reg;
  TestGroup group(size);
  std::vector<atom_plugin_status> loaded(static_cast<std::size_t>(size)), ran(loaded);
  std::vector<std::string> errors(loaded.size());
  std::vector<std::int64_t> kv_heads(loaded.size());
  std::vector<std::thread> ranks;
  for (int r = 0; r < size; ++r)
    ranks.emplace_back([&, r] {
      const auto i = static_cast<std::size_t>(r);
      Loaded p;
      const atom_plugin_load_options options{"host", 8, cache_kind_of(kv_format)};
      const atom_plugin_communicator c = group.communicator(r);
      loaded[i] = api().load_pipeline_tp(reg.r, dir.c_str(), layer, kind, &options, &c, &p.p);
      if (loaded[i] != ATOM_PLUGIN_OK) {
        errors[i] = api().last_error();
        group.sync.arrive_and_drop();  // the others' reductions do not wait for this rank
        return;
      }
      atom_plugin_pipeline_info info{};
      api().pipeline_info(p.p, &info);
      kv_heads[i] = info.cache_kv_heads;
      const atom_plugin_sequence_args a = args_of(batch, abi[i]);
      ran[i] = api().run_sequences(p.p, &a, nullptr);
      if (ran[i] != ATOM_PLUGIN_OK) errors[i] = api().last_error();
    });
  for (auto& t : ranks) t.join();
  for (int r = 0; r < size; ++r) {
    CAPTURE(r);
    const auto i = static_cast<std::size_t>(r);
    INFO(errors[i]);
    REQUIRE(loaded[i] == ATOM_PLUGIN_OK);
    REQUIRE(ran[i] == ATOM_PLUGIN_OK);
    if (m.attention == pipeline::AttentionKind::gqa && std::string(kind) != "moe")
      CHECK(kv_heads[i] == abi[i].kv_heads);
    index_t non_finite = 0;
    for (const bf16 v : abi[i].out) non_finite += !std::isfinite(to_float(v));
    CHECK(non_finite == 0);
    CHECK(same_bytes(abi[i].out, direct[i].out));
    CHECK(same_bytes(abi[i].residual, direct[i].residual));
    CHECK(same_bytes(abi[i].mla_cache, direct[i].mla_cache));
    CHECK(same_bytes(abi[i].key, direct[i].key));
    CHECK(same_bytes(abi[i].value, direct[i].value));
    CHECK(same_bytes(abi[i].key_scale, direct[i].key_scale));
    CHECK(same_bytes(abi[i].value_scale, direct[i].value_scale));
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

TEST_CASE("plugin ABI 3: tensor-parallel ranks through the engine's communicator, bit for bit") {
  check_tp("qwen3-30b-a3b-tiny", "bf16", 1, "layer", 2);
  check_tp("qwen3-30b-a3b-tiny", "mxfp4", 1, "layer", 4);  // KV heads replicated beyond 2
  check_tp("qwen3-30b-a3b-tiny", "fp8", 0, "layer", 2);    // a dense layer
  check_tp("qwen3-30b-a3b-tiny", "bf16", 2, "attention", 2);
  check_tp("deepseek-v3-tiny", "fp8", 2, "layer", 2);
  check_tp("deepseek-v3-tiny", "mxfp4", 0, "layer", 2);
  check_tp("deepseek-v3-tiny", "bf16", 1, "moe", 4);
}

TEST_CASE("plugin ABI 3: bad communicators and impossible splits are refused with their names") {
  Registration r;
  const std::string qwen = checkpoint_dir("qwen3-30b-a3b-tiny", "bf16");
  TestGroup group(2);
  const auto refused = [&](const atom_plugin_communicator* c, atom_plugin_status want,
                           const std::string& says) {
    atom_plugin_pipeline* p = reinterpret_cast<atom_plugin_pipeline*>(&r);
    CHECK(api().load_pipeline_tp(r.r, qwen.c_str(), 1, "layer", nullptr, c, &p) == want);
    CHECK(p == nullptr);
    CHECK_THAT(std::string(api().last_error()),
               Catch::Contains("load_pipeline_tp") && Catch::Contains(says));
  };
  refused(nullptr, ATOM_PLUGIN_ERROR_NULL_POINTER, "'communicator'");
  atom_plugin_communicator c = group.communicator(0);
  c.all_reduce_bf16 = nullptr;
  refused(&c, ATOM_PLUGIN_ERROR_NULL_POINTER, "communicator->all_reduce_bf16");
  c = group.communicator(0);
  c.size = 9;
  refused(&c, ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "communicator->size is 9, expected 1..8");
  c = group.communicator(0);
  c.rank = 2;
  refused(&c, ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "communicator->rank is 2, expected 0..1");
  c = group.communicator(0);
  c.size = 3;  // the tiny Qwen3's 4 query heads do not split over 3 ranks
  refused(&c, ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "heads");
}

TEST_CASE("plugin ABI 3: a failing reduction is the communicator's error") {
  const std::string dir = checkpoint_dir("qwen3-30b-a3b-tiny", "bf16");
  const auto ckpt = model::HfCheckpoint::open(dir, io::LoadMode::mmap);
  const pipeline::ModelConfig& m = ckpt.model();
  Registration reg;
  TestGroup group(1);
  group.size = 2;  // a group of two as rank 0 sees it, whose reductions fail
  group.failing = 0;
  Loaded p;
  const atom_plugin_communicator c = group.communicator(0);
  const atom_plugin_load_options options{"host", 8, ATOM_PLUGIN_CACHE_NONE};
  REQUIRE(api().load_pipeline_tp(reg.r, dir.c_str(), 1, "layer", &options, &c, &p.p) ==
          ATOM_PLUGIN_OK);
  const pipeline::TpShape tp{0, 2};
  const pipeline::DecodeState state(
      m, {5, 9}, 3, tp, pipeline::attention_split(m, tp, policy::WeightFormat::bf16).kv_heads, 2);
  const Batch batch = batch_over(state, {2, 2}, 0);
  Buffers b = buffers_of(m, state, 4);
  const atom_plugin_sequence_args a = args_of(batch, b);
  CHECK(api().run_sequences(p.p, &a, nullptr) == ATOM_PLUGIN_ERROR_COMMUNICATOR);
  CHECK_THAT(std::string(api().last_error()),
             Catch::Contains("all_reduce_bf16 returned 7 on rank 0 of 2"));
}

TEST_CASE("plugin ABI 3: version 1's run of a loaded rank keeps to its max_tokens") {
  // The rank's reduction scratch is sized at load for max_tokens tokens, as the workspace is: a
  // per-token batch of more is refused by name, as a per-sequence one is.
  const std::string dir = checkpoint_dir("qwen3-30b-a3b-tiny", "bf16");
  Registration reg;
  TestGroup group(2);
  Loaded p;
  const atom_plugin_communicator c = group.communicator(1);
  const atom_plugin_load_options options{"host", 4, ATOM_PLUGIN_CACHE_NONE};
  REQUIRE(api().load_pipeline_tp(reg.r, dir.c_str(), 1, "layer", &options, &c, &p.p) ==
          ATOM_PLUGIN_OK);
  const atom_plugin_batch_shape shape{5, 2, 8};
  atom_plugin_buffer_sizes z{};
  CHECK(api().buffer_sizes(p.p, &shape, &z) == ATOM_PLUGIN_ERROR_INVALID_ARGUMENT);
  CHECK_THAT(std::string(api().last_error()), Catch::Contains("above the pipeline's max_tokens 4"));
  atom_plugin_run_args a{};
  a.shape = shape;
  CHECK(api().run(p.p, &a, nullptr) == ATOM_PLUGIN_ERROR_INVALID_ARGUMENT);
  CHECK_THAT(std::string(api().last_error()),
             Catch::Contains("run") && Catch::Contains("above the pipeline's max_tokens 4"));
}

TEST_CASE("plugin ABI 4: versions 1 to 3 are version 4's table without the later additions") {
  const atom_plugin_api* v1 = nullptr;
  const atom_plugin_api* v2 = nullptr;
  const atom_plugin_api* v3 = nullptr;
  const char* error = nullptr;
  REQUIRE(get_api()(1, &v1, &error) == ATOM_PLUGIN_OK);
  REQUIRE(get_api()(2, &v2, &error) == ATOM_PLUGIN_OK);
  REQUIRE(get_api()(3, &v3, &error) == ATOM_PLUGIN_OK);
  CHECK(v1->abi_version == 1);
  CHECK(v1->struct_size == offsetof(atom_plugin_api, load_pipeline));
  CHECK(v1->run == api().run);
  CHECK(v2->abi_version == 2);
  CHECK(v2->struct_size == offsetof(atom_plugin_api, load_pipeline_tp));
  CHECK(v2->load_pipeline == v3->load_pipeline);  // versions 2 and 3 share the options struct
  CHECK(v2->workspace == api().workspace);
  CHECK(v2->load_pipeline_tp == nullptr);
  CHECK(v3->abi_version == 3);
  CHECK(v3->struct_size == sizeof(atom_plugin_api));  // version 4 adds no function
  CHECK(v3->run_sequences == api().run_sequences);
  CHECK(v3->sequence_sizes == api().sequence_sizes);
  // Version 3's loads read the options up to kv_cache, version 4's the whole struct.
  CHECK(v3->load_pipeline != api().load_pipeline);
  CHECK(v3->load_pipeline_tp != api().load_pipeline_tp);
  CHECK(api().abi_version == 4);
  CHECK(api().struct_size == sizeof(atom_plugin_api));
  const atom_plugin_api* none = nullptr;
  CHECK(get_api()(5, &none, &error) == ATOM_PLUGIN_ERROR_ABI_VERSION);
  CHECK(std::string(error).find("provides versions 1 to 4") != std::string::npos);
  CHECK(none == nullptr);
}

TEST_CASE("plugin ABI 4: Qwen3-MoE checkpoint layers on each KV cache format, bit for bit") {
  for (const auto kv :
       {ops::KvCacheFormat::fp8_row, ops::KvCacheFormat::fp8_tensor, ops::KvCacheFormat::bf16}) {
    for (const char* format : {"bf16", "fp8", "mxfp4"}) {
      check_checkpoint("qwen3-30b-a3b-tiny", format, 0, "layer", kv);  // dense
      check_checkpoint("qwen3-30b-a3b-tiny", format, 1, "layer", kv);
      check_checkpoint("qwen3-30b-a3b-tiny", format, 2, "attention", kv);
    }
    check_tp("qwen3-30b-a3b-tiny", "bf16", 1, "layer", 2, kv);
    check_tp("qwen3-30b-a3b-tiny", "fp8", 2, "attention", 4, kv);  // KV heads replicated
  }
}

// A Qwen3 layer loaded for `kv` through `table` with `options`; its pipeline_info.
atom_plugin_pipeline_info loaded_info(const atom_plugin_api& table, const char* model_name,
                                      index_t layer, const char* kind,
                                      const atom_plugin_load_options& options) {
  Registration r;
  Loaded p;
  const std::string dir = checkpoint_dir(model_name, "bf16");
  const auto status = table.load_pipeline(r.r, dir.c_str(), layer, kind, &options, &p.p);
  INFO(api().last_error());
  REQUIRE(status == ATOM_PLUGIN_OK);
  atom_plugin_pipeline_info info{};
  REQUIRE(api().pipeline_info(p.p, &info) == ATOM_PLUGIN_OK);
  info.instance = nullptr;  // the strings die with the pipeline
  info.preset = nullptr;
  return info;
}

TEST_CASE("plugin ABI 4: options.kv_cache, its default, and the kinds that ignore it") {
  const atom_plugin_api& v3 = plugin_table(3);
  // Version 3's struct ends at max_tokens: whatever follows it is not read (the cache FP8_KV).
  const atom_plugin_load_options beyond{"host", 4, 99};
  CHECK(loaded_info(v3, "qwen3-30b-a3b-tiny", 1, "layer", beyond).cache_kind ==
        ATOM_PLUGIN_CACHE_FP8_KV);
  CHECK(loaded_info(api(), "qwen3-30b-a3b-tiny", 1, "layer", {"host", 4, ATOM_PLUGIN_CACHE_NONE})
            .cache_kind == ATOM_PLUGIN_CACHE_FP8_KV);
  CHECK(ATOM_PLUGIN_CACHE_KV_FP8_ROW == ATOM_PLUGIN_CACHE_FP8_KV);
  // The MLA cache and the moe kind keep their caches whatever the GQA kind asked for.
  for (const atom_plugin_cache_kind k :
       {ATOM_PLUGIN_CACHE_KV_BF16, ATOM_PLUGIN_CACHE_KV_FP8_TENSOR, ATOM_PLUGIN_CACHE_MLA_LATENT}) {
    CAPTURE(k);
    const atom_plugin_pipeline_info mla =
        loaded_info(api(), "deepseek-v3-tiny", 1, "attention", {"host", 4, k});
    CHECK(mla.cache_kind == ATOM_PLUGIN_CACHE_MLA_LATENT);
    CHECK(mla.cache_kv_heads == 0);
    const atom_plugin_pipeline_info moe =
        loaded_info(api(), "qwen3-30b-a3b-tiny", 2, "moe", {"host", 4, k});
    CHECK(moe.cache_kind == ATOM_PLUGIN_CACHE_NONE);
  }

  Registration r;
  const std::string qwen = checkpoint_dir("qwen3-30b-a3b-tiny", "bf16");
  const std::string ds = checkpoint_dir("deepseek-v3-tiny", "bf16");
  const auto refused = [&](const std::string& dir, const atom_plugin_load_options& options,
                           const std::string& says) {
    atom_plugin_pipeline* p = reinterpret_cast<atom_plugin_pipeline*>(&r);
    CHECK(api().load_pipeline(r.r, dir.c_str(), 1, "layer", &options, &p) ==
          ATOM_PLUGIN_ERROR_INVALID_ARGUMENT);
    CHECK(p == nullptr);
    CHECK_THAT(std::string(api().last_error()),
               Catch::Contains("load_pipeline") && Catch::Contains(says));
  };
  refused(qwen, {"host", 4, 5}, "options.kv_cache is 5, not a cache kind");
  refused(ds, {"host", 4, -1}, "options.kv_cache is -1, not a cache kind");
  refused(qwen, {"host", 4, ATOM_PLUGIN_CACHE_MLA_LATENT},
          "options.kv_cache is ATOM_PLUGIN_CACHE_MLA_LATENT (1)");
  TestGroup group(2);
  const atom_plugin_communicator c = group.communicator(0);
  atom_plugin_pipeline* p = nullptr;
  const atom_plugin_load_options bad{"host", 4, 7};
  CHECK(api().load_pipeline_tp(r.r, qwen.c_str(), 1, "layer", &bad, &c, &p) ==
        ATOM_PLUGIN_ERROR_INVALID_ARGUMENT);
  CHECK_THAT(std::string(api().last_error()),
             Catch::Contains("load_pipeline_tp") && Catch::Contains("options.kv_cache is 7"));
}

TEST_CASE(
    "plugin ABI 4: bad caches of the fp8_tensor and bf16 kinds are refused, nothing written") {
  const std::string dir = checkpoint_dir("qwen3-30b-a3b-tiny", "bf16");
  const auto ckpt = model::HfCheckpoint::open(dir, io::LoadMode::mmap);
  const pipeline::ModelConfig& m = ckpt.model();
  Registration r;
  for (const auto kv : {ops::KvCacheFormat::fp8_tensor, ops::KvCacheFormat::bf16}) {
    CAPTURE(ops::kv_cache_format_name(kv));
    const pipeline::DecodeState state(m, {5, 9}, 3, 2, kv);
    const Batch batch = batch_over(state, {2, 2}, 0);
    Loaded loaded;
    const atom_plugin_load_options options{"host", 4, cache_kind_of(kv)};
    REQUIRE(api().load_pipeline(r.r, dir.c_str(), 1, "layer", &options, &loaded.p) ==
            ATOM_PLUGIN_OK);
    const auto refused = [&](const std::function<void(atom_plugin_sequence_args&, Buffers&)>& bad,
                             atom_plugin_status want, const std::string& says) {
      Buffers b = buffers_of(m, state, 4);
      const Buffers before = b;
      atom_plugin_sequence_args a = args_of(batch, b);
      bad(a, b);
      CHECK(api().run_sequences(loaded.p, &a, nullptr) == want);
      CHECK_THAT(std::string(api().last_error()),
                 Catch::Contains("run_sequences") && Catch::Contains(says));
      CHECK(same_bytes(b.out, before.out));
      CHECK(same_bytes(b.residual, before.residual));
      CHECK(same_bytes(b.key, before.key));
      CHECK(same_bytes(b.value, before.value));
    };
    refused([](auto& a, auto&) { --a.key_cache_count; }, ATOM_PLUGIN_ERROR_BUFFER_TOO_SMALL,
            "args.key_cache holds");
    refused([](auto& a, auto&) { a.value_cache = nullptr; }, ATOM_PLUGIN_ERROR_NULL_POINTER,
            "args.value_cache is NULL");
    if (kv == ops::KvCacheFormat::fp8_tensor) {
      refused([](auto& a, auto&) { a.key_scale = nullptr; }, ATOM_PLUGIN_ERROR_NULL_POINTER,
              "args.key_scale is NULL");
      refused([](auto& a, auto&) { a.value_scale_count = 0; }, ATOM_PLUGIN_ERROR_BUFFER_TOO_SMALL,
              "args.value_scale holds 0 elements; the fp8_tensor cache's one scale needs 1");
      refused([](auto&, auto& b) { b.key_scale[0] = 0.0f; }, ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
              "args.key_scale[0] is 0");
      refused([](auto&, auto& b) { b.value_scale[0] = std::nanf(""); },
              ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "args.value_scale[0] is nan");
      refused([](auto& a, auto& b) { a.key_scale = reinterpret_cast<float*>(b.key.data()); },
              ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "args.key_cache overlaps args.key_scale");
      // The cache's views (its two scales included) are distinct memory, as the cache ops take
      // them: one float for both scales is refused before the run writes anything.
      refused([](auto& a, auto&) { a.value_scale = a.key_scale; },
              ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "args.key_scale overlaps args.value_scale");
    } else {
      // bf16 reads no scales: NULL is accepted.
      Buffers b = buffers_of(m, state, 4);
      atom_plugin_sequence_args a = args_of(batch, b);
      CHECK(a.key_scale == nullptr);
      CHECK(a.key_scale_count == 0);
      CHECK(api().run_sequences(loaded.p, &a, nullptr) == ATOM_PLUGIN_OK);
    }
  }
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
  const atom_plugin_load_options gpu{"gpu", 8, 0}, tpu{"tpu", 8, 0}, none{"host", 0, 0};
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
  const atom_plugin_load_options options{nullptr, 4, ATOM_PLUGIN_CACHE_NONE};
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
