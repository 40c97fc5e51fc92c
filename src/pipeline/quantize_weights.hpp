// Weight quantizers shared by the random weights (storage.cpp) and the checkpoint loader
// (model/checkpoint.cpp): float rows into MXFP4 blocks, and a float matrix into FP8 e4m3 with
// one scale.
#pragma once

#include <algorithm>
#include <cmath>

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/formats.hpp"

namespace atom::pipeline::detail {

// rows x k floats into MXFP4 along each row (blocks of 32, the last may be partial).
inline void quantize_mxfp4_rows(const float* x, index_t rows, index_t k, std::uint8_t* packed,
                                e8m0* scale) {
  const index_t packed_cols = ops::mxfp4_packed_cols(k);
  const index_t scale_cols = ops::mxfp4_scale_cols(k);
  for (index_t i = 0; i < rows; ++i)
    for (index_t blk = 0; blk < scale_cols; ++blk) {
      const index_t begin = blk * mx_block;
      const int n = static_cast<int>(std::min<index_t>(mx_block, k - begin));
      quantize_mx_block(x + i * k + begin, n, packed + i * packed_cols + begin / 2,
                        scale + i * scale_cols + blk);
    }
}

// `count` floats into FP8 e4m3 with one scale: amax / 448 (1 when all are zero); returns it.
inline float quantize_fp8_matrix(const float* m, index_t count, fp8_e4m3* q) {
  float amax = 0.0f;
  for (index_t j = 0; j < count; ++j) amax = std::max(amax, std::fabs(m[j]));
  const float scale = amax > 0.0f ? amax / fp8_max<Fp8Kind::e4m3fn> : 1.0f;
  for (index_t j = 0; j < count; ++j) q[j] = to_fp8<Fp8Kind::e4m3fn>(m[j] / scale);
  return scale;
}

}  // namespace atom::pipeline::detail
