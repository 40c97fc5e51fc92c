// The portable MXFP4 GEMM: plain device C++ (no inline assembly, no vendor intrinsics beyond
// warp shuffles), the same on NVIDIA and AMD. Reads the Mxfp4WeightLayout<portable> weight, and
// on AMD also serves the matrix-core layout through the layout's index functions.
#pragma once

#include <cstdint>

#include "gemm_args.hpp"

namespace atom::kernels {

// Rows of the output one CTA computes at once (the accumulators live in registers).
inline constexpr int portable_rows = 8;

// A CTA of KW groups of 32 threads computes rows [8 y, 8 y + 8) x columns [8 x, 8 x + 8). Group w
// takes the k tiles (256 K) kt = w, w + KW, ...; lane L of it reads word L of the tile (k in
// [8L, 8L + 8), inside block L / 4) for all 8 weight rows. Each word's 8 products are summed as
// integers, scaled by the block factor and added to a per-lane float accumulator; the lanes then
// meet in a fixed butterfly and the groups in shared memory, in group order.
template <int KW>
__global__ void __launch_bounds__(32 * KW) gemm_a4w4_portable(A4W4Args p) {
  gpu::start_after_prior_grid();
  const int group = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int n_group = static_cast<int>(blockIdx.x);
  const int m0 = static_cast<int>(blockIdx.y) * portable_rows;
  const int rows = p.m - m0 < portable_rows ? p.m - m0 : portable_rows;
  float acc[portable_rows][8] = {};
  for (int kt = group; kt < p.k_tiles; kt += KW) {
    const int k0 = kt * 256 + lane * 8;
    if (k0 >= p.k) continue;  // padding past K: zero weight codes, and no activation to read
    const index_t tile = static_cast<index_t>(n_group) * p.k_tiles + kt;
    const auto* words = reinterpret_cast<const uint4*>(p.w_packed + tile * 1024 + lane * 32);
    const uint4 w_lo = words[0];
    const uint4 w_hi = words[1];
    const uint2 w_scales = *reinterpret_cast<const uint2*>(p.w_scale + tile * 64 + (lane / 4) * 8);
    const std::uint32_t w_word[8] = {w_lo.x, w_lo.y, w_lo.z, w_lo.w,
                                     w_hi.x, w_hi.y, w_hi.z, w_hi.w};
    int w_value[8][8];
#pragma unroll
    for (int r = 0; r < 8; ++r)
#pragma unroll
      for (int j = 0; j < 8; ++j) w_value[r][j] = e2m1_twice(w_word[r] >> (4 * j));
#pragma unroll
    for (int mi = 0; mi < portable_rows; ++mi) {
      if (mi >= rows) continue;
      const index_t row = m0 + mi;
      const std::uint32_t a_word =
          *reinterpret_cast<const std::uint32_t*>(p.a_packed + row * p.a_stride + k0 / 2);
      const std::uint8_t sa = p.a_scale[row * p.a_scale_stride + k0 / 32];
      int a_value[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) a_value[j] = e2m1_twice(a_word >> (4 * j));
#pragma unroll
      for (int r = 0; r < 8; ++r) {
        int dot = 0;
#pragma unroll
        for (int j = 0; j < 8; ++j) dot += a_value[j] * w_value[r][j];
        const auto sw =
            static_cast<std::uint8_t>(((r < 4 ? w_scales.x : w_scales.y) >> (8 * (r % 4))) & 0xFFu);
        acc[mi][r] += static_cast<float>(dot) * block_factor(sa, sw);
      }
    }
  }
  __shared__ float partial[KW][portable_rows][8];
#pragma unroll
  for (int mi = 0; mi < portable_rows; ++mi)
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      float v = acc[mi][r];
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) v = __fadd_rn(v, __shfl_xor(v, offset));
      if (lane == 0) partial[group][mi][r] = v;
    }
  __syncthreads();
  const int e = static_cast<int>(threadIdx.x);
  if (e < portable_rows * 8) {
    const int mi = e / 8;
    const int r = e % 8;
    float sum = partial[0][mi][r];
    for (int w = 1; w < KW; ++w) sum = __fadd_rn(sum, partial[w][mi][r]);
    const int col = n_group * 8 + r;
    if (mi < rows && col < p.n) p.out[(m0 + mi) * p.out_stride + col] = to_bf16(sum);
  }
}

// Output (row `row` of a, column `col`) before its rounding to bf16, any weight layout through its
// index functions.
template <class Layout>
__device__ inline float by_index_output(const A4W4Args& p, int row, int col) {
  float acc = 0.0f;
  const std::uint8_t* a_row = p.a_packed + row * p.a_stride;
  for (int b = 0; b < p.k / 32; ++b) {
    int dot = 0;
    for (int i = 0; i < 16; ++i) {
      const std::uint32_t ab = a_row[b * 16 + i];
      const std::uint32_t wb = p.w_packed[Layout::packed_index(col, b * 16 + i, p.k)];
      dot += e2m1_twice(ab) * e2m1_twice(wb) + e2m1_twice(ab >> 4) * e2m1_twice(wb >> 4);
    }
    const std::uint8_t sa = p.a_scale[row * p.a_scale_stride + b];
    const std::uint8_t sw = p.w_scale[Layout::scale_index(col, b, p.k)];
    acc += static_cast<float>(dot) * block_factor(sa, sw);
  }
  return acc;
}

// One thread per output: the matrix-core backend's kernel where no inline PTX is available (AMD,
// until an MFMA kernel exists).
template <class Layout>
__global__ void __launch_bounds__(256) gemm_a4w4_by_index(A4W4Args p) {
  gpu::start_after_prior_grid();
  const int col = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  const int row = static_cast<int>(blockIdx.y);
  if (col >= p.n) return;
  p.out[row * p.out_stride + col] = to_bf16(by_index_output<Layout>(p, row, col));
}

}  // namespace atom::kernels
