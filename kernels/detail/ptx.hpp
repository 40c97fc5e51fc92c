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

}  // namespace atom::kernels
