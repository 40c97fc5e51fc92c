// The matrix-core MXFP4 GEMM for NVIDIA (sm_80 and newer): integer mma.sync m16n8k32 on the
// e2m1 codes of one MX block at a time, the block's scales applied to its exact int32 sums in
// float. Reads the Mxfp4WeightLayout<matrix_core> weight.
//
// One MX block is one k32 step. mma.sync gives lane (g, t) = (lane / 4, lane % 4) the fragment
// k positions 4t..4t+3 and 16+4t..16+4t+3 of rows g and g + 8 (A) and of column g (B). Those
// eight positions are mapped to the block's k = 8t..8t+7, which is word t of the block's 16
// bytes: its low four codes feed the first register, its high four the second. A and W use the
// same map, so the dot product over the block is unchanged, and every lane loads whole words.
#pragma once

#include <cstdint>

#include "atom/gpu/arch.hpp"
#include "gemm_args.hpp"
#include "ptx.hpp"

namespace atom::kernels {

// The four e2m1 codes in the low 16 bits of x as four int8 holding 2 * value: magnitudes by
// table lookup, then each byte taken from the positive or the negative table by its sign bit.
__device__ inline std::uint32_t e2m1x4_to_s8x4(std::uint32_t x) {
  const std::uint32_t magnitude = x & 0x7777u;
  const std::uint32_t positive = byte_permute(0x03020100u, 0x0C080604u, magnitude);
  const std::uint32_t negative = byte_permute(0xFDFEFF00u, 0xF4F8FAFCu, magnitude);
  return byte_permute(positive, negative, 0x3210u | ((x >> 1) & 0x4444u));
}

// d = a (16 x 32, row) * b (32 x 8, col) in int32, from zero.
__device__ inline void mma_s8_m16n8k32(int (&d)[4], const std::uint32_t (&a)[4],
                                       const std::uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%10, %10, %10, %10};"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(0));
}

__device__ inline std::uint32_t byte_of(std::uint32_t word, int i) {
  return (word >> (8 * i)) & 0xFFu;
}

// What one warp loads for one k tile (128 K): NG weight tiles, and for each of its 16 * MT rows
// word t of the four blocks and the four scales.
template <int MT, int NG>
struct MmaStage {
  uint4 w[NG];
  uint2 w_scale[NG];
  std::uint32_t a[MT][2][4];
  std::uint32_t a_scale[MT][2];  // byte b: the scale of block b
};

template <int MT, int NG>
__device__ inline void load_stage(const A4W4Args& p, int group0, int m0, int kt, int lane,
                                  MmaStage<MT, NG>& s) {
  const int g = lane / 4;
  const int t = lane % 4;
#pragma unroll
  for (int ng = 0; ng < NG; ++ng) {
    const index_t tile = static_cast<index_t>(group0 + ng) * p.k_tiles + kt;
    s.w[ng] = *reinterpret_cast<const uint4*>(p.w_packed + tile * 512 + lane * 16);
    s.w_scale[ng] = *reinterpret_cast<const uint2*>(p.w_scale + tile * 32 + t * 8);
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = m0 + mt * 16 + h * 8 + g;
      std::uint32_t scales = 0;
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const int k0 = kt * 128 + b * 32;
        const bool live = row < p.m && k0 < p.k;
        // A row past M or a block past K contributes zero codes at scale 2^0.
        s.a[mt][h][b] = live ? *reinterpret_cast<const std::uint32_t*>(
                                   p.a_packed + row * p.a_stride + k0 / 2 + 4 * t)
                             : 0u;
        const std::uint32_t sc = live ? p.a_scale[row * p.a_scale_stride + k0 / 32] : 127u;
        scales |= sc << (8 * b);
      }
      s.a_scale[mt][h] = scales;
    }
  }
}

template <int MT, int NG>
__device__ inline void multiply_stage(const MmaStage<MT, NG>& s, float (&acc)[MT][NG][4]) {
#pragma unroll
  for (int b = 0; b < 4; ++b) {
    std::uint32_t wf[NG][2];
#pragma unroll
    for (int ng = 0; ng < NG; ++ng) {
      const std::uint32_t word = b == 0   ? s.w[ng].x
                                 : b == 1 ? s.w[ng].y
                                 : b == 2 ? s.w[ng].z
                                          : s.w[ng].w;
      wf[ng][0] = e2m1x4_to_s8x4(word);
      wf[ng][1] = e2m1x4_to_s8x4(word >> 16);
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const std::uint32_t af[4] = {e2m1x4_to_s8x4(s.a[mt][0][b]), e2m1x4_to_s8x4(s.a[mt][1][b]),
                                   e2m1x4_to_s8x4(s.a[mt][0][b] >> 16),
                                   e2m1x4_to_s8x4(s.a[mt][1][b] >> 16)};
      const auto sa0 = static_cast<std::uint8_t>(byte_of(s.a_scale[mt][0], b));
      const auto sa1 = static_cast<std::uint8_t>(byte_of(s.a_scale[mt][1], b));
#pragma unroll
      for (int ng = 0; ng < NG; ++ng) {
        int c[4];
        mma_s8_m16n8k32(c, af, wf[ng]);
        const auto sw0 = static_cast<std::uint8_t>(byte_of(s.w_scale[ng].x, b));
        const auto sw1 = static_cast<std::uint8_t>(byte_of(s.w_scale[ng].y, b));
        // c * factor is exact (|c| <= 4608 times a power of two), so a contracted FMA rounds
        // only the sum.
        acc[mt][ng][0] += static_cast<float>(c[0]) * block_factor(sa0, sw0);
        acc[mt][ng][1] += static_cast<float>(c[1]) * block_factor(sa0, sw1);
        acc[mt][ng][2] += static_cast<float>(c[2]) * block_factor(sa1, sw0);
        acc[mt][ng][3] += static_cast<float>(c[3]) * block_factor(sa1, sw1);
      }
    }
  }
}

// A CTA of KW warps computes rows [16 MT y, +16 MT) x columns [8 NG x, +8 NG); its warps take
// the k tiles kt = warp, warp + KW, ... and their partial sums meet in shared memory, added in
// warp order. PREFETCH loads the next k tile's operands before multiplying the current one.
template <int MT, int NG, int KW, bool PREFETCH>
__global__ void __launch_bounds__(32 * KW) gemm_a4w4_mma(A4W4Args p) {
  gpu::start_after_prior_grid();
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int group0 = static_cast<int>(blockIdx.x) * NG;
  const int m0 = static_cast<int>(blockIdx.y) * 16 * MT;
  float acc[MT][NG][4] = {};
  if constexpr (PREFETCH) {
    MmaStage<MT, NG> cur;
    MmaStage<MT, NG> next;
    if (warp < p.k_tiles) load_stage(p, group0, m0, warp, lane, cur);
    for (int kt = warp; kt < p.k_tiles; kt += KW) {
      if (kt + KW < p.k_tiles) load_stage(p, group0, m0, kt + KW, lane, next);
      multiply_stage(cur, acc);
      cur = next;
    }
  } else {
    for (int kt = warp; kt < p.k_tiles; kt += KW) {
      MmaStage<MT, NG> cur;
      load_stage(p, group0, m0, kt, lane, cur);
      multiply_stage(cur, acc);
    }
  }
  constexpr int per_lane = MT * NG * 4;
  __shared__ float partial[KW][per_lane][32];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int ng = 0; ng < NG; ++ng)
#pragma unroll
      for (int c = 0; c < 4; ++c) partial[warp][(mt * NG + ng) * 4 + c][lane] = acc[mt][ng][c];
  __syncthreads();
  for (int e = static_cast<int>(threadIdx.x); e < per_lane * 32; e += 32 * KW) {
    const int i = e / 32;
    const int l = e % 32;
    float sum = partial[0][i][l];
    for (int w = 1; w < KW; ++w) sum = __fadd_rn(sum, partial[w][i][l]);
    const int c = i % 4;
    const int ng = (i / 4) % NG;
    const int mt = i / (4 * NG);
    const int row = m0 + mt * 16 + (c >= 2 ? 8 : 0) + l / 4;
    const int col = (group0 + ng) * 8 + 2 * (l % 4) + (c & 1);
    if (row < p.m && col < p.n) p.out[row * p.out_stride + col] = to_bf16(sum);
  }
}

}  // namespace atom::kernels
