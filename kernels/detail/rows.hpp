// The row engine of the norm and quant kernels: one block per row, each thread holding Chunks
// groups of 8 consecutive values (element (c * blockDim.x + threadIdx.x) * 8 + j of chunk c), so
// a chunk across the block is one coalesced sweep of 16-byte accesses. The row stays in registers
// from the load through the sum of squares to the epilogue. Vec selects 16-byte accesses (every
// pointer and row stride aligned, columns a multiple of 8); otherwise each value is accessed on
// its own with the same layout.
//
// The epilogues mirror store_row (src/ops/quant.cpp): a FP8 group of 128 columns is 16
// consecutive threads of one chunk, a MXFP4 block of 32 columns is 4, so their amax is a butterfly
// over those lanes; the per-token amax is a block reduction. Block sizes are multiples of 64, so
// the groups never straddle a warp on either vendor.
#pragma once

#include <cstdint>

#include "atom/core/tensor.hpp"
#include "atom/ops/formats.hpp"
#include "fast_quant.hpp"
#include "reduce.hpp"

namespace atom::kernels {

// Row r of a matrix that may be a [rows / heads, heads] grid of rows (the per-head norms of a
// packed projection): offset (r / heads) * outer + (r % heads) * inner.
struct RowMap {
  index_t heads = 1;
  index_t outer = 0;
  index_t inner = 0;
  __device__ index_t offset(index_t r) const { return (r / heads) * outer + (r % heads) * inner; }
};

template <int Chunks>
using RowValues = float[Chunks][vec_width];

template <int Chunks>
__device__ inline int chunk_base(int c) {
  return (c * static_cast<int>(blockDim.x) + static_cast<int>(threadIdx.x)) * vec_width;
}

// Columns past `cols` read as 0.
template <int Chunks, bool Vec>
__device__ inline void load_row(const bf16* src, int cols, RowValues<Chunks>& x) {
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    const int base = chunk_base<Chunks>(c);
    if constexpr (Vec) {
      if (base < cols) {
        unpack_bf16x8(*reinterpret_cast<const uint4*>(src + base), x[c]);
      } else {
#pragma unroll
        for (int j = 0; j < vec_width; ++j) x[c][j] = 0.0f;
      }
    } else {
#pragma unroll
      for (int j = 0; j < vec_width; ++j)
        x[c][j] = base + j < cols ? to_float(src[base + j]) : 0.0f;
    }
  }
}

template <int Chunks, bool Vec>
__device__ inline void store_bf16_row(bf16* dst, int cols, const RowValues<Chunks>& y) {
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    const int base = chunk_base<Chunks>(c);
    if constexpr (Vec) {
      if (base < cols) *reinterpret_cast<uint4*>(dst + base) = pack_bf16x8(y[c]);
    } else {
#pragma unroll
      for (int j = 0; j < vec_width; ++j)
        if (base + j < cols) dst[base + j] = to_bf16(y[c][j]);
    }
  }
}

// x becomes y = (x * r) * w with r = 1 / sqrt(ss / cols + eps). ss: each thread sums its values
// in column order, then block_reduce. Padding values are 0 and add nothing.
template <int Chunks, bool Vec>
__device__ inline void normalize_row(RowValues<Chunks>& x, const bf16* weight, int cols, float eps,
                                     float* scratch) {
  RowValues<Chunks> w;
  load_row<Chunks, Vec>(weight, cols, w);
  float sum_sq = 0.0f;
#pragma unroll
  for (int c = 0; c < Chunks; ++c)
#pragma unroll
    for (int j = 0; j < vec_width; ++j) sum_sq = add(sum_sq, mul(x[c][j], x[c][j]));
  sum_sq = block_reduce(sum_sq, Sum{}, scratch);
  const float r = rms_inverse(sum_sq, static_cast<float>(cols), eps);
#pragma unroll
  for (int c = 0; c < Chunks; ++c)
#pragma unroll
    for (int j = 0; j < vec_width; ++j) x[c][j] = mul(mul(x[c][j], r), w[c][j]);
}

// ---- epilogues: device-side descriptions of the output formats ----

struct Bf16Rows {
  bf16* x;
  RowMap map;
};
struct Fp8TokenRows {
  fp8_e4m3* q;
  index_t q_stride;
  float* scale;
  index_t scale_stride;
};
struct Fp8GroupRows {
  fp8_e4m3* q;
  index_t q_stride;
  float* scale;
  index_t scale_stride;
};
struct Mxfp4Rows {
  std::uint8_t* packed;
  index_t packed_stride;
  e8m0* scale;
  index_t scale_stride;
};

inline constexpr float fp8_scale_max = fp8_max<Fp8Kind::e4m3fn>;

__device__ inline std::uint32_t abs_bits(float v) {
  return bits_of(v) & float_abs_mask;
}

// quant.cpp's fp8_scale_for on the amax bits (NaN bits win the max, so NaN gives a NaN scale).
__device__ inline float fp8_scale_for(std::uint32_t amax_bits) {
  const float amax = float_of(amax_bits);
  return amax == 0.0f ? 1.0f : div(amax, fp8_scale_max);
}

template <int Chunks, bool Vec>
__device__ inline void store_fp8_codes(fp8_e4m3* q, int cols, int c, const float* y,
                                       const Fp8Divisor& d) {
  const int base = chunk_base<Chunks>(c);
  const uint2 codes = fp8x8(y, d);
  if constexpr (Vec) {
    if (base < cols) *reinterpret_cast<uint2*>(q + base) = codes;
  } else {
#pragma unroll
    for (int j = 0; j < vec_width; ++j)
      if (base + j < cols)
        q[base + j] =
            fp8_e4m3{static_cast<std::uint8_t>((j < 4 ? codes.x : codes.y) >> (8 * (j % 4)))};
  }
}

template <int Chunks, bool Vec>
__device__ inline void store_row(const Bf16Rows& out, index_t row, int cols,
                                 const RowValues<Chunks>& y, std::uint32_t*) {
  store_bf16_row<Chunks, Vec>(out.x + out.map.offset(row), cols, y);
}

template <int Chunks, bool Vec>
__device__ inline void store_row(const Fp8TokenRows& out, index_t row, int cols,
                                 const RowValues<Chunks>& y, std::uint32_t* scratch) {
  std::uint32_t amax = 0;
#pragma unroll
  for (int c = 0; c < Chunks; ++c)
#pragma unroll
    for (int j = 0; j < vec_width; ++j) amax = MaxBits{}(amax, abs_bits(y[c][j]));
  amax = block_reduce(amax, MaxBits{}, scratch);
  const Fp8Divisor d(fp8_scale_for(amax));
  if (threadIdx.x == 0) out.scale[row * out.scale_stride] = d.scale;
#pragma unroll
  for (int c = 0; c < Chunks; ++c)
    store_fp8_codes<Chunks, Vec>(out.q + row * out.q_stride, cols, c, y[c], d);
}

template <int Chunks, bool Vec>
__device__ inline void store_row(const Fp8GroupRows& out, index_t row, int cols,
                                 const RowValues<Chunks>& y, std::uint32_t*) {
  constexpr int lanes = static_cast<int>(ops::fp8_group) / vec_width;
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    std::uint32_t amax = 0;
#pragma unroll
    for (int j = 0; j < vec_width; ++j) amax = MaxBits{}(amax, abs_bits(y[c][j]));
    amax = lanes_reduce<lanes>(amax, MaxBits{});
    const Fp8Divisor d(fp8_scale_for(amax));
    const int base = chunk_base<Chunks>(c);
    if (base < cols && base % static_cast<int>(ops::fp8_group) == 0)
      out.scale[row * out.scale_stride + base / static_cast<int>(ops::fp8_group)] = d.scale;
    store_fp8_codes<Chunks, Vec>(out.q + row * out.q_stride, cols, c, y[c], d);
  }
}

// quantize_mx_block on the 8 values of one thread, the block's amax shared by 4 lanes.
template <int Chunks, bool Vec>
__device__ inline void store_row(const Mxfp4Rows& out, index_t row, int cols,
                                 const RowValues<Chunks>& y, std::uint32_t*) {
  constexpr int lanes = mx_block / vec_width;
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    const int base = chunk_base<Chunks>(c);
    std::uint32_t amax = 0;
#pragma unroll
    for (int j = 0; j < vec_width; ++j)
      if (base + j < cols) amax = MaxBits{}(amax, abs_bits(y[c][j]));
    amax = lanes_reduce<lanes>(amax, MaxBits{});
    const e8m0 scale = mx_scale_for(float_of(amax > float_inf_bits ? float_inf_bits : amax));
    const bool nan_scale = scale.bits == e8m0_nan_code;
    const float inv = nan_scale ? 0.0f : inverse_scale(scale);
    // A NaN scale zeroes every code; so does a column past the row (the padding nibble).
    std::uint32_t word = 0;
#pragma unroll
    for (int j = 0; j < vec_width; ++j) {
      const bool in = Vec || base + j < cols;
      const std::uint32_t code = e2m1_code(mul(y[c][j], inv));
      word |= (nan_scale || !in ? 0u : code) << (4 * j);
    }
    std::uint8_t* packed = out.packed + row * out.packed_stride + base / 2;
    if constexpr (Vec) {
      if (base < cols) *reinterpret_cast<std::uint32_t*>(packed) = word;
    } else {
#pragma unroll
      for (int j = 0; j < vec_width; j += 2)
        if (base + j < cols) packed[j / 2] = static_cast<std::uint8_t>(word >> (4 * j));
    }
    if (base < cols && base % mx_block == 0)
      out.scale[row * out.scale_stride + base / mx_block] = scale;
  }
}

// ---- host-side choice of the block shape ----

// Chunks per thread and threads per block for a row of `cols` values: the fewest chunks that keep
// the block at 256 threads or less (up to 8 chunks, then up to 1024 threads).
struct RowShape {
  int chunks;
  int threads;
};

inline RowShape row_shape(index_t cols) {
  const index_t vectors = (cols + vec_width - 1) / vec_width;
  int chunks = 1;
  while (chunks < 8 && (vectors + chunks - 1) / chunks > 256) chunks *= 2;
  const index_t threads = (vectors + chunks - 1) / chunks;
  // Multiples of 64: whole warps on both vendors, so quant groups never straddle one.
  const index_t rounded = (threads + 63) / 64 * 64;
  return {chunks, static_cast<int>(rounded)};
}

inline bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

}  // namespace atom::kernels
