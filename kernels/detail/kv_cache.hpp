// The paged KV cache as the kernels address it, and the device side of store_kv_row
// (atom/ops/cache.hpp) for each format: the host's bits, from a row held by one warp, read by one
// warp from global memory, or held 8 consecutive elements to a lane.
#pragma once

#include <cstdint>

#include "atom/ops/cache.hpp"
#include "fast_quant.hpp"
#include "reduce.hpp"

namespace atom::kernels {

// quantize_kv_row's magnitude: NaN compares false everywhere, so MaxOrdered never keeps it.
__device__ inline float kv_magnitude(float x) {
  return x < 0.0f ? -x : x;
}

__device__ inline float kv_scale_for(float amax) {
  return amax > 0.0f ? div(amax, fp8_max<Fp8Kind::e4m3fn>) : 1.0f;
}

// The FP8 formats' x / scale (quantize_kv_row's and quantize_kv_tensor's): correctly rounded; a
// NaN x keeps its sign, as the host's division keeps it (the GPU's division returns the
// canonical NaN).
__device__ inline float kv_quotient(float x, float scale) {
  return is_nan_bits(bits_of(x)) ? x : div(x, scale);
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
    codes[d] = to_fp8<Fp8Kind::e4m3fn>(kv_quotient(to_float(src[d]), scale));
  if (lane == 0) *scale_out = scale;
}

// A cache of format F: pointers and strides of its views, and the stores. fp8_row keeps a scale
// per row beside the codes (found through the scale views' strides); fp8_tensor reads the
// tensor's one scale from device memory in the kernel (the host never reads it); bf16 has none.
template <ops::KvCacheFormat F>
struct KvCacheRows {
  using Code = typename ops::KvCache<F>::Code;
  static constexpr bool row_scales = F == ops::KvCacheFormat::fp8_row;

  Code* key;
  Code* value;
  float* key_scale;
  float* value_scale;
  index_t key_strides[3];  // block, slot in block, head
  index_t value_strides[3];
  index_t key_scale_strides[3];
  index_t value_scale_strides[3];
  index_t block_size;
  index_t capacity;  // num_blocks * block_size

  __device__ Code* codes(bool is_value, index_t slot, index_t head) const {
    const index_t* s = is_value ? value_strides : key_strides;
    return (is_value ? value : key) + (slot / block_size) * s[0] + (slot % block_size) * s[1] +
           head * s[2];
  }
  // fp8_row: the row's scale.
  __device__ float* scale(bool is_value, index_t slot, index_t head) const {
    const index_t* s = is_value ? value_scale_strides : key_scale_strides;
    return (is_value ? value_scale : key_scale) + (slot / block_size) * s[0] +
           (slot % block_size) * s[1] + head * s[2];
  }
  // fp8_tensor: the tensor's scale (bf16: unused, nothing is read).
  __device__ float tensor_scale(bool is_value) const {
    if constexpr (F == ops::KvCacheFormat::fp8_tensor)
      return is_value ? *value_scale : *key_scale;
    else
      return 1.0f;
  }
  // fp8_tensor and bf16: the code of one element, `s` the tensor's scale.
  __device__ static Code code_of(float x, float s) {
    if constexpr (F == ops::KvCacheFormat::bf16)
      return to_bf16(x);
    else
      return to_fp8<Fp8Kind::e4m3fn>(kv_quotient(x, s));
  }

  // A row of n floats held by one warp, lane l holding element l + k * warp_size in x[k]. Every
  // lane of the warp calls it (fp8_row reduces the amax across the warp).
  template <int PerLane>
  __device__ void warp_store(bool is_value, index_t slot, index_t head, const float (&x)[PerLane],
                             int n) const {
    const int lane = static_cast<int>(threadIdx.x) % gpu::warp_size;
    Code* const out = codes(is_value, slot, head);
    if constexpr (row_scales) {
      float amax = 0.0f;
      for (int k = 0; k < PerLane; ++k)
        if (lane + k * gpu::warp_size < n) amax = MaxOrdered{}(amax, kv_magnitude(x[k]));
      amax = warp_reduce(amax, MaxOrdered{});
      const float s = kv_scale_for(amax);
      for (int k = 0; k < PerLane; ++k) {
        const int d = lane + k * gpu::warp_size;
        if (d < n) out[d] = to_fp8<Fp8Kind::e4m3fn>(kv_quotient(x[k], s));
      }
      if (lane == 0) *scale(is_value, slot, head) = s;
    } else {
      const float s = tensor_scale(is_value);
      for (int k = 0; k < PerLane; ++k) {
        const int d = lane + k * gpu::warp_size;
        if (d < n) out[d] = code_of(x[k], s);
      }
    }
  }

  // A row of n bf16 values that one warp reads from global memory. Every lane of the warp calls
  // it.
  __device__ void warp_store(bool is_value, index_t slot, index_t head, const bf16* src,
                             int n) const {
    if constexpr (row_scales) {
      warp_quantize_kv_row(src, n, codes(is_value, slot, head), scale(is_value, slot, head));
    } else {
      const int lane = static_cast<int>(threadIdx.x) % gpu::warp_size;
      Code* const out = codes(is_value, slot, head);
      const float s = tensor_scale(is_value);
      for (int d = lane; d < n; d += gpu::warp_size) out[d] = code_of(to_float(src[d]), s);
    }
  }

  // A row held by Lanes consecutive lanes, lane head_lane holding elements first .. first + 7 in
  // x when `holds`; stored (one 8- or 16-byte store a lane) when `write`. Every lane of the warp
  // calls it, so that fp8_row's amax butterfly runs converged. The rows' code addresses must be
  // 8 * sizeof(Code)-byte aligned.
  template <int Lanes>
  __device__ void lanes_store8(bool write, bool holds, bool is_value, index_t slot, index_t head,
                               int first, int head_lane, const float (&x)[vec_width]) const {
    if constexpr (row_scales) {
      float amax = 0.0f;
#pragma unroll
      for (int j = 0; j < vec_width; ++j) amax = MaxOrdered{}(amax, kv_magnitude(x[j]));
      amax = lanes_reduce<Lanes>(amax, MaxOrdered{});
      if (write) {
        const Fp8Divisor d(kv_scale_for(amax));
        if (holds) *reinterpret_cast<uint2*>(codes(is_value, slot, head) + first) = fp8x8(x, d);
        if (head_lane == 0) *scale(is_value, slot, head) = d.scale;
      }
    } else if constexpr (F == ops::KvCacheFormat::fp8_tensor) {
      if (write && holds) {
        // The quotients of a per-tensor scale are not bounded by 448 (values saturate), so each
        // is the plain correctly rounded division (fast_quant.hpp's shortcut assumes the bound).
        const float s = tensor_scale(is_value);
        std::uint32_t pairs[4];
#pragma unroll
        for (int j = 0; j < 4; ++j)
          pairs[j] = fp8x2(kv_quotient(x[2 * j], s), kv_quotient(x[2 * j + 1], s));
        *reinterpret_cast<uint2*>(codes(is_value, slot, head) + first) =
            make_uint2(pairs[0] | (pairs[1] << 16), pairs[2] | (pairs[3] << 16));
      }
    } else {
      if (write && holds)
        *reinterpret_cast<uint4*>(codes(is_value, slot, head) + first) = pack_bf16x8(x);
    }
  }
};

template <ops::KvCacheFormat F>
KvCacheRows<F> kv_cache_rows(const ops::KvCache<F>& c) {
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

// Whether every code row of a cache view starts 8 * sizeof(Code)-byte aligned, as lanes_store8
// needs (8 FP8 codes: 8 bytes, 8 bf16 values: 16 bytes).
template <class Code>
bool lanes_store8_aligned(const View4<Code>& v) {
  constexpr auto bytes = static_cast<index_t>(vec_width * sizeof(Code));
  const auto stride_ok = [&](int d) {
    return v.stride(d) * static_cast<index_t>(sizeof(Code)) % bytes == 0;
  };
  return reinterpret_cast<std::uintptr_t>(v.data) % static_cast<std::uintptr_t>(bytes) == 0 &&
         stride_ok(0) && stride_ok(1) && stride_ok(2);
}

}  // namespace atom::kernels
