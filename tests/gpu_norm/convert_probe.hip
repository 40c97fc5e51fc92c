// Sweeps for convert_probe.hpp: one thread per float bit pattern, mismatches counted atomically.

#include "convert_probe.hpp"

#include "atom/gpu/runtime.hpp"
#include "kernels/detail/fast_quant.hpp"

namespace gpu_test {
namespace {

namespace k = atom::kernels;
using atom::bits_of;
using atom::float_of;

struct Counter {
  unsigned long long count;
  unsigned example;
  unsigned example_scale;
};

__device__ void record(Counter* c, std::uint32_t x, std::uint32_t scale) {
  atomicAdd(&c->count, 1ull);
  atomicExch(&c->example, x);
  atomicExch(&c->example_scale, scale);
}

constexpr unsigned sweep_threads = 256;
constexpr unsigned sweep_blocks = 132 * 16;

// Every 32-bit pattern, grid-strided.
template <class Check>
__device__ void sweep(Check check) {
  const std::uint64_t step = std::uint64_t{gridDim.x} * blockDim.x;
  for (std::uint64_t i = std::uint64_t{blockIdx.x} * blockDim.x + threadIdx.x;
       i < (std::uint64_t{1} << 32); i += step)
    check(static_cast<std::uint32_t>(i));
}

__global__ void fp8_code_kernel(Counter* c) {
  sweep([c](std::uint32_t bits) {
    const float x = float_of(bits);
    // Partners that differ from x in every way that matters: sign, NaN, zero, saturation.
    const float partner = float_of(bits ^ 0x80400001u);
    const std::uint32_t want =
        static_cast<std::uint32_t>(atom::to_fp8<atom::Fp8Kind::e4m3fn>(x).bits) |
        (static_cast<std::uint32_t>(atom::to_fp8<atom::Fp8Kind::e4m3fn>(partner).bits) << 8);
    const std::uint32_t want_swapped = (want >> 8) | ((want & 0xffu) << 8);
    if (k::fp8x2(x, partner) != want || k::fp8x2(partner, x) != want_swapped) record(c, bits, 0);
  });
}

__global__ void e2m1_code_kernel(Counter* c) {
  sweep([c](std::uint32_t bits) {
    if (k::e2m1_code(float_of(bits)) != atom::to_e2m1(float_of(bits))) record(c, bits, 0);
  });
}

__global__ void fp8_quotient_kernel(Counter* c, float scale) {
  const k::Fp8Divisor d(scale);
  sweep([c, d, scale](std::uint32_t bits) {
    const float x = float_of(bits);
    const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
    if (!nan && !(fabsf(x) <= 1024.0f * scale)) return;
    const float want = k::div(x, scale);
    const float got = d.quotient(x);
    const bool codes_match =
        (k::fp8x2(got, 0.0f) & 0xffu) == atom::to_fp8<atom::Fp8Kind::e4m3fn>(nan ? x : want).bits;
    const bool quotient_match = nan || !(fabsf(want) >= 0x1p-12f) || bits_of(got) == bits_of(want);
    if (!d.fast || !codes_match || !quotient_match) record(c, bits, bits_of(scale));
  });
}

template <class Launch>
Mismatches run(Launch launch) {
  Counter* c = nullptr;
  ATOM_GPU_CHECK(hipMalloc(reinterpret_cast<void**>(&c), sizeof(Counter)));
  ATOM_GPU_CHECK(hipMemsetAsync(c, 0, sizeof(Counter), nullptr));
  launch(c);
  ATOM_GPU_CHECK(hipGetLastError());
  Counter h{};
  ATOM_GPU_CHECK(hipMemcpy(&h, c, sizeof(Counter), hipMemcpyDeviceToHost));
  ATOM_GPU_CHECK(hipFree(c));
  return {h.count, h.example, h.example_scale};
}

}  // namespace

Mismatches fp8_code_mismatches() {
  return run([](Counter* c) { fp8_code_kernel<<<sweep_blocks, sweep_threads>>>(c); });
}

Mismatches e2m1_code_mismatches() {
  return run([](Counter* c) { e2m1_code_kernel<<<sweep_blocks, sweep_threads>>>(c); });
}

Mismatches fp8_quotient_mismatches(const std::vector<float>& scales) {
  return run([&](Counter* c) {
    for (const float s : scales) fp8_quotient_kernel<<<sweep_blocks, sweep_threads>>>(c, s);
  });
}

}  // namespace gpu_test
