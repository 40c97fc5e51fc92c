// Cache writers: the MLA latent cache (a copy of kv_c and k_pe into the token's slot) and the paged
// KV cache in each format (one warp per (token, head) row, stored by detail/kv_cache.hpp).

#include "atom/ops/gpu/cache.hpp"

#include <string>

#include "detail/kv_cache.hpp"

namespace atom::kernels {
namespace {

struct MlaArgs {
  const bf16* kv_c;
  index_t kv_c_stride;
  const bf16* k_pe;
  index_t k_pe_stride;
  const std::int64_t* slots;
  index_t slot_stride;
  bf16* cache;
  index_t block_stride;
  index_t row_stride;
  index_t block_size;
  index_t capacity;
  int kv_lora;
  int rope;
};

__global__ void mla_cache_write_kernel(MlaArgs a) {
  gpu::start_after_prior_grid();
  const index_t t = blockIdx.x;
  const std::int64_t s = a.slots[t * a.slot_stride];
  if (s < 0 || s >= a.capacity) return;
  bf16* row = a.cache + (s / a.block_size) * a.block_stride + (s % a.block_size) * a.row_stride;
  const bf16* kv = a.kv_c + t * a.kv_c_stride;
  const bf16* pe = a.k_pe + t * a.k_pe_stride;
  for (int i = static_cast<int>(threadIdx.x); i < a.kv_lora + a.rope;
       i += static_cast<int>(blockDim.x))
    row[i] = i < a.kv_lora ? kv[i] : pe[i - a.kv_lora];
}

struct KvArgs {
  const bf16* k;
  index_t k_strides[2];  // token, head
  const bf16* v;
  index_t v_strides[2];
  const std::int64_t* slots;
  index_t slot_stride;
  int heads;
  int head_dim;
};

// One block per token; warp w takes rows w, w + warps, ... of the token's k heads then v heads.
template <ops::KvCacheFormat F>
__global__ void kv_cache_write_kernel(KvArgs a, KvCacheRows<F> cache) {
  gpu::start_after_prior_grid();
  const index_t t = blockIdx.x;
  const std::int64_t s = a.slots[t * a.slot_stride];
  if (s < 0 || s >= cache.capacity) return;
  const int warps = static_cast<int>(blockDim.x) / gpu::warp_size;
  for (int r = static_cast<int>(threadIdx.x) / gpu::warp_size; r < 2 * a.heads; r += warps) {
    const bool is_value = r >= a.heads;
    const int h = is_value ? r - a.heads : r;
    const bf16* src = is_value ? a.v + t * a.v_strides[0] + h * a.v_strides[1]
                               : a.k + t * a.k_strides[0] + h * a.k_strides[1];
    cache.warp_store(is_value, s, h, src, a.head_dim);
  }
}

}  // namespace
}  // namespace atom::kernels

namespace atom::ops {

void mla_cache_write(const Gpu& gpu, View2<const bf16> kv_c, View2<const bf16> k_pe,
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
  expect_shape(op, "slots", slots, {tokens});
  if (tokens == 0) return;
  const kernels::MlaArgs args{kv_c.data,
                              kv_c.stride(0),
                              k_pe.data,
                              k_pe.stride(0),
                              slots.data,
                              slots.stride(0),
                              cache.data,
                              cache.stride(0),
                              cache.stride(1),
                              cache.size(1),
                              cache.size(0) * cache.size(1),
                              static_cast<int>(kv_lora),
                              static_cast<int>(rope_dim)};
  gpu::launch(kernels::mla_cache_write_kernel, static_cast<unsigned>(tokens), 128, 0,
              static_cast<hipStream_t>(gpu.stream), args);
}

template <KvCacheFormat F>
void kv_cache_write(const Gpu& gpu, View3<const bf16> k, View3<const bf16> v,
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
  expect_shape(op, "slots", slots, {tokens});
  if (tokens == 0) return;
  const kernels::KvArgs args{k.data,
                             {k.stride(0), k.stride(1)},
                             v.data,
                             {v.stride(0), v.stride(1)},
                             slots.data,
                             slots.stride(0),
                             static_cast<int>(heads),
                             static_cast<int>(dim)};
  gpu::launch(kernels::kv_cache_write_kernel<F>, static_cast<unsigned>(tokens), 256, 0,
              static_cast<hipStream_t>(gpu.stream), args, kernels::kv_cache_rows(cache));
}

#define ATOM_GPU_KV_CACHE_WRITE(F)                                                                 \
  template void kv_cache_write<KvCacheFormat::F>(const Gpu&, View3<const bf16>, View3<const bf16>, \
                                                 View1<const std::int64_t>,                        \
                                                 const KvCache<KvCacheFormat::F>&);
ATOM_GPU_KV_CACHE_WRITE(fp8_row)
ATOM_GPU_KV_CACHE_WRITE(fp8_tensor)
ATOM_GPU_KV_CACHE_WRITE(bf16)
#undef ATOM_GPU_KV_CACHE_WRITE

}  // namespace atom::ops
