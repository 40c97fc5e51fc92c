#include <algorithm>

#include "atom/pipeline/args.hpp"

namespace atom::pipeline {

namespace {

// Blocks start on 256-byte boundaries (the widest vector access of any kernel, and a cache line
// multiple on every target).
constexpr std::size_t block_alignment = 256;
// Chunks hold at least this much, so that a run's many small blocks share a few allocations.
constexpr std::size_t min_chunk_bytes = std::size_t{16} << 20;

std::size_t aligned(std::size_t n) {
  return (n + block_alignment - 1) / block_alignment * block_alignment;
}

}  // namespace

Workspace::Chunk Workspace::host_chunk(std::size_t bytes) {
  return Chunk(static_cast<std::byte*>(::operator new (bytes, std::align_val_t{block_alignment})),
               [](std::byte* p) { ::operator delete (p, std::align_val_t{block_alignment}); });
}

void* Workspace::bytes(std::size_t n) {
  n = aligned(std::max<std::size_t>(n, 1));
  while (chunk_ < chunks_.size() && used_ + n > chunks_[chunk_].second) {
    ++chunk_;
    used_ = 0;
  }
  if (chunk_ == chunks_.size()) {
    const std::size_t size = std::max(n, min_chunk_bytes);
    chunks_.emplace_back(allocate_(size), size);
    used_ = 0;
  }
  void* p = chunks_[chunk_].first.get() + used_;
  used_ += n;
  return p;
}

std::size_t Workspace::capacity() const {
  std::size_t total = 0;
  for (const auto& c : chunks_) total += c.second;
  return total;
}

}  // namespace atom::pipeline
