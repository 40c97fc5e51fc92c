// The product space of the axes and the canonical points of a pipeline, derived from the axis
// descriptors at compile time. The generator writes one instantiation per canonical point; the
// reachability tests walk the same space.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>

#include "atom/policy/point.hpp"

namespace atom::policy {

inline constexpr std::size_t space_size = [] {
  std::size_t n = 1;
  for_each_axis([&](const auto& axis, std::size_t) { n *= axis.size; });
  return n;
}();

// Every point of the full product space (all axes, no folding), the last axis varying fastest.
inline constexpr auto all_points = [] {
  std::array<std::size_t, axis_count> radix{};
  for_each_axis([&](const auto& axis, std::size_t i) { radix[i] = axis.size; });
  std::array<Point, space_size> out{};
  for (std::size_t n = 0; n < space_size; ++n) {
    std::size_t rest = n;
    for (std::size_t a = axis_count; a-- > 0;) {
      out[n] = out[n].with(a, static_cast<std::uint8_t>(rest % radix[a]));
      rest /= radix[a];
    }
  }
  return out;
}();

// The number of distinct canonical points (the folds of canonical() make it less than the
// product of the read axes' sizes).
constexpr std::size_t count_canonical(const AxisSet& reads) {
  std::array<Point, space_size> seen{};
  std::size_t n = 0;
  for (const Point& x : all_points) {
    const Point c = canonical(reads, x);
    if (std::find(seen.begin(), seen.begin() + n, c) == seen.begin() + n) seen[n++] = c;
  }
  return n;
}

// The canonical points of a pipeline that reads `Reads`, sorted by key (for any pipeline: the
// pipeline and backend bits lead the key).
template <AxisSet Reads>
inline constexpr auto canonical_points = [] {
  std::array<Point, count_canonical(Reads)> out{};
  std::size_t n = 0;
  for (const Point& x : all_points) {
    const Point c = canonical(Reads, x);
    if (std::find(out.begin(), out.begin() + n, c) == out.begin() + n) out[n++] = c;
  }
  std::sort(out.begin(), out.end(), [](const Point& a, const Point& b) {
    return key(PipelineId{}, BackendId::host, a) < key(PipelineId{}, BackendId::host, b);
  });
  return out;
}();

}  // namespace atom::policy
