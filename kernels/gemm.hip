// The MXFP4 GEMM on the GPU: weight preparation (preshuffle and upload, and its inverse) and
// gemm_a4w4 for the matrix-core and the portable backend.

#include "atom/ops/gpu/gemm.hpp"

#include <climits>
#include <cstdint>
#include <string>

#include "atom/gpu/arch.hpp"
#include "atom/gpu/runtime.hpp"
#include "detail/gemm_args.hpp"
#include "detail/gemm_mma.hpp"
#include "detail/gemm_mma_decode.hpp"
#include "detail/gemm_portable.hpp"
#include "detail/gemm_portable_decode.hpp"

namespace atom::ops {

using policy::GemmBackend;

template <GemmBackend G>
PreparedMxfp4Weight<G>::PreparedMxfp4Weight(index_t n, index_t k,
                                            const std::vector<std::uint8_t>& packed,
                                            const std::vector<e8m0>& scale)
    : n_(n), k_(k) {
  if (static_cast<index_t>(packed.size()) != Layout::packed_bytes(n, k) ||
      static_cast<index_t>(scale.size()) != Layout::scale_count(n, k))
    fail("PreparedMxfp4Weight", std::string("preshuffled sizes do not match the layout of N = ") +
                                    std::to_string(n) + ", K = " + std::to_string(k));
  packed_ = std::make_unique<gpu::Buffer<std::uint8_t>>(packed);
  scale_ = std::make_unique<gpu::Buffer<e8m0>>(scale);
}

template <GemmBackend G>
PreparedMxfp4Weight<G> prepare_weight(const Mxfp4Weight& host_weight) {
  using Layout = Mxfp4WeightLayout<G>;
  constexpr const char* op = "prepare_weight";
  expect_weight(op, "w", host_weight, -1, -1);
  const index_t n = host_weight.packed.shape[0];
  const index_t k = host_weight.k;
  if (k <= 0 || k % mx_block != 0)
    fail(op, std::string("K = ") + std::to_string(k) +
                 " is not supported: the GPU GEMM needs a positive multiple of 32 (whole MX "
                 "blocks)");
  if (n <= 0) fail(op, std::string("N = ") + std::to_string(n) + " is not supported: no rows");
  if (n > INT_MAX / 2 || k > INT_MAX / 2)
    fail(op,
         std::string("N = ") + std::to_string(n) + ", K = " + std::to_string(k) + " is too large");
  std::vector<std::uint8_t> packed(static_cast<std::size_t>(Layout::packed_bytes(n, k)), 0);
  std::vector<e8m0> scale(static_cast<std::size_t>(Layout::scale_count(n, k)), e8m0{127});
  for (index_t r = 0; r < n; ++r) {
    const std::uint8_t* src = host_weight.packed[r].data;
    for (index_t i = 0; i < k / 2; ++i)
      packed[static_cast<std::size_t>(Layout::packed_index(r, i, k))] = src[i];
    const e8m0* src_scale = host_weight.scale[r].data;
    for (index_t b = 0; b < k / mx_block; ++b)
      scale[static_cast<std::size_t>(Layout::scale_index(r, b, k))] = src_scale[b];
  }
  return PreparedMxfp4Weight<G>(n, k, packed, scale);
}

template <GemmBackend G>
Mxfp4WeightHost unshuffle(const PreparedMxfp4Weight<G>& w) {
  using Layout = Mxfp4WeightLayout<G>;
  const index_t n = w.n();
  const index_t k = w.k();
  std::vector<std::uint8_t> packed(static_cast<std::size_t>(Layout::packed_bytes(n, k)));
  std::vector<e8m0> scale(static_cast<std::size_t>(Layout::scale_count(n, k)));
  gpu::copy_to_host(packed.data(), w.packed(), packed.size());
  gpu::copy_to_host(scale.data(), w.scale(), scale.size() * sizeof(e8m0));
  Mxfp4WeightHost out;
  out.n = n;
  out.k = k;
  out.packed.resize(static_cast<std::size_t>(n * (k / 2)));
  out.scale.resize(static_cast<std::size_t>(n * (k / mx_block)));
  for (index_t r = 0; r < n; ++r) {
    for (index_t i = 0; i < k / 2; ++i)
      out.packed[static_cast<std::size_t>(r * (k / 2) + i)] =
          packed[static_cast<std::size_t>(Layout::packed_index(r, i, k))];
    for (index_t b = 0; b < k / mx_block; ++b)
      out.scale[static_cast<std::size_t>(r * (k / mx_block) + b)] =
          scale[static_cast<std::size_t>(Layout::scale_index(r, b, k))];
  }
  return out;
}

namespace {

unsigned grid_extent(index_t n) {
  return static_cast<unsigned>(n);
}

template <int MT, int NG, int KW, bool PREFETCH>
void launch_mma(const kernels::A4W4Args& p, index_t padded_n, hipStream_t stream) {
  const dim3 grid(grid_extent(padded_n / (8 * NG)), grid_extent(ceil_div(p.m, 16 * MT)));
  gpu::launch(kernels::gemm_a4w4_mma<MT, NG, KW, PREFETCH>, grid, 32 * KW, 0, stream, p);
}

// Warps per CTA for a decode kernel whose warps take U k tiles at a time: enough to cover K in
// one round where K allows.
int decode_warps(int k_tiles, int u, int max_warps) {
  const int warps = (k_tiles + u - 1) / u;
  return warps < max_warps ? warps : max_warps;
}

template <int NT, int U>
void launch_mma_decode(const kernels::A4W4Args& p, index_t padded_n, hipStream_t stream) {
  constexpr int max_warps = kernels::mma_decode_dense_warps<NT, U>;
  const int warps = decode_warps(p.k_tiles, U, max_warps);
  const index_t chunks = ceil_div(p.m, 8 * NT);
  gpu::launch(kernels::gemm_a4w4_mma_decode<NT, U, max_warps>, grid_extent(padded_n / 16 * chunks),
              static_cast<unsigned>(32 * warps), 0, stream, p);
}

template <int NT>
void launch_mma_decode(const kernels::A4W4Args& p, index_t padded_n, GemmDecodeKernel decode,
                       hipStream_t stream) {
  switch (decode) {
    case GemmDecodeKernel::stream_u1:
      return launch_mma_decode<NT, 1>(p, padded_n, stream);
    case GemmDecodeKernel::stream_u2:
      return launch_mma_decode<NT, 2>(p, padded_n, stream);
    case GemmDecodeKernel::stream_u4:
      return launch_mma_decode<NT, 4>(p, padded_n, stream);
    case GemmDecodeKernel::stream_u8:
      return launch_mma_decode<NT, 8>(p, padded_n, stream);
    case GemmDecodeKernel::split_k:
      break;
  }
}

// The matrix-core backend's streaming decode kernels serve M up to this many rows, in chunks of 16
// beyond 16 (each chunk streams the weight again, mostly from L2), rather than the tiled kernel:
// with them DeepSeek-V3's decode step at T = 64 took 35% less (docs/bench-notes.md).
constexpr int decode_stream_rows = 64;

// Decode sizes (M <= decode_stream_rows) stream the weight, once per 16 rows. split_k: enough warps
// must be in flight to cover the memory latency, so K is split over more warps per CTA when there
// are few CTAs. A template, so that builds without inline PTX never instantiate the mma kernels.
template <GemmBackend G>
void launch_matrix_core(const kernels::A4W4Args& p, index_t padded_n, GemmDecodeKernel decode,
                        hipStream_t stream) {
  if (p.m <= decode_stream_rows && decode != GemmDecodeKernel::split_k) {
    if (p.m <= 8)
      launch_mma_decode<1>(p, padded_n, decode, stream);
    else
      launch_mma_decode<2>(p, padded_n, decode, stream);
  } else if (p.m <= 16) {
    const index_t ctas = padded_n / 16;
    int kw = 16;
    while (kw > 4 && (ctas * kw / 2 >= 2112 || kw / 2 >= p.k_tiles)) kw /= 2;
    if (kw == 16)
      launch_mma<1, 2, 16, true>(p, padded_n, stream);
    else if (kw == 8)
      launch_mma<1, 2, 8, true>(p, padded_n, stream);
    else
      launch_mma<1, 2, 4, true>(p, padded_n, stream);
  } else if (p.m <= 256) {
    launch_mma<2, 4, 8, true>(p, padded_n, stream);
  } else {
    launch_mma<4, 4, 2, false>(p, padded_n, stream);
  }
}

template <int MT, int U>
void launch_portable_decode(const kernels::A4W4Args& p, index_t padded_n, hipStream_t stream) {
  const int groups = decode_warps(p.k_tiles, U, kernels::portable_decode_max_groups);
  const dim3 grid(grid_extent(ceil_div(p.m, MT)), grid_extent(padded_n / 8));
  gpu::launch(kernels::gemm_a4w4_portable_decode<MT, U>, grid, static_cast<unsigned>(32 * groups),
              0, stream, p);
}

template <int U>
void launch_portable_decode(const kernels::A4W4Args& p, index_t padded_n, hipStream_t stream) {
  if (p.m == 1)
    launch_portable_decode<1, U>(p, padded_n, stream);
  else if (p.m == 2)
    launch_portable_decode<2, U>(p, padded_n, stream);
  else
    launch_portable_decode<4, U>(p, padded_n, stream);
}

void launch_portable(const kernels::A4W4Args& p, index_t padded_n, GemmDecodeKernel decode,
                     hipStream_t stream) {
  // The decode kernel's row groups run along grid y (at most 65535).
  if (p.m <= 16 && padded_n / 8 <= 65535) {
    switch (decode) {
      case GemmDecodeKernel::stream_u1:
        return launch_portable_decode<1>(p, padded_n, stream);
      case GemmDecodeKernel::stream_u2:
        return launch_portable_decode<2>(p, padded_n, stream);
      case GemmDecodeKernel::stream_u4:
        return launch_portable_decode<4>(p, padded_n, stream);
      case GemmDecodeKernel::stream_u8:
        return launch_portable_decode<8>(p, padded_n, stream);
      case GemmDecodeKernel::split_k:
        break;
    }
  }
  const dim3 grid(grid_extent(padded_n / 8), grid_extent(ceil_div(p.m, kernels::portable_rows)));
  if (p.k_tiles >= 8)
    gpu::launch(kernels::gemm_a4w4_portable<8>, grid, 256, 0, stream, p);
  else
    gpu::launch(kernels::gemm_a4w4_portable<4>, grid, 128, 0, stream, p);
}

}  // namespace

template <GemmBackend G>
void gemm_a4w4(const Gpu& gpu, const Mxfp4Act& a, const PreparedMxfp4Weight<G>& w,
               View2<bf16> out) {
  gemm_a4w4(gpu, a, w, out, default_decode_kernel<G>);
}

template <GemmBackend G>
void gemm_a4w4(const Gpu& gpu, const Mxfp4Act& a, const PreparedMxfp4Weight<G>& w, View2<bf16> out,
               GemmDecodeKernel decode) {
  using Layout = Mxfp4WeightLayout<G>;
  constexpr const char* op = "gemm_a4w4";
  expect_format(op, "a", a, -1, w.k());
  const index_t rows = a.packed.shape[0];
  expect_view(op, "out", out, {rows, w.n()});
  const auto w_packed =
      make_view(w.packed(), static_cast<index_t>(Layout::packed_bytes(w.n(), w.k())));
  const auto w_scale =
      make_view(w.scale(), static_cast<index_t>(Layout::scale_count(w.n(), w.k())));
  expect_disjoint(op, "out", out, "a.packed", a.packed);
  expect_disjoint(op, "out", out, "a.scale", a.scale);
  expect_disjoint(op, "out", out, "w.packed", w_packed);
  expect_disjoint(op, "out", out, "w.scale", w_scale);
  if (rows > INT_MAX / 2) fail(op, std::string("M = ") + std::to_string(rows) + " is too large");
  if (rows == 0) return;
  // Activation words are read 4 bytes at a time.
  const auto address = reinterpret_cast<std::uintptr_t>(a.packed.data);
  if (address % 4 != 0 || (rows > 1 && a.packed.strides[0] % 4 != 0))
    fail(op,
         "argument 'a.packed' must start on a 4-byte boundary with a row stride that is a "
         "multiple of 4");
  kernels::A4W4Args p{};
  p.a_packed = a.packed.data;
  p.a_stride = a.packed.strides[0];
  p.a_scale = reinterpret_cast<const std::uint8_t*>(a.scale.data);
  p.a_scale_stride = a.scale.strides[0];
  p.w_packed = w.packed();
  p.w_scale = reinterpret_cast<const std::uint8_t*>(w.scale());
  p.out = out.data;
  p.out_stride = out.strides[0];
  p.m = static_cast<int>(rows);
  p.n = static_cast<int>(w.n());
  p.k = static_cast<int>(w.k());
  p.k_tiles = static_cast<int>(Layout::k_tiles(w.k()));
  const auto stream = static_cast<hipStream_t>(gpu.stream);
  const index_t padded_n = Layout::padded_n(w.n());
  if constexpr (G == GemmBackend::portable) {
    launch_portable(p, padded_n, decode, stream);
  } else if constexpr (gpu::nvidia_ptx) {
    launch_matrix_core<G>(p, padded_n, decode, stream);
  } else {
    const dim3 grid(grid_extent(ceil_div(w.n(), 256)), grid_extent(rows));
    gpu::launch(kernels::gemm_a4w4_by_index<Layout>, grid, 256, 0, stream, p);
  }
}

template class PreparedMxfp4Weight<GemmBackend::matrix_core>;
template class PreparedMxfp4Weight<GemmBackend::portable>;
template PreparedMxfp4Weight<GemmBackend::matrix_core> prepare_weight(const Mxfp4Weight&);
template PreparedMxfp4Weight<GemmBackend::portable> prepare_weight(const Mxfp4Weight&);
template Mxfp4WeightHost unshuffle(const PreparedMxfp4Weight<GemmBackend::matrix_core>&);
template Mxfp4WeightHost unshuffle(const PreparedMxfp4Weight<GemmBackend::portable>&);
template void gemm_a4w4(const Gpu&, const Mxfp4Act&,
                        const PreparedMxfp4Weight<GemmBackend::matrix_core>&, View2<bf16>);
template void gemm_a4w4(const Gpu&, const Mxfp4Act&,
                        const PreparedMxfp4Weight<GemmBackend::portable>&, View2<bf16>);
template void gemm_a4w4(const Gpu&, const Mxfp4Act&,
                        const PreparedMxfp4Weight<GemmBackend::matrix_core>&, View2<bf16>,
                        GemmDecodeKernel);
template void gemm_a4w4(const Gpu&, const Mxfp4Act&,
                        const PreparedMxfp4Weight<GemmBackend::portable>&, View2<bf16>,
                        GemmDecodeKernel);

}  // namespace atom::ops
