// The workspace arena: aligned blocks, and a run after reset() takes the same addresses without
// allocating (what lets a GPU run reuse device memory and be captured).
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "atom/pipeline/args.hpp"

using atom::pipeline::Workspace;

namespace {

// One run's takes: sizes chosen so that a block crosses into a second chunk.
std::vector<const void*> takes(Workspace& ws) {
  std::vector<const void*> p;
  p.push_back(ws.take<std::uint16_t>(3, 17).data);
  p.push_back(ws.take<float>(769).data);
  p.push_back(ws.take<std::uint8_t>(1).data);
  p.push_back(ws.take<std::uint8_t>(std::size_t{20} << 20).data);  // past one 16 MiB chunk
  p.push_back(ws.take<double>(5, 3).data);
  return p;
}

}  // namespace

TEST_CASE("workspace: aligned blocks, same addresses and no allocation after reset") {
  Workspace ws;
  const auto first = takes(ws);
  for (const void* p : first) CHECK(reinterpret_cast<std::uintptr_t>(p) % 256 == 0);
  for (std::size_t i = 1; i < first.size(); ++i) CHECK(first[i] != first[i - 1]);
  const std::size_t held = ws.capacity();
  CHECK(held >= (std::size_t{20} << 20));
  ws.reset();
  CHECK(takes(ws) == first);
  CHECK(ws.capacity() == held);
}
