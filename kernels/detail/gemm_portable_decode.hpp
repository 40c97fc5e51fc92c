// The portable MXFP4 GEMM for decode sizes (M <= 16): plain device C++, the same on NVIDIA and
// AMD. Reads the Mxfp4WeightLayout<portable> weight unchanged: lane L of a 32-thread group holds
// word L (k in [8L, 8L + 8), block L / 4) of the tile's 8 rows, 32 contiguous bytes.
//
// Against gemm_a4w4_portable: each group issues the loads of U k tiles before it multiplies any,
// and codes become floats by bit placement instead of integers by table and sign select. An e2m1
// code s|e1 e0 m placed as (e1 e0 m) << 22 | s << 31 is the float value * 2^-126 (the e = 0 codes
// land on the subnormals 0 and 2^-127), so a weight code costs a shift and a mask; the
// activation's codes are scaled by 2^251 (two exact multiplies) once per token and k word and
// shared by the 8 rows. Each product is then value_a * value_w / 2, a multiple of 2^-3, and the
// 8 products of a word sum exactly in float (|sum| <= 144); times 8 that is the word's integer
// sum c of (2 e2m1) x (2 e2m1) products, scaled by sa / 4 * sw and added to the float accumulator
// as in gemm_a4w4_portable. Groups meet in shared memory in group order.
#pragma once

#include <cstdint>

#include "gemm_args.hpp"

namespace atom::kernels {

inline constexpr int portable_decode_max_groups = 16;

// Code j of word x as float bits of its value * 2^-126 (j is a constant after unrolling).
__device__ inline float e2m1_times_2m126(std::uint32_t x, int j) {
  const std::uint32_t code = x >> (4 * j);
  return float_of(((code & 7u) << 22) | ((code & 8u) << 28));
}

// MT tokens (rows [m0, m0 + MT)), columns [8 n_tile, 8 n_tile + 8): token i reads row rows.a(i)
// of a and writes row rows.out(i) of out. Every thread of the CTA calls it.
template <int MT, int U, class Rows>
__device__ inline void portable_decode_tile(const A4W4Args& p, const Rows& rows, int m0,
                                            int n_tile) {
  const int groups = static_cast<int>(blockDim.x) / 32;
  const int group = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const index_t tile_row = static_cast<index_t>(n_tile) * p.k_tiles;
  float acc[MT][8] = {};
  for (int base = group * U; base < p.k_tiles; base += groups * U) {
    uint4 w_lo[U];
    uint4 w_hi[U];
    uint2 w_scales[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      // Every load is unconditional (a clamped address, the value replaced afterwards), so that
      // no branch separates them. Past the last k tile, or past K inside it: zero codes add
      // exact zeros.
      const bool live = base + u < p.k_tiles && (base + u) * 256 + lane * 8 < p.k;
      const index_t tile = tile_row + (base + u < p.k_tiles ? base + u : p.k_tiles - 1);
      const auto* words = reinterpret_cast<const uint4*>(p.w_packed + tile * 1024 + lane * 32);
      const uint4 lo = words[0];
      const uint4 hi = words[1];
      const uint2 scales = *reinterpret_cast<const uint2*>(p.w_scale + tile * 64 + (lane / 4) * 8);
      w_lo[u] = live ? lo : make_uint4(0u, 0u, 0u, 0u);
      w_hi[u] = live ? hi : make_uint4(0u, 0u, 0u, 0u);
      w_scales[u] = live ? scales : make_uint2(0x7F7F7F7Fu, 0x7F7F7F7Fu);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k0 = (base + u) * 256 + lane * 8;
      if (base + u >= p.k_tiles || k0 >= p.k) continue;
      float a_value[MT][8];
      float a_factor[MT];
#pragma unroll
      for (int mi = 0; mi < MT; ++mi) {
        // A row past M reads the last row and contributes zero codes at scale 2^0.
        const int row = m0 + mi;
        const bool live = row < p.m;
        const int row_read = live ? row : p.m - 1;
        const std::uint32_t word = *reinterpret_cast<const std::uint32_t*>(
            p.a_packed + rows.a(row_read) * p.a_stride + k0 / 2);
        const std::uint8_t scale = p.a_scale[rows.a(row_read) * p.a_scale_stride + k0 / 32];
        const std::uint32_t a_word = live ? word : 0u;
        const std::uint32_t sa = live ? scale : 127u;
        a_factor[mi] = __fmul_rn(scale_value(sa), 0.25f);
        // value * 2^-126 * 2^126 * 2^125: exact (at most 6 * 2^125).
#pragma unroll
        for (int j = 0; j < 8; ++j)
          a_value[mi][j] = __fmul_rn(__fmul_rn(e2m1_times_2m126(a_word, j), 0x1p126f), 0x1p125f);
      }
      const std::uint32_t w_word[8] = {w_lo[u].x, w_lo[u].y, w_lo[u].z, w_lo[u].w,
                                       w_hi[u].x, w_hi[u].y, w_hi[u].z, w_hi[u].w};
#pragma unroll
      for (int r = 0; r < 8; ++r) {
        float w_value[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) w_value[j] = e2m1_times_2m126(w_word[r], j);
        const auto sw = static_cast<std::uint8_t>(
            ((r < 4 ? w_scales[u].x : w_scales[u].y) >> (8 * (r % 4))) & 0xFFu);
        const float w_factor = scale_value(sw);
#pragma unroll
        for (int mi = 0; mi < MT; ++mi) {
          float sum = __fmul_rn(a_value[mi][0], w_value[0]);
#pragma unroll
          for (int j = 1; j < 8; ++j) sum = __fmaf_rn(a_value[mi][j], w_value[j], sum);
          // sum * 8 is the word's exact integer sum c; c * factor is exact, so a contracted
          // FMA rounds only the accumulation.
          acc[mi][r] += __fmul_rn(sum, 8.0f) * __fmul_rn(a_factor[mi], w_factor);
        }
      }
    }
  }
  // Each output's 32 lanes meet in a fixed butterfly, then the groups in group order.
  __shared__ float partial[portable_decode_max_groups][MT][8];
#pragma unroll
  for (int mi = 0; mi < MT; ++mi)
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      float v = acc[mi][r];
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) v = __fadd_rn(v, __shfl_xor(v, offset));
      if (lane == 0) partial[group][mi][r] = v;
    }
  __syncthreads();
  for (int e = static_cast<int>(threadIdx.x); e < MT * 8; e += static_cast<int>(blockDim.x)) {
    const int mi = e / 8;
    const int r = e % 8;
    float sum = partial[0][mi][r];
    for (int w = 1; w < groups; ++w) sum = __fadd_rn(sum, partial[w][mi][r]);
    const int col = n_tile * 8 + r;
    if (m0 + mi < p.m && col < p.n) p.out[rows.out(m0 + mi) * p.out_stride + col] = to_bf16(sum);
  }
}

// MT tokens per CTA (rows [MT x, MT x + MT) of the output), columns [8 y, 8 y + 8): the CTAs
// that read the same weight tile are launched next to each other, so the later ones find it in
// the L2 cache.
template <int MT, int U>
__global__ void __launch_bounds__(32 * portable_decode_max_groups)
    gemm_a4w4_portable_decode(A4W4Args p) {
  portable_decode_tile<MT, U>(p, DenseRows{}, static_cast<int>(blockIdx.x) * MT,
                              static_cast<int>(blockIdx.y));
}

}  // namespace atom::kernels
