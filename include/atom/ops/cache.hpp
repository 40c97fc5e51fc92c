// Paged caches written once per decoded token: the MLA latent cache (bf16) and the GQA key/value
// cache (in one of the formats of kv_format.hpp).
//
// Both are paged: a cache holds num_blocks blocks of block_size token slots, and a token's slot is
// block * block_size + offset. Writers take one slot per token; slot -1 means "do not write"
// (padding tokens). Readers find a sequence's blocks through a block table (attention.hpp).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/backend.hpp"
#include "atom/ops/formats.hpp"
#include "atom/ops/kv_format.hpp"

namespace atom::ops {

// Slot value that skips a token in every cache writer.
inline constexpr std::int64_t skip_slot = -1;

// The MLA latent cache write: cache [num_blocks, block_size, kv_lora + rope] gets, at slot
// slots[t], the compressed latent kv_c[t] (kv_lora values) followed by the rotated key k_pe[t]
// (rope values). A copy: no rounding. Slots must be -1 or inside the cache and must not repeat;
// a bad slot is rejected before anything is written.
void mla_cache_write(const Host&, View2<const bf16> kv_c, View2<const bf16> k_pe,
                     View1<const std::int64_t> slots, View3<bf16> cache);

// The paged key/value cache of GQA attention in format F (kv_format.hpp). key and value are
// [num_blocks, block_size, kv_heads, head_dim] (the last dimension contiguous; the outer strides
// are free, so one engine allocation of [num_blocks, 2, block_size, kv_heads, head_dim] serves
// as two views); an element means to_float(code) * scale. key_scale and value_scale are
// [num_blocks, block_size, kv_heads]: in fp8_row one float per row, in fp8_tensor one float each,
// seen through strides 0 (per_tensor_fp8_cache builds them), in bf16 empty (shape [0, 0, 0]).
// Const: the same cache seen as read-only (what attention takes).
template <KvCacheFormat F, bool Const = false>
struct PagedKvCache {
  static constexpr KvCacheFormat format = F;
  using Code = std::conditional_t<F == KvCacheFormat::bf16, bf16, fp8_e4m3>;
  using Stored = std::conditional_t<Const, const Code, Code>;
  using Scale = std::conditional_t<Const, const float, float>;

  View4<Stored> key;
  View4<Stored> value;
  View3<Scale> key_scale;
  View3<Scale> value_scale;

  index_t num_blocks() const { return key.size(0); }
  index_t block_size() const { return key.size(1); }
  index_t kv_heads() const { return key.size(2); }
  index_t head_dim() const { return key.size(3); }

  // Dequantized element d of the key (or value) row of a slot and kv head.
  ATOM_HD float element(bool is_value, index_t block, index_t offset, index_t head,
                        index_t d) const {
    const auto& codes = is_value ? value : key;
    if constexpr (F == KvCacheFormat::bf16) {
      return to_float(codes(block, offset, head, d));
    } else {
      const auto& scales = is_value ? value_scale : key_scale;
      return to_float(codes(block, offset, head, d)) * scales(block, offset, head);
    }
  }

  // A template, so that the read-only cache declares no conversion to itself (which nvcc warns
  // about).
  template <bool C, class = std::enable_if_t<C && !Const>>
  constexpr operator PagedKvCache<F, C>() const {
    return {key, value, key_scale, value_scale};
  }
};
template <KvCacheFormat F>
using KvCache = PagedKvCache<F>;
template <KvCacheFormat F>
using ConstKvCache = PagedKvCache<F, true>;
using KvCacheFp8 = KvCache<KvCacheFormat::fp8_row>;
using ConstKvCacheFp8 = ConstKvCache<KvCacheFormat::fp8_row>;

// A cache of any format, as a run hands it to the Qwen3 attention block; the block's
// instantiation reads one format and refuses the others (kv_cache_of).
using AnyKvCache = std::variant<KvCache<KvCacheFormat::fp8_row>, KvCache<KvCacheFormat::fp8_tensor>,
                                KvCache<KvCacheFormat::bf16>>;

// "fp8_row", "fp8_tensor", "bf16": the format's name in messages and options, and back (a name
// that is none of them: a ShapeError listing them, `what` naming the option).
std::string_view kv_cache_format_name(KvCacheFormat f);
KvCacheFormat kv_cache_format_named(std::string_view what, std::string_view name);
inline KvCacheFormat format_of(const AnyKvCache& c) {
  return std::visit([](const auto& k) { return k.format; }, c);
}

// The cache of format F held by `c`; a clear error naming both formats otherwise.
template <KvCacheFormat F>
const KvCache<F>& kv_cache_of(std::string_view op, const AnyKvCache& c) {
  if (const auto* k = std::get_if<KvCache<F>>(&c)) return *k;
  throw ShapeError(std::string(op) + ": the cache is " +
                   std::string(kv_cache_format_name(format_of(c))) + ", this instantiation reads " +
                   std::string(kv_cache_format_name(F)));
}

// An FP8 cache with one scale per tensor over key and value codes and the two floats that scale
// them (key_scale, value_scale: one element each, in the memory of the backend that runs it).
KvCache<KvCacheFormat::fp8_tensor> per_tensor_fp8_cache(View4<fp8_e4m3> key, View4<fp8_e4m3> value,
                                                        float* key_scale, float* value_scale);
// A bf16 cache over key and value (empty scale views).
KvCache<KvCacheFormat::bf16> bf16_cache(View4<bf16> key, View4<bf16> value);

// Checks the views agree with each other (and with kv_heads / head_dim where those are not -1),
// have a contiguous last dimension and the scale views of the format; `arg` names the cache in
// messages.
template <KvCacheFormat F, bool C>
void expect_kv_cache(std::string_view op, std::string_view arg, const PagedKvCache<F, C>& cache,
                     index_t kv_heads, index_t head_dim);

// Checks that an input the writer reads does not share memory with any of the cache's views.
template <KvCacheFormat F, class T, int R>
void expect_disjoint_from_cache(std::string_view op, const KvCache<F>& cache,
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

// The fp8_tensor format's quantization of one element: to_fp8(x / scale), saturating.
ATOM_HD inline fp8_e4m3 quantize_kv_tensor(float x, float scale) {
  return to_fp8<Fp8Kind::e4m3fn>(x / scale);
}

// Stores one (token, kv head) row of n floats into slot (block, offset) of the key or value
// tensor of a cache of format F: fp8_row by quantize_kv_row (its scale stored beside), fp8_tensor
// by quantize_kv_tensor with the cache's scale, bf16 rounded once.
template <KvCacheFormat F>
ATOM_HD inline void store_kv_row(const KvCache<F>& cache, bool is_value, index_t block,
                                 index_t offset, index_t head, const float* x, index_t n) {
  auto* codes =
      is_value ? &cache.value(block, offset, head, 0) : &cache.key(block, offset, head, 0);
  if constexpr (F == KvCacheFormat::bf16) {
    for (index_t i = 0; i < n; ++i) codes[i] = to_bf16(x[i]);
  } else if constexpr (F == KvCacheFormat::fp8_tensor) {
    const float scale = is_value ? cache.value_scale(0, 0, 0) : cache.key_scale(0, 0, 0);
    for (index_t i = 0; i < n; ++i) codes[i] = quantize_kv_tensor(x[i], scale);
  } else {
    (is_value ? cache.value_scale : cache.key_scale)(block, offset, head) =
        quantize_kv_row(x, n, codes);
  }
}

// Writes k and v [tokens, kv_heads, head_dim] (rows may be strided; the last dimension has
// stride 1) into the cache at slots[t]: fp8_row quantizes each (token, head) row by
// quantize_kv_row from its bf16 values, fp8_tensor each element by quantize_kv_tensor with the
// cache's scales, bf16 copies. Slots as for mla_cache_write.
template <KvCacheFormat F>
void kv_cache_write(const Host&, View3<const bf16> k, View3<const bf16> v,
                    View1<const std::int64_t> slots, const KvCache<F>& cache);

}  // namespace atom::ops
