// Graph-replay timing shared by the GPU benchmarks: `graph_calls` calls captured as one graph
// after an eager round on the same stream (which sizes the ops' scratch), the graph replayed
// `replays` times between device events, the median per call.
#pragma once

#include <algorithm>
#include <vector>

#include "atom/gpu/device.hpp"
#include "atom/gpu/graph.hpp"

namespace atom::bench {

inline constexpr int graph_calls = 20;
inline constexpr int replays = 10;

// Median microseconds per call of call(i), i in [0, graph_calls), in graph replay on `stream`.
template <class Call>
double graph_us(gpu::Stream& stream, Call call) {
  for (int i = 0; i < graph_calls; ++i) call(i);
  stream.synchronize();
  const gpu::Graph graph = gpu::Graph::capture(stream.handle(), [&] {
    for (int i = 0; i < graph_calls; ++i) call(i);
  });
  graph.replay(stream.handle());
  gpu::StreamMarks marks(stream.handle());
  for (int r = 0; r < replays; ++r) {
    marks.mark();
    graph.replay(stream.handle());
  }
  marks.mark();
  std::vector<double> ms = marks.intervals_ms();
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2] * 1000.0 / graph_calls;
}

}  // namespace atom::bench
