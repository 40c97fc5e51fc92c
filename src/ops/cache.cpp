#include "atom/ops/cache.hpp"

#include <algorithm>
#include <string>
#include <vector>

namespace atom::ops {

void expect_slots(std::string_view op, View1<const std::int64_t> slots, index_t tokens,
                  index_t capacity) {
  expect_shape(op, "slots", slots, {tokens});
  std::vector<std::int64_t> used;
  used.reserve(static_cast<std::size_t>(tokens));
  for (index_t t = 0; t < tokens; ++t) {
    const std::int64_t s = slots(t);
    if (s == skip_slot) continue;
    if (s < 0 || s >= capacity)
      expect(false, op,
             "argument 'slots' holds " + std::to_string(s) + " at token " + std::to_string(t) +
                 ", outside the cache's " + std::to_string(capacity) + " slots (or -1 to skip)");
    used.push_back(s);
  }
  std::sort(used.begin(), used.end());
  const auto repeated = std::adjacent_find(used.begin(), used.end());
  if (repeated != used.end())
    expect(false, op,
           "argument 'slots' names slot " + std::to_string(*repeated) + " for more than one token");
}

std::string_view kv_cache_format_name(KvCacheFormat f) {
  switch (f) {
    case KvCacheFormat::fp8_row:
      return "fp8_row";
    case KvCacheFormat::fp8_tensor:
      return "fp8_tensor";
    case KvCacheFormat::bf16:
      return "bf16";
  }
  return "unknown";
}

KvCacheFormat kv_cache_format_named(std::string_view what, std::string_view name) {
  for (const KvCacheFormat f :
       {KvCacheFormat::fp8_row, KvCacheFormat::fp8_tensor, KvCacheFormat::bf16})
    if (name == kv_cache_format_name(f)) return f;
  throw ShapeError(std::string(what) + ": unknown KV cache format '" + std::string(name) +
                   "'; expected fp8_row, fp8_tensor or bf16");
}

KvCache<KvCacheFormat::fp8_tensor> per_tensor_fp8_cache(View4<fp8_e4m3> key, View4<fp8_e4m3> value,
                                                        float* key_scale, float* value_scale) {
  const auto broadcast = [&](float* scale) {
    View3<float> v{scale, {key.size(0), key.size(1), key.size(2)}, {0, 0, 0}};
    return v;
  };
  return {key, value, broadcast(key_scale), broadcast(value_scale)};
}

KvCache<KvCacheFormat::bf16> bf16_cache(View4<bf16> key, View4<bf16> value) {
  return {key, value, {}, {}};
}

template <KvCacheFormat F, bool C>
void expect_kv_cache(std::string_view op, std::string_view arg, const PagedKvCache<F, C>& cache,
                     index_t kv_heads, index_t head_dim) {
  const std::string name(arg);
  expect_view(op, name + ".key", cache.key, {-1, -1, kv_heads, head_dim});
  const index_t blocks = cache.num_blocks();
  const index_t block_size = cache.block_size();
  expect_view(op, name + ".value", cache.value,
              {blocks, block_size, cache.kv_heads(), cache.head_dim()});
  expect(block_size > 0 && cache.kv_heads() > 0 && cache.head_dim() > 0, op,
         "argument '" + name + "' must have positive block_size, kv_heads and head_dim, got " +
             shape_text(cache.key));
  const auto scales_of_format = [&](const std::string& scale_name, const auto& scale) {
    if constexpr (F == KvCacheFormat::bf16) {
      expect(scale.numel() == 0, op,
             "argument '" + scale_name + "' must be empty: a bf16 cache has no scales, got " +
                 shape_text(scale));
    } else {
      expect_shape(op, scale_name, scale, {blocks, block_size, cache.kv_heads()});
      if constexpr (F == KvCacheFormat::fp8_tensor)
        expect(scale.stride(0) == 0 && scale.stride(1) == 0 && scale.stride(2) == 0, op,
               "argument '" + scale_name +
                   "' must be one scale for the whole tensor (strides 0; per_tensor_fp8_cache)");
    }
  };
  scales_of_format(name + ".key_scale", cache.key_scale);
  scales_of_format(name + ".value_scale", cache.value_scale);
  expect(!overlaps(cache.key, cache.value) && !overlaps(cache.key, cache.key_scale) &&
             !overlaps(cache.key, cache.value_scale) && !overlaps(cache.value, cache.key_scale) &&
             !overlaps(cache.value, cache.value_scale) &&
             !overlaps(cache.key_scale, cache.value_scale),
         op, "the views of argument '" + name + "' overlap each other");
}

void mla_cache_write(const Host&, View2<const bf16> kv_c, View2<const bf16> k_pe,
                     View1<const std::int64_t> slots, View3<bf16> cache) {
  constexpr std::string_view op = "mla_cache_write";
  const index_t tokens = kv_c.size(0);
  const index_t kv_lora = kv_c.size(1);
  const index_t rope_dim = k_pe.size(1);
  expect_view(op, "kv_c", kv_c, {tokens, kv_lora});
  expect_view(op, "k_pe", k_pe, {tokens, rope_dim});
  expect_view(op, "cache", cache, {-1, -1, kv_lora + rope_dim});
  expect(cache.size(1) > 0, op, "argument 'cache' has block_size 0");
  expect_disjoint(op, "cache", cache, "kv_c", kv_c);
  expect_disjoint(op, "cache", cache, "k_pe", k_pe);
  expect_slots(op, slots, tokens, cache.size(0) * cache.size(1));

  const index_t block_size = cache.size(1);
  for (index_t t = 0; t < tokens; ++t) {
    const std::int64_t s = slots(t);
    if (s == skip_slot) continue;
    bf16* row = &cache(s / block_size, s % block_size, 0);
    std::copy_n(&kv_c(t, 0), kv_lora, row);
    std::copy_n(&k_pe(t, 0), rope_dim, row + kv_lora);
  }
}

template <KvCacheFormat F>
void kv_cache_write(const Host&, View3<const bf16> k, View3<const bf16> v,
                    View1<const std::int64_t> slots, const KvCache<F>& cache) {
  constexpr std::string_view op = "kv_cache_write";
  const index_t tokens = k.size(0);
  expect_kv_cache(op, "cache", cache, -1, -1);
  const index_t heads = cache.kv_heads();
  const index_t dim = cache.head_dim();
  expect_view(op, "k", k, {tokens, heads, dim});
  expect_view(op, "v", v, {tokens, heads, dim});
  expect_disjoint_from_cache(op, cache, "k", k);
  expect_disjoint_from_cache(op, cache, "v", v);
  expect_slots(op, slots, tokens, cache.num_blocks() * cache.block_size());

  const index_t block_size = cache.block_size();
  std::vector<float> row(static_cast<std::size_t>(dim));
  for (index_t t = 0; t < tokens; ++t) {
    const std::int64_t s = slots(t);
    if (s == skip_slot) continue;
    const index_t block = s / block_size;
    const index_t offset = s % block_size;
    for (index_t h = 0; h < heads; ++h)
      for (const bool is_value : {false, true}) {
        const bf16* in = is_value ? &v(t, h, 0) : &k(t, h, 0);
        for (index_t d = 0; d < dim; ++d) row[static_cast<std::size_t>(d)] = to_float(in[d]);
        store_kv_row(cache, is_value, block, offset, h, row.data(), dim);
      }
  }
}

#define ATOM_KV_FORMAT(F)                                                                        \
  template void expect_kv_cache(std::string_view, std::string_view,                              \
                                const PagedKvCache<KvCacheFormat::F, false>&, index_t, index_t); \
  template void expect_kv_cache(std::string_view, std::string_view,                              \
                                const PagedKvCache<KvCacheFormat::F, true>&, index_t, index_t);  \
  template void kv_cache_write(const Host&, View3<const bf16>, View3<const bf16>,                \
                               View1<const std::int64_t>, const KvCache<KvCacheFormat::F>&);
ATOM_KV_FORMAT(fp8_row)
ATOM_KV_FORMAT(fp8_tensor)
ATOM_KV_FORMAT(bf16)
#undef ATOM_KV_FORMAT

}  // namespace atom::ops
