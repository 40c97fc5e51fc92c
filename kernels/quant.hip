// The standalone quantizers of the separate path: bf16 rows to FP8 per token, FP8 per 1x128 group
// and MXFP4, with the epilogues the fused norms use (kernels/detail/rows.hpp).

#include "atom/ops/gpu/quant.hpp"

#include <string>
#include <type_traits>

#include "atom/ops/gpu/norm.hpp"
#include "detail/rows.hpp"

namespace atom::kernels {
namespace {

template <class Out, int Chunks, bool Vec>
__global__ void quantize_kernel(const bf16* x, index_t x_stride, int cols, Out out) {
  gpu::start_after_prior_grid();
  __shared__ std::uint32_t max_scratch[32];
  const index_t row = blockIdx.x;
  RowValues<Chunks> y;
  load_row<Chunks, Vec>(x + row * x_stride, cols, y);
  store_row<Chunks, Vec>(out, row, cols, y, max_scratch);
}

template <int Chunks, class Out>
void launch_chunks(const bf16* x, index_t x_stride, index_t rows, int cols, const Out& out,
                   bool vec, int threads, hipStream_t stream) {
  if (vec)
    gpu::launch(quantize_kernel<Out, Chunks, true>, static_cast<unsigned>(rows),
                static_cast<unsigned>(threads), 0, stream, x, x_stride, cols, out);
  else
    gpu::launch(quantize_kernel<Out, Chunks, false>, static_cast<unsigned>(rows),
                static_cast<unsigned>(threads), 0, stream, x, x_stride, cols, out);
}

template <class Out>
void launch_quantize(const ops::Gpu& gpu, View2<const bf16> x, const Out& out, bool out_vec) {
  const index_t rows = x.shape[0];
  const index_t cols = x.shape[1];
  if (rows == 0 || cols == 0) return;
  expect(cols <= ops::gpu_norm_max_cols, "quantize",
         "rows of " + std::to_string(cols) + " columns exceed the GPU quantizer's limit of " +
             std::to_string(ops::gpu_norm_max_cols));
  const bool vec =
      cols % vec_width == 0 && aligned16(x.data) && x.stride(0) % vec_width == 0 && out_vec;
  const RowShape shape = row_shape(cols);
  const auto stream = static_cast<hipStream_t>(gpu.stream);
  const int c = static_cast<int>(cols);
  switch (shape.chunks) {
    case 1:
      launch_chunks<1>(x.data, x.stride(0), rows, c, out, vec, shape.threads, stream);
      break;
    case 2:
      launch_chunks<2>(x.data, x.stride(0), rows, c, out, vec, shape.threads, stream);
      break;
    case 4:
      launch_chunks<4>(x.data, x.stride(0), rows, c, out, vec, shape.threads, stream);
      break;
    default:
      launch_chunks<8>(x.data, x.stride(0), rows, c, out, vec, shape.threads, stream);
      break;
  }
}

}  // namespace
}  // namespace atom::kernels

namespace atom::ops {

template <class Epi>
requires Epilogue<Epi> &&
    (Epi::format != Format::bf16) void quantize(const Gpu& gpu, View2<const bf16> x,
                                                typename Epi::Output out) {
  constexpr const char* op = "quantize";
  expect_view(op, "x", x, {-1, -1});
  expect_format(op, "out", out, x.shape[0], x.shape[1]);
  expect_disjoint(op, "out", out, "x", x);
  if constexpr (Epi::format == Format::mxfp4) {
    const bool vec =
        reinterpret_cast<std::uintptr_t>(out.packed.data) % 4 == 0 && out.packed.stride(0) % 4 == 0;
    kernels::launch_quantize(gpu, x,
                             kernels::Mxfp4Rows{out.packed.data, out.packed.stride(0),
                                                out.scale.data, out.scale.stride(0)},
                             vec);
  } else {
    const bool vec =
        reinterpret_cast<std::uintptr_t>(out.q.data) % 8 == 0 && out.q.stride(0) % 8 == 0;
    using Rows = std::conditional_t<Epi::format == Format::fp8_token, kernels::Fp8TokenRows,
                                    kernels::Fp8GroupRows>;
    kernels::launch_quantize(
        gpu, x, Rows{out.q.data, out.q.stride(0), out.scale.data, out.scale.stride(0)}, vec);
  }
}

template void quantize<epi::Fp8PerToken>(const Gpu&, View2<const bf16>, Fp8TokenAct);
template void quantize<epi::Fp8PerGroup128>(const Gpu&, View2<const bf16>, Fp8GroupAct);
template void quantize<epi::Mxfp4>(const Gpu&, View2<const bf16>, Mxfp4Act);

}  // namespace atom::ops
