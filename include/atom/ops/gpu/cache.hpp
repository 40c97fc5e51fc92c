// The MLA latent cache write and the FP8 paged KV cache write on the GPU (atom/ops/cache.hpp's
// writers with `const Gpu&` first). Bit-identical to the host.
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

void kv_cache_write_fp8(const Gpu&, View3<const bf16> k, View3<const bf16> v,
                        View1<const std::int64_t> slots, const KvCacheFp8& cache);

}  // namespace atom::ops
