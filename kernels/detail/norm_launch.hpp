// The RMSNorm kernel of kernels/norm.hip, and the entry points of norm.hip that other kernel files
// compose (the separate Qwen3 QK chain normalizes per head, rows laid out as a [tokens, heads]
// grid). The kernel is here rather than in norm.hip so that the benchmark times the library's own
// kernel on shapes of its choosing.
#pragma once

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/gpu.hpp"
#include "rows.hpp"

namespace atom::kernels {

enum class Prologue { norm, add_norm };

struct NormArgs {
  const bf16* x;
  RowMap x_map;
  bf16* residual;  // add_norm: in and out, row stride residual_stride
  index_t residual_stride;
  const bf16* weight;
  int cols;
  float eps;
};

// Rows of `group` threads each, blockDim.x / group rows per block (GroupShape). The row is kept as
// bf16 bits: the input (or the new residual, itself a bf16 value) and the weight; each epilogue
// recomputes y = (x * r) * w from them as normalize_row does.
template <Prologue P, class Out, int Chunks, bool Vec>
__global__ void rms_norm_kernel(NormArgs a, index_t rows, int group, Out out) {
  gpu::start_after_prior_grid();
  __shared__ float sum_scratch[32];
  __shared__ std::uint32_t max_scratch[32];
  const RowLane at = group_lane(group);
  const index_t slot = static_cast<index_t>(blockIdx.x) * (blockDim.x / group) +
                       static_cast<index_t>(threadIdx.x) / group;
  // A group past the last row reads and writes nothing but joins the block's barriers.
  const bool active = slot < rows;
  const index_t row = active ? slot : rows - 1;
  const int cols = active ? a.cols : 0;
  NormedRow<Chunks> y;
  load_packed<Chunks, Vec>(a.x + a.x_map.offset(row), cols, y.x, at);
  if constexpr (P == Prologue::add_norm) {
    bf16* residual = a.residual + row * a.residual_stride;
    PackedRow<Chunks> r;
    load_packed<Chunks, Vec>(residual, cols, r, at);
    // s = bf16(x + residual) is both the new residual and the value normalized.
#pragma unroll
    for (int c = 0; c < Chunks; ++c) y.x[c] = add_bf16x8(y.x[c], r[c]);
    store_packed<Chunks, Vec>(residual, cols, y.x, at);
  }
  load_packed<Chunks, Vec>(a.weight, cols, y.w, at);
  const float sum_sq = group_reduce(sum_squares(y.x), Sum{}, sum_scratch, group);
  y.r = rms_inverse(sum_sq, static_cast<float>(a.cols), a.eps);
  store_values<Chunks, Vec>(out, row, cols, y, max_scratch, at);
}

// rms_norm with the bf16 epilogue over `rows` rows of `cols` values: input row r at
// src + in.offset(r), output row r at dst + out.offset(r). Checks are the caller's.
void launch_rms_norm_bf16(const ops::Gpu& gpu, const bf16* src, RowMap in, index_t rows,
                          index_t cols, const bf16* weight, float eps, bf16* dst, RowMap out);

}  // namespace atom::kernels
