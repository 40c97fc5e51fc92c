// The portable MXFP4 GEMM for decode sizes (M <= 16): plain device C++, the same on NVIDIA and
// AMD. Reads the Mxfp4WeightLayout<portable> weight unchanged: lane L of a 32-thread group holds
// word L (k in [8L, 8L + 8), block L / 4) of the tile's 8 rows, 32 contiguous bytes.
//
// Against gemm_a4w4_portable: each group issues the loads of U k tiles before it multiplies any,
// and a lane turns its word of each of the 8 rows into int8 (2 * value) once for all the CTA's
// tokens, and each token's word once for the 8 rows. The word's 8 products then sum exactly in
// int32 by two four-way dot products (dp4a on NVIDIA; plain integer arithmetic elsewhere), onto
// the float bias 1.5 * 2^23 so that one exact subtraction makes the sum c a float; c is scaled by
// sa / 4 * sw and added to the float accumulator as in gemm_a4w4_portable. Groups meet in shared
// memory in group order.
#pragma once

#include <cstdint>

#include "atom/gpu/arch.hpp"
#include "gemm_args.hpp"
#include "gemm_mma.hpp"

namespace atom::kernels {

inline constexpr int portable_decode_max_groups = 16;

// Four e2m1 codes (the low 16 bits of x) as four int8 holding 2 * value.
__device__ inline std::uint32_t e2m1x4_twice(std::uint32_t x) {
  if constexpr (gpu::nvidia_ptx) {
    return e2m1x4_to_s8x4(x);
  } else {
    std::uint32_t bytes = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j)
      bytes |= (static_cast<std::uint32_t>(e2m1_twice(x >> (4 * j))) & 0xFFu) << (8 * j);
    return bytes;
  }
}

// c plus the dot product of the four int8 of a and of b (exact in int32).
__device__ inline int dot4_s8(std::uint32_t a, std::uint32_t b, int c) {
  if constexpr (gpu::nvidia_ptx) {
    int d = 0;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i)
      c += static_cast<int>(static_cast<std::int8_t>((a >> (8 * i)) & 0xFFu)) *
           static_cast<int>(static_cast<std::int8_t>((b >> (8 * i)) & 0xFFu));
    return c;
  }
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
  // The tokens' rows, found once: a row past M reads the last row and contributes zero codes at
  // scale 2^0.
  const std::uint8_t* a_rows[MT];
  const std::uint8_t* a_scale_rows[MT];
#pragma unroll
  for (int mi = 0; mi < MT; ++mi) {
    const index_t row = rows.a(m0 + mi < p.m ? m0 + mi : p.m - 1);
    a_rows[mi] = p.a_packed + row * p.a_stride;
    a_scale_rows[mi] = p.a_scale + row * p.a_scale_stride;
  }
  float acc[MT][8] = {};
  for (int base = group * U; base < p.k_tiles; base += groups * U) {
    uint4 w_lo[U];
    uint4 w_hi[U];
    uint2 w_scales[U];
    std::uint32_t a_word[U][MT];
    std::uint8_t a_scale[U][MT];
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
      // The tokens' word and scale at the same k, loaded with the weight so that one wait
      // covers both (a clamped address: the value is not used past K).
      const int k0 = live ? (base + u) * 256 + lane * 8 : 0;
#pragma unroll
      for (int mi = 0; mi < MT; ++mi) {
        a_word[u][mi] =
            *reinterpret_cast<const std::uint32_t*>(a_rows[mi] + static_cast<index_t>(k0 / 2));
        a_scale[u][mi] = a_scale_rows[mi][k0 / 32];
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k0 = (base + u) * 256 + lane * 8;
      if (base + u >= p.k_tiles || k0 >= p.k) continue;
      const std::uint32_t w_word[8] = {w_lo[u].x, w_lo[u].y, w_lo[u].z, w_lo[u].w,
                                       w_hi[u].x, w_hi[u].y, w_hi[u].z, w_hi[u].w};
      // The 8 rows' codes as int8 (2 * value), once for all MT tokens.
      std::uint32_t w_s8[8][2];
#pragma unroll
      for (int r = 0; r < 8; ++r) {
        w_s8[r][0] = e2m1x4_twice(w_word[r]);
        w_s8[r][1] = e2m1x4_twice(w_word[r] >> 16);
      }
#pragma unroll
      for (int mi = 0; mi < MT; ++mi) {
        const bool live = m0 + mi < p.m;
        const std::uint32_t a_w = live ? a_word[u][mi] : 0u;
        const std::uint32_t sa = live ? a_scale[u][mi] : 127u;
        const float a_factor = __fmul_rn(scale_value(sa), 0.25f);
        const std::uint32_t a_s8[2] = {e2m1x4_twice(a_w), e2m1x4_twice(a_w >> 16)};
#pragma unroll
        for (int r = 0; r < 8; ++r) {
          const auto sw = static_cast<std::uint8_t>(
              ((r < 4 ? w_scales[u].x : w_scales[u].y) >> (8 * (r % 4))) & 0xFFu);
          // The word's exact integer sum c of (2 e2m1) x (2 e2m1) products, on the float bias
          // 1.5 * 2^23 (|c| <= 1152): the bits are the float 1.5 * 2^23 + c, and one exact
          // subtraction gives c.
          const int biased = dot4_s8(w_s8[r][1], a_s8[1], dot4_s8(w_s8[r][0], a_s8[0], 0x4B400000));
          const float c = unbias(biased);
          // c * factor is exact, so a contracted FMA rounds only the accumulation.
          acc[mi][r] += c * __fmul_rn(a_factor, scale_value(sw));
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
  gpu::start_after_prior_grid();
  portable_decode_tile<MT, U>(p, DenseRows{}, static_cast<int>(blockIdx.x) * MT,
                              static_cast<int>(blockIdx.y));
}

}  // namespace atom::kernels
