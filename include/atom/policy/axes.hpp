// The policy axes: every fusion and backend choice, each tied to the variables that feed it.
// An axis is a small enum plus a descriptor; pipelines see axis values only as template
// arguments (through policy::Point), never as run-time flags.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "atom/env/config.hpp"

namespace atom::policy {

// MXFP4 GEMM: the hand-written matrix-core kernel ("asm") or the portable one ("triton").
enum class GemmBackend : std::uint8_t { matrix_core, portable };
// MLA absorbed BMMs: FP8 weights with FP8 per-128 activations, or MXFP4 weights with bf16 ones.
enum class BmmFormat : std::uint8_t { fp8, mxfp4 };
// Tensor-parallel all-reduce, residual add and RMSNorm: two steps or one kernel.
enum class AllReduceNorm : std::uint8_t { separate, fused };
// Layer-input RMSNorm and MXFP4 quant: two kernels or one.
enum class InputNormQuant : std::uint8_t { separate, fused };
// DeepSeek q_a / kv_a RMSNorms: two norms, one fused kernel, or one kernel that also quantizes q.
enum class QkNorm : std::uint8_t { separate, fused, fused_quant };
// MoE shared experts: on the main stream, or on a second stream for small batches.
enum class MoeStreams : std::uint8_t { single, dual };
// Qwen3 per-head Q/K norm, RoPE and FP8 KV-cache write: separate kernels or one.
enum class QkNormRopeCache : std::uint8_t { separate, fused };

enum class AxisId : std::uint8_t {
  gemm_backend,
  bmm_format,
  allreduce_norm,
  input_norm_quant,
  qk_norm,
  moe_streams,
  qk_norm_rope_cache,
};
inline constexpr std::size_t axis_count = 7;

// Descriptor of one axis: its name, the names of its values (index = enum value), the
// variables that feed it, and the rule that reads its value from a Config.
template <class E, std::size_t N, std::size_t NVars>
struct AxisInfo {
  using enum_type = E;
  AxisId id;
  std::string_view name;
  std::string_view tag;  // short form used in instance names
  std::array<std::string_view, N> value_names;
  std::array<env::Var, NVars> vars;

  static constexpr std::size_t size = N;
  constexpr std::string_view value_name(E v) const {
    return value_names[static_cast<std::size_t>(v)];
  }
};

inline constexpr AxisInfo<GemmBackend, 2, 1> gemm_backend{
    AxisId::gemm_backend, "gemm_backend", "gemm", {"asm", "triton"}, {env::Var::use_triton_gemm}};
inline constexpr AxisInfo<BmmFormat, 2, 1> bmm_format{
    AxisId::bmm_format, "bmm_format", "bmm", {"fp8", "mxfp4"}, {env::Var::use_triton_mxfp4_bmm}};
inline constexpr AxisInfo<AllReduceNorm, 2, 1> allreduce_norm{
    AxisId::allreduce_norm,
    "allreduce_norm",
    "ar",
    {"separate", "fused"},
    {env::Var::enable_allreduce_rmsnorm_fusion}};
inline constexpr AxisInfo<InputNormQuant, 2, 1> input_norm_quant{
    AxisId::input_norm_quant,
    "input_norm_quant",
    "inq",
    {"separate", "fused"},
    {env::Var::enable_ds_input_rmsnorm_quant_fusion}};
inline constexpr AxisInfo<QkNorm, 3, 2> qk_norm{
    AxisId::qk_norm,
    "qk_norm",
    "qk",
    {"separate", "fused", "fused_quant"},
    {env::Var::enable_ds_qknorm_fusion, env::Var::enable_ds_qknorm_quant_fusion}};
inline constexpr AxisInfo<MoeStreams, 2, 1> moe_streams{
    AxisId::moe_streams,
    "moe_streams",
    "moe",
    {"single", "dual"},
    {env::Var::dual_stream_moe_token_threshold}};
inline constexpr AxisInfo<QkNormRopeCache, 2, 1> qk_norm_rope_cache{
    AxisId::qk_norm_rope_cache,
    "qk_norm_rope_cache",
    "qkrc",
    {"separate", "fused"},
    {env::Var::enable_qk_norm_rope_cache_quant_fusion}};

// Visits every axis descriptor in AxisId order.
template <class F>
constexpr void for_each_axis(F&& f) {
  f(gemm_backend);
  f(bmm_format);
  f(allreduce_norm);
  f(input_norm_quant);
  f(qk_norm);
  f(moe_streams);
  f(qk_norm_rope_cache);
}

}  // namespace atom::policy
