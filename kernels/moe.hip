// The MoE block's ops on the GPU: router GEMM, grouped and softmax routing, SiLU * mul with its
// bf16, FP8 per-group and MXFP4 epilogues, the combine, and the routed expert GEMM over
// preshuffled MXFP4 experts (the bf16 and FP8 block experts are in gemm_dense.hip).

#include "atom/ops/gpu/moe.hpp"

#include <climits>
#include <cstdint>
#include <string>

#include "atom/gpu/arch.hpp"
#include "atom/gpu/runtime.hpp"
#include "atom/ops/gpu/norm.hpp"
#include "detail/gemm_args.hpp"
#include "detail/gemm_mma.hpp"
#include "detail/gemm_mma_decode.hpp"
#include "detail/gemm_portable.hpp"
#include "detail/gemm_portable_decode.hpp"
#include "detail/moe_rows.hpp"
#include "detail/reduce.hpp"
#include "detail/rows.hpp"
#include "detail/stream_scratch.hpp"

namespace atom::kernels {
namespace {

// ---- exp as the host's C library computes it ----

// 2^(i / 32) as double bits, less i << 47 (the exponent the index adds back).
__device__ const std::uint64_t exp2_table[32] = {
    0x3ff0000000000000ull, 0x3fefd9b0d3158574ull, 0x3fefb5586cf9890full, 0x3fef9301d0125b51ull,
    0x3fef72b83c7d517bull, 0x3fef54873168b9aaull, 0x3fef387a6e756238ull, 0x3fef1e9df51fdee1ull,
    0x3fef06fe0a31b715ull, 0x3feef1a7373aa9cbull, 0x3feedea64c123422ull, 0x3feece086061892dull,
    0x3feebfdad5362a27ull, 0x3feeb42b569d4f82ull, 0x3feeab07dd485429ull, 0x3feea47eb03a5585ull,
    0x3feea09e667f3bcdull, 0x3fee9f75e8ec5f74ull, 0x3feea11473eb0187ull, 0x3feea589994cce13ull,
    0x3feeace5422aa0dbull, 0x3feeb737b0cdc5e5ull, 0x3feec49182a3f090ull, 0x3feed503b23e255dull,
    0x3feee89f995ad3adull, 0x3feeff76f2fb5e47ull, 0x3fef199bdd85529cull, 0x3fef3720dcef9069ull,
    0x3fef5818dcfba487ull, 0x3fef7c97337b9b5full, 0x3fefa4afa2a490daull, 0x3fefd0765b6e4540ull};

// expf(x) with the host C library's bits (glibc's table-driven expf): x * 32 / ln 2 = k + r in
// double, 2^(k / 32) from the table, 2^(r / 32) by a cubic, rounded once to float. The host's
// sigmoid, softmax and SiLU call that expf; the device's own expf may differ in the last bit,
// which would change routing choices and quantized codes.
__device__ inline float host_expf(float x) {
  const std::uint32_t u = bits_of(x);
  const std::uint32_t top = (u >> 20) & 0x7ffu;
  if (top >= 0x42bu) {  // |x| >= 88, inf or NaN
    if (u == 0xff800000u) return 0.0f;
    if (top >= 0x7f8u) return __fadd_rn(x, x);
    if (x > 0x1.62e42ep6f) return float_of(float_inf_bits);
    if (x < -0x1.9fe368p6f) return 0.0f;
  }
  constexpr double inv_ln2_n = 0x1.71547652b82fep+0 * 32;
  constexpr double shift = 0x1.8p+52;
  constexpr double c0 = 0x1.c6af84b912394p-5 / 32 / 32 / 32;
  constexpr double c1 = 0x1.ebfce50fac4f3p-3 / 32 / 32;
  constexpr double c2 = 0x1.62e42ff0c52d6p-1 / 32;
  const double xd = static_cast<double>(x);
  const double shifted = __fma_rn(inv_ln2_n, xd, shift);
  const auto ki = static_cast<std::uint64_t>(__double_as_longlong(shifted));
  const double kd = __dsub_rn(shifted, shift);
  const double r = __fma_rn(inv_ln2_n, xd, -kd);
  const std::uint64_t t = exp2_table[ki % 32] + (ki << 47);
  const double s = __longlong_as_double(static_cast<long long>(t));
  const double z = __fma_rn(c0, r, c1);
  const double r2 = __dmul_rn(r, r);
  double y = __fma_rn(c2, r, 1.0);
  y = __fma_rn(z, r2, y);
  return __double2float_rn(__dmul_rn(y, s));
}

// ---- router GEMM ----

inline constexpr int router_tokens = 8;
inline constexpr int router_experts = 2;
inline constexpr int router_threads = 256;

// Eight values from column `base` on (zero past `cols`).
template <bool Vec>
__device__ inline void load8(const bf16* row, int base, int cols, float* v) {
  if constexpr (Vec) {
    unpack_bf16x8(*reinterpret_cast<const uint4*>(row + base), v);
  } else {
#pragma unroll
    for (int j = 0; j < vec_width; ++j) v[j] = base + j < cols ? to_float(row[base + j]) : 0.0f;
  }
}

// CTA (x, y): experts [2 x, 2 x + 2) x tokens [8 y, 8 y + 8). Thread i sums columns
// [8 i, 8 i + 8), [8 (i + 256), ...) in order; products of bf16 are exact in float, so the fused
// multiply-add rounds only the sum. The threads meet in a butterfly per warp, then in warp order.
template <bool Vec>
__global__ void __launch_bounds__(router_threads)
    router_gemm(const bf16* a, index_t a_stride, const bf16* w, index_t w_stride, float* out,
                index_t out_stride, int tokens, int experts, int hidden) {
  gpu::start_after_prior_grid();
  const int e0 = static_cast<int>(blockIdx.x) * router_experts;
  const int t0 = static_cast<int>(blockIdx.y) * router_tokens;
  float acc[router_tokens][router_experts] = {};
  for (int base = static_cast<int>(threadIdx.x) * vec_width; base < hidden;
       base += router_threads * vec_width) {
    float wv[router_experts][vec_width];
#pragma unroll
    for (int e = 0; e < router_experts; ++e) {
      const int expert = e0 + e < experts ? e0 + e : experts - 1;
      load8<Vec>(w + expert * w_stride, base, hidden, wv[e]);
    }
#pragma unroll
    for (int t = 0; t < router_tokens; ++t) {
      if (t0 + t >= tokens) break;
      float av[vec_width];
      load8<Vec>(a + (t0 + t) * a_stride, base, hidden, av);
#pragma unroll
      for (int e = 0; e < router_experts; ++e)
#pragma unroll
        for (int j = 0; j < vec_width; ++j) acc[t][e] = __fmaf_rn(av[j], wv[e][j], acc[t][e]);
    }
  }
  constexpr int max_warps = router_threads / 32;
  __shared__ float partial[max_warps][router_tokens][router_experts];
  const int warp = static_cast<int>(threadIdx.x) / gpu::warp_size;
  const int lane = static_cast<int>(threadIdx.x) % gpu::warp_size;
  const int warps = router_threads / gpu::warp_size;
#pragma unroll
  for (int t = 0; t < router_tokens; ++t)
#pragma unroll
    for (int e = 0; e < router_experts; ++e) {
      const float v = warp_reduce(acc[t][e], Sum{});
      if (lane == 0) partial[warp][t][e] = v;
    }
  __syncthreads();
  const int i = static_cast<int>(threadIdx.x);
  if (i < router_tokens * router_experts) {
    const int t = i / router_experts;
    const int e = i % router_experts;
    float sum = partial[0][t][e];
    for (int w = 1; w < warps; ++w) sum = add(sum, partial[w][t][e]);
    if (t0 + t < tokens && e0 + e < experts) out[(t0 + t) * out_stride + e0 + e] = sum;
  }
}

// ---- routing ----

inline constexpr int route_threads = 256;

// (key, index) pairs ordered as the host ranks them: larger key first, the lower index on ties.
struct Ranked {
  float key;
  int index;
};

__device__ inline bool ranks_before(const Ranked& x, const Ranked& y) {
  return x.index >= 0 && (y.index < 0 || x.key > y.key || (x.key == y.key && x.index < y.index));
}

// The first of the block's candidates in rank order (index -1 when none); every thread gets it.
__device__ inline Ranked block_best(Ranked v, Ranked* scratch) {
  for (int offset = gpu::warp_size / 2; offset > 0; offset /= 2) {
    const Ranked other{__shfl_xor(v.key, offset), __shfl_xor(v.index, offset)};
    if (ranks_before(other, v)) v = other;
  }
  const int lane = static_cast<int>(threadIdx.x) % gpu::warp_size;
  const int warp = static_cast<int>(threadIdx.x) / gpu::warp_size;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  Ranked best = scratch[0];
  for (int w = 1; w < route_threads / gpu::warp_size; ++w)
    if (ranks_before(scratch[w], best)) best = scratch[w];
  __syncthreads();
  return best;
}

// Whether the host op rejects the row: a NaN logit, for softmax also a +inf or no finite logit,
// and for the grouped routing a non-finite bias value (`bias`, null for softmax; atom/ops/moe.hpp).
// If so the row's slots are ids -1, weights NaN.
template <bool Softmax>
__device__ inline bool rejected_row(const float* row, const float* bias, int experts,
                                    std::int32_t* ids, float* weights, int k) {
  bool bad = false;
  bool finite = false;
  for (int e = static_cast<int>(threadIdx.x); e < experts; e += route_threads) {
    const std::uint32_t u = bits_of(row[e]);
    bad = bad || is_nan_bits(u) || (Softmax && u == float_inf_bits);
    if constexpr (!Softmax) bad = bad || !is_finite_bits(bits_of(bias[e]));
    finite = finite || is_finite_bits(u);
  }
  bool rejected = __syncthreads_or(bad);
  if constexpr (Softmax) rejected = !__syncthreads_or(finite) || rejected;
  if (!rejected) return false;
  for (int j = static_cast<int>(threadIdx.x); j < k; j += route_threads) {
    ids[j] = -1;
    weights[j] = float_of(float_quiet_nan_bits);
  }
  return true;
}

// One CTA per token; shared memory: sigmoid and choice score per expert.
__global__ void __launch_bounds__(route_threads)
    grouped_topk_kernel(const float* logits, index_t logits_stride, const float* bias, int experts,
                        int n_group, int topk_group, bool renormalize, float routed_scaling,
                        std::int32_t* ids, index_t ids_stride, float* weights,
                        index_t weights_stride, int k) {
  gpu::start_after_prior_grid();
  extern __shared__ float values[];
  float* sig = values;
  float* choice = values + experts;
  __shared__ float group_score[route_threads];
  __shared__ bool group_kept[route_threads];
  __shared__ Ranked scratch[route_threads / 32];
  __shared__ int chosen[route_threads];
  const int tid = static_cast<int>(threadIdx.x);
  const index_t t = blockIdx.x;
  const float* row = logits + t * logits_stride;
  std::int32_t* id_row = ids + t * ids_stride;
  float* weight_row = weights + t * weights_stride;
  if (rejected_row<false>(row, bias, experts, id_row, weight_row, k)) return;
  for (int e = tid; e < experts; e += route_threads) {
    sig[e] = div(1.0f, add(1.0f, host_expf(-row[e])));
    choice[e] = add(sig[e], bias[e]);
  }
  __syncthreads();
  const int group_size = experts / n_group;
  for (int g = tid; g < n_group; g += route_threads) {
    float best = -float_of(float_inf_bits);
    float second = best;
    for (int e = g * group_size; e < (g + 1) * group_size; ++e) {
      const float v = choice[e];
      if (v > best) {
        second = best;
        best = v;
      } else if (v > second) {
        second = v;
      }
    }
    group_score[g] = group_size >= 2 ? add(best, second) : best;
    group_kept[g] = false;
  }
  __syncthreads();
  if (tid == 0) {
    for (int i = 0; i < topk_group; ++i) {
      int pick = -1;
      for (int g = 0; g < n_group; ++g)
        if (!group_kept[g] && (pick < 0 || group_score[g] > group_score[pick])) pick = g;
      group_kept[pick] = true;
    }
  }
  __syncthreads();
  for (int j = 0; j < k; ++j) {
    Ranked mine{0.0f, -1};
    for (int e = tid; e < experts; e += route_threads) {
      if (!group_kept[e / group_size]) continue;
      bool taken = false;
      for (int i = 0; i < j; ++i) taken = taken || chosen[i] == e;
      const Ranked candidate{choice[e], e};
      if (!taken && ranks_before(candidate, mine)) mine = candidate;
    }
    const Ranked best = block_best(mine, scratch);
    if (tid == 0) chosen[j] = best.index;
    __syncthreads();
  }
  if (tid == 0) {
    float total = 0.0f;
    for (int j = 0; j < k; ++j) total = add(total, sig[chosen[j]]);
    const float denominator = add(total, ops::grouped_topk_epsilon);
    for (int j = 0; j < k; ++j) {
      id_row[j] = chosen[j];
      const float s = sig[chosen[j]];
      weight_row[j] = mul(renormalize ? div(s, denominator) : s, routed_scaling);
    }
  }
}

// One CTA per token; shared memory: the probabilities.
__global__ void __launch_bounds__(route_threads)
    softmax_topk_kernel(const float* logits, index_t logits_stride, int experts, bool renormalize,
                        std::int32_t* ids, index_t ids_stride, float* weights,
                        index_t weights_stride, int k) {
  gpu::start_after_prior_grid();
  extern __shared__ float prob[];
  __shared__ Ranked scratch[route_threads / 32];
  __shared__ float sum;
  __shared__ int chosen[route_threads];
  const int tid = static_cast<int>(threadIdx.x);
  const index_t t = blockIdx.x;
  const float* row = logits + t * logits_stride;
  std::int32_t* id_row = ids + t * ids_stride;
  float* weight_row = weights + t * weights_stride;
  if (rejected_row<true>(row, nullptr, experts, id_row, weight_row, k)) return;
  // The maximum is order-free; the lowest index among equal maxima is the same value.
  Ranked mine{0.0f, -1};
  for (int e = tid; e < experts; e += route_threads)
    if (ranks_before(Ranked{row[e], e}, mine)) mine = Ranked{row[e], e};
  const float peak = block_best(mine, scratch).key;
  for (int e = tid; e < experts; e += route_threads) prob[e] = host_expf(sub(row[e], peak));
  __syncthreads();
  if (tid == 0) {
    float s = 0.0f;
    for (int e = 0; e < experts; ++e) s = add(s, prob[e]);
    sum = s;
  }
  __syncthreads();
  for (int e = tid; e < experts; e += route_threads) prob[e] = div(prob[e], sum);
  __syncthreads();
  for (int j = 0; j < k; ++j) {
    Ranked best_mine{0.0f, -1};
    for (int e = tid; e < experts; e += route_threads) {
      bool taken = false;
      for (int i = 0; i < j; ++i) taken = taken || chosen[i] == e;
      const Ranked candidate{prob[e], e};
      if (!taken && ranks_before(candidate, best_mine)) best_mine = candidate;
    }
    const Ranked best = block_best(best_mine, scratch);
    if (tid == 0) chosen[j] = best.index;
    __syncthreads();
  }
  if (tid == 0) {
    float total = 0.0f;
    for (int j = 0; j < k; ++j) total = add(total, prob[chosen[j]]);
    for (int j = 0; j < k; ++j) {
      id_row[j] = chosen[j];
      weight_row[j] = renormalize ? div(prob[chosen[j]], total) : prob[chosen[j]];
    }
  }
}

// ---- SiLU * mul ----

// One row per CTA: y = gate / (1 + exp(-gate)) * up in float, stored by the quantizers' epilogue.
template <class Out, int Chunks, bool Vec>
__global__ void silu_mul_kernel(const bf16* gate_up, index_t stride, int inter, Out out) {
  gpu::start_after_prior_grid();
  __shared__ std::uint32_t max_scratch[32];
  const index_t row = blockIdx.x;
  RowValues<Chunks> gate;
  RowValues<Chunks> up;
  load_row<Chunks, Vec>(gate_up + row * stride, inter, gate);
  load_row<Chunks, Vec>(gate_up + row * stride + inter, inter, up);
#pragma unroll
  for (int c = 0; c < Chunks; ++c)
#pragma unroll
    for (int j = 0; j < vec_width; ++j) {
      const float g = gate[c][j];
      gate[c][j] = mul(div(g, add(1.0f, host_expf(-g))), up[c][j]);
    }
  store_row<Chunks, Vec>(out, row, inter, gate, max_scratch);
}

template <int Chunks, class Out>
void launch_silu_chunks(const bf16* gate_up, index_t stride, index_t rows, int inter,
                        const Out& out, bool vec, int threads, hipStream_t stream) {
  const auto grid = static_cast<unsigned>(rows);
  const auto block = static_cast<unsigned>(threads);
  if (vec)
    gpu::launch(silu_mul_kernel<Out, Chunks, true>, grid, block, 0, stream, gate_up, stride, inter,
                out);
  else
    gpu::launch(silu_mul_kernel<Out, Chunks, false>, grid, block, 0, stream, gate_up, stride, inter,
                out);
}

template <class Out>
void launch_silu(const ops::Gpu& gpu, View2<const bf16> gate_up, index_t inter, const Out& out,
                 bool out_vec) {
  const index_t rows = gate_up.shape[0];
  if (rows == 0 || inter == 0) return;
  expect(inter <= ops::gpu_norm_max_cols, "silu_mul",
         "rows of " + std::to_string(inter) + " intermediate columns exceed the GPU limit of " +
             std::to_string(ops::gpu_norm_max_cols));
  const bool vec = inter % vec_width == 0 && aligned16(gate_up.data) &&
                   gate_up.stride(0) % vec_width == 0 && out_vec;
  const RowShape shape = row_shape(inter);
  const auto stream = static_cast<hipStream_t>(gpu.stream);
  const int i = static_cast<int>(inter);
  const index_t s = gate_up.stride(0);
  switch (shape.chunks) {
    case 1:
      launch_silu_chunks<1>(gate_up.data, s, rows, i, out, vec, shape.threads, stream);
      break;
    case 2:
      launch_silu_chunks<2>(gate_up.data, s, rows, i, out, vec, shape.threads, stream);
      break;
    case 4:
      launch_silu_chunks<4>(gate_up.data, s, rows, i, out, vec, shape.threads, stream);
      break;
    default:
      launch_silu_chunks<8>(gate_up.data, s, rows, i, out, vec, shape.threads, stream);
      break;
  }
}

// ---- combine ----

inline constexpr int combine_threads = 128;

// CTA (x, t): columns [8 * 128 x, 8 * 128 (x + 1)) of token t, 8 per thread, summed as the host
// sums them: the weighted expert rows in slot order, then the shared expert.
template <bool Vec>
__global__ void __launch_bounds__(combine_threads)
    combine_kernel(const bf16* expert_out, index_t expert_stride, const float* weights,
                   index_t weights_stride, const bf16* shared, index_t shared_stride, bf16* out,
                   index_t out_stride, int k, int hidden) {
  gpu::start_after_prior_grid();
  const index_t t = blockIdx.y;
  const int base =
      (static_cast<int>(blockIdx.x) * combine_threads + static_cast<int>(threadIdx.x)) * vec_width;
  if (base >= hidden) return;
  float acc[vec_width] = {};
  for (int j = 0; j < k; ++j) {
    const float wj = weights[t * weights_stride + j];
    float x[vec_width];
    load8<Vec>(expert_out + (t * k + j) * expert_stride, base, hidden, x);
#pragma unroll
    for (int i = 0; i < vec_width; ++i) acc[i] = add(acc[i], mul(wj, x[i]));
  }
  if (shared != nullptr) {
    float x[vec_width];
    load8<Vec>(shared + t * shared_stride, base, hidden, x);
#pragma unroll
    for (int i = 0; i < vec_width; ++i) acc[i] = add(acc[i], x[i]);
  }
  bf16* dst = out + t * out_stride;
  if constexpr (Vec) {
    *reinterpret_cast<uint4*>(dst + base) = pack_bf16x8(acc);
  } else {
#pragma unroll
    for (int i = 0; i < vec_width; ++i)
      if (base + i < hidden) dst[base + i] = to_bf16(acc[i]);
  }
}

// ---- routed expert GEMM ----

inline constexpr int group_threads = 1024;
inline constexpr int group_span = 4 * group_threads;  // buckets counted per pass

__device__ inline int row_bucket(const MoeRowsArgs& m, int r) {
  const int e = routed_expert(m, r);
  return bad_expert(m, e) ? m.experts : e;
}

// One CTA: for each span of buckets (experts, then the bucket of bad ids), count the rows of each
// bucket, scan the counts into offsets, and scatter the rows through a cursor per bucket.
__global__ void __launch_bounds__(group_threads)
    group_rows_kernel(MoeRowsArgs m, int* rows, int* offsets) {
  gpu::start_after_prior_grid();
  __shared__ int count[group_span];
  __shared__ int sums[group_threads];
  const int tid = static_cast<int>(threadIdx.x);
  const int buckets = m.experts + 1;
  int base = 0;  // rows in the buckets of earlier spans
  for (int b0 = 0; b0 < buckets; b0 += group_span) {
    const int span = buckets - b0 < group_span ? buckets - b0 : group_span;
    for (int i = tid; i < span; i += group_threads) count[i] = 0;
    __syncthreads();
    for (int r = tid; r < m.rows; r += group_threads) {
      const int b = row_bucket(m, r) - b0;
      if (b >= 0 && b < span) atomicAdd(&count[b], 1);
    }
    __syncthreads();
    // Thread i owns buckets [4 i, 4 i + 4); the owners' sums are scanned in shared memory.
    constexpr int per = group_span / group_threads;
    int own[per];
    int sum = 0;
#pragma unroll
    for (int j = 0; j < per; ++j) {
      const int i = tid * per + j;
      own[j] = i < span ? count[i] : 0;
      sum += own[j];
    }
    sums[tid] = sum;
    __syncthreads();
    for (int d = 1; d < group_threads; d *= 2) {
      const int v = tid >= d ? sums[tid - d] : 0;
      __syncthreads();
      sums[tid] += v;
      __syncthreads();
    }
    int at = base + sums[tid] - sum;
#pragma unroll
    for (int j = 0; j < per; ++j) {
      const int i = tid * per + j;
      if (i < span) {
        offsets[b0 + i] = at;
        count[i] = at;
      }
      at += own[j];
    }
    base += sums[group_threads - 1];
    __syncthreads();
    for (int r = tid; r < m.rows; r += group_threads) {
      const int b = row_bucket(m, r) - b0;
      if (b >= 0 && b < span) rows[atomicAdd(&count[b], 1)] = r;
    }
    __syncthreads();
  }
  if (tid == 0) offsets[buckets] = base;
}

// The routed MXFP4 kernel in two widths: up to mma_decode_max_warps warps (K of many k tiles), and
// up to moe_narrow_warps warps, three CTAs per multiprocessor (K of at most moe_narrow_warps * U
// k tiles, which those warps read in one round: Qwen3-30B-A3B's 2048 and 768). A CTA of one round
// spends much of its life finding its rows and reducing its partial sums, so a third resident CTA
// keeps more weight loads in flight (H100: the Qwen3 step -9% at T = 4, docs/bench-notes.md).
inline constexpr int moe_narrow_warps = 8;

constexpr int moe_decode_min_ctas(int max_warps) {
  return max_warps == moe_narrow_warps ? 3 : 1;
}

template <int NT, int U, bool ByExpert, int MaxWarps>
__global__ void __launch_bounds__(32 * MaxWarps, moe_decode_min_ctas(MaxWarps))
    moe_mma_decode(A4W4Args p, MoeRowsArgs m) {
  gpu::start_after_prior_grid();
  const int n_tile = static_cast<int>(blockIdx.x);
  for_each_expert_chunk<8 * NT, ByExpert>(
      p, m, 16 * n_tile, 16,
      [&](const A4W4Args& args, const GatheredRows& rows) {
        mma_decode_tile<NT, U, GatheredRows, MaxWarps>(args, rows, n_tile);
      },
      [&](const A4W4Args& args) { prefetch_mma_decode_tile(args, n_tile); });
}

template <int MT, int U, bool ByExpert>
__global__ void __launch_bounds__(32 * portable_decode_max_groups)
    moe_portable_decode(A4W4Args p, MoeRowsArgs m) {
  gpu::start_after_prior_grid();
  const int n_tile = static_cast<int>(blockIdx.x);
  for_each_expert_chunk<MT, ByExpert>(p, m, 8 * n_tile, 8,
                                      [&](const A4W4Args& args, const GatheredRows& rows) {
                                        portable_decode_tile<MT, U>(args, rows, 0, n_tile);
                                      });
}

// One thread per output, each row reading its own expert: the matrix-core layout where no
// inline PTX is available (AMD).
template <class Layout>
__global__ void __launch_bounds__(256) moe_by_index(A4W4Args p, MoeRowsArgs m) {
  gpu::start_after_prior_grid();
  const int col = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  const int row = static_cast<int>(blockIdx.y);
  if (col >= p.n) return;
  const int expert = routed_expert(m, row);
  bf16* dst = p.out + static_cast<index_t>(row) * p.out_stride + col;
  if (bad_expert(m, expert)) {
    *dst = bf16{0x7FC0};
    return;
  }
  *dst = to_bf16(
      by_index_output<Layout>(at_expert(p, m, expert), m.a_per_token ? row / m.k : row, col));
}

// Warps per CTA: enough to cover K in one round where K allows (as the dense decode launch).
int moe_decode_warps(int k_tiles, int u, int max_warps) {
  const int warps = (k_tiles + u - 1) / u;
  return warps < max_warps ? warps : max_warps;
}

inline constexpr int moe_decode_u = 2;

template <int NT, bool ByExpert, int MaxWarps>
void launch_moe_mma(const A4W4Args& p, const MoeRowsArgs& m, dim3 grid, hipStream_t stream) {
  const int warps = moe_decode_warps(p.k_tiles, moe_decode_u, MaxWarps);
  gpu::launch(moe_mma_decode<NT, moe_decode_u, ByExpert, MaxWarps>, grid,
              static_cast<unsigned>(32 * warps), 0, stream, p, m);
}

// One token tile: the narrow kernel where its warps read K in one round.
template <bool ByExpert>
void launch_moe_mma_one_tile(const A4W4Args& p, const MoeRowsArgs& m, dim3 grid,
                             hipStream_t stream) {
  if (p.k_tiles <= moe_narrow_warps * moe_decode_u)
    launch_moe_mma<1, ByExpert, moe_narrow_warps>(p, m, grid, stream);
  else
    launch_moe_mma<1, ByExpert, mma_decode_max_warps>(p, m, grid, stream);
}

template <policy::GemmBackend G>
void launch_moe_matrix_core(const A4W4Args& p, const MoeRowsArgs& m, index_t padded_n,
                            unsigned slots, hipStream_t stream) {
  const dim3 grid(static_cast<unsigned>(padded_n / 16), slots);
  // Two token tiles per chunk only where experts average more than one tile's rows: the tile
  // multiplies both whatever its row count, so a second tile would double the work of a chunk
  // of at most 8 rows.
  if (!m.by_expert)
    launch_moe_mma_one_tile<false>(p, m, grid, stream);
  else if (m.rows > 8 * m.experts)
    launch_moe_mma<2, true, mma_decode_max_warps>(p, m, grid, stream);
  else
    launch_moe_mma_one_tile<true>(p, m, grid, stream);
}

void launch_moe_portable(const A4W4Args& p, const MoeRowsArgs& m, index_t padded_n, unsigned slots,
                         hipStream_t stream) {
  const int groups = moe_decode_warps(p.k_tiles, moe_decode_u, portable_decode_max_groups);
  const dim3 grid(static_cast<unsigned>(padded_n / 8), slots);
  const auto block = static_cast<unsigned>(32 * groups);
  if (m.by_expert)
    gpu::launch(moe_portable_decode<4, moe_decode_u, true>, grid, block, 0, stream, p, m);
  else
    gpu::launch(moe_portable_decode<1, moe_decode_u, false>, grid, block, 0, stream, p, m);
}

}  // namespace

void group_rows_by_expert(const ops::Gpu& gpu, MoeRowsArgs& m) {
  static const char owner = 0;
  const auto ints = static_cast<std::size_t>(m.rows) + static_cast<std::size_t>(m.experts) + 2;
  auto* scratch = static_cast<int*>(stream_scratch(&owner, gpu, ints * sizeof(int)));
  m.expert_rows = scratch;
  m.expert_offsets = scratch + m.rows;
  gpu::launch(group_rows_kernel, 1, group_threads, 0, static_cast<hipStream_t>(gpu.stream), m,
              scratch, scratch + m.rows);
}

}  // namespace atom::kernels

namespace atom::ops {

using policy::GemmBackend;

namespace {

// The GPU routing kernels keep each token's experts in shared memory and choose up to one slot
// per thread.
void expect_gpu_routing_size(const char* op, index_t experts, index_t k) {
  constexpr index_t max_experts = 4096;
  expect(experts <= max_experts, op,
         std::to_string(experts) + " experts exceed the GPU routing limit of " +
             std::to_string(max_experts));
  expect(k <= kernels::route_threads, op,
         std::to_string(k) + " experts per token exceed the GPU routing limit of " +
             std::to_string(kernels::route_threads));
}

std::size_t routing_shared_bytes(index_t floats) {
  return static_cast<std::size_t>(floats) * sizeof(float);
}

}  // namespace

void gemm_bf16(const Gpu& gpu, View2<const bf16> a, View2<const bf16> w, View2<float> out) {
  constexpr const char* op = "gemm_bf16";
  expect_view(op, "a", a, {-1, -1});
  expect_view(op, "w", w, {-1, a.shape[1]});
  expect_view(op, "out", out, {a.shape[0], w.shape[0]});
  expect_disjoint(op, "out", out, "a", a);
  expect_disjoint(op, "out", out, "w", w);
  const index_t tokens = a.shape[0];
  const index_t experts = w.shape[0];
  const index_t hidden = a.shape[1];
  if (tokens == 0 || experts == 0) return;
  expect(tokens <= INT_MAX / 2 && experts <= INT_MAX / 2 && hidden <= INT_MAX / 2, op,
         "a [" + std::to_string(tokens) + ", " + std::to_string(hidden) + "] x w [" +
             std::to_string(experts) + ", " + std::to_string(hidden) + "] is too large");
  const bool vec = hidden % kernels::vec_width == 0 && kernels::aligned16(a.data) &&
                   kernels::aligned16(w.data) && a.stride(0) % kernels::vec_width == 0 &&
                   w.stride(0) % kernels::vec_width == 0;
  const dim3 grid(static_cast<unsigned>(ceil_div(experts, kernels::router_experts)),
                  static_cast<unsigned>(ceil_div(tokens, kernels::router_tokens)));
  const auto stream = static_cast<hipStream_t>(gpu.stream);
  const auto t = static_cast<int>(tokens);
  const auto e = static_cast<int>(experts);
  const auto h = static_cast<int>(hidden);
  if (vec)
    gpu::launch(kernels::router_gemm<true>, grid, kernels::router_threads, 0, stream, a.data,
                a.stride(0), w.data, w.stride(0), out.data, out.stride(0), t, e, h);
  else
    gpu::launch(kernels::router_gemm<false>, grid, kernels::router_threads, 0, stream, a.data,
                a.stride(0), w.data, w.stride(0), out.data, out.stride(0), t, e, h);
}

void route_grouped_topk(const Gpu& gpu, View2<const float> logits, View1<const float> bias,
                        int n_group, int topk_group, bool renormalize, float routed_scaling,
                        View2<std::int32_t> ids, View2<float> weights) {
  constexpr const char* op = "route_grouped_topk";
  expect_grouped_topk_args(op, logits, bias, n_group, topk_group, ids, weights);
  const index_t tokens = logits.shape[0];
  const index_t experts = logits.shape[1];
  expect_gpu_routing_size(op, experts, ids.shape[1]);
  expect(n_group <= kernels::route_threads, op,
         "n_group = " + std::to_string(n_group) + " exceeds the GPU routing limit of " +
             std::to_string(kernels::route_threads));
  if (tokens == 0) return;
  const auto stream = static_cast<hipStream_t>(gpu.stream);
  gpu::launch(kernels::grouped_topk_kernel, static_cast<unsigned>(tokens), kernels::route_threads,
              routing_shared_bytes(2 * experts), stream, logits.data, logits.stride(0), bias.data,
              static_cast<int>(experts), n_group, topk_group, renormalize, routed_scaling, ids.data,
              ids.stride(0), weights.data, weights.stride(0), static_cast<int>(ids.shape[1]));
}

void route_softmax_topk(const Gpu& gpu, View2<const float> logits, bool renormalize,
                        View2<std::int32_t> ids, View2<float> weights) {
  constexpr const char* op = "route_softmax_topk";
  expect_softmax_topk_args(op, logits, ids, weights);
  const index_t tokens = logits.shape[0];
  const index_t experts = logits.shape[1];
  expect_gpu_routing_size(op, experts, ids.shape[1]);
  if (tokens == 0) return;
  const auto stream = static_cast<hipStream_t>(gpu.stream);
  gpu::launch(kernels::softmax_topk_kernel, static_cast<unsigned>(tokens), kernels::route_threads,
              routing_shared_bytes(experts), stream, logits.data, logits.stride(0),
              static_cast<int>(experts), renormalize, ids.data, ids.stride(0), weights.data,
              weights.stride(0), static_cast<int>(ids.shape[1]));
}

template <class Epi>
requires Epilogue<Epi>
void silu_mul(const Gpu& gpu, View2<const bf16> gate_up, typename Epi::Output out) {
  constexpr const char* op = "silu_mul";
  expect_view(op, "gate_up", gate_up, {-1, -1});
  expect(gate_up.shape[1] % 2 == 0, op,
         "argument 'gate_up' has " + std::to_string(gate_up.shape[1]) +
             " columns, expected an even count (gate then up)");
  const index_t inter = gate_up.shape[1] / 2;
  expect_format(op, "out", out, gate_up.shape[0], inter);
  expect_disjoint(op, "out", out, "gate_up", gate_up);
  if constexpr (Epi::format == Format::mxfp4) {
    const bool vec =
        reinterpret_cast<std::uintptr_t>(out.packed.data) % 4 == 0 && out.packed.stride(0) % 4 == 0;
    kernels::launch_silu(gpu, gate_up, inter,
                         kernels::Mxfp4Rows{out.packed.data, out.packed.stride(0), out.scale.data,
                                            out.scale.stride(0)},
                         vec);
  } else if constexpr (Epi::format == Format::fp8_group128) {
    // Codes are stored 8 at a time.
    const bool vec =
        reinterpret_cast<std::uintptr_t>(out.q.data) % 8 == 0 && out.q.stride(0) % 8 == 0;
    kernels::launch_silu(
        gpu, gate_up, inter,
        kernels::Fp8GroupRows{out.q.data, out.q.stride(0), out.scale.data, out.scale.stride(0)},
        vec);
  } else {
    static_assert(Epi::format == Format::bf16, "silu_mul: no GPU epilogue for this format");
    const bool vec = kernels::aligned16(out.x.data) && out.x.stride(0) % kernels::vec_width == 0;
    kernels::launch_silu(gpu, gate_up, inter,
                         kernels::Bf16Rows{out.x.data, kernels::RowMap{1, out.x.stride(0), 0}},
                         vec);
  }
}

template void silu_mul<epi::Bf16>(const Gpu&, View2<const bf16>, Bf16Act);
template void silu_mul<epi::Fp8PerGroup128>(const Gpu&, View2<const bf16>, Fp8GroupAct);
template void silu_mul<epi::Mxfp4>(const Gpu&, View2<const bf16>, Mxfp4Act);

void moe_combine(const Gpu& gpu, View2<const bf16> expert_out, View2<const float> weights,
                 View2<const bf16> shared_out, View2<bf16> out) {
  constexpr const char* op = "moe_combine";
  expect_view(op, "weights", weights, {-1, -1});
  const index_t tokens = weights.shape[0];
  const index_t k = weights.shape[1];
  expect_view(op, "expert_out", expert_out, {tokens * k, -1});
  const index_t hidden = expert_out.shape[1];
  const bool has_shared = shared_out.data != nullptr;
  if (has_shared)
    expect_view(op, "shared_out", shared_out, {tokens, hidden});
  else
    expect_shape(op, "shared_out", shared_out, {0, 0});
  expect_view(op, "out", out, {tokens, hidden});
  expect_disjoint(op, "out", out, "expert_out", expert_out);
  expect_disjoint(op, "out", out, "weights", weights);
  expect_disjoint(op, "out", out, "shared_out", shared_out);
  if (tokens == 0 || hidden == 0) return;
  expect(hidden <= INT_MAX / 2 && k <= INT_MAX / 2, op,
         "expert_out [" + std::to_string(tokens * k) + ", " + std::to_string(hidden) +
             "] is too large");
  const bool vec = hidden % kernels::vec_width == 0 && kernels::aligned16(expert_out.data) &&
                   expert_out.stride(0) % kernels::vec_width == 0 && kernels::aligned16(out.data) &&
                   out.stride(0) % kernels::vec_width == 0 &&
                   (!has_shared || (kernels::aligned16(shared_out.data) &&
                                    shared_out.stride(0) % kernels::vec_width == 0));
  const dim3 grid(
      static_cast<unsigned>(ceil_div(hidden, kernels::combine_threads * kernels::vec_width)),
      static_cast<unsigned>(tokens));
  const auto stream = static_cast<hipStream_t>(gpu.stream);
  const bf16* shared = has_shared ? shared_out.data : nullptr;
  const index_t shared_stride = has_shared ? shared_out.stride(0) : 0;
  if (vec)
    gpu::launch(kernels::combine_kernel<true>, grid, kernels::combine_threads, 0, stream,
                expert_out.data, expert_out.stride(0), weights.data, weights.stride(0), shared,
                shared_stride, out.data, out.stride(0), static_cast<int>(k),
                static_cast<int>(hidden));
  else
    gpu::launch(kernels::combine_kernel<false>, grid, kernels::combine_threads, 0, stream,
                expert_out.data, expert_out.stride(0), weights.data, weights.stride(0), shared,
                shared_stride, out.data, out.stride(0), static_cast<int>(k),
                static_cast<int>(hidden));
}

namespace {
__global__ void localize_kernel(const std::int32_t* ids, index_t ids_stride, std::int32_t first,
                                std::int32_t count, std::int32_t* out, index_t out_stride,
                                int tokens, int k) {
  gpu::start_after_prior_grid();
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= tokens * k) return;
  const index_t t = i / k;
  const int j = i % k;
  out[t * out_stride + j] = localized_expert(ids[t * ids_stride + j], first, count);
}
}  // namespace

void localize_experts(const Gpu& gpu, View2<const std::int32_t> ids, std::int32_t first,
                      std::int32_t count, View2<std::int32_t> out) {
  constexpr const char* op = "localize_experts";
  expect_view(op, "ids", ids, {-1, -1});
  expect_view(op, "out", out, {ids.shape[0], ids.shape[1]});
  const index_t n = ids.shape[0] * ids.shape[1];
  if (n == 0) return;
  expect(n <= INT_MAX, op, "ids hold too many slots");
  constexpr int threads = 256;
  gpu::launch(localize_kernel, static_cast<unsigned>(ceil_div(n, index_t{threads})), threads, 0,
              static_cast<hipStream_t>(gpu.stream), ids.data, ids.stride(0), first, count, out.data,
              out.stride(0), static_cast<int>(ids.shape[0]), static_cast<int>(ids.shape[1]));
}

template <GemmBackend G>
PreparedMxfp4Experts<G>::PreparedMxfp4Experts(index_t experts, index_t n, index_t k,
                                              const std::vector<std::uint8_t>& packed,
                                              const std::vector<e8m0>& scale)
    : experts_(experts), n_(n), k_(k) {
  if (static_cast<index_t>(packed.size()) != experts * Layout::packed_bytes(n, k) ||
      static_cast<index_t>(scale.size()) != experts * Layout::scale_count(n, k))
    fail("PreparedMxfp4Experts",
         "preshuffled sizes do not match the layout of E = " + std::to_string(experts) +
             ", N = " + std::to_string(n) + ", K = " + std::to_string(k));
  packed_ = std::make_unique<gpu::Buffer<std::uint8_t>>(packed);
  scale_ = std::make_unique<gpu::Buffer<e8m0>>(scale);
}

template <GemmBackend G>
PreparedMxfp4Experts<G> prepare_experts(const Mxfp4Experts& host_weights) {
  using Layout = Mxfp4WeightLayout<G>;
  constexpr const char* op = "prepare_experts";
  const index_t k = host_weights.k;
  expect(k >= 0, op, "argument 'w' has a negative K");
  expect_view(op, "w.packed", host_weights.packed, {-1, -1, mxfp4_packed_cols(k)});
  const index_t experts = host_weights.packed.shape[0];
  const index_t n = host_weights.packed.shape[1];
  expect_view(op, "w.scale", host_weights.scale, {experts, n, mxfp4_scale_cols(k)});
  if (k <= 0 || k % mx_block != 0)
    fail(op, "K = " + std::to_string(k) +
                 " is not supported: the GPU GEMM needs a positive multiple of 32 (whole MX "
                 "blocks)");
  if (n <= 0) fail(op, "N = " + std::to_string(n) + " is not supported: no rows");
  if (experts <= 0) fail(op, "E = " + std::to_string(experts) + " is not supported: no experts");
  if (n > INT_MAX / 2 || k > INT_MAX / 2 || experts > INT_MAX / 2)
    fail(op, "E = " + std::to_string(experts) + ", N = " + std::to_string(n) +
                 ", K = " + std::to_string(k) + " is too large");
  const index_t expert_bytes = Layout::packed_bytes(n, k);
  const index_t expert_scales = Layout::scale_count(n, k);
  std::vector<std::uint8_t> packed(static_cast<std::size_t>(experts * expert_bytes), 0);
  std::vector<e8m0> scale(static_cast<std::size_t>(experts * expert_scales), e8m0{127});
  for (index_t e = 0; e < experts; ++e)
    for (index_t r = 0; r < n; ++r) {
      const std::uint8_t* src = &host_weights.packed(e, r, 0);
      for (index_t i = 0; i < k / 2; ++i)
        packed[static_cast<std::size_t>(e * expert_bytes + Layout::packed_index(r, i, k))] = src[i];
      const e8m0* src_scale = &host_weights.scale(e, r, 0);
      for (index_t b = 0; b < k / mx_block; ++b)
        scale[static_cast<std::size_t>(e * expert_scales + Layout::scale_index(r, b, k))] =
            src_scale[b];
    }
  return PreparedMxfp4Experts<G>(experts, n, k, packed, scale);
}

template <GemmBackend G>
void moe_gemm_a4w4(const Gpu& gpu, const Mxfp4Act& a, View2<const std::int32_t> ids,
                   const PreparedMxfp4Experts<G>& w, View2<bf16> out) {
  using Layout = Mxfp4WeightLayout<G>;
  constexpr const char* op = "moe_gemm_a4w4";
  expect_view(op, "ids", ids, {-1, -1});
  const index_t tokens = ids.shape[0];
  const index_t k = ids.shape[1];
  expect_format(op, "a", a, -1, w.k());
  const index_t a_rows = a.packed.shape[0];
  expect(a_rows == tokens || a_rows == tokens * k, op,
         "argument 'a' has " + std::to_string(a_rows) + " rows, expected T = " +
             std::to_string(tokens) + " or T * k = " + std::to_string(tokens * k));
  expect_view(op, "out", out, {tokens * k, w.n()});
  const auto w_packed =
      make_view(w.packed(), static_cast<index_t>(w.experts() * w.expert_packed_bytes()));
  const auto w_scale = make_view(w.scale(), static_cast<index_t>(w.experts() * w.expert_scales()));
  expect_disjoint(op, "out", out, "a.packed", a.packed);
  expect_disjoint(op, "out", out, "a.scale", a.scale);
  expect_disjoint(op, "out", out, "ids", ids);
  expect_disjoint(op, "out", out, "w.packed", w_packed);
  expect_disjoint(op, "out", out, "w.scale", w_scale);
  const index_t rows = tokens * k;
  if (rows > INT_MAX / 2 || tokens > INT_MAX / 2)
    fail(op, "T * k = " + std::to_string(rows) + " is too large");
  if (rows == 0) return;
  // Activation words are read 4 bytes at a time.
  const auto address = reinterpret_cast<std::uintptr_t>(a.packed.data);
  if (address % 4 != 0 || (a_rows > 1 && a.packed.strides[0] % 4 != 0))
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
  kernels::MoeRowsArgs m{};
  m.ids = ids.data;
  m.ids_stride = ids.strides[0];
  m.k = static_cast<int>(k);
  m.rows = static_cast<int>(rows);
  m.experts = static_cast<int>(w.experts());
  m.a_per_token = a_rows == tokens && k > 1;
  m.expert_stride = w.expert_packed_bytes();
  m.expert_scale_stride = w.expert_scales();
  m.by_expert = rows > w.experts();
  const auto slots = static_cast<unsigned>(m.by_expert ? w.experts() + 1 : rows);
  const auto stream = static_cast<hipStream_t>(gpu.stream);
  const index_t padded_n = Layout::padded_n(w.n());
  if constexpr (G == GemmBackend::portable) {
    if (m.by_expert) kernels::group_rows_by_expert(gpu, m);
    kernels::launch_moe_portable(p, m, padded_n, slots, stream);
  } else if constexpr (gpu::nvidia_ptx) {
    if (m.by_expert) kernels::group_rows_by_expert(gpu, m);
    kernels::launch_moe_matrix_core<G>(p, m, padded_n, slots, stream);
  } else {
    const dim3 grid(static_cast<unsigned>(ceil_div(w.n(), 256)), static_cast<unsigned>(rows));
    gpu::launch(kernels::moe_by_index<Layout>, grid, 256, 0, stream, p, m);
  }
}

template class PreparedMxfp4Experts<GemmBackend::matrix_core>;
template class PreparedMxfp4Experts<GemmBackend::portable>;
template PreparedMxfp4Experts<GemmBackend::matrix_core> prepare_experts(const Mxfp4Experts&);
template PreparedMxfp4Experts<GemmBackend::portable> prepare_experts(const Mxfp4Experts&);
template void moe_gemm_a4w4(const Gpu&, const Mxfp4Act&, View2<const std::int32_t>,
                            const PreparedMxfp4Experts<GemmBackend::matrix_core>&, View2<bf16>);
template void moe_gemm_a4w4(const Gpu&, const Mxfp4Act&, View2<const std::int32_t>,
                            const PreparedMxfp4Experts<GemmBackend::portable>&, View2<bf16>);

}  // namespace atom::ops
