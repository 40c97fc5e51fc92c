// The FP8 paged KV cache as the kernels address it, and quantize_kv_row's scale rule on the device.
#pragma once

#include <cstdint>

#include "atom/ops/cache.hpp"
#include "reduce.hpp"

namespace atom::kernels {

struct KvCacheRows {
  fp8_e4m3* key;
  fp8_e4m3* value;
  float* key_scale;
  float* value_scale;
  index_t key_strides[3];  // block, slot in block, head
  index_t value_strides[3];
  index_t key_scale_strides[3];
  index_t value_scale_strides[3];
  index_t block_size;
  index_t capacity;  // num_blocks * block_size

  __device__ fp8_e4m3* codes(bool is_value, index_t slot, index_t head) const {
    const index_t* s = is_value ? value_strides : key_strides;
    return (is_value ? value : key) + (slot / block_size) * s[0] + (slot % block_size) * s[1] +
           head * s[2];
  }
  __device__ float* scale(bool is_value, index_t slot, index_t head) const {
    const index_t* s = is_value ? value_scale_strides : key_scale_strides;
    return (is_value ? value_scale : key_scale) + (slot / block_size) * s[0] +
           (slot % block_size) * s[1] + head * s[2];
  }
};

inline KvCacheRows kv_cache_rows(const ops::KvCacheFp8& c) {
  return {c.key.data,
          c.value.data,
          c.key_scale.data,
          c.value_scale.data,
          {c.key.stride(0), c.key.stride(1), c.key.stride(2)},
          {c.value.stride(0), c.value.stride(1), c.value.stride(2)},
          {c.key_scale.stride(0), c.key_scale.stride(1), c.key_scale.stride(2)},
          {c.value_scale.stride(0), c.value_scale.stride(1), c.value_scale.stride(2)},
          c.block_size(),
          c.num_blocks() * c.block_size()};
}

// quantize_kv_row's magnitude: NaN compares false everywhere, so MaxOrdered never keeps it.
__device__ inline float kv_magnitude(float x) {
  return x < 0.0f ? -x : x;
}

__device__ inline float kv_scale_for(float amax) {
  return amax > 0.0f ? div(amax, fp8_max<Fp8Kind::e4m3fn>) : 1.0f;
}

// One (token, head) row of n bf16 values quantized by one warp straight from global memory
// (read twice: once for the amax, once for the codes; the second read hits the cache).
__device__ inline void warp_quantize_kv_row(const bf16* src, int n, fp8_e4m3* codes,
                                            float* scale_out) {
  const int lane = static_cast<int>(threadIdx.x) % gpu::warp_size;
  float amax = 0.0f;
  for (int d = lane; d < n; d += gpu::warp_size)
    amax = MaxOrdered{}(amax, kv_magnitude(to_float(src[d])));
  amax = warp_reduce(amax, MaxOrdered{});
  const float scale = kv_scale_for(amax);
  for (int d = lane; d < n; d += gpu::warp_size)
    codes[d] = to_fp8<Fp8Kind::e4m3fn>(div(to_float(src[d]), scale));
  if (lane == 0) *scale_out = scale;
}

}  // namespace atom::kernels
