// The ATOM_* environment variables: the single source of their names, types, defaults, ranges,
// docs and the policy axis or subsystem each one feeds. Everything else (Config, the parser,
// atom-env's docs table, the policy axes' bindings) is derived from this table.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string_view>

namespace atom::env {

enum class Type : std::uint8_t { boolean, integer, string };

constexpr std::string_view type_name(Type t) {
  switch (t) {
    case Type::boolean:
      return "bool";
    case Type::integer:
      return "int";
    case Type::string:
      return "str";
  }
  return "?";
}

enum class Var : std::uint8_t {
  dp_rank,
  dp_rank_local,
  dp_size,
  dp_master_ip,
  dp_master_port,
  disable_mmap,
  disable_vllm_plugin,
  disable_vllm_plugin_attention,
  use_triton_gemm,
  use_triton_mxfp4_bmm,
  enable_allreduce_rmsnorm_fusion,
  enable_ds_input_rmsnorm_quant_fusion,
  enable_ds_qknorm_fusion,
  enable_ds_qknorm_quant_fusion,
  dual_stream_moe_token_threshold,
  enable_qk_norm_rope_cache_quant_fusion,
};

inline constexpr std::size_t var_count = 16;

// The id of a variable that an extension defines (env::add_extension_variable): it has a name but
// no place in `registry`.
inline constexpr Var extension_var = static_cast<Var>(0xff);

struct VarSpec {
  Var id;
  std::string_view name;
  Type type;
  std::string_view default_text;  // parsed by the same parser as the environment
  std::int64_t min;               // integer range, inclusive (unused for other types)
  std::int64_t max;
  std::string_view feeds;  // the policy axis or subsystem that reads it
  std::string_view doc;
};

inline constexpr std::int64_t int_max = std::numeric_limits<std::int32_t>::max();

// clang-format off
inline constexpr std::array<VarSpec, var_count> registry{{
  {Var::dp_rank, "ATOM_DP_RANK", Type::integer, "0", 0, int_max, "dist: DP group",
   "rank of this process in the data-parallel group (must be < ATOM_DP_SIZE)"},
  {Var::dp_rank_local, "ATOM_DP_RANK_LOCAL", Type::integer, "0", 0, int_max, "dist: DP group",
   "local rank on this node (picks the GPU)"},
  {Var::dp_size, "ATOM_DP_SIZE", Type::integer, "1", 1, int_max, "dist: DP group",
   "number of data-parallel ranks"},
  {Var::dp_master_ip, "ATOM_DP_MASTER_IP", Type::string, "127.0.0.1", 0, 0, "dist: DP group",
   "address of rank 0's rendezvous store"},
  {Var::dp_master_port, "ATOM_DP_MASTER_PORT", Type::integer, "29500", 1, 65535, "dist: DP group",
   "port of that store"},
  {Var::disable_mmap, "ATOM_DISABLE_MMAP", Type::boolean, "false", 0, 0, "io: safetensors",
   "load safetensors weights with reads instead of mmap"},
  {Var::disable_vllm_plugin, "ATOM_DISABLE_VLLM_PLUGIN", Type::boolean, "false", 0, 0,
   "plugin: registration", "register nothing with a host engine"},
  {Var::disable_vllm_plugin_attention, "ATOM_DISABLE_VLLM_PLUGIN_ATTENTION", Type::boolean,
   "false", 0, 0, "plugin: registration",
   "register everything except the attention backends"},
  {Var::use_triton_gemm, "ATOM_USE_TRITON_GEMM", Type::boolean, "false", 0, 0,
   "axis: gemm_backend",
   "MXFP4 GEMM backend: 0 = hand-written matrix-core kernel (asm), 1 = portable kernel (triton)"},
  {Var::use_triton_mxfp4_bmm, "ATOM_USE_TRITON_MXFP4_BMM", Type::boolean, "false", 0, 0,
   "axis: bmm_format",
   "MLA absorbed BMMs: 0 = FP8 weights and per-128-group FP8 activations, 1 = MXFP4 weights "
   "and bf16 activations"},
  {Var::enable_allreduce_rmsnorm_fusion, "ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION", Type::boolean,
   "true", 0, 0, "axis: allreduce_norm",
   "tensor parallel: all-reduce + residual add + RMSNorm (+ quant) in one kernel"},
  {Var::enable_ds_input_rmsnorm_quant_fusion, "ATOM_ENABLE_DS_INPUT_RMSNORM_QUANT_FUSION",
   Type::boolean, "true", 0, 0, "axis: input_norm_quant",
   "DeepSeek layer input: RMSNorm and MXFP4 activation quant in one kernel"},
  {Var::enable_ds_qknorm_fusion, "ATOM_ENABLE_DS_QKNORM_FUSION", Type::boolean, "true", 0, 0,
   "axis: qk_norm",
   "DeepSeek MLA: q_a and kv_a RMSNorms in one kernel (used when QK norm+quant fusion is off)"},
  {Var::enable_ds_qknorm_quant_fusion, "ATOM_ENABLE_DS_QKNORM_QUANT_FUSION", Type::boolean,
   "true", 0, 0, "axis: qk_norm",
   "the fused QK norm also quantizes q for the q_b projection"},
  {Var::dual_stream_moe_token_threshold, "ATOM_DUAL_STREAM_MOE_TOKEN_THRESHOLD", Type::integer,
   "1024", 0, int_max, "axis: moe_streams",
   "shared experts on a second stream for 0 < tokens <= threshold; 0 = never a second stream "
   "(measured on DeepSeek-V3 layers: the second stream is 0-3.5% faster up to 256 tokens, no "
   "crossover below; docs/bench-notes.md)"},
  {Var::enable_qk_norm_rope_cache_quant_fusion, "ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION",
   Type::boolean, "false", 0, 0, "axis: qk_norm_rope_cache",
   "Qwen3-MoE attention: per-head Q/K RMSNorm, RoPE and FP8 KV-cache write in one kernel"},
}};
// clang-format on

constexpr const VarSpec& spec(Var v) {
  return registry[static_cast<std::size_t>(v)];
}

constexpr bool registry_is_ordered() {
  for (std::size_t i = 0; i < var_count; ++i)
    if (static_cast<std::size_t>(registry[i].id) != i) return false;
  return true;
}
static_assert(registry_is_ordered(), "registry rows must follow the order of enum Var");

// The C++ type a variable's value has in a Config.
template <Type T>
struct value_type;
template <>
struct value_type<Type::boolean> {
  using type = bool;
};
template <>
struct value_type<Type::integer> {
  using type = std::int64_t;
};
template <>
struct value_type<Type::string> {
  using type = std::string_view;
};
template <Var V>
using value_t = typename value_type<spec(V).type>::type;

}  // namespace atom::env
