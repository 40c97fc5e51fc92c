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
// Each warp issues the loads of U consecutive k tiles (2U 16-byte weight loads per lane, and the
// activation words and scales they meet) before it multiplies any of them. At these sizes the
// kernel is bound by integer instructions, not by memory (H100: as slow with the weight in L2),
// so codes become int8 by one prmt per four codes (their non-negative parts, w = wp - wn, and
// four mma per block instead of one); a lane decodes one weight scale per row tile and one
// activation scale per token tile exactly, and reads the others by shuffle.
// The mma accumulates onto 0x4B400000 (the float 1.5 * 2^23), so the exact int32 block sum c
// comes out as the float 1.5 * 2^23 + c and one exact subtraction replaces the int-to-float
// conversion (a quarter-rate instruction). Arithmetic is that of gemm_a4w4_mma: c * (sa / 4 * sw)
// added to a float accumulator, the warps' partial sums added in a fixed order (see the end of
// mma_decode_tile).
#pragma once

#include <cstdint>

#include "gemm_args.hpp"
#include "gemm_mma.hpp"

namespace atom::kernels {

// Warps per CTA at most by default (the routed expert kernel); the launcher picks how many run.
inline constexpr int mma_decode_max_warps = 16;

// Warps per CTA at most for the dense kernel: 32 (one k tile each for K up to 4096) where the
// tile fits the 64 registers that 1024 threads leave it without spilling (one token tile, one k
// tile at a time), else 16 (H100 measurements in docs/bench-notes.md).
template <int NT, int U>
inline constexpr int mma_decode_dense_warps = NT == 1 && U == 1 ? 32 : 16;

// d = a (16 x 32, row) * b (32 x 8, col) + 0x4B400000 in int32.
__device__ inline void mma_s8_m16n8k32_biased(int (&d)[4], const std::uint32_t (&a)[4],
                                              const std::uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%10, %10, %10, %10};"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(0x4B400000));
}

// d += a (16 x 32, row) * b (32 x 8, col) in int32.
__device__ inline void mma_s8_m16n8k32_acc(int (&d)[4], const std::uint32_t (&a)[4],
                                           const std::uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// The non-negative part of four e2m1 codes (the low 16 bits of x) as int8 holding 2 * value: a
// code with the sign bit set selects with prmt's sign replication, which gives 0 for the table's
// non-negative bytes. One instruction per four codes; the negative part is the same of
// x ^ 0x88888888, and value = positive - negative.
__device__ inline std::uint32_t e2m1x4_positive(std::uint32_t x) {
  return byte_permute(0x03020100u, 0x0C080604u, x);
}

// Where output features [16 n_tile, 16 n_tile + 16) start in the weight: the feature tile's two
// 8-row tiles lie next to each other, k_tiles k tiles of 512 code bytes and of 32 scales each.
struct DecodeTileWeight {
  const std::uint8_t* codes;
  const std::uint8_t* scales;
};

__device__ inline DecodeTileWeight decode_tile_weight(const A4W4Args& p, int n_tile) {
  const index_t tile_row = static_cast<index_t>(2 * n_tile) * p.k_tiles;
  return {p.w_packed + tile_row * 512, p.w_scale + tile_row * 32};
}

// The feature tile's codes and scales fetched into L2 by the CTA's first thread.
__device__ inline void prefetch_mma_decode_tile(const A4W4Args& p, int n_tile) {
  if (threadIdx.x != 0) return;
  const DecodeTileWeight w = decode_tile_weight(p, n_tile);
  const auto tiles = static_cast<std::uint32_t>(2 * p.k_tiles);
  gpu::prefetch_l2(w.codes, tiles * 512);
  gpu::prefetch_l2(w.scales, tiles * 32);
}

// NT tiles of 8 tokens (M <= 8 NT), output features [16 n_tile, 16 n_tile + 16): token i reads
// row rows.a(i) of a and writes row rows.out(i) of out. Every thread of the CTA calls it, with at
// most MaxWarps warps.
//
// The activation rows a lane reads are found once, before the loop, and its activation words and
// scale for the U tiles are loaded together with the weight, so one wait covers both. A lane
// loads one activation scale per tile and token tile (token g's block t), decodes it once, and
// the lanes that need it read it by shuffle: few registers wait on loads, so that 32 warps fit the
// register file with every load of the U tiles in flight. Reads past M or K are clamped to the
// last row or block rather than replaced: a token past M is never written, and a block past K
// meets zero weight codes at scale 2^0 (the layout's padding), so it adds c = 0 times a finite
// factor, or NaN where the clamped block's own scale already makes the output NaN.
template <int NT, int U, class Rows, int MaxWarps = mma_decode_max_warps>
__device__ inline void mma_decode_tile(const A4W4Args& p, const Rows& rows, int n_tile) {
  const int warps = static_cast<int>(blockDim.x) / 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int last_block = p.k / mx_block - 1;
  // Token g's word t of each block (B fragment) and its scales.
  const std::uint8_t* a_words[NT];
  const std::uint8_t* a_scales[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int token = nt * 8 + g;
    const index_t row = rows.a(token < p.m ? token : p.m - 1);
    a_words[nt] = p.a_packed + row * p.a_stride + 4 * t;
    a_scales[nt] = p.a_scale + row * p.a_scale_stride;
  }
  // This lane's bytes of the warp's first weight tile (rows 16 n_tile + [0, 8)); the second
  // (rows + [8, 16)) is k_tiles tiles further, and a k tile is 512 bytes and 32 scales further.
  const DecodeTileWeight tile_weight = decode_tile_weight(p, n_tile);
  const std::uint8_t* w_words = tile_weight.codes + lane * 16;
  const std::uint8_t* w_scales = tile_weight.scales + lane;
  const index_t half_tiles = p.k_tiles;
  float acc[NT][4] = {};
  for (int base = warp * U; base < p.k_tiles; base += warps * U) {
    uint4 w[U][2];
    std::uint8_t w_scale[U][2];
    std::uint32_t a[U][NT][4];
    std::uint8_t a_scale[U][NT];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      // Every load is unconditional (a clamped address), so that no branch separates them and
      // all of them are in flight at once; a tile past the last is skipped below.
      const int kt = base + u < p.k_tiles ? base + u : p.k_tiles - 1;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        w[u][h] = *reinterpret_cast<const uint4*>(w_words + (h * half_tiles + kt) * 512);
        w_scale[u][h] = w_scales[(h * half_tiles + kt) * 32];
      }
      int block[4];
#pragma unroll
      for (int b = 0; b < 4; ++b) block[b] = kt * 4 + b < last_block ? kt * 4 + b : last_block;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int b = 0; b < 4; ++b)
          a[u][nt][b] = *reinterpret_cast<const std::uint32_t*>(a_words[nt] + block[b] * 16);
        a_scale[u][nt] = a_scales[nt][kt * 4 + t < last_block ? kt * 4 + t : last_block];
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (base + u >= p.k_tiles) break;
      // This lane's scales, decoded exactly: weight row g (tile h) of block t, and the activation
      // scale (token g of tile nt, block t) times 1/4.
      float sw_own[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) sw_own[h] = scale_value(w_scale[u][h]);
      float sa_own[NT];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) sa_own[nt] = __fmul_rn(scale_value(a_scale[u][nt]), 0.25f);
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
        // Codes split into non-negative parts: w = wp - wn, a = ap - an, so the block sum is
        // wp.ap + wn.an - (wp.an + wn.ap), four exact int32 mma.
        const std::uint32_t neg_lo = row_lo ^ 0x88888888u;
        const std::uint32_t neg_hi = row_hi ^ 0x88888888u;
        const std::uint32_t wp[4] = {e2m1x4_positive(row_lo), e2m1x4_positive(row_hi),
                                     e2m1x4_positive(row_lo >> 16), e2m1x4_positive(row_hi >> 16)};
        const std::uint32_t wn[4] = {e2m1x4_positive(neg_lo), e2m1x4_positive(neg_hi),
                                     e2m1x4_positive(neg_lo >> 16), e2m1x4_positive(neg_hi >> 16)};
        // Rows g and g + 8's scale of block b, from the lanes that loaded them.
        const float sw[2] = {__shfl(sw_own[0], 4 * g + b), __shfl(sw_own[1], 4 * g + b)};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const std::uint32_t x = b == 0   ? a[u][nt][0]
                                  : b == 1 ? a[u][nt][1]
                                  : b == 2 ? a[u][nt][2]
                                           : a[u][nt][3];
          const std::uint32_t x_neg = x ^ 0x88888888u;
          const std::uint32_t ap[2] = {e2m1x4_positive(x), e2m1x4_positive(x >> 16)};
          const std::uint32_t an[2] = {e2m1x4_positive(x_neg), e2m1x4_positive(x_neg >> 16)};
          int same[4];
          int cross[4];
          mma_s8_m16n8k32_biased(same, wp, ap);
          mma_s8_m16n8k32_acc(same, wn, an);
          mma_s8_m16n8k32(cross, wp, an);
          mma_s8_m16n8k32_acc(cross, wn, ap);
          // Tokens 2t and 2t + 1's scale of block b, from the lanes that loaded them.
          const float sa0 = __shfl(sa_own[nt], 8 * t + b);
          const float sa1 = __shfl(sa_own[nt], 8 * t + 4 + b);
          // c * factor is exact (|c| <= 4608 times a power of two), so a contracted FMA rounds
          // only the sum.
          acc[nt][0] += unbias(same[0] - cross[0]) * __fmul_rn(sa0, sw[0]);
          acc[nt][1] += unbias(same[1] - cross[1]) * __fmul_rn(sa1, sw[0]);
          acc[nt][2] += unbias(same[2] - cross[2]) * __fmul_rn(sa0, sw[1]);
          acc[nt][3] += unbias(same[3] - cross[3]) * __fmul_rn(sa1, sw[1]);
        }
      }
    }
  }
  // The warps' partial sums meet in shared memory: `parts` threads per output (a power of two
  // up to 8, at most the warp count) each add the warps part, part + parts, ... in order, then
  // the parts meet in a fixed butterfly of shuffles. Rows of the partial array are padded by
  // 32 / parts floats so that a warp's reads hit 32 different banks.
  constexpr int outputs = NT * 4 * 32;
  __shared__ float partial[MaxWarps * (outputs + 32)];
  int parts = 1;
  while (parts < 8 && 2 * parts <= warps && 2 * parts * outputs <= static_cast<int>(blockDim.x))
    parts *= 2;
  const int stride = outputs + 32 / parts;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int c = 0; c < 4; ++c) partial[warp * stride + (nt * 4 + c) * 32 + lane] = acc[nt][c];
  __syncthreads();
  const int part = static_cast<int>(threadIdx.x) % parts;
  // Every lane of a warp runs the same trips (outputs and the step are multiples of 32 / parts),
  // so the shuffles see all 32 lanes.
  for (int e = static_cast<int>(threadIdx.x) / parts; e < outputs;
       e += static_cast<int>(blockDim.x) / parts) {
    float sum = partial[part * stride + e];
    for (int w = part + parts; w < warps; w += parts) sum = __fadd_rn(sum, partial[w * stride + e]);
    for (int offset = parts / 2; offset > 0; offset /= 2)
      sum = __fadd_rn(sum, __shfl_xor(sum, offset));
    const int i = e / 32;
    const int l = e % 32;
    const int c = i % 4;
    const int token = (i / 4) * 8 + 2 * (l % 4) + (c & 1);
    const int col = n_tile * 16 + (c >= 2 ? 8 : 0) + l / 4;
    if (part == 0 && token < p.m && col < p.n)
      p.out[rows.out(token) * p.out_stride + col] = to_bf16(sum);
  }
  // The partial array is reused by the next call in the same CTA (the routed expert GEMM).
  __syncthreads();
}

__device__ inline int row_chunks(int m, int chunk_rows) {
  return (m + chunk_rows - 1) / chunk_rows;
}

// CTA x computes output features [16 (x / C), 16 (x / C) + 16) of the rows [8 NT (x % C),
// 8 NT (x % C) + 8 NT), C = ceil(M / (8 NT)) row chunks (one where M <= 8 NT): the chunks of one
// feature tile are neighbours in launch order, so that they meet its weight bytes in L2.
// The weights are fetched into L2 before the wait, while the previous kernel still runs.
template <int NT, int U, int MaxWarps>
__global__ void __launch_bounds__(32 * MaxWarps, 1) gemm_a4w4_mma_decode(A4W4Args p) {
  gpu::start_after_prior_grid(
      [&] { prefetch_mma_decode_tile(p, static_cast<int>(blockIdx.x) / row_chunks(p.m, 8 * NT)); });
  constexpr int chunk_rows = 8 * NT;
  const int chunks = row_chunks(p.m, chunk_rows);
  const int x = static_cast<int>(blockIdx.x);
  const int first = x % chunks * chunk_rows;
  A4W4Args chunk = p;
  chunk.m = p.m - first < chunk_rows ? p.m - first : chunk_rows;
  mma_decode_tile<NT, U, DenseRows, MaxWarps>(chunk, DenseRows{first}, x / chunks);
}

}  // namespace atom::kernels
