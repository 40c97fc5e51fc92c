// The matrix-core MXFP4 GEMM for decode sizes (M <= 16) on NVIDIA: a pure weight stream, so the
// kernel is built around keeping many 16-byte weight loads in flight and spending few
// instructions per weight byte. Reads the Mxfp4WeightLayout<matrix_core> weight unchanged.
//
// Operands swap roles against gemm_a4w4_mma: the weight is the 16 x 32 A operand of mma.sync
// m16n8k32 (16 output features: the two 8-row tiles 2p and 2p + 1) and the activation the 32 x 8
// B operand (8 tokens), so one mma covers twice the weight bytes and its scale work is halved.
// Lane (g, t)'s 16 bytes of tile 2p are word t of the four blocks of row g, which is exactly its
// A fragment rows g (tile 2p) and g + 8 (tile 2p + 1) under the same k map as gemm_mma.hpp.
//
// Each warp issues the loads of U consecutive k tiles (2U 16-byte weight loads per lane) before
// it multiplies any of them. The mma accumulates onto 0x4B400000 (the float 1.5 * 2^23), so the
// exact int32 block sum c comes out as the float 1.5 * 2^23 + c and one exact subtraction
// replaces the int-to-float conversion (a quarter-rate instruction). Arithmetic is that of
// gemm_a4w4_mma: c * (sa / 4 * sw) added to a float accumulator, the warps' partial sums added in
// warp order.
#pragma once

#include <cstdint>

#include "gemm_args.hpp"
#include "gemm_mma.hpp"

namespace atom::kernels {

// Warps per CTA at most; the launcher picks how many of them run.
inline constexpr int mma_decode_max_warps = 16;

// d = a (16 x 32, row) * b (32 x 8, col) + 0x4B400000 in int32.
__device__ inline void mma_s8_m16n8k32_biased(int (&d)[4], const std::uint32_t (&a)[4],
                                              const std::uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%10, %10, %10, %10};"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(0x4B400000));
}

// The block sum c from the biased mma result (exact: |c| <= 4608 < 2^22).
__device__ inline float unbias(int d) {
  return float_of(static_cast<std::uint32_t>(d)) - 12582912.0f;
}

// to_float of the four e8m0 codes packed in x (byte b: block b).
__device__ inline void decode_scales4(std::uint32_t x, float (&f)[4]) {
#pragma unroll
  for (int b = 0; b < 4; ++b) f[b] = scale_value(byte_of(x, b));
}

// NT tiles of 8 tokens (M <= 8 NT), output features [16 n_tile, 16 n_tile + 16): token i reads
// row rows.a(i) of a and writes row rows.out(i) of out. Every thread of the CTA calls it.
template <int NT, int U, class Rows>
__device__ inline void mma_decode_tile(const A4W4Args& p, const Rows& rows, int n_tile) {
  const int warps = static_cast<int>(blockDim.x) / 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const index_t tile_row = static_cast<index_t>(2 * n_tile) * p.k_tiles;
  float acc[NT][4] = {};
  for (int base = warp * U; base < p.k_tiles; base += warps * U) {
    uint4 w[U][2];
    std::uint32_t w_scale[U][2];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      // Every load is unconditional (a clamped address, the value replaced afterwards), so that
      // no branch separates them and all 2U are in flight at once. Past the last k tile: zero
      // codes at scale 2^0 add exact zeros.
      const bool live = base + u < p.k_tiles;
      const index_t tile = tile_row + (live ? base + u : p.k_tiles - 1);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const index_t at = tile + h * static_cast<index_t>(p.k_tiles);
        const uint4 loaded = *reinterpret_cast<const uint4*>(p.w_packed + at * 512 + lane * 16);
        const std::uint32_t loaded_scale =
            *reinterpret_cast<const std::uint32_t*>(p.w_scale + at * 32 + g * 4);
        w[u][h] = live ? loaded : make_uint4(0u, 0u, 0u, 0u);
        w_scale[u][h] = live ? loaded_scale : 0x7F7F7F7Fu;
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      // Token g's word t of each block, and the scales of tokens 2t and 2t + 1 (byte b: block
      // b): small and cached, so loaded when needed rather than held with the weights.
      std::uint32_t a[NT][4];
      std::uint32_t a_scale[NT][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        // A row past M or a block past K contributes zero codes at scale 2^0; its loads read the
        // last row's last block instead.
        const int token = nt * 8 + g;
        const int token_read = token < p.m ? token : p.m - 1;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          const int k0 = (base + u) * 128 + b * 32;
          const int k_read = k0 < p.k ? k0 : p.k - 32;
          const std::uint32_t word = *reinterpret_cast<const std::uint32_t*>(
              p.a_packed + rows.a(token_read) * p.a_stride + k_read / 2 + 4 * t);
          a[nt][b] = token < p.m && k0 < p.k ? word : 0u;
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int scale_token = nt * 8 + 2 * t + j;
          const int scale_read = scale_token < p.m ? scale_token : p.m - 1;
          std::uint32_t scales = 0;
#pragma unroll
          for (int b = 0; b < 4; ++b) {
            const int k0 = (base + u) * 128 + b * 32;
            const int k_read = k0 < p.k ? k0 : p.k - 32;
            const std::uint32_t sc = p.a_scale[rows.a(scale_read) * p.a_scale_stride + k_read / 32];
            scales |= (scale_token < p.m && k0 < p.k ? sc : 127u) << (8 * b);
          }
          a_scale[nt][j] = scales;
        }
      }
      float sw[2][4];
      decode_scales4(w_scale[u][0], sw[0]);
      decode_scales4(w_scale[u][1], sw[1]);
      float sa[NT][2][4];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          decode_scales4(a_scale[nt][j], sa[nt][j]);
#pragma unroll
          for (int b = 0; b < 4; ++b) sa[nt][j][b] = __fmul_rn(sa[nt][j][b], 0.25f);
        }
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const std::uint32_t row_lo = b == 0   ? w[u][0].x
                                     : b == 1 ? w[u][0].y
                                     : b == 2 ? w[u][0].z
                                              : w[u][0].w;
        const std::uint32_t row_hi = b == 0   ? w[u][1].x
                                     : b == 1 ? w[u][1].y
                                     : b == 2 ? w[u][1].z
                                              : w[u][1].w;
        const std::uint32_t wf[4] = {e2m1x4_to_s8x4(row_lo), e2m1x4_to_s8x4(row_hi),
                                     e2m1x4_to_s8x4(row_lo >> 16), e2m1x4_to_s8x4(row_hi >> 16)};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const std::uint32_t af[2] = {e2m1x4_to_s8x4(a[nt][b]), e2m1x4_to_s8x4(a[nt][b] >> 16)};
          int d[4];
          mma_s8_m16n8k32_biased(d, wf, af);
          // c * factor is exact (|c| <= 4608 times a power of two), so a contracted FMA rounds
          // only the sum.
          acc[nt][0] += unbias(d[0]) * __fmul_rn(sa[nt][0][b], sw[0][b]);
          acc[nt][1] += unbias(d[1]) * __fmul_rn(sa[nt][1][b], sw[0][b]);
          acc[nt][2] += unbias(d[2]) * __fmul_rn(sa[nt][0][b], sw[1][b]);
          acc[nt][3] += unbias(d[3]) * __fmul_rn(sa[nt][1][b], sw[1][b]);
        }
      }
    }
  }
  constexpr int per_lane = NT * 4;
  __shared__ float partial[mma_decode_max_warps][per_lane][32];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int c = 0; c < 4; ++c) partial[warp][nt * 4 + c][lane] = acc[nt][c];
  __syncthreads();
  for (int e = static_cast<int>(threadIdx.x); e < per_lane * 32;
       e += static_cast<int>(blockDim.x)) {
    const int i = e / 32;
    const int l = e % 32;
    float sum = partial[0][i][l];
    for (int w = 1; w < warps; ++w) sum = __fadd_rn(sum, partial[w][i][l]);
    const int c = i % 4;
    const int token = (i / 4) * 8 + 2 * (l % 4) + (c & 1);
    const int col = n_tile * 16 + (c >= 2 ? 8 : 0) + l / 4;
    if (token < p.m && col < p.n) p.out[rows.out(token) * p.out_stride + col] = to_bf16(sum);
  }
}

// CTA x computes output features [16 x, 16 x + 16) of all M rows.
template <int NT, int U>
__global__ void __launch_bounds__(32 * mma_decode_max_warps) gemm_a4w4_mma_decode(A4W4Args p) {
  mma_decode_tile<NT, U>(p, DenseRows{}, static_cast<int>(blockIdx.x));
}

}  // namespace atom::kernels
