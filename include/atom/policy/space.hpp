// The product space of the axes, described with Boost.Hana, and the canonical points of each
// pipeline derived from it at compile time. The generator writes one instantiation per canonical
// point; the reachability tests walk the same space.
#pragma once

#include <algorithm>
#include <array>
#include <boost/hana.hpp>
#include <cstddef>

#include "atom/policy/point.hpp"

namespace atom::policy {

namespace hana = boost::hana;

// Every axis as a hana tuple of its values, in AxisId order.
inline constexpr auto axis_values = hana::make_tuple(
    hana::tuple_c<GemmBackend, GemmBackend::matrix_core, GemmBackend::portable>,
    hana::tuple_c<BmmFormat, BmmFormat::fp8, BmmFormat::mxfp4>,
    hana::tuple_c<AllReduceNorm, AllReduceNorm::separate, AllReduceNorm::fused>,
    hana::tuple_c<InputNormQuant, InputNormQuant::separate, InputNormQuant::fused>,
    hana::tuple_c<QkNorm, QkNorm::separate, QkNorm::fused, QkNorm::fused_quant>,
    hana::tuple_c<MoeStreams, MoeStreams::single, MoeStreams::dual>,
    hana::tuple_c<QkNormRopeCache, QkNormRopeCache::separate, QkNormRopeCache::fused>);

static_assert(hana::length(axis_values) == hana::size_c<axis_count>);

// Every point of the full product space (all axes, no folding).
inline constexpr auto all_points = [] {
  constexpr auto product = hana::cartesian_product(axis_values);
  constexpr std::size_t n = hana::length(product);
  std::array<Point, n> out{};
  std::size_t i = 0;
  hana::for_each(product, [&](auto values) {
    out[i++] =
        hana::unpack(values, [](auto g, auto b, auto ar, auto inq, auto qk, auto moe, auto qkrc) {
          return Point{g(), b(), ar(), inq(), qk(), moe(), qkrc()};
        });
  });
  return out;
}();

constexpr std::size_t count_canonical(PipelineId p) {
  std::array<Key, all_points.size()> keys{};
  std::size_t n = 0;
  for (const Point& x : all_points) {
    const Key k = key(p, BackendId::host, canonical(p, x));
    if (std::find(keys.begin(), keys.begin() + n, k) == keys.begin() + n) keys[n++] = k;
  }
  return n;
}

// The canonical points of a pipeline, sorted by key.
template <PipelineId P>
inline constexpr auto canonical_points = [] {
  std::array<Point, count_canonical(P)> out{};
  std::size_t n = 0;
  for (const Point& x : all_points) {
    const Point c = canonical(P, x);
    if (std::find(out.begin(), out.begin() + n, c) == out.begin() + n) out[n++] = c;
  }
  std::sort(out.begin(), out.end(), [](const Point& a, const Point& b) {
    return key(P, BackendId::host, a) < key(P, BackendId::host, b);
  });
  return out;
}();

}  // namespace atom::policy
