// Warp-level tensor-core pieces for NVIDIA (sm_80 and newer) decode attention: bf16 and f16
// mma.sync m16n8k16 with fp32 accumulators, ldmatrix fragment loads from shared memory, 16-byte
// cp.async copies from global into shared memory, and f16 and bf16 packing of float pairs (the f16
// conversions of the FP8 cache are in ptx.hpp).
//
// Every operand is passed as a 32-bit register ("r") so that hipcc, which checks inline-assembly
// constraints for its own targets, parses this header; the functions are only ever instantiated
// (called) from kernels that launchers pick where gpu::nvidia_ptx holds.
#pragma once

#include <cstdint>

#include "atom/gpu/arch.hpp"
#include "atom/gpu/runtime.hpp"
#include "ptx.hpp"

namespace atom::kernels {

// Shared-memory address of p for ldmatrix / cp.async. A template so that the CUDA intrinsic is
// looked up only when a kernel instantiates it.
template <class T>
__device__ inline std::uint32_t shared_address(const T* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// Bytes (4, 8 or 16) from global into shared memory, both aligned to Bytes; zeros instead when
// `fill` is false (nothing is read then, though src must still be a valid address).
template <int Bytes>
__device__ inline void cp_async_or_zero(std::uint32_t dst, const void* src, bool fill) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16);
  const auto address = reinterpret_cast<std::uintptr_t>(src);
  const std::uint32_t read = fill ? Bytes : 0;
  if constexpr (Bytes == 16)
    asm volatile(
        "{\n .reg .b64 p;\n mov.b64 p, {%1, %2};\n cp.async.cg.shared.global [%0], [p], 16, "
        "%3;\n}\n" ::"r"(dst),
        "r"(static_cast<std::uint32_t>(address)), "r"(static_cast<std::uint32_t>(address >> 32)),
        "r"(read)
        : "memory");
  else
    asm volatile(
        "{\n .reg .b64 p;\n mov.b64 p, {%1, %2};\n cp.async.ca.shared.global [%0], [p], %4, "
        "%3;\n}\n" ::"r"(dst),
        "r"(static_cast<std::uint32_t>(address)), "r"(static_cast<std::uint32_t>(address >> 32)),
        "r"(read), "n"(Bytes)
        : "memory");
}

// 16 bytes from global (16-byte aligned) into shared memory (16-byte aligned), bypassing L1.
__device__ inline void cp_async_16(std::uint32_t dst, const void* src) {
  cp_async_or_zero<16>(dst, src, true);
}

// Every lane of the warp reaches this point, and what each wrote to shared memory before is
// visible to the others after (bar.warp.sync, as __syncwarp()).
__device__ inline void warp_barrier() {
  asm volatile("bar.warp.sync -1;\n" ::: "memory");
}

__device__ inline void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most Pending committed groups of this thread are still in flight.
template <int Pending>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}

// Four 8x8 bf16 matrices; lane l gives the row address of matrix l / 8.
__device__ inline void ldmatrix_x4(std::uint32_t (&r)[4], std::uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// Two 8x8 matrices; lanes 0..15 give the row addresses.
__device__ inline void ldmatrix_x2(std::uint32_t (&r)[2], std::uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(address));
}

// Four 8x8 matrices, each transposed on the way (rows in memory become fragment columns).
__device__ inline void ldmatrix_x4_trans(std::uint32_t (&r)[4], std::uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// An accumulator register's float.
__device__ inline float as_float(std::uint32_t x) {
  return __uint_as_float(x);
}

// d += a (16 x 16, row) * b (16 x 8, col) in fp32; d holds float bits. Registers only (not
// volatile), so the compiler may issue later fragment loads before it.
__device__ inline void mma_bf16_m16n8k16(std::uint32_t (&d)[4], const std::uint32_t (&a)[4],
                                         std::uint32_t b0, std::uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// d += a (16 x 16, row) * b (16 x 8, col) with f16 operands, in fp32.
__device__ inline void mma_f16_m16n8k16(std::uint32_t (&d)[4], const std::uint32_t (&a)[4],
                                        std::uint32_t b0, std::uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The 8x8 matrix of 16-bit elements whose row lane / 4, columns 2 (lane % 4) and + 1, lane holds
// in x, transposed: lane then holds row lane / 4 of the transpose (movmatrix, sm_75 and newer).
__device__ inline std::uint32_t transpose_8x8_b16(std::uint32_t x) {
  std::uint32_t d = 0;
  asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(d) : "r"(x));
  return d;
}

// Two floats as an f16 pair (round to nearest even), lo in the low half.
__device__ inline std::uint32_t pack_f16x2(float lo, float hi) {
  std::uint32_t d = 0;
  asm("{\n .reg .f32 lo, hi;\n mov.b32 lo, %1;\n mov.b32 hi, %2;\n"
      " cvt.rn.f16x2.f32 %0, hi, lo;\n}\n"
      : "=r"(d)
      : "r"(__float_as_uint(lo)), "r"(__float_as_uint(hi)));
  return d;
}

// Two floats as a bf16 pair (round to nearest even), lo in the low half (sm_80 and newer).
__device__ inline std::uint32_t pack_bf16x2(float lo, float hi) {
  std::uint32_t d = 0;
  asm("{\n .reg .f32 lo, hi;\n mov.b32 lo, %1;\n mov.b32 hi, %2;\n"
      " cvt.rn.bf16x2.f32 %0, hi, lo;\n}\n"
      : "=r"(d)
      : "r"(__float_as_uint(lo)), "r"(__float_as_uint(hi)));
  return d;
}

}  // namespace atom::kernels

namespace atom::gpu {

// Lets `kernel` take `bytes` of dynamic shared memory (past the 48 KB default), and asks for the
// largest shared-memory share of the L1, so that as many blocks as the bytes allow are resident.
template <class Kernel>
void allow_dynamic_shared(Kernel* kernel, int bytes) {
  ATOM_GPU_CHECK(hipFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                     hipFuncAttributeMaxDynamicSharedMemorySize, bytes));
  ATOM_GPU_CHECK(hipFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                     hipFuncAttributePreferredSharedMemoryCarveout, 100));
}

}  // namespace atom::gpu
