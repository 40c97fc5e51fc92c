// A policy point (one value per axis), the pipelines and backends, the packed key, and the
// canonicalisation rules. These rules are the only place where variables become axis values and
// where equivalent points are folded; the generator and the run-time lookup both call them.
#pragma once

#include <array>
#include <bit>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include "atom/env/config.hpp"
#include "atom/policy/axes.hpp"

namespace atom::policy {

namespace detail {
constexpr unsigned bits_for(std::size_t values) {
  return static_cast<unsigned>(std::bit_width(values - 1));
}
// Each axis's value in as few bits as its values need, the first axis highest.
inline constexpr std::array<unsigned, axis_count> axis_bits = [] {
  std::array<unsigned, axis_count> b{};
  for_each_axis([&](const auto& axis, std::size_t i) { b[i] = bits_for(axis.size); });
  return b;
}();
inline constexpr std::array<unsigned, axis_count> axis_shift = [] {
  std::array<unsigned, axis_count> s{};
  unsigned at = 0;
  for (std::size_t a = axis_count; a-- > 0;) {
    s[a] = at;
    at += axis_bits[a];
  }
  return s;
}();
inline constexpr unsigned point_bits = axis_shift[0] + axis_bits[0];
}  // namespace detail

// One value per axis, packed. A structural type: pipelines take it (as PointFor) as a template
// argument and branch on it with `if constexpr`. (Packed into an integer rather than an array:
// GCC 12 confuses template instantiations over array-valued arguments.)
//
// `extension` holds the values of the axes that extensions define (atom/extend/extension.hpp),
// four bits per axis in the order the extensions registered them; zero (every extension axis at
// its first value) is atom's own behaviour, the only one atom's instances have. It travels with
// the point through every resolution, so that an extension's instances are found wherever atom's
// are; atom's folds leave it alone and separate_of() clears it.
struct Point {
  std::uint32_t packed = 0;
  std::uint64_t extension = 0;

  friend constexpr bool operator==(const Point&, const Point&) = default;

  constexpr std::uint8_t operator[](std::size_t axis) const {
    return static_cast<std::uint8_t>((packed >> detail::axis_shift[axis]) &
                                     ((1u << detail::axis_bits[axis]) - 1));
  }
  template <class E>
  constexpr E get() const {
    return static_cast<E>((*this)[axis_index<E>]);
  }

  constexpr Point with(std::size_t axis, std::uint8_t v) const {
    const std::uint32_t field = ((1u << detail::axis_bits[axis]) - 1) << detail::axis_shift[axis];
    return {(packed & ~field) | (static_cast<std::uint32_t>(v) << detail::axis_shift[axis]),
            extension};
  }
  template <class E>
  constexpr Point with(E v) const {
    return with(axis_index<E>, static_cast<std::uint8_t>(v));
  }
};

// One axis value: any axis enum's value converts to it.
struct AxisValue {
  std::size_t axis;
  std::uint8_t value;

  template <class E>
  requires(axis_index<E> < axis_count) constexpr AxisValue(E v)  // NOLINT: implicit by design
      : axis(axis_index<E>), value(static_cast<std::uint8_t>(v)) {}
};

// The point with the given axis values, e.g. make_point({GemmBackend::portable, QkNorm::fused});
// every other axis takes its first value.
constexpr Point make_point(std::initializer_list<AxisValue> values) {
  Point p;
  for (const AxisValue& v : values) p = p.with(v.axis, v.value);
  return p;
}

// The axes fold to their first value outside `reads`, and where another axis's value makes them
// meaningless. The weight format decides what the GEMMs of a block read:
// - the GEMM backend chooses between two MXFP4 kernels, so it folds for FP8 and bf16 weights;
// - bf16 weights take bf16 activations: nothing is quantized for their GEMMs, so the input norm's
//   quant fusion folds to the separate form (the norm alone) and the q_a norm's quant fusion to
//   the plain norm fusion. (With FP8 weights both fusions quantize to FP8 per group of 128.)
constexpr Point canonical(const AxisSet& reads, Point x) {
  for (std::size_t a = 0; a < axis_count; ++a)
    if (!reads[a]) x = x.with(a, 0);
  if (reads[axis_index<WeightFormat>]) {
    const auto format = x.get<WeightFormat>();
    if (format != WeightFormat::mxfp4) x = x.with(GemmBackend::matrix_core);
    if (format == WeightFormat::bf16) {
      x = x.with(InputNormQuant::separate);
      if (x.get<QkNorm>() == QkNorm::fused_quant) x = x.with(QkNorm::fused);
    }
  }
  return x;
}

// A point as one pipeline sees it: the axes it reads, the others folded. A pipeline template
// takes `PointFor<its reads>`, so it cannot branch on an axis it does not declare (get() does not
// compile) and every point converts to its canonical representative.
template <AxisSet Reads>
struct PointFor {
  static constexpr AxisSet reads = Reads;
  Point point;

  constexpr PointFor(Point p) : point(canonical(Reads, p)) {}  // NOLINT: implicit by design

  template <class E>
  constexpr E get() const {
    static_assert(Reads[axis_index<E>],
                  "the pipeline branches on an axis it does not declare among the axes it reads");
    return point.get<E>();
  }
};

// The blocks a decoder layer is composed of (pipeline/layer.hpp): each is instantiated on its
// own, so a layer costs one indirect call per block and the instance count grows with each
// block's axes, not with their product.
enum class PipelineId : std::uint8_t {
  mla_attention,
  moe_block,
  qwen3_attention,
  dense_mlp,
};
inline constexpr std::array<PipelineId, 4> pipelines{
    PipelineId::mla_attention, PipelineId::moe_block, PipelineId::qwen3_attention,
    PipelineId::dense_mlp};

constexpr std::string_view pipeline_name(PipelineId p) {
  switch (p) {
    case PipelineId::mla_attention:
      return "mla_attention";
    case PipelineId::moe_block:
      return "moe_block";
    case PipelineId::qwen3_attention:
      return "qwen3_attention";
    case PipelineId::dense_mlp:
      return "dense_mlp";
  }
  return "?";
}

enum class BackendId : std::uint8_t { host, gpu };
constexpr std::string_view backend_name(BackendId b) {
  return b == BackendId::host ? "host" : "gpu";
}

// The axes a pipeline reads, as its template declares them (pipeline::Declared<P>::reads; this
// function is defined by the pipeline layer from those declarations).
AxisSet reads(PipelineId p);

// The axis values the variables of a Config select.
// The extension axes' values a Config selects (atom/extend: 0 where no extension is linked).
std::uint64_t extension_values(const env::Config& c);

inline Point point_from(const env::Config& c) {
  Point p;
  for_each_axis([&](const auto& axis, std::size_t i) { p = p.with(i, read_value(axis, c)); });
  p.extension = extension_values(c);
  return p;
}

// The representative of a point's equivalence class for a pipeline.
inline Point canonical(PipelineId p, Point x) {
  return canonical(reads(p), x);
}

inline Point resolve(PipelineId p, const env::Config& c) {
  return canonical(p, point_from(c));
}

// The all-separate reference of a point: every fusion axis at its first value (all separate, one
// stream), the choice axes (GEMM backend, BMM format) kept, since those change the function.
constexpr Point separate_of(const AxisSet& reads, Point x) {
  Point r;
  for_each_axis([&](const auto& axis, std::size_t i) {
    if (axis.kind == AxisKind::choice) r = r.with(i, x[i]);
  });
  return canonical(reads, r);
}
inline Point separate_of(PipelineId p, Point x) {
  return separate_of(reads(p), x);
}

// The packed key: the pipeline, the backend, then the point's values.
using Key = std::uint32_t;
namespace detail {
inline constexpr unsigned pipeline_bits = bits_for(pipelines.size());
inline constexpr unsigned backend_bits = 1;
static_assert(pipeline_bits + backend_bits + point_bits <= 32,
              "the pipeline, the backend and every axis value must fit in a 32-bit key");
}  // namespace detail

constexpr Key key(PipelineId p, BackendId b, Point x) {
  return (((static_cast<Key>(p) << detail::backend_bits) | static_cast<Key>(b))
          << detail::point_bits) |
         x.packed;
}
constexpr PipelineId key_pipeline(Key k) {
  return static_cast<PipelineId>(k >> (detail::backend_bits + detail::point_bits));
}
constexpr BackendId key_backend(Key k) {
  return static_cast<BackendId>((k >> detail::point_bits) & 1u);
}
constexpr Point key_point(Key k) {
  return {k & ((Key{1} << detail::point_bits) - 1), 0};
}

// Variable settings that select each axis value of `x` the pipeline reads, e.g.
// "ATOM_USE_TRITON_GEMM=0 ATOM_ENABLE_DS_QKNORM_QUANT_FUSION=1"; the inverse of point_from().
std::string settings_for(PipelineId p, Point x);
// The same as an environment map, for tests and tools.
env::Environment environment_for(PipelineId p, Point x);

// "gemm_backend=asm bmm_format=fp8 ..." over the axes the pipeline reads.
std::string describe(PipelineId p, Point x);
std::string describe(const AxisSet& reads, Point x);
// The instantiation's name: "<pipeline>.<backend>.<tag>-<value>...", values in axis order.
std::string instance_name(PipelineId p, BackendId b, Point x);
std::string instance_name(std::string_view pipeline, const AxisSet& reads, BackendId b, Point x);

}  // namespace atom::policy
