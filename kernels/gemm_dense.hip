// The GEMMs over weights in their logical layout on the GPU: bf16 (gemm_a16w16) and FP8 e4m3 with
// block scales (gemm_a8w8_block), dense and routed over experts (moe_gemm_a16w16,
// moe_gemm_a8w8_block). One SIMT tile serves all four: each lane streams 16-byte pieces of its
// warp's four weight rows and of up to four activation rows, so that a warp's load moves 512
// bytes; the routed forms gather each expert's rows with kernels/detail/moe_rows.hpp.

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>
#include <type_traits>

#include "atom/gpu/arch.hpp"
#include "atom/gpu/runtime.hpp"
#include "atom/ops/gpu/gemm.hpp"
#include "atom/ops/gpu/moe.hpp"
#include "detail/moe_rows.hpp"
#include "detail/reduce.hpp"
#include "detail/rows.hpp"

namespace atom::kernels {
namespace {

// a [m, k] and w [n, k] of bf16 or fp8_e4m3 codes, rows strided. FP8 also reads the activation's
// group scales [m, ceil(k / 128)] and the weight's block scales [ceil(n / block_n), ceil(k / 128)].
template <class T>
struct DenseGemmArgs {
  const T* a;
  index_t a_stride;
  const float* a_scale;
  index_t a_scale_stride;
  const T* w;
  index_t w_stride;
  const float* w_scale;
  index_t w_scale_stride;
  int block_n;
  bf16* out;  // [m, n], rows out_stride apart
  index_t out_stride;
  int m;
  int n;
  int k;
};

template <class T>
inline constexpr bool block_scaled = std::is_same_v<T, fp8_e4m3>;

template <class T>
__device__ inline DenseGemmArgs<T> at_expert(DenseGemmArgs<T> p, const MoeRowsArgs& m, int e) {
  p.w += static_cast<index_t>(e) * m.expert_stride;
  if constexpr (block_scaled<T>) p.w_scale += static_cast<index_t>(e) * m.expert_scale_stride;
  return p;
}

// A warp computes up to tile_rows x tile_cols outputs at a time; the CTA's warps take consecutive
// column groups, cta_cols columns in all, for up to cta_rows rows.
inline constexpr int tile_rows = 4;
inline constexpr int tile_cols = 4;
inline constexpr int cta_warps = 4;
inline constexpr int cta_cols = cta_warps * tile_cols;
inline constexpr int cta_rows = 16;
// cta_warps warps of the target (launch_warp: the same in the launching and the device pass).
inline constexpr int cta_threads = cta_warps * launch_warp;
static_assert(cta_threads <= moe_max_window, "a CTA gathers at most moe_max_window rows at once");

// A lane reads k in pieces of 16 bytes: 8 bf16 values or 16 FP8 codes, four 32-bit words of
// per_word values each. An FP8 piece lies in one group of 128 columns.
template <class T>
inline constexpr int piece = 16 / static_cast<int>(sizeof(T));
template <class T>
inline constexpr int per_word = 4 / static_cast<int>(sizeof(T));
static_assert(static_cast<int>(ops::fp8_group) % piece<fp8_e4m3> == 0);

// Values [k0, k0 + piece) of row as their bits: one 16-byte access where the operands allow it
// (Vec: 16-byte aligned rows and a whole piece), else one value at a time with zero bits past k.
template <bool Vec, class T>
__device__ inline uint4 load_piece(const T* row, int k0, int k) {
  if constexpr (Vec) {
    return *reinterpret_cast<const uint4*>(row + k0);
  } else {
    std::uint32_t words[4] = {};
#pragma unroll
    for (int j = 0; j < piece<T>; ++j)
      if (k0 + j < k)
        words[j / per_word<T>] |= static_cast<std::uint32_t>(row[k0 + j].bits)
                                  << (8 * static_cast<int>(sizeof(T)) * (j % per_word<T>));
    return make_uint4(words[0], words[1], words[2], words[3]);
  }
}

__device__ inline std::uint32_t word_of(const uint4& u, int q) {
  return q == 0 ? u.x : q == 1 ? u.y : q == 2 ? u.z : u.w;
}

// The values of one word of a piece as floats, exactly (the lowest bits first; NaN codes NaN).
template <class T>
__device__ inline void unpack_word(std::uint32_t w, float (&v)[per_word<T>]) {
  if constexpr (std::is_same_v<T, bf16>) {
    v[0] = to_float(bf16{static_cast<std::uint16_t>(w & 0xffffu)});
    v[1] = to_float(bf16{static_cast<std::uint16_t>(w >> 16)});
  } else {
    unpack_e4m3x4(w, v);
  }
}

// Outputs (rows.out(r0 + i), n_of[j]) for i < R of the warp's columns. Lane L takes the pieces
// k0 = piece * (L + W j) (W the warp size) in increasing order: each product is added to a float
// sum by one fused multiply-add (the product of two bf16 or two e4m3 values is exact in float
// unless it underflows, so this rounds as the host's product-then-add does). For FP8 each piece's
// sum starts at zero, is multiplied by the host's scale product a_scale[m, g] * w_scale[n /
// block_n, g] of its group g, and added to the lane's accumulator. The lanes then meet in a
// butterfly.
template <int R, bool Vec, class T, class Rows>
__device__ inline void dense_rows(const DenseGemmArgs<T>& p, const Rows& rows, int r0, int n0,
                                  const int (&n_of)[tile_cols],
                                  const T* const (&w_row)[tile_cols]) {
  constexpr int V = piece<T>;
  const int lane = static_cast<int>(threadIdx.x) % gpu::warp_size;
  int a_of[R];
  const T* a_row[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    a_of[i] = rows.a(r0 + i);
    a_row[i] = p.a + static_cast<index_t>(a_of[i]) * p.a_stride;
  }
  float acc[R][tile_cols] = {};
  for (int k0 = lane * V; k0 < p.k; k0 += gpu::warp_size * V) {
    uint4 w_bits[tile_cols];
    uint4 a_bits[R];
#pragma unroll
    for (int j = 0; j < tile_cols; ++j) w_bits[j] = load_piece<Vec>(w_row[j], k0, p.k);
#pragma unroll
    for (int i = 0; i < R; ++i) a_bits[i] = load_piece<Vec>(a_row[i], k0, p.k);
    float sum[R][tile_cols];
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = 0; j < tile_cols; ++j) sum[i][j] = block_scaled<T> ? 0.0f : acc[i][j];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      float wv[tile_cols][per_word<T>];
      float av[R][per_word<T>];
#pragma unroll
      for (int j = 0; j < tile_cols; ++j) unpack_word<T>(word_of(w_bits[j], q), wv[j]);
#pragma unroll
      for (int i = 0; i < R; ++i) unpack_word<T>(word_of(a_bits[i], q), av[i]);
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < tile_cols; ++j)
#pragma unroll
          for (int e = 0; e < per_word<T>; ++e)
            sum[i][j] = __fmaf_rn(av[i][e], wv[j][e], sum[i][j]);
    }
    if constexpr (block_scaled<T>) {
      const int g = k0 / static_cast<int>(ops::fp8_group);
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < tile_cols; ++j) {
          const float scale =
              mul(p.a_scale[static_cast<index_t>(a_of[i]) * p.a_scale_stride + g],
                  p.w_scale[static_cast<index_t>(n_of[j] / p.block_n) * p.w_scale_stride + g]);
          acc[i][j] = add(acc[i][j], mul(sum[i][j], scale));
        }
    } else {
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < tile_cols; ++j) acc[i][j] = sum[i][j];
    }
  }
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < tile_cols; ++j) {
      const float total = warp_reduce(acc[i][j], Sum{});
      if (lane == i * tile_cols + j && n0 + j < p.n)
        p.out[static_cast<index_t>(rows.out(r0 + i)) * p.out_stride + n0 + j] = to_bf16(total);
    }
}

// Outputs (rows.out(i), n) for i < p.m and n in [col0, col0 + cta_cols): warp w takes columns
// [col0 + 4 w, col0 + 4 w + 4), 4 rows at a time, then 2, then 1 (dense_rows). Columns past the
// tile read the last valid one and store nothing. No barrier: each warp works on its own.
template <bool Vec, class T, class Rows>
__device__ inline void dense_tile(const DenseGemmArgs<T>& p, const Rows& rows, int col0) {
  const int n0 = col0 + static_cast<int>(threadIdx.x) / gpu::warp_size * tile_cols;
  if (n0 >= p.n) return;
  int n_of[tile_cols];
  const T* w_row[tile_cols];
#pragma unroll
  for (int j = 0; j < tile_cols; ++j) {
    n_of[j] = min(n0 + j, p.n - 1);
    w_row[j] = p.w + static_cast<index_t>(n_of[j]) * p.w_stride;
  }
  int r0 = 0;
  for (; r0 + tile_rows <= p.m; r0 += tile_rows)
    dense_rows<tile_rows, Vec>(p, rows, r0, n0, n_of, w_row);
  if (p.m - r0 >= 2) {
    dense_rows<2, Vec>(p, rows, r0, n0, n_of, w_row);
    r0 += 2;
  }
  if (r0 < p.m) dense_rows<1, Vec>(p, rows, r0, n0, n_of, w_row);
}

// CTA (x, y): columns [cta_cols x, cta_cols (x + 1)) of the row chunks y, y + gridDim.y, ...
template <class T, bool Vec>
__global__ void __launch_bounds__(cta_threads) gemm_dense(DenseGemmArgs<T> p) {
  gpu::start_after_prior_grid();
  const int col0 = static_cast<int>(blockIdx.x) * cta_cols;
  for (int row0 = static_cast<int>(blockIdx.y) * cta_rows; row0 < p.m;
       row0 += static_cast<int>(gridDim.y) * cta_rows) {
    DenseGemmArgs<T> chunk = p;
    chunk.m = min(cta_rows, p.m - row0);
    dense_tile<Vec>(chunk, DenseRows{row0}, col0);
  }
}

// CTA (x, slot): columns [cta_cols x, cta_cols (x + 1)) of the rows of the slot's expert.
template <class T, bool ByExpert, bool Vec>
__global__ void __launch_bounds__(cta_threads) moe_gemm_dense(DenseGemmArgs<T> p, MoeRowsArgs m) {
  gpu::start_after_prior_grid();
  const int col0 = static_cast<int>(blockIdx.x) * cta_cols;
  for_each_expert_chunk<cta_rows, ByExpert>(
      p, m, col0, cta_cols, [&](const DenseGemmArgs<T>& args, const GatheredRows& rows) {
        dense_tile<Vec>(args, rows, col0);
      });
}

}  // namespace
}  // namespace atom::kernels

namespace atom::ops {
namespace {

constexpr index_t max_grid_y = 65535;

// The kernels index rows, columns and K with int.
void expect_gpu_extents(const char* op, index_t m, index_t n, index_t k) {
  if (m > INT_MAX / 2 || n > INT_MAX / 2 || k > INT_MAX / 2)
    fail(op, "M = " + std::to_string(m) + ", N = " + std::to_string(n) +
                 ", K = " + std::to_string(k) + " is too large");
}

// block_n as the kernel's int: any block of N rows or more is one block.
int block_rows(index_t block_n, index_t n) {
  return static_cast<int>(std::min(block_n, std::max<index_t>(n, 1)));
}

kernels::DenseGemmArgs<bf16> bf16_args(const Bf16Act& a, View2<const bf16> w, View2<bf16> out) {
  kernels::DenseGemmArgs<bf16> p{};
  p.a = a.x.data;
  p.a_stride = a.x.stride(0);
  p.w = w.data;
  p.w_stride = w.stride(0);
  p.block_n = 1;
  p.out = out.data;
  p.out_stride = out.stride(0);
  p.n = static_cast<int>(w.shape[0]);
  p.k = static_cast<int>(w.shape[1]);
  return p;
}

kernels::DenseGemmArgs<fp8_e4m3> fp8_args(const Fp8GroupAct& a, View2<const fp8_e4m3> w,
                                          View2<const float> w_scale, index_t block_n,
                                          View2<bf16> out) {
  kernels::DenseGemmArgs<fp8_e4m3> p{};
  p.a = a.q.data;
  p.a_stride = a.q.stride(0);
  p.a_scale = a.scale.data;
  p.a_scale_stride = a.scale.stride(0);
  p.w = w.data;
  p.w_stride = w.stride(0);
  p.w_scale = w_scale.data;
  p.w_scale_stride = w_scale.stride(0);
  p.block_n = block_rows(block_n, w.shape[0]);
  p.out = out.data;
  p.out_stride = out.stride(0);
  p.n = static_cast<int>(w.shape[0]);
  p.k = static_cast<int>(w.shape[1]);
  return p;
}

// Whether every piece of a lane is one aligned 16-byte access: aligned rows (and experts), K a
// whole number of pieces.
template <class T>
bool whole_pieces(const kernels::DenseGemmArgs<T>& p, index_t expert_stride) {
  constexpr index_t v = kernels::piece<T>;
  return kernels::aligned16(p.a) && kernels::aligned16(p.w) && p.a_stride % v == 0 &&
         p.w_stride % v == 0 && expert_stride % v == 0 && p.k % v == 0;
}

template <class T>
void launch_dense(const Gpu& gpu, kernels::DenseGemmArgs<T> p, index_t rows) {
  p.m = static_cast<int>(rows);
  if (p.m == 0 || p.n == 0) return;
  const dim3 grid(static_cast<unsigned>(ceil_div(p.n, kernels::cta_cols)),
                  static_cast<unsigned>(std::min(ceil_div(p.m, kernels::cta_rows), max_grid_y)));
  const auto stream = static_cast<hipStream_t>(gpu.stream);
  if (whole_pieces(p, 0))
    gpu::launch(kernels::gemm_dense<T, true>, grid, kernels::cta_threads, 0, stream, p);
  else
    gpu::launch(kernels::gemm_dense<T, false>, grid, kernels::cta_threads, 0, stream, p);
}

// The routed GEMMs' checks that follow those of a and w (as the host op makes them), and the
// kernel's description of the rows: row r = t * k + j reads a[t] (a has T rows) or a[r].
kernels::MoeRowsArgs routed_rows(const char* op, index_t a_rows, View2<const std::int32_t> ids,
                                 index_t experts, index_t n, View2<bf16> out) {
  const index_t tokens = ids.shape[0];
  const index_t k = ids.shape[1];
  expect(a_rows == tokens || a_rows == tokens * k, op,
         "argument 'a' has " + std::to_string(a_rows) + " rows, expected T = " +
             std::to_string(tokens) + " or T * k = " + std::to_string(tokens * k));
  expect_view(op, "out", out, {tokens * k, n});
  expect_disjoint(op, "out", out, "ids", ids);
  const index_t rows = tokens * k;
  if (rows > INT_MAX / 2 || tokens > INT_MAX / 2)
    fail(op, "T * k = " + std::to_string(rows) + " is too large");
  // Grid y has a slot per expert and one for the rows of bad ids.
  if (experts >= max_grid_y)
    fail(op, std::to_string(experts) + " experts exceed the GPU limit of " +
                 std::to_string(max_grid_y - 1));
  kernels::MoeRowsArgs m{};
  m.ids = ids.data;
  m.ids_stride = ids.stride(0);
  m.k = static_cast<int>(k);
  m.rows = static_cast<int>(rows);
  m.experts = static_cast<int>(experts);
  m.a_per_token = a_rows == tokens && k > 1;
  m.by_expert = rows > experts;
  return m;
}

template <class T, bool ByExpert>
void launch_routed(const kernels::DenseGemmArgs<T>& p, const kernels::MoeRowsArgs& m, dim3 grid,
                   hipStream_t stream) {
  if (whole_pieces(p, m.expert_stride))
    gpu::launch(kernels::moe_gemm_dense<T, ByExpert, true>, grid, kernels::cta_threads, 0, stream,
                p, m);
  else
    gpu::launch(kernels::moe_gemm_dense<T, ByExpert, false>, grid, kernels::cta_threads, 0, stream,
                p, m);
}

template <class T>
void launch_routed(const Gpu& gpu, kernels::DenseGemmArgs<T> p, kernels::MoeRowsArgs m) {
  p.m = m.rows;
  if (m.rows == 0 || p.n == 0) return;
  const auto stream = static_cast<hipStream_t>(gpu.stream);
  const auto columns = static_cast<unsigned>(ceil_div(p.n, kernels::cta_cols));
  if (m.by_expert) {
    kernels::group_rows_by_expert(gpu, m);
    launch_routed<T, true>(p, m, dim3(columns, static_cast<unsigned>(m.experts + 1)), stream);
  } else {
    launch_routed<T, false>(p, m, dim3(columns, static_cast<unsigned>(m.rows)), stream);
  }
}

}  // namespace

void gemm_a16w16(const Gpu& gpu, const Bf16Act& a, const Bf16Weight& w, View2<bf16> out) {
  constexpr const char* op = "gemm_a16w16";
  expect_format(op, "a", a, -1, -1);
  expect_weight(op, "w", w, -1, a.x.shape[1]);
  expect_view(op, "out", out, {a.x.shape[0], w.w.shape[0]});
  expect_disjoint(op, "out", out, "a.x", a.x);
  expect_disjoint(op, "out", out, "w.w", w.w);
  expect_gpu_extents(op, a.x.shape[0], w.w.shape[0], w.w.shape[1]);
  launch_dense(gpu, bf16_args(a, w.w, out), a.x.shape[0]);
}

void gemm_a8w8_block(const Gpu& gpu, const Fp8GroupAct& a, const Fp8BlockWeight& w,
                     View2<bf16> out) {
  constexpr const char* op = "gemm_a8w8_block";
  expect_format(op, "a", a, -1, -1);
  const index_t rows = a.q.shape[0];
  const index_t k_count = a.q.shape[1];
  expect_weight(op, "w", w, -1, k_count);
  const index_t n_count = w.q.shape[0];
  expect_view(op, "out", out, {rows, n_count});
  expect_disjoint(op, "out", out, "a.q", a.q);
  expect_disjoint(op, "out", out, "a.scale", a.scale);
  expect_disjoint(op, "out", out, "w.q", w.q);
  expect_disjoint(op, "out", out, "w.scale", w.scale);
  expect_gpu_extents(op, rows, n_count, k_count);
  launch_dense(gpu, fp8_args(a, w.q, w.scale, w.block_n, out), rows);
}

void moe_gemm_a16w16(const Gpu& gpu, const Bf16Act& a, View2<const std::int32_t> ids,
                     const Bf16Experts& w, View2<bf16> out) {
  constexpr const char* op = "moe_gemm_a16w16";
  expect_view(op, "ids", ids, {-1, -1});
  expect_view(op, "w.w", w.w, {-1, -1, -1});
  const index_t experts = w.w.shape[0];
  const index_t n_count = w.w.shape[1];
  expect_format(op, "a", a, -1, w.w.shape[2]);
  expect_disjoint(op, "out", out, "a.x", a.x);
  expect_disjoint(op, "out", out, "w.w", w.w);
  kernels::MoeRowsArgs m = routed_rows(op, a.x.shape[0], ids, experts, n_count, out);
  expect_gpu_extents(op, a.x.shape[0], n_count, w.w.shape[2]);
  m.expert_stride = w.w.stride(0);
  launch_routed(gpu, bf16_args(a, w.w[0], out), m);
}

void moe_gemm_a8w8_block(const Gpu& gpu, const Fp8GroupAct& a, View2<const std::int32_t> ids,
                         const Fp8BlockExperts& w, View2<bf16> out) {
  constexpr const char* op = "moe_gemm_a8w8_block";
  expect_view(op, "ids", ids, {-1, -1});
  expect_view(op, "w.q", w.q, {-1, -1, -1});
  const index_t experts = w.q.shape[0];
  const index_t n_count = w.q.shape[1];
  if (w.block_n < 1)
    fail(op, "argument 'w' has block_n = " + std::to_string(w.block_n) +
                 ", expected a positive block height");
  expect_view(op, "w.scale", w.scale,
              {experts, ceil_div(n_count, w.block_n), fp8_group_cols(w.q.shape[2])});
  expect_format(op, "a", a, -1, w.q.shape[2]);
  expect_disjoint(op, "out", out, "a.q", a.q);
  expect_disjoint(op, "out", out, "a.scale", a.scale);
  expect_disjoint(op, "out", out, "w.q", w.q);
  expect_disjoint(op, "out", out, "w.scale", w.scale);
  kernels::MoeRowsArgs m = routed_rows(op, a.q.shape[0], ids, experts, n_count, out);
  expect_gpu_extents(op, a.q.shape[0], n_count, w.q.shape[2]);
  m.expert_stride = w.q.stride(0);
  m.expert_scale_stride = w.scale.stride(0);
  launch_routed(gpu, fp8_args(a, w.q[0], w.scale[0], w.block_n, out), m);
}

}  // namespace atom::ops
