// The MLA absorbed BMMs on the GPU: FP8 weights with FP8 per-group activations, and MXFP4
// weights with bf16 activations. One thread per (head, output feature), several tokens each; the
// FP8 kernel stages each group of its CTA's weight rows and activations in shared memory, read
// from global memory in whole rows, so that a thread's own row never comes from global memory a
// byte at a time.

#include "atom/ops/gpu/bmm.hpp"

#include <climits>
#include <cstdint>
#include <string>

#include "atom/gpu/runtime.hpp"
#include "detail/reduce.hpp"

namespace atom::ops {
namespace {

// Tokens per thread: the weight row is read once for all of them.
constexpr int bmm_tokens = 4;
constexpr int bmm_threads = 128;
// The FP8 kernel's tokens per CTA, and its staged weight rows' length in 32-bit words: a group of
// codes and one word more, so that the threads' rows start in different banks.
constexpr int bmm_fp8_tokens = 8;
constexpr int bmm_group_words = static_cast<int>(fp8_group) / 4;
constexpr int bmm_row_words = bmm_group_words + 1;

struct BmmShape {
  int tokens;
  int heads;
  int n;
  int k;
};

struct Fp8Args {
  BmmShape s;
  const fp8_e4m3* a;  // row t * heads + h
  index_t a_stride;
  const float* a_scale;
  index_t a_scale_stride;
  const fp8_e4m3* w;
  index_t w_head_stride;
  index_t w_row_stride;
  const float* w_scale;
  index_t w_scale_stride;
  bf16* out;
  index_t out_t_stride;
  index_t out_h_stride;
  bool w_words;  // w and its strides 4-byte aligned: whole words of codes are read at once
};

struct Mxfp4Args {
  BmmShape s;
  const bf16* a;
  index_t a_t_stride;
  index_t a_h_stride;
  const std::uint8_t* w;
  index_t w_head_stride;
  index_t w_row_stride;
  const e8m0* w_scale;
  index_t ws_head_stride;
  index_t ws_row_stride;
  bf16* out;
  index_t out_t_stride;
  index_t out_h_stride;
};

// CTA (x, h, z): outputs [128 x, 128 x + 128) of head h for tokens [8 z, 8 z + 8), one output
// feature per thread. Per group of 128 along K the CTA stages its weight rows' codes and the
// tokens' activations (as floats) in shared memory; each thread then sums exact products in
// increasing k and adds partial * scale to its accumulator; the head scale comes last (each
// operation rounded once, as on the host).
__global__ void __launch_bounds__(bmm_threads) bmm_fp8_kernel(Fp8Args p) {
  gpu::start_after_prior_grid();
  __shared__ std::uint32_t w_tile[bmm_threads * bmm_row_words];
  __shared__ float a_tile[bmm_fp8_tokens][fp8_group];
  const int tid = static_cast<int>(threadIdx.x);
  const int n0 = static_cast<int>(blockIdx.x) * bmm_threads;
  const int h = static_cast<int>(blockIdx.y);
  const int t0 = static_cast<int>(blockIdx.z) * bmm_fp8_tokens;
  const int tokens = min(p.s.tokens - t0, bmm_fp8_tokens);
  const int rows = min(p.s.n - n0, bmm_threads);
  const fp8_e4m3* w_head = p.w + h * p.w_head_stride;
  float acc[bmm_fp8_tokens] = {};
  for (int k0 = 0; k0 < p.s.k; k0 += static_cast<int>(fp8_group)) {
    const int width = min(static_cast<int>(fp8_group), p.s.k - k0);
    __syncthreads();  // every thread is done with the previous group's tiles
    for (int i = tid; i < rows * bmm_group_words; i += bmm_threads) {
      const int r = i / bmm_group_words;
      const int q = i % bmm_group_words;
      const fp8_e4m3* src = w_head + static_cast<index_t>(n0 + r) * p.w_row_stride + k0 + 4 * q;
      std::uint32_t word = 0;
      if (p.w_words && 4 * q + 4 <= width) {
        word = *reinterpret_cast<const std::uint32_t*>(src);
      } else {
        for (int j = 0; j < 4 && 4 * q + j < width; ++j)
          word |= static_cast<std::uint32_t>(src[j].bits) << (8 * j);
      }
      w_tile[r * bmm_row_words + q] = word;
    }
    for (int i = tid; i < tokens * width; i += bmm_threads) {
      const int token = i / width;
      const int k = i % width;
      const index_t row = static_cast<index_t>(t0 + token) * p.s.heads + h;
      a_tile[token][k] = to_float(p.a[row * p.a_stride + k0 + k]);
    }
    __syncthreads();
    if (tid >= rows) continue;
    float partial[bmm_fp8_tokens] = {};
    for (int q = 0; 4 * q < width; ++q) {
      float wv[4];
      kernels::unpack_e4m3x4(w_tile[tid * bmm_row_words + q], wv);
      const int codes = min(4, width - 4 * q);
#pragma unroll
      for (int i = 0; i < bmm_fp8_tokens; ++i) {
        if (i >= tokens) break;
        const float4 av = *reinterpret_cast<const float4*>(&a_tile[i][4 * q]);
        const float a4[4] = {av.x, av.y, av.z, av.w};
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (j < codes) partial[i] = fmaf(a4[j], wv[j], partial[i]);
      }
    }
#pragma unroll
    for (int i = 0; i < bmm_fp8_tokens; ++i)
      if (i < tokens) {
        const index_t row = static_cast<index_t>(t0 + i) * p.s.heads + h;
        const float scale = p.a_scale[row * p.a_scale_stride + k0 / static_cast<int>(fp8_group)];
        acc[i] = __fadd_rn(acc[i], __fmul_rn(partial[i], scale));
      }
  }
  if (tid >= rows) return;
  const int n = n0 + tid;
  const float head_scale = p.w_scale[h * p.w_scale_stride];
#pragma unroll
  for (int i = 0; i < bmm_fp8_tokens; ++i)
    if (i < tokens)
      p.out[(t0 + i) * p.out_t_stride + h * p.out_h_stride + n] =
          to_bf16(__fmul_rn(acc[i], head_scale));
}

// bf16 activations times exactly dequantized MXFP4 weights, summed in increasing k.
__global__ void __launch_bounds__(bmm_threads) bmm_mxfp4_kernel(Mxfp4Args p) {
  gpu::start_after_prior_grid();
  const int n = static_cast<int>(blockIdx.x) * bmm_threads + static_cast<int>(threadIdx.x);
  const int h = static_cast<int>(blockIdx.y);
  const int t0 = static_cast<int>(blockIdx.z) * bmm_tokens;
  if (n >= p.s.n) return;
  const int tokens = p.s.tokens - t0 < bmm_tokens ? p.s.tokens - t0 : bmm_tokens;
  const std::uint8_t* w_row = p.w + h * p.w_head_stride + n * p.w_row_stride;
  const e8m0* scale_row = p.w_scale + h * p.ws_head_stride + n * p.ws_row_stride;
  float acc[bmm_tokens] = {};
  for (int k0 = 0; k0 < p.s.k; k0 += mx_block) {
    const float scale = to_float(scale_row[k0 / mx_block]);
    const int k1 = k0 + mx_block < p.s.k ? k0 + mx_block : p.s.k;
    for (int k = k0; k < k1; ++k) {
      const auto code = static_cast<std::uint8_t>((w_row[k / 2] >> (4 * (k & 1))) & 0xF);
      const float wv = __fmul_rn(e2m1_to_float(code), scale);
#pragma unroll
      for (int i = 0; i < bmm_tokens; ++i)
        if (i < tokens) {
          const bf16 av = p.a[(t0 + i) * p.a_t_stride + h * p.a_h_stride + k];
          acc[i] = fmaf(to_float(av), wv, acc[i]);
        }
    }
  }
#pragma unroll
  for (int i = 0; i < bmm_tokens; ++i)
    if (i < tokens) p.out[(t0 + i) * p.out_t_stride + h * p.out_h_stride + n] = to_bf16(acc[i]);
}

void expect_fits_int(const char* op, index_t tokens, index_t heads, index_t n, index_t k) {
  if (tokens > INT_MAX / 2 || heads > 65535 || n > INT_MAX / 2 || k > INT_MAX / 2)
    fail(op, std::string("shape T = ") + std::to_string(tokens) + ", H = " + std::to_string(heads) +
                 ", N = " + std::to_string(n) + ", K = " + std::to_string(k) +
                 " is too large for the GPU BMM");
}

dim3 bmm_grid(const BmmShape& s, int tokens_per_cta) {
  return dim3(static_cast<unsigned>(ceil_div(s.n, bmm_threads)), static_cast<unsigned>(s.heads),
              static_cast<unsigned>(ceil_div(s.tokens, tokens_per_cta)));
}

}  // namespace

void bmm_fp8(const Gpu& gpu, const Fp8GroupAct& a, const Fp8HeadWeight& w, View3<bf16> out) {
  constexpr const char* op = "bmm_fp8";
  expect_view(op, "out", out, {-1, -1, -1});
  const index_t tokens = out.shape[0];
  const index_t heads = out.shape[1];
  const index_t n_count = out.shape[2];
  expect_view(op, "w.w", w.w, {heads, n_count, -1});
  const index_t k_count = w.w.shape[2];
  expect_shape(op, "w.scale", w.scale, {heads});
  expect_format(op, "a", a, tokens * heads, k_count);
  expect_disjoint(op, "out", out, "a.q", a.q);
  expect_disjoint(op, "out", out, "a.scale", a.scale);
  expect_disjoint(op, "out", out, "w.w", w.w);
  expect_disjoint(op, "out", out, "w.scale", w.scale);
  expect_fits_int(op, tokens, heads, n_count, k_count);
  if (out.numel() == 0) return;
  Fp8Args p{};
  p.s = {static_cast<int>(tokens), static_cast<int>(heads), static_cast<int>(n_count),
         static_cast<int>(k_count)};
  p.a = a.q.data;
  p.a_stride = a.q.strides[0];
  p.a_scale = a.scale.data;
  p.a_scale_stride = a.scale.strides[0];
  p.w = w.w.data;
  p.w_head_stride = w.w.strides[0];
  p.w_row_stride = w.w.strides[1];
  p.w_scale = w.scale.data;
  p.w_scale_stride = w.scale.strides[0];
  p.out = out.data;
  p.out_t_stride = out.strides[0];
  p.out_h_stride = out.strides[1];
  p.w_words = reinterpret_cast<std::uintptr_t>(p.w) % 4 == 0 && p.w_head_stride % 4 == 0 &&
              p.w_row_stride % 4 == 0;
  gpu::launch(bmm_fp8_kernel, bmm_grid(p.s, bmm_fp8_tokens), bmm_threads, 0,
              static_cast<hipStream_t>(gpu.stream), p);
}

void bmm_mxfp4(const Gpu& gpu, View3<const bf16> a, const Mxfp4HeadWeight& w, View3<bf16> out) {
  constexpr const char* op = "bmm_mxfp4";
  expect_view(op, "a", a, {-1, -1, -1});
  const index_t tokens = a.shape[0];
  const index_t heads = a.shape[1];
  const index_t k_count = a.shape[2];
  if (w.k != k_count)
    fail(op, std::string("argument 'w' has K = ") + std::to_string(w.k) + ", expected " +
                 std::to_string(k_count));
  expect_view(op, "w.packed", w.packed, {heads, -1, mxfp4_packed_cols(k_count)});
  const index_t n_count = w.packed.shape[1];
  expect_view(op, "w.scale", w.scale, {heads, n_count, mxfp4_scale_cols(k_count)});
  expect_view(op, "out", out, {tokens, heads, n_count});
  expect_disjoint(op, "out", out, "a", a);
  expect_disjoint(op, "out", out, "w.packed", w.packed);
  expect_disjoint(op, "out", out, "w.scale", w.scale);
  expect_fits_int(op, tokens, heads, n_count, k_count);
  if (out.numel() == 0) return;
  Mxfp4Args p{};
  p.s = {static_cast<int>(tokens), static_cast<int>(heads), static_cast<int>(n_count),
         static_cast<int>(k_count)};
  p.a = a.data;
  p.a_t_stride = a.strides[0];
  p.a_h_stride = a.strides[1];
  p.w = w.packed.data;
  p.w_head_stride = w.packed.strides[0];
  p.w_row_stride = w.packed.strides[1];
  p.w_scale = w.scale.data;
  p.ws_head_stride = w.scale.strides[0];
  p.ws_row_stride = w.scale.strides[1];
  p.out = out.data;
  p.out_t_stride = out.strides[0];
  p.out_h_stride = out.strides[1];
  gpu::launch(bmm_mxfp4_kernel, bmm_grid(p.s, bmm_tokens), bmm_threads, 0,
              static_cast<hipStream_t>(gpu.stream), p);
}

}  // namespace atom::ops
