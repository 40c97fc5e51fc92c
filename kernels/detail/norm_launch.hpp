// Entry points of kernels/norm.hip that other kernel files compose (the separate Qwen3 QK chain
// normalizes per head, rows laid out as a [tokens, heads] grid).
#pragma once

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/gpu.hpp"
#include "rows.hpp"

namespace atom::kernels {

// rms_norm with the bf16 epilogue over `rows` rows of `cols` values: input row r at
// src + in.offset(r), output row r at dst + out.offset(r). Checks are the caller's.
void launch_rms_norm_bf16(const ops::Gpu& gpu, const bf16* src, RowMap in, index_t rows,
                          index_t cols, const bf16* weight, float eps, bf16* dst, RowMap out);

}  // namespace atom::kernels
