// The MLA latent cache write and the paged KV cache write on the GPU (atom/ops/cache.hpp's writers
// with `const Gpu&` first), the latter for every format (kv_format.hpp; explicitly instantiated
// for the three). Bit-identical to the host: fp8_row quantizes each row by its amax / 448,
// fp8_tensor divides each element by the tensor's scale, which the kernel reads from device
// memory (the host never reads it), correctly rounded; bf16 copies.
//
// slots live in device memory: the host checks shapes only, and the kernel skips a token whose
// slot is -1 or lies outside the cache (it never writes out of bounds). Repeated slots are the
// caller's contract (the slot mapping of a batch is a permutation); with a repeat, which token's
// row lands in the slot is unspecified.
#pragma once

#include <cstdint>

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/cache.hpp"
#include "atom/ops/gpu.hpp"

namespace atom::ops {

void mla_cache_write(const Gpu&, View2<const bf16> kv_c, View2<const bf16> k_pe,
                     View1<const std::int64_t> slots, View3<bf16> cache);

template <KvCacheFormat F>
void kv_cache_write(const Gpu&, View3<const bf16> k, View3<const bf16> v,
                    View1<const std::int64_t> slots, const KvCache<F>& cache);

}  // namespace atom::ops
