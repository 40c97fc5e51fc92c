// Device-side checks of the quantizers' conversion helpers (kernels/detail/fast_quant.hpp) against
// the reference conversions of atom/numeric, run on the GPU over every float bit pattern.
#pragma once

#include <cstdint>
#include <vector>

namespace gpu_test {

// Mismatches found by a sweep, and one input that showed it (its bits, and the scale's).
struct Mismatches {
  std::uint64_t count = 0;
  std::uint32_t example = 0;
  std::uint32_t example_scale = 0;
};

// fp8x2 against to_fp8<e4m3fn>, every float as the low and as the high element.
Mismatches fp8_code_mismatches();
// e2m1_code against to_e2m1 for every float.
Mismatches e2m1_code_mismatches();
// For each scale (inside the fast range): every x with |x| <= 2^10 scale, and every NaN, through
// Fp8Divisor::quotient and fp8x2, against to_fp8(__fdiv_rn(x, scale)); quotients of magnitude
// 2^-12 or more must also be the rounded quotient's bits.
Mismatches fp8_quotient_mismatches(const std::vector<float>& scales);

}  // namespace gpu_test
