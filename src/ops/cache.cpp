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

void expect_kv_cache(std::string_view op, std::string_view arg, const ConstKvCacheFp8& cache,
                     index_t kv_heads, index_t head_dim) {
  const std::string name(arg);
  expect_view(op, name + ".key", cache.key, {-1, -1, kv_heads, head_dim});
  const index_t blocks = cache.num_blocks();
  const index_t block_size = cache.block_size();
  expect_view(op, name + ".value", cache.value,
              {blocks, block_size, cache.kv_heads(), cache.head_dim()});
  expect_shape(op, name + ".key_scale", cache.key_scale, {blocks, block_size, cache.kv_heads()});
  expect_shape(op, name + ".value_scale", cache.value_scale,
               {blocks, block_size, cache.kv_heads()});
  expect(block_size > 0 && cache.kv_heads() > 0 && cache.head_dim() > 0, op,
         "argument '" + name + "' must have positive block_size, kv_heads and head_dim, got " +
             shape_text(cache.key));
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

void kv_cache_write_fp8(const Host&, View3<const bf16> k, View3<const bf16> v,
                        View1<const std::int64_t> slots, const KvCacheFp8& cache) {
  constexpr std::string_view op = "kv_cache_write_fp8";
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
    for (index_t h = 0; h < heads; ++h) {
      const bf16* k_row = &k(t, h, 0);
      for (index_t d = 0; d < dim; ++d) row[static_cast<std::size_t>(d)] = to_float(k_row[d]);
      cache.key_scale(block, offset, h) =
          quantize_kv_row(row.data(), dim, &cache.key(block, offset, h, 0));
      const bf16* v_row = &v(t, h, 0);
      for (index_t d = 0; d < dim; ++d) row[static_cast<std::size_t>(d)] = to_float(v_row[d]);
      cache.value_scale(block, offset, h) =
          quantize_kv_row(row.data(), dim, &cache.value(block, offset, h, 0));
    }
  }
}

}  // namespace atom::ops
