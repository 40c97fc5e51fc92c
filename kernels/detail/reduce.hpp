// Device helpers shared by the kernels: float operations rounded one at a time, warp and block
// reductions, bf16 vector packing and e4m3 unpacking.
#pragma once

#include <cstdint>

#include "atom/gpu/arch.hpp"
#include "atom/gpu/runtime.hpp"
#include "atom/numeric/numeric.hpp"
#include "ptx.hpp"

namespace atom::kernels {

// The host reference rounds every product and sum; letting the compiler contract a * b + c into
// an FMA would change the last bits, so the kernels spell each operation out.
__device__ inline float mul(float a, float b) {
  return __fmul_rn(a, b);
}
__device__ inline float add(float a, float b) {
  return __fadd_rn(a, b);
}
__device__ inline float sub(float a, float b) {
  return __fsub_rn(a, b);
}
__device__ inline float div(float a, float b) {
  return __fdiv_rn(a, b);
}

// 1 / sqrt(ss / n + eps), rounded as the host rounds it.
__device__ inline float rms_inverse(float sum_sq, float n, float eps) {
  return div(1.0f, __fsqrt_rn(add(div(sum_sq, n), eps)));
}

struct Sum {
  __device__ float operator()(float a, float b) const { return add(a, b); }
  static constexpr float identity = 0.0f;
};
struct MaxBits {
  __device__ std::uint32_t operator()(std::uint32_t a, std::uint32_t b) const {
    return a > b ? a : b;
  }
  static constexpr std::uint32_t identity = 0;
};
// max(|x|) where NaN never wins (a comparison with NaN is false), as quantize_kv_row computes it.
struct MaxOrdered {
  __device__ float operator()(float a, float b) const { return b > a ? b : a; }
  static constexpr float identity = 0.0f;
};

// Butterfly over aligned groups of Lanes consecutive lanes: every lane gets the same result.
template <int Lanes, class T, class Op>
__device__ inline T lanes_reduce(T v, Op op) {
  for (int offset = Lanes / 2; offset > 0; offset /= 2) v = op(v, __shfl_xor(v, offset));
  return v;
}

template <class T, class Op>
__device__ inline T warp_reduce(T v, Op op) {
  return lanes_reduce<gpu::warp_size>(v, op);
}

// Reduction over the whole block (blockDim.x a multiple of the warp size, at most 1024 threads):
// within each warp, then across the warps' results. Every thread gets the result; `scratch` may be
// reused right after.
template <class T, class Op>
__device__ inline T block_reduce(T v, Op op, T* scratch) {
  constexpr int max_warps = 1024 / gpu::warp_size;
  const int lane = static_cast<int>(threadIdx.x) % gpu::warp_size;
  const int warp = static_cast<int>(threadIdx.x) / gpu::warp_size;
  const int warps = static_cast<int>(blockDim.x) / gpu::warp_size;
  v = warp_reduce(v, op);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps && lane < max_warps ? scratch[lane] : Op::identity;
  v = warp_reduce(v, op);
  __syncthreads();
  return v;
}

// Reduction over each group of `group` consecutive threads (a multiple of the warp size dividing
// blockDim.x): within each warp, then across the group's warps, the same tree as block_reduce for
// a group of the whole block. A group of one warp needs no barrier; otherwise every thread of the
// block must call it. Every thread gets its group's result; `scratch` may be reused right after.
template <class T, class Op>
__device__ inline T group_reduce(T v, Op op, T* scratch, int group) {
  v = warp_reduce(v, op);
  if (group == gpu::warp_size) return v;
  const int lane = static_cast<int>(threadIdx.x) % gpu::warp_size;
  const int warp = static_cast<int>(threadIdx.x) / gpu::warp_size;
  const int warps = group / gpu::warp_size;
  const int first = static_cast<int>(threadIdx.x) / group * warps;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[first + lane] : Op::identity;
  v = warp_reduce(v, op);
  __syncthreads();
  return v;
}

// Eight bf16 values in one 16-byte access.
inline constexpr int vec_width = 8;

__device__ inline void unpack_bf16x8(const uint4& u, float* out) {
  const std::uint32_t words[4] = {u.x, u.y, u.z, u.w};
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = to_float(bf16{static_cast<std::uint16_t>(words[i] & 0xffffu)});
    out[2 * i + 1] = to_float(bf16{static_cast<std::uint16_t>(words[i] >> 16)});
  }
}

__device__ inline uint4 pack_bf16x8(const float* in) {
  std::uint32_t words[4];
  for (int i = 0; i < 4; ++i)
    words[i] = static_cast<std::uint32_t>(to_bf16(in[2 * i]).bits) |
               (static_cast<std::uint32_t>(to_bf16(in[2 * i + 1]).bits) << 16);
  return make_uint4(words[0], words[1], words[2], words[3]);
}

// The four e4m3fn codes of w (the lowest byte first) as floats, exactly, as to_float gives them
// (NaN codes NaN): by the conversion instructions where the target has them.
__device__ inline void unpack_e4m3x4(std::uint32_t w, float (&v)[4]) {
  if constexpr (gpu::fp8_e4m3fn_cvt) {
    f16x2_to_float2(e4m3x2_to_f16x2<false>(w), v[0], v[1]);
    f16x2_to_float2(e4m3x2_to_f16x2<true>(w), v[2], v[3]);
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = to_float(fp8_e4m3{static_cast<std::uint8_t>(w >> (8 * j))});
  }
}

}  // namespace atom::kernels
