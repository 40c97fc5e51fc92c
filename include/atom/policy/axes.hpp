// The policy axes: every fusion and backend choice, each defined once by an enum and a
// descriptor (its name, tag, values, the variables that feed it and how they are read). The list
// `axes` at the end orders them; everything else (the point's layout, the product space, the key,
// names, settings, the generator's tables) is derived from the descriptors. Pipelines see axis
// values only as template arguments (policy::PointFor), never as run-time flags.
//
// Adding an axis: its enum and descriptor here, one entry in `axes`, its variable in
// env/registry.hpp, and the pipelines that read it say so next to their templates.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <tuple>
#include <type_traits>

#include "atom/env/config.hpp"
#include "atom/ops/kv_format.hpp"

namespace atom::policy {

// How the variables of a Config select an axis value, and the inverse: the settings that select
// a value. Null rules mean the plain rule of a two-valued axis fed by one boolean variable:
// false selects the first value, true the second.
using ReadRule = std::uint8_t (*)(const env::Config&);
using SelectRule = void (*)(std::uint8_t value, env::Environment&);

// A fusion axis changes how a function is computed (its first value is the all-separate form,
// the reference of the others); a choice axis changes the function itself (a kernel backend or a
// weight format), so a reference keeps its value.
enum class AxisKind : std::uint8_t { fusion, choice };

// Where an axis's value comes from: the ATOM_* variables, or the data a block runs on: its weights
// (their format is a property of the checkpoint) or the caches it is given (their format is the
// engine's). A run sets such an axis from what it loaded or was handed; a Config alone selects
// the axis's first value.
enum class AxisSource : std::uint8_t { environment, weights, caches };

// Descriptor of one axis. `enumerators` are the C++ names of E's values (index = value), for the
// generated code; `labels` the names in instance names, settings and messages.
template <class E, std::size_t N, std::size_t NVars = 1>
struct Axis {
  using enum_type = E;
  static constexpr std::size_t size = N;

  std::string_view name;
  std::string_view tag;        // short form used in instance names
  std::string_view type_name;  // the enum's name in namespace atom::policy
  std::array<std::string_view, N> enumerators;
  std::array<std::string_view, N> labels;
  std::array<env::Var, NVars> vars;
  AxisKind kind = AxisKind::fusion;
  AxisSource source = AxisSource::environment;
  ReadRule read = nullptr;
  SelectRule select = nullptr;

  constexpr std::string_view label(std::uint8_t v) const { return labels[v]; }
};

namespace detail {
template <class E, std::size_t N, std::size_t NVars>
constexpr bool plain_rule_applies(const Axis<E, N, NVars>& a) {
  if constexpr (NVars != 1)
    return false;
  else
    return N == 2 && env::spec(a.vars[0]).type == env::Type::boolean;
}
}  // namespace detail

inline void set_variable(env::Environment& e, env::Var v, std::string_view value) {
  e[std::string(env::spec(v).name)] = std::string(value);
}

// The axis value a Config selects (an axis set by the weights or caches: its first value).
template <class E, std::size_t N, std::size_t NVars>
std::uint8_t read_value(const Axis<E, N, NVars>& a, const env::Config& c) {
  if constexpr (NVars == 0) {
    return 0;
  } else {
    if (a.read != nullptr) return a.read(c);
    return std::get<bool>(c.value(a.vars[0])) ? 1 : 0;
  }
}

// Settings that select value v of the axis (none for an axis set by the weights or caches).
template <class E, std::size_t N, std::size_t NVars>
void select_value(const Axis<E, N, NVars>& a, std::uint8_t v, env::Environment& e) {
  if constexpr (NVars != 0) {
    if (a.select != nullptr) return a.select(v, e);
    set_variable(e, a.vars[0], v ? "1" : "0");
  }
}

// MXFP4 GEMM: the hand-written matrix-core kernel ("asm") or the portable one ("triton").
enum class GemmBackend : std::uint8_t { matrix_core, portable };
inline constexpr Axis<GemmBackend, 2> gemm_backend{.name = "gemm_backend",
                                                   .tag = "gemm",
                                                   .type_name = "GemmBackend",
                                                   .enumerators = {"matrix_core", "portable"},
                                                   .labels = {"asm", "triton"},
                                                   .vars = {env::Var::use_triton_gemm},
                                                   .kind = AxisKind::choice};

// MLA absorbed BMMs: FP8 weights with FP8 per-128 activations, or MXFP4 weights with bf16 ones.
enum class BmmFormat : std::uint8_t { fp8, mxfp4 };
inline constexpr Axis<BmmFormat, 2> bmm_format{.name = "bmm_format",
                                               .tag = "bmm",
                                               .type_name = "BmmFormat",
                                               .enumerators = {"fp8", "mxfp4"},
                                               .labels = {"fp8", "mxfp4"},
                                               .vars = {env::Var::use_triton_mxfp4_bmm},
                                               .kind = AxisKind::choice};

// Tensor-parallel all-reduce, residual add and RMSNorm: two steps or one kernel.
enum class AllReduceNorm : std::uint8_t { separate, fused };
inline constexpr Axis<AllReduceNorm, 2> allreduce_norm{
    .name = "allreduce_norm",
    .tag = "ar",
    .type_name = "AllReduceNorm",
    .enumerators = {"separate", "fused"},
    .labels = {"separate", "fused"},
    .vars = {env::Var::enable_allreduce_rmsnorm_fusion}};

// Layer-input RMSNorm and the quant of the next GEMM's input: two kernels or one.
enum class InputNormQuant : std::uint8_t { separate, fused };
inline constexpr Axis<InputNormQuant, 2> input_norm_quant{
    .name = "input_norm_quant",
    .tag = "inq",
    .type_name = "InputNormQuant",
    .enumerators = {"separate", "fused"},
    .labels = {"separate", "fused"},
    .vars = {env::Var::enable_ds_input_rmsnorm_quant_fusion}};

// DeepSeek q_a / kv_a RMSNorms: two norms, one fused kernel, or one kernel that also quantizes q.
// Two variables feed it: the quant fusion implies the norm fusion, so ATOM_ENABLE_DS_QKNORM_FUSION
// only matters when the quant fusion is off.
enum class QkNorm : std::uint8_t { separate, fused, fused_quant };
inline constexpr Axis<QkNorm, 3, 2> qk_norm{
    .name = "qk_norm",
    .tag = "qk",
    .type_name = "QkNorm",
    .enumerators = {"separate", "fused", "fused_quant"},
    .labels = {"separate", "fused", "fused_quant"},
    .vars = {env::Var::enable_ds_qknorm_fusion, env::Var::enable_ds_qknorm_quant_fusion},
    .read = [](const env::Config& c) -> std::uint8_t {
      using env::Var;
      return c.get<Var::enable_ds_qknorm_quant_fusion>() ? 2
             : c.get<Var::enable_ds_qknorm_fusion>()     ? 1
                                                         : 0;
    },
    .select =
        [](std::uint8_t v, env::Environment& e) {
          set_variable(e, env::Var::enable_ds_qknorm_quant_fusion, v == 2 ? "1" : "0");
          // With the quant fusion on, the plain norm fusion is irrelevant and left unset.
          if (v != 2) set_variable(e, env::Var::enable_ds_qknorm_fusion, v == 1 ? "1" : "0");
        }};

// MoE shared experts: on the main stream, or on a second stream for small batches. A zero token
// threshold means the second stream is never created.
enum class MoeStreams : std::uint8_t { single, dual };
inline constexpr Axis<MoeStreams, 2> moe_streams{
    .name = "moe_streams",
    .tag = "moe",
    .type_name = "MoeStreams",
    .enumerators = {"single", "dual"},
    .labels = {"single", "dual"},
    .vars = {env::Var::dual_stream_moe_token_threshold},
    .read = [](const env::Config& c) -> std::uint8_t {
      return c.get<env::Var::dual_stream_moe_token_threshold>() > 0 ? 1 : 0;
    },
    .select =
        [](std::uint8_t v, env::Environment& e) {
          set_variable(e, env::Var::dual_stream_moe_token_threshold, v ? "1024" : "0");
        }};

// Qwen3 per-head Q/K norm, RoPE and FP8 KV-cache write: separate kernels or one.
enum class QkNormRopeCache : std::uint8_t { separate, fused };
inline constexpr Axis<QkNormRopeCache, 2> qk_norm_rope_cache{
    .name = "qk_norm_rope_cache",
    .tag = "qkrc",
    .type_name = "QkNormRopeCache",
    .enumerators = {"separate", "fused"},
    .labels = {"separate", "fused"},
    .vars = {env::Var::enable_qk_norm_rope_cache_quant_fusion}};

// The format of a block's linear weights, as its checkpoint stores them (the block's GEMMs read
// it; activations are quantized to what each GEMM reads): MXFP4 (Quark's exports; also the
// random weights of the presets), FP8 e4m3 with 128x128 block scales (DeepSeek-V3), or bf16.
// Set from the weights, never from the environment.
enum class WeightFormat : std::uint8_t { mxfp4, fp8_block, bf16 };
inline constexpr Axis<WeightFormat, 3, 0> weight_format{
    .name = "weight_format",
    .tag = "w",
    .type_name = "WeightFormat",
    .enumerators = {"mxfp4", "fp8_block", "bf16"},
    .labels = {"mxfp4", "fp8", "bf16"},
    .vars = {},
    .kind = AxisKind::choice,
    .source = AxisSource::weights};

// The format of the GQA key/value cache a block reads and writes (ops/kv_format.hpp): atom's FP8
// with a scale per row, FP8 with one scale per tensor (vLLM's and SGLang's), or bf16. Set from the
// cache a run is given, never from the environment.
using KvCacheFormat = ops::KvCacheFormat;
inline constexpr Axis<KvCacheFormat, 3, 0> kv_cache_format{
    .name = "kv_cache_format",
    .tag = "kv",
    .type_name = "KvCacheFormat",
    .enumerators = {"fp8_row", "fp8_tensor", "bf16"},
    .labels = {"fp8row", "fp8tensor", "bf16"},
    .vars = {},
    .kind = AxisKind::choice,
    .source = AxisSource::caches};

// Every axis, in key order.
inline constexpr std::tuple axes{gemm_backend,       bmm_format,    allreduce_norm,
                                 input_norm_quant,   qk_norm,       moe_streams,
                                 qk_norm_rope_cache, weight_format, kv_cache_format};

inline constexpr std::size_t axis_count = std::tuple_size_v<decltype(axes)>;

// Visits every axis descriptor in key order; f(axis, index).
template <class F>
constexpr void for_each_axis(F&& f) {
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (f(std::get<I>(axes), I), ...);
  }
  (std::make_index_sequence<axis_count>{});
}

namespace detail {
template <class E, std::size_t... I>
constexpr std::size_t index_of(std::index_sequence<I...>) {
  constexpr bool same[] = {
      std::is_same_v<typename std::tuple_element_t<I, decltype(axes)>::enum_type, E>...};
  std::size_t found = axis_count;
  std::size_t matches = 0;
  for (std::size_t i = 0; i < sizeof...(I); ++i)
    if (same[i]) {
      found = i;
      ++matches;
    }
  return matches == 1 ? found : axis_count;
}

template <class A>
constexpr bool well_formed(const A& a) {
  if (a.name.empty() || a.tag.empty() || a.type_name.empty() || A::size < 2) return false;
  for (std::size_t v = 0; v < A::size; ++v)
    if (a.enumerators[v].empty() || a.labels[v].empty()) return false;
  // An axis set by the weights or caches has no variables and no rules; an environment axis
  // without a written rule must be two-valued and fed by one boolean.
  if ((a.read == nullptr) != (a.select == nullptr)) return false;
  if (a.source != AxisSource::environment) return a.vars.empty() && a.read == nullptr;
  return !a.vars.empty() && (a.read != nullptr || plain_rule_applies(a));
}
}  // namespace detail

// The position of the axis whose enum is E.
template <class E>
inline constexpr std::size_t axis_index =
    detail::index_of<E>(std::make_index_sequence<axis_count>{});

template <class E>
inline constexpr const auto& axis_of = std::get<axis_index<E>>(axes);

static_assert(
    [] {
      bool ok = true;
      for_each_axis([&](const auto& a, std::size_t i) {
        using E = typename std::decay_t<decltype(a)>::enum_type;
        ok = ok && detail::well_formed(a) && axis_index<E> == i;
      });
      return ok;
    }(),
    "every axis needs a name, a tag, its enum's name, a name for each of its values, its own enum "
    "type, and either a written read/select rule pair or two values fed by one boolean variable "
    "(an axis set by the weights or caches: no variables and no rules)");

// Which axes something reads, one bit per axis in the order of `axes`. (A bit mask rather than an
// array of bools: GCC 12 confuses template instantiations over array-valued arguments.)
struct AxisSet {
  std::uint64_t mask = 0;

  constexpr bool operator[](std::size_t axis) const { return (mask >> axis) & 1u; }
  friend constexpr bool operator==(const AxisSet&, const AxisSet&) = default;
};
static_assert(axis_count <= 64);

template <class... E>
inline constexpr AxisSet axes_read = [] {
  static_assert(((axis_index<E> < axis_count) && ...), "not an axis enum");
  AxisSet s;
  ((s.mask |= std::uint64_t{1} << axis_index<E>), ...);
  return s;
}();

constexpr AxisSet union_of(const AxisSet& a, const AxisSet& b) {
  return {a.mask | b.mask};
}

// An axis value with no branch in a pipeline: `else static_assert(policy::unhandled<V>)` ends
// every chain of `if constexpr` over an axis, so a value added later does not compile into
// another value's code.
template <auto V>
inline constexpr bool unhandled = false;

}  // namespace atom::policy
