// A policy point (one value per axis), the pipelines and backends, the packed key, and the
// canonicalisation rules. These rules are the only place where variables become axis values and
// where equivalent points are folded; the generator and the run-time lookup both call them.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "atom/env/config.hpp"
#include "atom/policy/axes.hpp"

namespace atom::policy {

// One value per axis. A structural type: pipelines take it as a template argument and branch on
// it with `if constexpr`.
struct Point {
  GemmBackend gemm = GemmBackend::matrix_core;
  BmmFormat bmm = BmmFormat::fp8;
  AllReduceNorm allreduce_norm = AllReduceNorm::separate;
  InputNormQuant input_norm_quant = InputNormQuant::separate;
  QkNorm qk_norm = QkNorm::separate;
  MoeStreams moe_streams = MoeStreams::single;
  QkNormRopeCache qk_norm_rope_cache = QkNormRopeCache::separate;

  friend constexpr bool operator==(const Point&, const Point&) = default;

  // The value of an axis as its enum's underlying integer.
  constexpr std::uint8_t get(AxisId a) const {
    switch (a) {
      case AxisId::gemm_backend:
        return static_cast<std::uint8_t>(gemm);
      case AxisId::bmm_format:
        return static_cast<std::uint8_t>(bmm);
      case AxisId::allreduce_norm:
        return static_cast<std::uint8_t>(allreduce_norm);
      case AxisId::input_norm_quant:
        return static_cast<std::uint8_t>(input_norm_quant);
      case AxisId::qk_norm:
        return static_cast<std::uint8_t>(qk_norm);
      case AxisId::moe_streams:
        return static_cast<std::uint8_t>(moe_streams);
      case AxisId::qk_norm_rope_cache:
        return static_cast<std::uint8_t>(qk_norm_rope_cache);
    }
    return 0;
  }
  constexpr Point with(AxisId a, std::uint8_t v) const {
    Point p = *this;
    switch (a) {
      case AxisId::gemm_backend:
        p.gemm = static_cast<GemmBackend>(v);
        break;
      case AxisId::bmm_format:
        p.bmm = static_cast<BmmFormat>(v);
        break;
      case AxisId::allreduce_norm:
        p.allreduce_norm = static_cast<AllReduceNorm>(v);
        break;
      case AxisId::input_norm_quant:
        p.input_norm_quant = static_cast<InputNormQuant>(v);
        break;
      case AxisId::qk_norm:
        p.qk_norm = static_cast<QkNorm>(v);
        break;
      case AxisId::moe_streams:
        p.moe_streams = static_cast<MoeStreams>(v);
        break;
      case AxisId::qk_norm_rope_cache:
        p.qk_norm_rope_cache = static_cast<QkNormRopeCache>(v);
        break;
    }
    return p;
  }
};

enum class PipelineId : std::uint8_t {
  mla_attention,
  moe_block,
  qwen3_attention,
  ds_layer,
  qwen3_layer,
};
inline constexpr std::array<PipelineId, 5> pipelines{
    PipelineId::mla_attention, PipelineId::moe_block, PipelineId::qwen3_attention,
    PipelineId::ds_layer, PipelineId::qwen3_layer};

constexpr std::string_view pipeline_name(PipelineId p) {
  switch (p) {
    case PipelineId::mla_attention:
      return "mla_attention";
    case PipelineId::moe_block:
      return "moe_block";
    case PipelineId::qwen3_attention:
      return "qwen3_attention";
    case PipelineId::ds_layer:
      return "ds_layer";
    case PipelineId::qwen3_layer:
      return "qwen3_layer";
  }
  return "?";
}

enum class BackendId : std::uint8_t { host, gpu };
constexpr std::string_view backend_name(BackendId b) {
  return b == BackendId::host ? "host" : "gpu";
}

using AxisSet = std::array<bool, axis_count>;

constexpr bool uses(const AxisSet& s, AxisId a) {
  return s[static_cast<std::size_t>(a)];
}

// The axes a pipeline reads. Any other axis is folded to its first value (canonicalisation).
constexpr AxisSet axes_of(PipelineId p) {
  using enum AxisId;
  AxisSet s{};
  auto add = [&s](std::initializer_list<AxisId> ids) {
    for (AxisId a : ids) s[static_cast<std::size_t>(a)] = true;
  };
  switch (p) {
    case PipelineId::mla_attention:
      add({gemm_backend, bmm_format, allreduce_norm, input_norm_quant, qk_norm});
      break;
    case PipelineId::moe_block:
      // The router reads the bf16 normed activations, so the MoE norm is never fused with quant.
      add({gemm_backend, allreduce_norm, moe_streams});
      break;
    case PipelineId::qwen3_attention:
      // The DS_* input norm fusion is DeepSeek's: Qwen3's input norm is always norm, then quant.
      add({gemm_backend, allreduce_norm, qk_norm_rope_cache});
      break;
    case PipelineId::ds_layer:
      add({gemm_backend, bmm_format, allreduce_norm, input_norm_quant, qk_norm, moe_streams});
      break;
    case PipelineId::qwen3_layer:
      add({gemm_backend, allreduce_norm, moe_streams, qk_norm_rope_cache});
      break;
  }
  return s;
}

// The axis values the variables of a Config select. Two variables feed qk_norm: the quant fusion
// implies the norm fusion, so ATOM_ENABLE_DS_QKNORM_FUSION only matters when the quant fusion is
// off. A zero token threshold means the second stream is never created.
inline Point point_from(const env::Config& c) {
  using env::Var;
  Point p;
  p.gemm = c.get<Var::use_triton_gemm>() ? GemmBackend::portable : GemmBackend::matrix_core;
  p.bmm = c.get<Var::use_triton_mxfp4_bmm>() ? BmmFormat::mxfp4 : BmmFormat::fp8;
  p.allreduce_norm = c.get<Var::enable_allreduce_rmsnorm_fusion>() ? AllReduceNorm::fused
                                                                   : AllReduceNorm::separate;
  p.input_norm_quant = c.get<Var::enable_ds_input_rmsnorm_quant_fusion>()
                           ? InputNormQuant::fused
                           : InputNormQuant::separate;
  p.qk_norm = c.get<Var::enable_ds_qknorm_quant_fusion>() ? QkNorm::fused_quant
              : c.get<Var::enable_ds_qknorm_fusion>()     ? QkNorm::fused
                                                          : QkNorm::separate;
  p.moe_streams =
      c.get<Var::dual_stream_moe_token_threshold>() > 0 ? MoeStreams::dual : MoeStreams::single;
  p.qk_norm_rope_cache = c.get<Var::enable_qk_norm_rope_cache_quant_fusion>()
                             ? QkNormRopeCache::fused
                             : QkNormRopeCache::separate;
  return p;
}

// The representative of a point's equivalence class for a pipeline.
constexpr Point canonical(PipelineId p, Point x) {
  const AxisSet s = axes_of(p);
  for (std::size_t a = 0; a < axis_count; ++a)
    if (!s[a]) x = x.with(static_cast<AxisId>(a), 0);
  return x;
}

inline Point resolve(PipelineId p, const env::Config& c) {
  return canonical(p, point_from(c));
}

// The all-separate reference of a point: every fusion off and one stream, the backend and format
// choices (GEMM backend, BMM format) kept, since those change the function computed.
constexpr Point separate_of(PipelineId p, Point x) {
  Point r;
  r.gemm = x.gemm;
  r.bmm = x.bmm;
  return canonical(p, r);
}

// The packed key: 3 bits of pipeline, 1 of backend, 2 per axis.
using Key = std::uint32_t;
constexpr Key key(PipelineId p, BackendId b, Point x) {
  Key k = static_cast<Key>(p);
  k = (k << 1) | static_cast<Key>(b);
  for (std::size_t a = 0; a < axis_count; ++a) k = (k << 2) | x.get(static_cast<AxisId>(a));
  return k;
}
constexpr PipelineId key_pipeline(Key k) {
  return static_cast<PipelineId>(k >> (1 + 2 * axis_count));
}
constexpr BackendId key_backend(Key k) {
  return static_cast<BackendId>((k >> (2 * axis_count)) & 1u);
}
constexpr Point key_point(Key k) {
  Point x;
  for (std::size_t a = 0; a < axis_count; ++a) {
    const auto shift = 2 * (axis_count - 1 - a);
    x = x.with(static_cast<AxisId>(a), static_cast<std::uint8_t>((k >> shift) & 3u));
  }
  return x;
}

// Variable settings that select each axis value of `x` the pipeline reads, e.g.
// "ATOM_USE_TRITON_GEMM=0 ATOM_ENABLE_DS_QKNORM_QUANT_FUSION=1"; the inverse of point_from().
std::string settings_for(PipelineId p, Point x);
// The same as an environment map, for tests and tools.
env::Environment environment_for(PipelineId p, Point x);

// "gemm_backend=asm bmm_format=fp8 ..." over the axes the pipeline reads.
std::string describe(PipelineId p, Point x);
// The instantiation's name: "<pipeline>.<value>.<value>...", values in axis order.
std::string instance_name(PipelineId p, BackendId b, Point x);

}  // namespace atom::policy
