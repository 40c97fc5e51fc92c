// Qwen3's QK step: per-head Q/K RMSNorm + RoPE + paged KV-cache write (each format, stored by
// detail/kv_cache.hpp) in one launch, and the separate chain of standalone GPU ops.

#include "atom/ops/gpu/qwen_qk.hpp"

#include <string>

#include "atom/ops/formats.hpp"
#include "atom/ops/gpu/cache.hpp"
#include "atom/ops/gpu/rope.hpp"
#include "detail/fast_quant.hpp"
#include "detail/kv_cache.hpp"
#include "detail/norm_launch.hpp"
#include "detail/stream_scratch.hpp"

namespace atom::kernels {
namespace {

struct QkArgs {
  const bf16* qkv;
  index_t qkv_stride;
  const bf16* q_weight;
  const bf16* k_weight;
  float eps;
  const std::int64_t* positions;
  index_t position_stride;
  const float* cos_sin;
  index_t cos_sin_stride;
  index_t max_positions;
  const std::int64_t* slots;
  index_t slot_stride;
  bf16* q_out;
  index_t q_token_stride;
  index_t q_head_stride;
  int q_heads;
  int kv_heads;
  int head_dim;
};

inline constexpr int qk_threads = 128;
// Heads per block: 4 warps of 32 lanes on NVIDIA take one head each; AMD's 2 wavefronts of 64
// take two rounds. Fixed on the host, so the grid does not depend on the vendor's warp size.
inline constexpr int qk_heads_per_block = 4;
inline constexpr bf16 bf16_nan{0x7fc0};

// RMSNorm + RoPE of one head held by one warp (lane l holds elements l, l + warp_size, ...); the
// normalized head goes through shared memory `normed` so each lane can read its RoPE partner.
// Every thread of the block calls this (it holds two block barriers).
template <ops::RopeStyle S, int PerLane>
__device__ void norm_rope_head(bool active, const bf16* src, const bf16* weight, int dim, float eps,
                               const float* cos_sin_row, float* normed, float (&y)[PerLane]) {
  const int lane = static_cast<int>(threadIdx.x) % gpu::warp_size;
  const int half = dim / 2;
  if (active) {
    float sum_sq = 0.0f;
    for (int k = 0; k < PerLane; ++k) {
      const int d = lane + k * gpu::warp_size;
      y[k] = d < dim ? to_float(src[d]) : 0.0f;
      sum_sq = add(sum_sq, mul(y[k], y[k]));
    }
    sum_sq = warp_reduce(sum_sq, Sum{});
    const float r = rms_inverse(sum_sq, static_cast<float>(dim), eps);
    for (int k = 0; k < PerLane; ++k) {
      const int d = lane + k * gpu::warp_size;
      if (d < dim) {
        y[k] = mul(mul(y[k], r), to_float(weight[d]));
        normed[d] = y[k];
      }
    }
  }
  __syncthreads();
  if (active) {
    for (int k = 0; k < PerLane; ++k) {
      const int d = lane + k * gpu::warp_size;
      if (d >= dim) continue;
      const bool first = S == ops::RopeStyle::neox ? d < half : d % 2 == 0;
      const int f = S == ops::RopeStyle::neox ? (first ? d : d - half) : d / 2;
      const int partner = S == ops::RopeStyle::neox ? (first ? d + half : d - half) : d ^ 1;
      const float c = cos_sin_row[f];
      const float s = cos_sin_row[half + f];
      const float other = normed[partner];
      // rotate_pair: first = a cos - b sin, second = b cos + a sin, each operation rounded.
      y[k] = first ? sub(mul(y[k], c), mul(other, s)) : add(mul(y[k], c), mul(other, s));
    }
  }
  __syncthreads();  // `normed` is free again
}

// Grid (tokens, head groups): block (t, g) takes heads g * qk_heads_per_block .. of token t in
// the order q heads, k heads, v heads, one warp per head.
template <ops::RopeStyle S, ops::KvCacheFormat F>
__global__ void __launch_bounds__(qk_threads)
    qk_norm_rope_cache_kernel(QkArgs a, KvCacheRows<F> cache) {
  gpu::start_after_prior_grid();
  constexpr int per_lane = static_cast<int>(ops::gpu_qk_max_head_dim) / gpu::warp_size;
  constexpr int max_warps = qk_threads / gpu::warp_size;
  __shared__ float normed[max_warps][ops::gpu_qk_max_head_dim];
  const int lane = static_cast<int>(threadIdx.x) % gpu::warp_size;
  const int warp = static_cast<int>(threadIdx.x) / gpu::warp_size;
  const int warps = static_cast<int>(blockDim.x) / gpu::warp_size;
  const index_t t = blockIdx.x;
  const int dim = a.head_dim;
  const std::int64_t p = a.positions[t * a.position_stride];
  const bool valid_position = p >= 0 && p < a.max_positions;
  const std::int64_t slot = a.slots[t * a.slot_stride];
  const bool write_cache = valid_position && slot >= 0 && slot < cache.capacity;
  const float* cos_sin_row = a.cos_sin + (valid_position ? p : 0) * a.cos_sin_stride;
  const int first_head = static_cast<int>(blockIdx.y) * qk_heads_per_block;
  for (int round = 0; round * warps < qk_heads_per_block; ++round) {
    const int local = round * warps + warp;
    const int h = first_head + local;
    const bool in_block = local < qk_heads_per_block;
    const bool is_q = in_block && h < a.q_heads;
    const bool is_k = in_block && h >= a.q_heads && h < a.q_heads + a.kv_heads;
    const bool is_v = in_block && h >= a.q_heads + a.kv_heads && h < a.q_heads + 2 * a.kv_heads;
    const bf16* src = a.qkv + t * a.qkv_stride + static_cast<index_t>(h) * dim;
    if (is_v && write_cache) cache.warp_store(true, slot, h - a.q_heads - a.kv_heads, src, dim);
    const bool rotate = is_q || (is_k && write_cache);
    float y[per_lane];
    norm_rope_head<S>(rotate, src, is_q ? a.q_weight : a.k_weight, dim, a.eps, cos_sin_row,
                      normed[warp], y);
    if (is_q) {
      bf16* out = a.q_out + t * a.q_token_stride + static_cast<index_t>(h) * a.q_head_stride;
      for (int k = 0; k < per_lane; ++k) {
        const int d = lane + k * gpu::warp_size;
        if (d < dim) out[d] = valid_position ? to_bf16(y[k]) : bf16_nan;
      }
    } else if (is_k && write_cache) {
      cache.warp_store(false, slot, h - a.q_heads, y, dim);  // straight from the float result
    }
  }
}

// The vector kernel, for head_dim a multiple of 16 up to 8 * HeadLanes (and 16-byte aligned
// rows): HeadLanes consecutive lanes take one (token, head) item, lane l holding elements
// 8l .. 8l + 7 of the head from one 16-byte load. The norm's sum and the amax are butterflies over
// those lanes; a neox RoPE partner sits head_dim / 16 lanes away (a shuffle), an interleaved one
// in the same lane. Items run token-major, q heads then k then v, so a warp reads consecutive
// heads of one token. Every lane runs every shuffle (v heads and idle lanes included), keeping the
// warp converged; only loads and stores are predicated.
inline constexpr int qk_vec_threads = 256;

template <ops::RopeStyle S, ops::KvCacheFormat F, int HeadLanes>
__global__ void __launch_bounds__(qk_vec_threads)
    qk_norm_rope_cache_vec_kernel(QkArgs a, KvCacheRows<F> cache, index_t items) {
  gpu::start_after_prior_grid();
  constexpr int width = vec_width;
  const int lane = static_cast<int>(threadIdx.x) % gpu::warp_size;
  const int head_lane = lane % HeadLanes;
  const index_t item =
      (static_cast<index_t>(blockIdx.x) * qk_vec_threads + threadIdx.x) / HeadLanes;
  const int heads = a.q_heads + 2 * a.kv_heads;
  const int dim = a.head_dim;
  const int half = dim / 2;
  const int lanes_used = dim / width;
  const bool in_range = item < items;
  const index_t t = in_range ? item / heads : 0;
  const int h = in_range ? static_cast<int>(item % heads) : 0;
  const bool is_q = in_range && h < a.q_heads;
  const bool is_k = in_range && h >= a.q_heads && h < a.q_heads + a.kv_heads;
  const bool is_v = in_range && h >= a.q_heads + a.kv_heads;
  const int first = head_lane * width;
  const bool holds = in_range && head_lane < lanes_used;

  const std::int64_t p = in_range ? a.positions[t * a.position_stride] : 0;
  const bool valid_position = p >= 0 && p < a.max_positions;
  const std::int64_t slot = in_range ? a.slots[t * a.slot_stride] : -1;
  const bool write_cache = valid_position && slot >= 0 && slot < cache.capacity;

  float x[width];
  if (holds)
    unpack_bf16x8(*reinterpret_cast<const uint4*>(a.qkv + t * a.qkv_stride +
                                                  static_cast<index_t>(h) * dim + first),
                  x);
  else
#pragma unroll
    for (int j = 0; j < width; ++j) x[j] = 0.0f;

  // RMSNorm (q, k): each lane sums its values in column order, then the butterfly.
  float sum_sq = 0.0f;
#pragma unroll
  for (int j = 0; j < width; ++j) sum_sq = add(sum_sq, mul(x[j], x[j]));
  sum_sq = lanes_reduce<HeadLanes>(sum_sq, Sum{});
  const float r = rms_inverse(sum_sq, static_cast<float>(dim), a.eps);
  float w[width];
  if (holds && !is_v)
    unpack_bf16x8(*reinterpret_cast<const uint4*>((is_q ? a.q_weight : a.k_weight) + first), w);
  else
#pragma unroll
    for (int j = 0; j < width; ++j) w[j] = 0.0f;
  float y[width];
#pragma unroll
  for (int j = 0; j < width; ++j) y[j] = mul(mul(x[j], r), w[j]);

  // RoPE: rotate_pair on (first, second) = (a cos - b sin, b cos + a sin), each step rounded.
  const float* cos_sin_row = a.cos_sin + (valid_position ? p : 0) * a.cos_sin_stride;
  float rotated[width];
  if constexpr (S == ops::RopeStyle::neox) {
    const int partner_offset = lanes_used / 2;
    const bool first_half = head_lane < partner_offset;
    const int partner =
        lane - head_lane + (first_half ? head_lane + partner_offset : head_lane - partner_offset);
    const int f = first_half ? first : first - half;
    float c[width];
    float sn[width];
    if (holds) {
      const float4* cp = reinterpret_cast<const float4*>(cos_sin_row + f);
      const float4* sp = reinterpret_cast<const float4*>(cos_sin_row + half + f);
      const float4 c0 = cp[0], c1 = cp[1], s0 = sp[0], s1 = sp[1];
      const float cv[width] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
      const float sv[width] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
#pragma unroll
      for (int j = 0; j < width; ++j) {
        c[j] = cv[j];
        sn[j] = sv[j];
      }
    } else {
#pragma unroll
      for (int j = 0; j < width; ++j) c[j] = sn[j] = 0.0f;
    }
#pragma unroll
    for (int j = 0; j < width; ++j) {
      const float other = __shfl(y[j], partner);
      rotated[j] = first_half ? sub(mul(y[j], c[j]), mul(other, sn[j]))
                              : add(mul(y[j], c[j]), mul(other, sn[j]));
    }
  } else {
    float c[width / 2];
    float sn[width / 2];
    if (holds) {
      const float4 cv = *reinterpret_cast<const float4*>(cos_sin_row + first / 2);
      const float4 sv = *reinterpret_cast<const float4*>(cos_sin_row + half + first / 2);
      c[0] = cv.x, c[1] = cv.y, c[2] = cv.z, c[3] = cv.w;
      sn[0] = sv.x, sn[1] = sv.y, sn[2] = sv.z, sn[3] = sv.w;
    } else {
#pragma unroll
      for (int i = 0; i < width / 2; ++i) c[i] = sn[i] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < width / 2; ++i) {
      rotated[2 * i] = sub(mul(y[2 * i], c[i]), mul(y[2 * i + 1], sn[i]));
      rotated[2 * i + 1] = add(mul(y[2 * i + 1], c[i]), mul(y[2 * i], sn[i]));
    }
  }

  if (is_q) {
    if (holds) {
      float out[width];
#pragma unroll
      for (int j = 0; j < width; ++j) out[j] = valid_position ? rotated[j] : float_of(0x7fc00000u);
      *reinterpret_cast<uint4*>(a.q_out + t * a.q_token_stride +
                                static_cast<index_t>(h) * a.q_head_stride + first) =
          pack_bf16x8(out);
    }
  }
  // The rotated k or the raw v into the cache.
  float kv[width];
#pragma unroll
  for (int j = 0; j < width; ++j) kv[j] = is_v ? x[j] : rotated[j];
  const int kv_head = is_v ? h - a.q_heads - a.kv_heads : h - a.q_heads;
  cache.template lanes_store8<HeadLanes>((is_k || is_v) && write_cache, holds, is_v, slot, kv_head,
                                         first, head_lane, kv);
}

struct QkShape {
  index_t tokens;
  index_t q_heads;
  index_t kv_heads;
  index_t head_dim;
};

// The host op's boundary checks, less the two that read device memory (positions and slots are
// checked in the kernels).
template <ops::KvCacheFormat F>
QkShape expect_qk_args(std::string_view op, View2<const bf16> qkv, View1<const bf16> q_norm_weight,
                       View1<const bf16> k_norm_weight, View1<const std::int64_t> positions,
                       View2<const float> cos_sin, View1<const std::int64_t> slots,
                       const ops::KvCache<F>& cache, View3<bf16> q_out) {
  ops::expect_kv_cache(op, "cache", cache, -1, -1);
  const QkShape s{qkv.size(0), q_out.size(1), cache.kv_heads(), cache.head_dim()};
  expect(s.head_dim % 2 == 0, op,
         "the cache's head_dim must be even for RoPE, got " + std::to_string(s.head_dim));
  expect(s.head_dim <= ops::gpu_qk_max_head_dim, op,
         "head_dim " + std::to_string(s.head_dim) + " exceeds the GPU kernel's limit of " +
             std::to_string(ops::gpu_qk_max_head_dim));
  ops::expect_view(op, "qkv", qkv, {s.tokens, (s.q_heads + 2 * s.kv_heads) * s.head_dim});
  ops::expect_view(op, "q_out", q_out, {s.tokens, s.q_heads, s.head_dim});
  ops::expect_view(op, "q_norm_weight", q_norm_weight, {s.head_dim});
  ops::expect_view(op, "k_norm_weight", k_norm_weight, {s.head_dim});
  ops::expect_view(op, "cos_sin", cos_sin, {-1, s.head_dim});
  expect_shape(op, "positions", positions, {s.tokens});
  expect_shape(op, "slots", slots, {s.tokens});
  ops::expect_disjoint(op, "q_out", q_out, "qkv", qkv);
  ops::expect_disjoint(op, "q_out", q_out, "q_norm_weight", q_norm_weight);
  ops::expect_disjoint(op, "q_out", q_out, "k_norm_weight", k_norm_weight);
  ops::expect_disjoint(op, "q_out", q_out, "cos_sin", cos_sin);
  ops::expect_disjoint_from_cache(op, cache, "qkv", qkv);
  ops::expect_disjoint_from_cache(op, cache, "q_out", q_out);
  ops::expect_disjoint_from_cache(op, cache, "q_norm_weight", q_norm_weight);
  ops::expect_disjoint_from_cache(op, cache, "k_norm_weight", k_norm_weight);
  ops::expect_disjoint_from_cache(op, cache, "cos_sin", cos_sin);
  return s;
}

}  // namespace
}  // namespace atom::kernels

namespace atom::ops {

template <RopeStyle S, KvCacheFormat F>
void qk_norm_rope_cache_fused(const Gpu& gpu, View2<const bf16> qkv,
                              View1<const bf16> q_norm_weight, View1<const bf16> k_norm_weight,
                              float eps, View1<const std::int64_t> positions,
                              View2<const float> cos_sin, View1<const std::int64_t> slots,
                              const KvCache<F>& cache, View3<bf16> q_out) {
  const kernels::QkShape s =
      kernels::expect_qk_args("qk_norm_rope_cache_fused", qkv, q_norm_weight, k_norm_weight,
                              positions, cos_sin, slots, cache, q_out);
  if (s.tokens == 0) return;
  const kernels::QkArgs args{qkv.data,
                             qkv.stride(0),
                             q_norm_weight.data,
                             k_norm_weight.data,
                             eps,
                             positions.data,
                             positions.stride(0),
                             cos_sin.data,
                             cos_sin.stride(0),
                             cos_sin.size(0),
                             slots.data,
                             slots.stride(0),
                             q_out.data,
                             q_out.stride(0),
                             q_out.stride(1),
                             static_cast<int>(s.q_heads),
                             static_cast<int>(s.kv_heads),
                             static_cast<int>(s.head_dim)};
  const index_t heads = s.q_heads + 2 * s.kv_heads;
  const bool vec = s.head_dim % 16 == 0 && s.head_dim <= 32 * kernels::vec_width &&
                   kernels::aligned16(qkv.data) && qkv.stride(0) % kernels::vec_width == 0 &&
                   kernels::aligned16(q_out.data) && q_out.stride(0) % kernels::vec_width == 0 &&
                   q_out.stride(1) % kernels::vec_width == 0 &&
                   kernels::aligned16(q_norm_weight.data) &&
                   kernels::aligned16(k_norm_weight.data) && kernels::aligned16(cos_sin.data) &&
                   cos_sin.stride(0) % 4 == 0 && kernels::lanes_store8_aligned(cache.key) &&
                   kernels::lanes_store8_aligned(cache.value);
  const auto stream = static_cast<hipStream_t>(gpu.stream);
  if (vec) {
    const index_t items = s.tokens * heads;
    const auto launch = [&]<int HeadLanes>() {
      constexpr index_t per_block = kernels::qk_vec_threads / HeadLanes;
      const index_t blocks = (items + per_block - 1) / per_block;
      expect(blocks <= 0x7fffffff, "qk_norm_rope_cache_fused",
             "too many tokens x heads (" + std::to_string(items) + ")");
      gpu::launch(kernels::qk_norm_rope_cache_vec_kernel<S, F, HeadLanes>,
                  static_cast<unsigned>(blocks), kernels::qk_vec_threads, 0, stream, args,
                  kernels::kv_cache_rows(cache), items);
    };
    const index_t lanes = s.head_dim / kernels::vec_width;
    if (lanes <= 4)
      launch.template operator()<4>();
    else if (lanes <= 8)
      launch.template operator()<8>();
    else if (lanes <= 16)
      launch.template operator()<16>();
    else
      launch.template operator()<32>();
  } else {
    const index_t groups = (heads + kernels::qk_heads_per_block - 1) / kernels::qk_heads_per_block;
    expect(groups <= 65535, "qk_norm_rope_cache_fused",
           "too many heads (" + std::to_string(heads) + ")");
    const dim3 grid(static_cast<unsigned>(s.tokens), static_cast<unsigned>(groups));
    gpu::launch(kernels::qk_norm_rope_cache_kernel<S, F>, grid, kernels::qk_threads, 0, stream,
                args, kernels::kv_cache_rows(cache));
  }
}

template <RopeStyle S, KvCacheFormat F>
void qk_norm_rope_cache_separate(const Gpu& gpu, View2<const bf16> qkv,
                                 View1<const bf16> q_norm_weight, View1<const bf16> k_norm_weight,
                                 float eps, View1<const std::int64_t> positions,
                                 View2<const float> cos_sin, View1<const std::int64_t> slots,
                                 const KvCache<F>& cache, View3<bf16> q_out) {
  const kernels::QkShape s =
      kernels::expect_qk_args("qk_norm_rope_cache_separate", qkv, q_norm_weight, k_norm_weight,
                              positions, cos_sin, slots, cache, q_out);
  if (s.tokens == 0) return;
  const index_t dim = s.head_dim;
  // The normed k between the chain's launches, per stream (detail/stream_scratch.hpp).
  static constexpr char owner[] = "qk_norm_rope_cache_separate normed k";
  auto* k_normed = static_cast<bf16*>(kernels::stream_scratch(
      owner, gpu, static_cast<std::size_t>(s.tokens * s.kv_heads * dim) * sizeof(bf16)));
  kernels::launch_rms_norm_bf16(gpu, qkv.data, kernels::RowMap{s.q_heads, qkv.stride(0), dim},
                                s.tokens * s.q_heads, dim, q_norm_weight.data, eps, q_out.data,
                                kernels::RowMap{s.q_heads, q_out.stride(0), q_out.stride(1)});
  kernels::launch_rms_norm_bf16(gpu, qkv.data + s.q_heads * dim,
                                kernels::RowMap{s.kv_heads, qkv.stride(0), dim},
                                s.tokens * s.kv_heads, dim, k_norm_weight.data, eps, k_normed,
                                kernels::RowMap{s.kv_heads, s.kv_heads * dim, dim});
  const View3<bf16> k_rows = make_view(k_normed, s.tokens, s.kv_heads, dim);
  const View2<const bf16> v_columns =
      qkv.slice(1, (s.q_heads + s.kv_heads) * dim, s.kv_heads * dim);
  const View3<const bf16> v{v_columns.data, {s.tokens, s.kv_heads, dim}, {qkv.stride(0), dim, 1}};
  rope<S>(gpu, positions, cos_sin, q_out);
  rope<S>(gpu, positions, cos_sin, k_rows);
  kv_cache_write(gpu, View3<const bf16>(k_rows), v, slots, cache);
}

#define ATOM_INSTANTIATE_GPU_QK(S, F)                                                              \
  template void qk_norm_rope_cache_fused<S, F>(                                                    \
      const Gpu&, View2<const bf16>, View1<const bf16>, View1<const bf16>, float,                  \
      View1<const std::int64_t>, View2<const float>, View1<const std::int64_t>, const KvCache<F>&, \
      View3<bf16>);                                                                                \
  template void qk_norm_rope_cache_separate<S, F>(                                                 \
      const Gpu&, View2<const bf16>, View1<const bf16>, View1<const bf16>, float,                  \
      View1<const std::int64_t>, View2<const float>, View1<const std::int64_t>, const KvCache<F>&, \
      View3<bf16>);
#define ATOM_INSTANTIATE_GPU_QK_FORMATS(S)              \
  ATOM_INSTANTIATE_GPU_QK(S, KvCacheFormat::fp8_row)    \
  ATOM_INSTANTIATE_GPU_QK(S, KvCacheFormat::fp8_tensor) \
  ATOM_INSTANTIATE_GPU_QK(S, KvCacheFormat::bf16)

ATOM_INSTANTIATE_GPU_QK_FORMATS(RopeStyle::neox)
ATOM_INSTANTIATE_GPU_QK_FORMATS(RopeStyle::interleaved)
#undef ATOM_INSTANTIATE_GPU_QK_FORMATS
#undef ATOM_INSTANTIATE_GPU_QK

}  // namespace atom::ops
