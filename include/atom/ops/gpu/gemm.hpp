// The GEMMs on the GPU (atom/ops/gemm.hpp's with `const Gpu&` first; views are device memory):
// the MXFP4 GEMM gemm_a4w4, and at the end of this file the bf16 and FP8 block-scaled GEMMs.
//
// gemm_a4w4 has two backends chosen by policy::GemmBackend: `matrix_core` ("asm",
// ATOM_USE_TRITON_GEMM=0) and `portable` ("triton", ATOM_USE_TRITON_GEMM=1).
//
// Weights are prepared once at load: the logical Mxfp4Weight ([N, K/2] codes, [N, K/32] scales)
// is preshuffled on the host into the layout its backend's kernel reads with wide, coalesced loads
// (Mxfp4WeightLayout<G>) and uploaded. The prepared weight's type carries the backend, so a weight
// prepared for one backend cannot be handed to the other; a pipeline holds
// PreparedMxfp4Weight<Point::gemm_backend>. Shapes the kernels do not support are rejected at
// preparation: K must be a positive multiple of 32 (whole MX blocks), N positive.
//
// Arithmetic (both backends): within each block of 32 along K, the e2m1 codes of a and w are
// multiplied exactly (as integers, 2 * e2m1 in [-12, 12]; 32 products sum to at most 4608, exact);
// the block's sum is scaled by sa * sw / 4 (a power of two: exact while it stays a float normal)
// and added to a float accumulator. The sums over blocks run in another order than the host's
// single left-to-right sum, so the float results differ by at most about
// (K + K / 32) * 2^-24 * sum_k |a_k w_k|, and the bf16 outputs by that plus one bf16 ulp. A NaN
// scale makes the affected outputs NaN, as on the host.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "atom/core/tensor.hpp"
#include "atom/gpu/device.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/formats.hpp"
#include "atom/ops/gpu.hpp"
#include "atom/policy/axes.hpp"

namespace atom::ops {

// Where a preshuffled weight keeps each logical byte and scale. Rows are padded to whole n tiles
// and K to whole k tiles with zero codes and unit scales (2^0), so padding adds exact zeros.
template <policy::GemmBackend G>
struct Mxfp4WeightLayout;

// The matrix-core kernel's layout: tiles of 8 rows x 128 K (512 bytes, 32 scales), the k tiles of
// one row group consecutive. Inside a tile, lane (g, t) = 4 * g + t of a warp loads 16 contiguous
// bytes: word t (bytes 4t..4t+3) of each of the 4 blocks of row g, which is what its mma.sync
// fragments of that row need. Scales: [row 0..7][block 0..3], so lane t's two output columns 2t
// and 2t+1 read 8 contiguous bytes. Rows pad to a multiple of 32 (a warp computes up to 4 tiles).
template <>
struct Mxfp4WeightLayout<policy::GemmBackend::matrix_core> {
  static constexpr index_t n_tile = 8;
  static constexpr index_t k_tile = 128;
  static constexpr index_t n_align = 32;
  static constexpr index_t tile_bytes = n_tile * k_tile / 2;
  static constexpr index_t tile_scales = n_tile * k_tile / mx_block;

  static constexpr index_t padded_n(index_t n) { return ceil_div(n, n_align) * n_align; }
  static constexpr index_t k_tiles(index_t k) { return ceil_div(k, k_tile); }
  static constexpr index_t packed_bytes(index_t n, index_t k) {
    return padded_n(n) / n_tile * k_tiles(k) * tile_bytes;
  }
  static constexpr index_t scale_count(index_t n, index_t k) {
    return padded_n(n) / n_tile * k_tiles(k) * tile_scales;
  }
  // Logical byte `i` of row `n` (codes of k = 2i, 2i + 1).
  static constexpr index_t packed_index(index_t n, index_t i, index_t k) {
    const index_t kk = 2 * i;
    const index_t in_tile = kk % k_tile;
    const index_t block = in_tile / mx_block;
    const index_t byte_in_block = (in_tile % mx_block) / 2;
    const index_t lane = (n % n_tile) * 4 + byte_in_block / 4;
    return ((n / n_tile) * k_tiles(k) + kk / k_tile) * tile_bytes + lane * 16 + block * 4 +
           byte_in_block % 4;
  }
  // Scale of block `b` (k in [32b, 32b + 32)) of row `n`.
  static constexpr index_t scale_index(index_t n, index_t b, index_t k) {
    const index_t blocks_per_tile = k_tile / mx_block;
    return ((n / n_tile) * k_tiles(k) + b / blocks_per_tile) * tile_scales +
           (n % n_tile) * blocks_per_tile + b % blocks_per_tile;
  }
};

// The portable kernel's layout: tiles of 8 rows x 256 K (1024 bytes, 64 scales). Lane L of a warp
// reads word L (k in [8L, 8L + 8)) of all 8 rows: 32 contiguous bytes, [lane][row][4 bytes].
// Scales: [block 0..7][row 0..7], so lane L reads the 8 scales of its block L / 4 at once.
template <>
struct Mxfp4WeightLayout<policy::GemmBackend::portable> {
  static constexpr index_t n_tile = 8;
  static constexpr index_t k_tile = 256;
  static constexpr index_t n_align = 8;
  static constexpr index_t tile_bytes = n_tile * k_tile / 2;
  static constexpr index_t tile_scales = n_tile * k_tile / mx_block;

  static constexpr index_t padded_n(index_t n) { return ceil_div(n, n_align) * n_align; }
  static constexpr index_t k_tiles(index_t k) { return ceil_div(k, k_tile); }
  static constexpr index_t packed_bytes(index_t n, index_t k) {
    return padded_n(n) / n_tile * k_tiles(k) * tile_bytes;
  }
  static constexpr index_t scale_count(index_t n, index_t k) {
    return padded_n(n) / n_tile * k_tiles(k) * tile_scales;
  }
  static constexpr index_t packed_index(index_t n, index_t i, index_t k) {
    const index_t bytes_per_tile_row = k_tile / 2;
    const index_t in_tile = i % bytes_per_tile_row;
    const index_t lane = in_tile / 4;
    return ((n / n_tile) * k_tiles(k) + i / bytes_per_tile_row) * tile_bytes +
           (lane * n_tile + n % n_tile) * 4 + in_tile % 4;
  }
  static constexpr index_t scale_index(index_t n, index_t b, index_t k) {
    const index_t blocks_per_tile = k_tile / mx_block;
    return ((n / n_tile) * k_tiles(k) + b / blocks_per_tile) * tile_scales +
           (b % blocks_per_tile) * n_tile + n % n_tile;
  }
};

// An MXFP4 weight [N, K] in device memory, preshuffled for backend G. Move-only; owns its memory.
template <policy::GemmBackend G>
class PreparedMxfp4Weight {
 public:
  using Layout = Mxfp4WeightLayout<G>;

  PreparedMxfp4Weight(index_t n, index_t k, const std::vector<std::uint8_t>& packed,
                      const std::vector<e8m0>& scale);

  index_t n() const { return n_; }
  index_t k() const { return k_; }
  const std::uint8_t* packed() const { return packed_->data(); }
  const e8m0* scale() const { return scale_->data(); }
  // Bytes the GEMM streams from the weight (codes and scales, padding included).
  std::size_t bytes() const { return packed_->size() + scale_->size(); }

 private:
  index_t n_;
  index_t k_;
  std::unique_ptr<gpu::Buffer<std::uint8_t>> packed_;
  std::unique_ptr<gpu::Buffer<e8m0>> scale_;
};

// A logical MXFP4 weight held in host memory (what unshuffle returns).
struct Mxfp4WeightHost {
  index_t n = 0;
  index_t k = 0;
  std::vector<std::uint8_t> packed;  // [n, k / 2]
  std::vector<e8m0> scale;           // [n, k / 32]
  Mxfp4Weight view() {
    return {make_view(packed.data(), n, mxfp4_packed_cols(k)),
            make_view(scale.data(), n, mxfp4_scale_cols(k)), k};
  }
};

// Preshuffles a logical weight in host memory and uploads it. Throws ShapeError naming the
// problem for shapes the kernels do not support (K not a positive multiple of 32, N < 1).
template <policy::GemmBackend G>
PreparedMxfp4Weight<G> prepare_weight(const Mxfp4Weight& host_weight);

// Downloads a prepared weight and undoes the shuffle (padding dropped).
template <policy::GemmBackend G>
Mxfp4WeightHost unshuffle(const PreparedMxfp4Weight<G>& w);

// The kernels that can serve decode sizes (M <= 16; the matrix-core backend's stream_u<U> kernels
// on NVIDIA also serve M <= 64, 16 rows per CTA). `split_k` is the first version (a CTA's warps
// take interleaved k tiles, one tile ahead); `stream_u<U>` has each warp issue the loads of U
// consecutive k tiles before it multiplies any of them, with cheaper per-byte arithmetic (see
// kernels/detail/gemm_*_decode.hpp). All compute the same function within the same bound.
enum class GemmDecodeKernel : std::uint8_t { split_k, stream_u1, stream_u2, stream_u4, stream_u8 };

// What gemm_a4w4 uses for M <= 16: stream_u2 had the lowest geometric mean over the benchmark's
// decode shapes for both backends (docs/bench-notes.md).
template <policy::GemmBackend G>
inline constexpr GemmDecodeKernel default_decode_kernel = GemmDecodeKernel::stream_u2;

// a [M, K] MXFP4 (device), w prepared [N, K], out [M, N] bf16 (device); any M >= 0.
template <policy::GemmBackend G>
void gemm_a4w4(const Gpu&, const Mxfp4Act& a, const PreparedMxfp4Weight<G>& w, View2<bf16> out);

// The same with the decode kernel named (ignored for M > 16, or M > 64 by the matrix-core backend
// on NVIDIA, and by the matrix-core backend on AMD, which has one kernel): for comparing the
// variants in one benchmark run and in the tests.
template <policy::GemmBackend G>
void gemm_a4w4(const Gpu&, const Mxfp4Act& a, const PreparedMxfp4Weight<G>& w, View2<bf16> out,
               GemmDecodeKernel decode);

// ---- bf16 and FP8 block-scaled weights ----
//
// The weights stay in their logical layout (Bf16Weight, Fp8BlockWeight: [N, K] rows as the
// checkpoint stores them), with no preparation step. The host checks shapes exactly as the host
// ops do; any M, N, K >= 0 up to INT_MAX / 2 each.
//
// Arithmetic: every product is added to a float sum with one rounding (a fused multiply-add; the
// product of two e4m3 values, or of two bf16 values unless it underflows, is exact in float, so
// this is the host's product rounded once), in another order than the host's increasing k: each
// lane of a warp sums its own pieces of k (8 bf16 or 16 FP8 consecutive values, every 32nd or
// 64th piece), the lanes then meet in a butterfly. That summation tree is at most K deep, so, with
// S = sum_k |a_k w_k|:
// - gemm_a16w16: each float result is within K * 2^-24 * S of the exact sum, as is the host's;
//   the bf16 outputs differ from the host's by at most 2K * 2^-24 * S plus one bf16 ulp.
// - gemm_a8w8_block: each lane's sum of the code products of one piece (which lies in one group g
//   of 128 columns) is multiplied by the host's scale product a_scale[m, g] * w_scale[n /
//   block_n, g] (one float multiplication, as on the host) and added to the lane's accumulator in
//   increasing k. With G = ceil(K / 128) and S over the values those scales give, each float
//   result is within (min(K, 128) + G + 1) * 2^-24 * S of the exact value (a piece's sum is at
//   most min(K, 16) deep, a lane's accumulator at most G, the butterfly 6, each scale product
//   one rounding), and the bf16 outputs differ from the host's by at most twice that plus one
//   bf16 ulp.
// A NaN value or scale makes the outputs it reaches NaN, as on the host.

// a [M, K] bf16, w [N, K] bf16, out [M, N] bf16.
void gemm_a16w16(const Gpu&, const Bf16Act& a, const Bf16Weight& w, View2<bf16> out);

// a [M, K] FP8 per token and group of 128 columns, w [N, K] FP8 with block scales (block_n rows x
// 128 columns), out [M, N] bf16.
void gemm_a8w8_block(const Gpu&, const Fp8GroupAct& a, const Fp8BlockWeight& w, View2<bf16> out);

}  // namespace atom::ops
