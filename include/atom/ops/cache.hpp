// Paged caches written once per decoded token: the MLA latent cache (bf16) and the GQA key/value
// cache (FP8 e4m3 with one float scale per token and kv head).
//
// Both are paged: a cache holds num_blocks blocks of block_size token slots, and a token's slot is
// block * block_size + offset. Writers take one slot per token; slot -1 means "do not write"
// (padding tokens). Readers find a sequence's blocks through a block table (attention.hpp).
#pragma once

#include <cstdint>
#include <string_view>
#include <type_traits>

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/backend.hpp"
#include "atom/ops/formats.hpp"

namespace atom::ops {

// Slot value that skips a token in every cache writer.
inline constexpr std::int64_t skip_slot = -1;

// The MLA latent cache write: cache [num_blocks, block_size, kv_lora + rope] gets, at slot
// slots[t], the compressed latent kv_c[t] (kv_lora values) followed by the rotated key k_pe[t]
// (rope values). A copy: no rounding. Slots must be -1 or inside the cache and must not repeat;
// a bad slot is rejected before anything is written.
void mla_cache_write(const Host&, View2<const bf16> kv_c, View2<const bf16> k_pe,
                     View1<const std::int64_t> slots, View3<bf16> cache);

// The paged FP8 key/value cache of GQA attention. key and value are
// [num_blocks, block_size, kv_heads, head_dim]; key_scale and value_scale are
// [num_blocks, block_size, kv_heads]. A stored element means to_float(code) * scale.
template <class Code, class Scale>
struct PagedKvCacheFp8 {
  View4<Code> key;
  View4<Code> value;
  View3<Scale> key_scale;
  View3<Scale> value_scale;

  index_t num_blocks() const { return key.size(0); }
  index_t block_size() const { return key.size(1); }
  index_t kv_heads() const { return key.size(2); }
  index_t head_dim() const { return key.size(3); }

  // The same cache seen as read-only (what attention takes). A template, so that the read-only
  // cache declares no conversion to itself (which nvcc warns about).
  template <class C, class S,
            class = std::enable_if_t<std::is_same_v<C, const Code> &&
                                     std::is_same_v<S, const Scale> && !std::is_const_v<Code>>>
  constexpr operator PagedKvCacheFp8<C, S>() const {
    return {key, value, key_scale, value_scale};
  }
};
using KvCacheFp8 = PagedKvCacheFp8<fp8_e4m3, float>;
using ConstKvCacheFp8 = PagedKvCacheFp8<const fp8_e4m3, const float>;

// Checks the four views agree with each other (and with kv_heads / head_dim where those are not
// -1) and have a contiguous last dimension; `arg` names the cache in messages.
void expect_kv_cache(std::string_view op, std::string_view arg, const ConstKvCacheFp8& cache,
                     index_t kv_heads, index_t head_dim);

// Checks that an input the writer reads does not share memory with any of the cache's views.
template <class T, int R>
void expect_disjoint_from_cache(std::string_view op, const KvCacheFp8& cache,
                                std::string_view in_arg, const View<T, R>& in) {
  expect_disjoint(op, "cache.key", cache.key, in_arg, in);
  expect_disjoint(op, "cache.value", cache.value, in_arg, in);
  expect_disjoint(op, "cache.key_scale", cache.key_scale, in_arg, in);
  expect_disjoint(op, "cache.value_scale", cache.value_scale, in_arg, in);
}

// Checks slots [tokens]: each -1 or in [0, capacity), none repeated.
void expect_slots(std::string_view op, View1<const std::int64_t> slots, index_t tokens,
                  index_t capacity);

// The FP8 cache's quantization of one (token, kv head) row of n floats: scale = amax / 448
// (1 when amax == 0), code = to_fp8(x / scale). Returns the scale.
ATOM_HD inline float quantize_kv_row(const float* x, index_t n, fp8_e4m3* code) {
  float amax = 0.0f;
  for (index_t i = 0; i < n; ++i) {
    const float magnitude = x[i] < 0.0f ? -x[i] : x[i];
    if (magnitude > amax) amax = magnitude;
  }
  const float scale = amax > 0.0f ? amax / fp8_max<Fp8Kind::e4m3fn> : 1.0f;
  for (index_t i = 0; i < n; ++i) code[i] = to_fp8<Fp8Kind::e4m3fn>(x[i] / scale);
  return scale;
}

// Writes k and v [tokens, kv_heads, head_dim] (rows may be strided; the last dimension has
// stride 1) into the FP8 cache at slots[t], each (token, head) row quantized by quantize_kv_row
// from its bf16 values. Slots as for mla_cache_write.
void kv_cache_write_fp8(const Host&, View3<const bf16> k, View3<const bf16> v,
                        View1<const std::int64_t> slots, const KvCacheFp8& cache);

}  // namespace atom::ops
