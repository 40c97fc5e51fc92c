#include "atom/pipeline/device_storage.hpp"

#include <deque>
#include <type_traits>
#include <utility>
#include <variant>

namespace atom::pipeline {

namespace {

using policy::GemmBackend;
using Buffers = std::vector<gpu::Buffer<std::byte>>;

// A device copy of a contiguous host view, same shape; an absent view (no data: a block the layer
// does not have) stays absent.
template <class T, int R>
View<std::remove_const_t<T>, R> upload(Buffers& buffers, View<T, R> host) {
  using U = std::remove_const_t<T>;
  if (host.data == nullptr) return {};
  expect(host.contiguous(), "device copy", "host views must be contiguous");
  const auto bytes = static_cast<std::size_t>(host.numel()) * sizeof(U);
  buffers.emplace_back(bytes);
  gpu::copy_to_device(buffers.back().data(), host.data, bytes);
  View<U, R> v;
  v.data = reinterpret_cast<U*>(buffers.back().data());
  v.shape = host.shape;
  v.strides = host.strides;
  return v;
}

// A device copy of a GQA cache, same format (an fp8_tensor cache's two scales copied once each).
ops::AnyKvCache upload_kv_cache(Buffers& buffers, const ops::AnyKvCache& host) {
  using ops::KvCacheFormat;
  return std::visit(
      [&](const auto& c) -> ops::AnyKvCache {
        constexpr KvCacheFormat f = std::decay_t<decltype(c)>::format;
        if (c.key.data == nullptr) return ops::AnyKvCache{};
        const auto key = upload(buffers, c.key);
        const auto value = upload(buffers, c.value);
        if constexpr (f == KvCacheFormat::fp8_row)
          return ops::KvCacheFp8{key, value, upload(buffers, c.key_scale),
                                 upload(buffers, c.value_scale)};
        else if constexpr (f == KvCacheFormat::fp8_tensor)
          return ops::per_tensor_fp8_cache(key, value,
                                           upload(buffers, make_view(c.key_scale.data, 1)).data,
                                           upload(buffers, make_view(c.value_scale.data, 1)).data);
        else
          return ops::bf16_cache(key, value);
      },
      host);
}

}  // namespace

// The prepared weights, one of each kind per backend asked for.
struct DeviceLayerWeights::Owned {
  Buffers buffers;
  // A deque: adding a weight leaves the pointers to earlier ones valid.
  std::deque<std::variant<ops::PreparedMxfp4Weight<GemmBackend::matrix_core>,
                          ops::PreparedMxfp4Weight<GemmBackend::portable>,
                          ops::PreparedMxfp4Experts<GemmBackend::matrix_core>,
                          ops::PreparedMxfp4Experts<GemmBackend::portable>>>
      prepared;
  std::vector<GemmBackend> backends;

  // Keeps a prepared weight and returns where it lives.
  template <class Prepared>
  const Prepared* keep(Prepared&& p) {
    return &std::get<Prepared>(prepared.emplace_back(std::move(p)));
  }

  template <GemmBackend G>
  static auto prepare(const ops::Mxfp4Weight& w) {
    return ops::prepare_weight<G>(w);
  }
  template <GemmBackend G>
  static auto prepare(const ops::Mxfp4Experts& w) {
    return ops::prepare_experts<G>(w);
  }

  // A LinearWeight or ExpertWeights in device memory, in its format: bf16 and FP8 copied as they
  // are, MXFP4 prepared for every GEMM backend asked for. Empty when the host weight is absent
  // (no shared expert).
  template <class Forms>
  Forms device_forms(const Forms& host) {
    Forms f;
    f.format = host.format;
    switch (host.format) {
      case policy::WeightFormat::bf16:
        if (host.bf16.w.data != nullptr) f.bf16.w = copy(host.bf16.w);
        break;
      case policy::WeightFormat::fp8_block:
        if (host.fp8.q.data != nullptr)
          f.fp8 = {copy(host.fp8.q), copy(host.fp8.scale), host.fp8.block_n};
        break;
      case policy::WeightFormat::mxfp4:
        if (host.mxfp4.packed.data == nullptr) break;
        for (const GemmBackend g : backends) {
          if (g == GemmBackend::matrix_core)
            f.matrix_core = keep(prepare<GemmBackend::matrix_core>(host.mxfp4));
          else
            f.portable = keep(prepare<GemmBackend::portable>(host.mxfp4));
        }
        break;
    }
    return f;
  }

  template <class T, int R>
  View<std::remove_const_t<T>, R> copy(View<T, R> host) {
    return upload(buffers, host);
  }
};

DeviceLayerWeights::DeviceLayerWeights(const ModelConfig& m, const LayerWeights& host,
                                       const std::vector<GemmBackend>& gemm_backends)
    : owned_(std::make_unique<Owned>()) {
  expect(!gemm_backends.empty(), "DeviceLayerWeights", "name at least one GEMM backend");
  Owned& o = *owned_;
  o.backends = gemm_backends;
  if (m.attention == AttentionKind::mla) {
    const MlaWeights& h = host.mla();
    mla_.input_norm = o.copy(h.input_norm);
    mla_.qkv_a = o.device_forms(h.qkv_a);
    mla_.q_a_norm = o.copy(h.q_a_norm);
    mla_.kv_a_norm = o.copy(h.kv_a_norm);
    mla_.q_b = o.device_forms(h.q_b);
    mla_.w_uk_fp8 = {o.copy(h.w_uk_fp8.w), o.copy(h.w_uk_fp8.scale)};
    mla_.w_uv_fp8 = {o.copy(h.w_uv_fp8.w), o.copy(h.w_uv_fp8.scale)};
    mla_.w_uk_mxfp4 = {o.copy(h.w_uk_mxfp4.packed), o.copy(h.w_uk_mxfp4.scale), h.w_uk_mxfp4.k};
    mla_.w_uv_mxfp4 = {o.copy(h.w_uv_mxfp4.packed), o.copy(h.w_uv_mxfp4.scale), h.w_uv_mxfp4.k};
    mla_.o_proj = o.device_forms(h.o_proj);
    mla_.cos_sin = o.copy(h.cos_sin);
  } else {
    const Qwen3AttentionWeights& h = host.qwen3();
    qwen3_.input_norm = o.copy(h.input_norm);
    qwen3_.qkv = o.device_forms(h.qkv);
    qwen3_.q_norm = o.copy(h.q_norm);
    qwen3_.k_norm = o.copy(h.k_norm);
    qwen3_.o_proj = o.device_forms(h.o_proj);
    qwen3_.cos_sin = o.copy(h.cos_sin);
  }
  const MoeWeights& h = host.moe();
  moe_.post_norm = o.copy(h.post_norm);
  moe_.router = o.copy(h.router);
  moe_.router_bias = o.copy(h.router_bias);
  moe_.gate_up = o.device_forms(h.gate_up);
  moe_.down = o.device_forms(h.down);
  moe_.shared_gate_up = o.device_forms(h.shared_gate_up);
  moe_.shared_down = o.device_forms(h.shared_down);
  const DenseMlpWeights& d = host.dense();
  if (d.post_norm.data != nullptr) {
    dense_.post_norm = o.copy(d.post_norm);
    dense_.gate_up = o.device_forms(d.gate_up);
    dense_.down = o.device_forms(d.down);
  }
}

DeviceLayerWeights::~DeviceLayerWeights() = default;

DeviceDecodeState::DeviceDecodeState(const DecodeState& host) {
  const DecodeBatch b = host.batch();
  batch_ = {upload(buffers_, b.query_start), upload(buffers_, b.context_lens),
            upload(buffers_, b.block_table), upload(buffers_, b.positions),
            upload(buffers_, b.slots)};
  x_ = upload(buffers_, host.x());
  residual_ = upload(buffers_, host.residual());
  out_ = upload(buffers_, host.out());
  intermediate_ = upload(buffers_, host.intermediate());
  if (host.mla_cache().data != nullptr) mla_cache_ = upload(buffers_, host.mla_cache());
  kv_cache_ = upload_kv_cache(buffers_, host.kv_cache());
}

DeviceDecodeState::~DeviceDecodeState() = default;

namespace {
Workspace::Chunk device_chunk(std::size_t bytes) {
  return Workspace::Chunk(static_cast<std::byte*>(gpu::malloc_bytes(bytes)),
                          [](std::byte* p) { gpu::free_bytes(p); });
}
}  // namespace

Workspace device_workspace() {
  return Workspace(&device_chunk);
}

}  // namespace atom::pipeline
