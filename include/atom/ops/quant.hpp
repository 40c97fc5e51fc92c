// Activation quantization from bf16, the per-row epilogue that every producer op ends with, and
// dequantization back to float.
//
// Contract: store_row takes one row of float values and writes it in the output format exactly as
// the format struct defines (formats.hpp): bf16 rounds each value (RNE); FP8 computes the amax of
// the row (per token) or of each group of 128 columns, scale = amax / 448 (1 when amax == 0),
// q = to_fp8(y / scale); MXFP4 runs quantize_mx_block over consecutive blocks of 32 columns (the
// last may be partial). A fused producer calls store_row on its float result, so no intermediate
// bf16 rounding happens; the separate chain rounds to bf16 first and then calls quantize().
// A NaN in a row or group gives a NaN scale for it.
#pragma once

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/backend.hpp"
#include "atom/ops/formats.hpp"

namespace atom::ops {

// Writes y[0, cols) to row `row` of `out` (cols = the format's column count; not checked here:
// callers check shapes at their boundary).
void store_row(const float* y, index_t row, const Bf16Act& out);
void store_row(const float* y, index_t row, const Fp8TokenAct& out);
void store_row(const float* y, index_t row, const Fp8GroupAct& out);
void store_row(const float* y, index_t row, const Mxfp4Act& out);

// out = x in the format of Epi (Fp8PerToken, Fp8PerGroup128 or Mxfp4); x [R, C], out [R, C].
template <class Epi>
requires Epilogue<Epi> &&
    (Epi::format != Format::bf16) void quantize(const Host&, View2<const bf16> x,
                                                typename Epi::Output out);

// out [R, C] = the values a quantized activation stands for (exact for MXFP4; value * scale
// rounded to float for FP8).
void dequantize(const Host&, const Fp8TokenAct& a, View2<float> out);
void dequantize(const Host&, const Fp8GroupAct& a, View2<float> out);
void dequantize(const Host&, const Mxfp4Act& a, View2<float> out);
// out [N, K] = the weight's values (exact).
void dequantize(const Host&, const Mxfp4Weight& w, View2<float> out);

}  // namespace atom::ops
