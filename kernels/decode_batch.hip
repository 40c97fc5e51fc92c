// The decode batch's advance and the uniform fill on the GPU: one thread per sequence, one thread
// per element (grid-stride).

#include "atom/ops/gpu/decode_batch.hpp"

#include <string_view>

#include "atom/gpu/runtime.hpp"

namespace atom::kernels {
namespace {

__global__ void advance_decode_kernel(ops::DecodeCursor b, index_t block_size) {
  gpu::start_after_prior_grid();
  const index_t s = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s < b.context_lens.size(0)) ops::advance_sequence(b, s, block_size);
}

template <class T>
__global__ void fill_uniform_kernel(T* out, index_t n, std::uint64_t seed, float lo, float hi) {
  gpu::start_after_prior_grid();
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    out[i] = ops::hash_value<T>(seed, static_cast<std::uint64_t>(i), lo, hi);
}

}  // namespace
}  // namespace atom::kernels

namespace atom::ops {

void advance_decode(const Gpu& gpu, const DecodeCursor& b, index_t block_size) {
  constexpr std::string_view op = "advance_decode";
  expect_batch_shape(op, b.batch(), b.slots.size(0));
  expect(block_size >= 1, op, "block_size must be at least 1");
  const index_t sequences = b.context_lens.size(0);
  if (sequences == 0) return;
  constexpr unsigned threads = 128;
  const auto blocks = static_cast<unsigned>((sequences + threads - 1) / threads);
  gpu::launch(kernels::advance_decode_kernel, blocks, threads, 0,
              static_cast<hipStream_t>(gpu.stream), b, block_size);
}

template <class T>
void fill_uniform(const Gpu& gpu, View1<T> out, std::uint64_t seed, float lo, float hi) {
  expect(out.size(0) == 0 || out.stride(0) == 1, "fill_uniform", "out must be contiguous");
  if (out.size(0) == 0) return;
  constexpr unsigned threads = 256;
  const index_t want = (out.size(0) + threads - 1) / threads;
  const auto blocks = static_cast<unsigned>(want < 65536 ? want : 65536);
  gpu::launch(kernels::fill_uniform_kernel<T>, blocks, threads, 0,
              static_cast<hipStream_t>(gpu.stream), out.data, out.size(0), seed, lo, hi);
}

template void fill_uniform(const Gpu&, View1<bf16>, std::uint64_t, float, float);
template void fill_uniform(const Gpu&, View1<fp8_e4m3>, std::uint64_t, float, float);
template void fill_uniform(const Gpu&, View1<float>, std::uint64_t, float, float);

}  // namespace atom::ops
