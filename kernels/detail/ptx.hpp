// Single PTX instructions that several NVIDIA kernels share. Operands are 32-bit registers ("r")
// so that hipcc parses the header; only kernels that launchers pick where gpu::nvidia_ptx holds
// call them.
#pragma once

#include <cstdint>

namespace atom::kernels {

// prmt.b32: byte i of the result is byte sel[4i+2:4i] of {b, a} (a is bytes 0..3).
__device__ inline std::uint32_t byte_permute(std::uint32_t a, std::uint32_t b, std::uint32_t sel) {
  std::uint32_t d = 0;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
}

// The two e4m3fn codes in the low (High = false) or high 16 bits of x as an f16 pair, the lower
// byte in the low half; exact (sm_89 and newer).
template <bool High>
__device__ inline std::uint32_t e4m3x2_to_f16x2(std::uint32_t x) {
  std::uint32_t d = 0;
  if constexpr (High)
    asm("{\n .reg .b16 lo, hi;\n mov.b32 {lo, hi}, %1;\n cvt.rn.f16x2.e4m3x2 %0, hi;\n}\n"
        : "=r"(d)
        : "r"(x));
  else
    asm("{\n .reg .b16 lo, hi;\n mov.b32 {lo, hi}, %1;\n cvt.rn.f16x2.e4m3x2 %0, lo;\n}\n"
        : "=r"(d)
        : "r"(x));
  return d;
}

// The f16 pair of x (the low half first) as two floats; exact.
__device__ inline void f16x2_to_float2(std::uint32_t x, float& lo, float& hi) {
  std::uint32_t a = 0;
  std::uint32_t b = 0;
  asm("{\n .reg .b16 l, h;\n .reg .f32 fl, fh;\n mov.b32 {l, h}, %2;\n cvt.f32.f16 fl, l;\n"
      " cvt.f32.f16 fh, h;\n mov.b32 %0, fl;\n mov.b32 %1, fh;\n}\n"
      : "=r"(a), "=r"(b)
      : "r"(x));
  lo = __uint_as_float(a);
  hi = __uint_as_float(b);
}

}  // namespace atom::kernels
