// atom/ops/decode_batch.hpp's ops on device memory.
#pragma once

#include "atom/ops/decode_batch.hpp"
#include "atom/ops/gpu.hpp"

namespace atom::ops {

void advance_decode(const Gpu&, const DecodeCursor& batch, index_t block_size);

template <class T>
void fill_uniform(const Gpu&, View1<T> out, std::uint64_t seed, float lo, float hi);

}  // namespace atom::ops
