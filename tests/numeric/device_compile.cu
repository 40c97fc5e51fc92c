// Compiled for the device by nvcc (sm_90a) and hipcc (gfx90a): every conversion is called from a
// kernel, so each one is proven to compile as device code.
#include <cstdint>

#include "atom/numeric/numeric.hpp"

#if defined(__HIPCC__)
#include <hip/hip_runtime.h>
#endif

namespace {

__global__ void convert_everything(const float* in, float* out, std::uint8_t* bytes, int n) {
  const int i = static_cast<int>(threadIdx.x);
  if (i >= n) return;
  const float x = in[i];
  float acc = atom::to_float(atom::to_bf16(x)) + atom::round_bf16(x);
  acc += atom::to_float(atom::to_fp8<atom::Fp8Kind::e4m3fn>(x));
  acc += atom::to_float(atom::to_fp8<atom::Fp8Kind::e4m3fnuz>(x));
  acc += atom::fp8_max<atom::Fp8Kind::e4m3fn> + atom::fp8_max<atom::Fp8Kind::e4m3fnuz>;
  acc += atom::e2m1_to_float(atom::to_e2m1(x));
  const atom::e8m0 s = atom::mx_scale_for(x);
  acc += atom::to_float(s);
  if (i == 0) {
    atom::e8m0 block_scale{};
    atom::quantize_mx_block(in, n < atom::mx_block ? n : atom::mx_block, bytes, &block_scale);
    atom::dequantize_mx_block(bytes, n < atom::mx_block ? n : atom::mx_block, block_scale, out + n);
    acc += atom::mxfp4_value(bytes, 1, block_scale);
  }
  out[i] = acc;
}

}  // namespace

void launch_convert_everything(const float* in, float* out, std::uint8_t* bytes, int n) {
  convert_everything<<<1, 64>>>(in, out, bytes, n);
}
