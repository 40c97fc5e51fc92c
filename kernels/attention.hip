// Decode attention over paged caches (flash-decoding). On NVIDIA, tensor-core kernels: MLA over
// bf16 tiles of latent rows staged once per block for up to 64 heads, GQA for up to 8 heads of a
// kv head over every cache format, one kernel: the FP8 caches (fp8_row and fp8_tensor: a row's
// scale is found through the scale views' strides, 0 for the tensor's one) with the codes
// converted in registers into f16 mma fragments, the bf16 cache with its rows as bf16 fragments.
// Elsewhere (GQA shapes the tensor-core kernel does not take, AMD) all share a SIMT kernel
// template; only the staging of cache rows differs. All write one set of split partials that one
// combine reads.

#include "atom/ops/gpu/attention.hpp"

#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/attention_mma.hpp"
#include "detail/reduce.hpp"
#include "detail/stream_scratch.hpp"

namespace atom::kernels {
namespace {

inline constexpr int attn_lanes = 16;        // threads per query head
inline constexpr int attn_tile = 16;         // cache rows staged in shared memory per step
inline constexpr int attn_max_heads = 16;    // query heads per block
inline constexpr int attn_min_heads = 4;     // 64 threads: a whole warp on either vendor
inline constexpr int attn_max_splits = 256;  // context chunks per token
inline constexpr index_t attn_min_chunk = 64;
inline constexpr int attn_combine_threads = 512;
inline constexpr int attn_combine_lanes = 32;  // splits read side by side per column group
inline constexpr int attn_fetch = 5;           // cache loads in flight per thread while staging
inline constexpr bf16 attn_nan{0x7fc0};
inline constexpr float attn_neg_inf = -std::numeric_limits<float>::infinity();

struct DecodeArgs {
  // Query element d of head h of token t: q0 for d < q0_dim, q1 at d - q0_dim after it.
  const bf16* q0;
  index_t q0_token;
  index_t q0_head;
  int q0_dim;
  bool q_vec;  // q0, q1 and their strides allow 16-byte loads
  const bf16* q1;
  index_t q1_token;
  index_t q1_head;
  int key_dim;
  int value_dim;
  int q_heads;
  int group;        // query heads per kv head
  int head_groups;  // blocks per kv head
  // The batch (ops/decode_batch.hpp); sequence s's block-table row at block_table + s * table_row.
  ops::DecodeBatch batch;
  const std::int32_t* block_table;
  index_t table_row;
  index_t table_col;
  index_t table_cols;
  index_t num_blocks;
  index_t block_size;
  float scale;
  index_t chunk;
  int splits;
  bf16* out;
  index_t out_token;
  index_t out_head;
  float* partial_acc;  // [tokens, q_heads, splits, value_dim], when splits > 1
  float* partial_ml;   // [tokens, q_heads, splits, 2]: running max and sum
};

__device__ inline ops::TokenContext context_of(const DecodeArgs& a, index_t t) {
  return ops::token_context(a.batch, t, a.table_cols * a.block_size);
}

// The context rows [begin, end) that split `split` of token t takes, and the block-table row of
// its sequence. `past` (the same for every thread of a block) when they lie past the context, so
// that the block has nothing to do and the combine skips the split; `bad` when the token's batch
// data is; `pad` for a padded token, whose outputs are zeros: written by split 0 when the context
// is not split, else by the combine (every split is past).
struct Chunk {
  index_t begin;
  index_t end;
  const std::int32_t* table;
  bool past;
  bool bad;
  bool pad;
};

__device__ inline Chunk chunk_of(const DecodeArgs& a, index_t t, int split) {
  const ops::TokenContext c = context_of(a, t);
  const index_t begin = split * a.chunk;
  if (c.padding || c.bad) {
    const bool past = c.padding && (split > 0 || a.splits > 1);
    return {begin, begin, a.block_table, past, c.bad, c.padding};
  }
  const index_t end = c.length < begin + a.chunk ? c.length : begin + a.chunk;
  return {begin, end, a.block_table + c.sequence * a.table_row, begin >= end, false, false};
}

// Whether the block writes its constant outputs instead of reading rows: for padding, or when the
// chunk's length or any block id it reaches is bad (checked before any row is read). A barrier,
// so every thread of the block calls it.
__device__ inline bool chunk_is_constant(const DecodeArgs& a, const Chunk& c) {
  int bad = c.bad || c.pad ? 1 : 0;
  if (bad == 0) {
    for (index_t b = c.begin / a.block_size + threadIdx.x; b <= (c.end - 1) / a.block_size;
         b += blockDim.x) {
      const std::int32_t id = c.table[b * a.table_col];
      if (id < 0 || id >= a.num_blocks) bad = 1;
    }
  }
  return __syncthreads_or(bad) != 0;
}

// The constant outputs of heads [h_begin, h_end) of token t: zeros for padding (context not
// split, see Chunk), else the NaN contract: NaN outputs when the context is not split, else NaN
// partials, which the combine turns into NaN outputs.
__device__ inline void write_constant(const DecodeArgs& a, const Chunk& c, index_t t, int split,
                                      index_t h_begin, index_t h_end) {
  const int tid = static_cast<int>(threadIdx.x);
  const int threads = static_cast<int>(blockDim.x);
  if (a.splits == 1) {
    const bf16 value = c.pad ? bf16{} : attn_nan;
    for (index_t i = tid; i < (h_end - h_begin) * a.value_dim; i += threads)
      a.out[t * a.out_token + (h_begin + i / a.value_dim) * a.out_head + i % a.value_dim] = value;
  } else {
    for (index_t h = h_begin + tid; h < h_end; h += threads) {
      const index_t row = (t * a.q_heads + h) * a.splits + split;
      a.partial_ml[2 * row] = std::numeric_limits<float>::quiet_NaN();
      a.partial_ml[2 * row + 1] = std::numeric_limits<float>::quiet_NaN();
    }
  }
}

}  // namespace

// Outside the anonymous namespace: on NVIDIA only the tensor-core kernel reads it directly, and
// nvcc would flag the SIMT kernel's members as unreferenced.
// The MLA latent cache: a row is kv_lora latent values then rope key values; the values are the
// key row's first kv_lora elements.
struct MlaSource {
  static constexpr int key_chunks = 5;    // 8-element chunks per lane: 16 * 5 * 8 >= 576
  static constexpr int value_chunks = 4;  // 16 * 4 * 8 = 512
  static constexpr int key_width = 576;
  static constexpr int value_width = 0;
  const bf16* cache;
  index_t block_stride;
  index_t row_stride;
  bool vec;

  __device__ int row_chunks(int key_dim, int) const { return key_dim / vec_width; }
  __device__ uint4 fetch(index_t block, index_t offset, int, int c, int) const {
    const bf16* src = cache + block * block_stride + offset * row_stride + c * vec_width;
    if (vec) return *reinterpret_cast<const uint4*>(src);
    std::uint32_t w[4];
    for (int j = 0; j < 4; ++j)
      w[j] = static_cast<std::uint32_t>(src[2 * j].bits) |
             (static_cast<std::uint32_t>(src[2 * j + 1].bits) << 16);
    return make_uint4(w[0], w[1], w[2], w[3]);
  }
  __device__ void store(const uint4& raw, int c, int, float* key_row, float*) const {
    unpack_bf16x8(raw, key_row + c * vec_width);
  }
  __device__ static const float* value_row(const float* key_row, const float*) { return key_row; }
};

namespace {

// The GQA cache: a row of a kv head is head_dim key elements and head_dim value elements, staged
// as the floats the host reads (PagedKvCache::element). FP8 codes (Code fp8_e4m3) come with the
// row's scale, read through the scale views' strides (fp8_row: one per row; fp8_tensor: strides
// 0, the tensor's one), and are staged as to_float(code) * scale; bf16 values (Code bf16) have no
// scale and are staged as they are.
template <class Code>
struct GqaSource {
  static constexpr bool scaled = std::is_same_v<Code, fp8_e4m3>;
  static_assert(scaled || std::is_same_v<Code, bf16>);
  static constexpr int key_chunks = 2;  // head_dim <= 256
  static constexpr int value_chunks = 2;
  static constexpr int key_width = 256;
  static constexpr int value_width = 256;
  const Code* key;
  const Code* value;
  const float* key_scale;
  const float* value_scale;
  index_t key_strides[3];  // block, slot in block, head
  index_t value_strides[3];
  index_t key_scale_strides[3];
  index_t value_scale_strides[3];
  bool vec;

  __device__ int row_chunks(int key_dim, int value_dim) const {
    return (key_dim + value_dim) / vec_width;
  }
  // FP8: eight codes in x and y, the row's scale in z. bf16: eight values.
  __device__ uint4 fetch(index_t block, index_t offset, int kv_head, int c, int key_dim) const {
    const bool is_value = c >= key_dim / vec_width;
    const int d0 = (is_value ? c - key_dim / vec_width : c) * vec_width;
    const index_t* s = is_value ? value_strides : key_strides;
    const Code* codes =
        (is_value ? value : key) + block * s[0] + offset * s[1] + kv_head * s[2] + d0;
    if constexpr (scaled) {
      const index_t* ss = is_value ? value_scale_strides : key_scale_strides;
      const float scale =
          (is_value ? value_scale : key_scale)[block * ss[0] + offset * ss[1] + kv_head * ss[2]];
      uint2 u;
      if (vec) {
        u = *reinterpret_cast<const uint2*>(codes);
      } else {
        std::uint32_t w[2] = {0, 0};
        for (int j = 0; j < vec_width; ++j)
          w[j / 4] |= static_cast<std::uint32_t>(codes[j].bits) << (8 * (j % 4));
        u = make_uint2(w[0], w[1]);
      }
      return make_uint4(u.x, u.y, __float_as_uint(scale), 0);
    } else {
      if (vec) return *reinterpret_cast<const uint4*>(codes);
      std::uint32_t w[4];
      for (int j = 0; j < 4; ++j)
        w[j] = static_cast<std::uint32_t>(codes[2 * j].bits) |
               (static_cast<std::uint32_t>(codes[2 * j + 1].bits) << 16);
      return make_uint4(w[0], w[1], w[2], w[3]);
    }
  }
  __device__ void store(const uint4& raw, int c, int key_dim, float* key_row,
                        float* value_row) const {
    const bool is_value = c >= key_dim / vec_width;
    const int d0 = (is_value ? c - key_dim / vec_width : c) * vec_width;
    float* dst = (is_value ? value_row : key_row) + d0;
    if constexpr (scaled) {
      const float scale = __uint_as_float(raw.z);
      for (int j = 0; j < vec_width; ++j) {
        const auto code = static_cast<std::uint8_t>((j < 4 ? raw.x : raw.y) >> (8 * (j % 4)));
        dst[j] = mul(to_float(fp8_e4m3{code}), scale);
      }
    } else {
      unpack_bf16x8(raw, dst);
    }
  }
  __device__ static const float* value_row(const float*, const float* value_row) {
    return value_row;
  }
};

struct MaxFloat {
  __device__ float operator()(float a, float b) const { return b > a ? b : a; }
  static constexpr float identity = attn_neg_inf;
};

// Grid (splits, kv_heads * head_groups, tokens); 16 threads per query head. Block (s, y, t) takes
// context rows [s * chunk, (s + 1) * chunk) of token t for up to blockDim.x / 16 query heads of
// kv head y / head_groups. Lane l of a head holds query and accumulator elements 8c .. 8c + 7 for
// chunks c = l, l + 16, ...
template <class Source>
__global__ void __launch_bounds__(attn_lanes* attn_max_heads)
    decode_kernel(DecodeArgs a, Source src) {
  gpu::start_after_prior_grid();
  __shared__ float keys[attn_tile][Source::key_width];
  __shared__ float values[attn_tile][Source::value_width > 0 ? Source::value_width : 1];
  __shared__ index_t row_block[attn_tile];
  __shared__ index_t row_offset[attn_tile];
  const int lane = static_cast<int>(threadIdx.x) % attn_lanes;
  const int slot = static_cast<int>(threadIdx.x) / attn_lanes;
  const int threads = static_cast<int>(blockDim.x);
  const index_t t = blockIdx.z;
  const int split = static_cast<int>(blockIdx.x);
  const int kv_head = static_cast<int>(blockIdx.y) / a.head_groups;
  const int first_in_group = static_cast<int>(blockIdx.y) % a.head_groups * (threads / attn_lanes);
  const int in_group = first_in_group + slot;
  const bool active = in_group < a.group;
  const index_t h = static_cast<index_t>(kv_head) * a.group + (active ? in_group : 0);

  const Chunk chunk = chunk_of(a, t, split);
  if (chunk.past) return;
  const index_t begin = chunk.begin;
  const index_t end = chunk.end;
  const std::int32_t* table = chunk.table;
  if (chunk_is_constant(a, chunk)) {
    const index_t h0 = static_cast<index_t>(kv_head) * a.group + first_in_group;
    const int in_block = a.group - first_in_group < threads / attn_lanes ? a.group - first_in_group
                                                                         : threads / attn_lanes;
    write_constant(a, chunk, t, split, h0, h0 + in_block);
    return;
  }

  float q[Source::key_chunks][vec_width];
#pragma unroll
  for (int k = 0; k < Source::key_chunks; ++k) {
    const int d0 = (lane + k * attn_lanes) * vec_width;
#pragma unroll
    for (int j = 0; j < vec_width; ++j) {
      const int d = d0 + j;
      float x = 0.0f;
      if (active && d < a.key_dim)
        x = to_float(d < a.q0_dim ? a.q0[t * a.q0_token + h * a.q0_head + d]
                                  : a.q1[t * a.q1_token + h * a.q1_head + (d - a.q0_dim)]);
      q[k][j] = x;
    }
  }

  float m = attn_neg_inf;
  float l = 0.0f;
  float acc[Source::value_chunks][vec_width];
#pragma unroll
  for (int k = 0; k < Source::value_chunks; ++k)
#pragma unroll
    for (int j = 0; j < vec_width; ++j) acc[k][j] = 0.0f;

  const int row_chunks = src.row_chunks(a.key_dim, a.value_dim);
  for (index_t first = begin; first < end; first += attn_tile) {
    const int rows = end - first < attn_tile ? static_cast<int>(end - first) : attn_tile;
    if (static_cast<int>(threadIdx.x) < rows) {
      const index_t j = first + threadIdx.x;
      row_block[threadIdx.x] = table[(j / a.block_size) * a.table_col];
      row_offset[threadIdx.x] = j % a.block_size;
    }
    __syncthreads();
    // Loads issued attn_fetch at a time before any is stored, so their latencies overlap.
    for (int i0 = static_cast<int>(threadIdx.x); i0 < rows * row_chunks;
         i0 += attn_fetch * threads) {
      uint4 raw[attn_fetch];
#pragma unroll
      for (int f = 0; f < attn_fetch; ++f) {
        const int i = i0 + f * threads;
        if (i < rows * row_chunks)
          raw[f] = src.fetch(row_block[i / row_chunks], row_offset[i / row_chunks], kv_head,
                             i % row_chunks, a.key_dim);
      }
#pragma unroll
      for (int f = 0; f < attn_fetch; ++f) {
        const int i = i0 + f * threads;
        if (i < rows * row_chunks)
          src.store(raw[f], i % row_chunks, a.key_dim, keys[i / row_chunks],
                    values[i / row_chunks]);
      }
    }
    __syncthreads();

    // Scores of the staged rows: each lane's partial dot, summed across the head's 16 lanes.
    float s[attn_tile];
    float tile_max = attn_neg_inf;
#pragma unroll
    for (int r = 0; r < attn_tile; ++r) {
      s[r] = attn_neg_inf;
      if (r < rows) {
        float dot = 0.0f;
#pragma unroll
        for (int k = 0; k < Source::key_chunks; ++k) {
          const int d0 = (lane + k * attn_lanes) * vec_width;
          if (d0 < a.key_dim) {
#pragma unroll
            for (int j = 0; j < vec_width; ++j) dot += q[k][j] * keys[r][d0 + j];
          }
        }
        s[r] = lanes_reduce<attn_lanes>(dot, Sum{}) * a.scale;
        tile_max = s[r] > tile_max ? s[r] : tile_max;
      }
    }

    // Online softmax: rescale what was accumulated against the new running maximum.
    const float m_new = tile_max > m ? tile_max : m;
    const float alpha = expf(m - m_new);
    l *= alpha;
#pragma unroll
    for (int k = 0; k < Source::value_chunks; ++k)
#pragma unroll
      for (int j = 0; j < vec_width; ++j) acc[k][j] *= alpha;
#pragma unroll
    for (int r = 0; r < attn_tile; ++r) {
      if (r < rows) {
        const float p = expf(s[r] - m_new);
        l += p;
        const float* v = Source::value_row(keys[r], values[r]);
#pragma unroll
        for (int k = 0; k < Source::value_chunks; ++k) {
          const int d0 = (lane + k * attn_lanes) * vec_width;
          if (d0 < a.value_dim) {
#pragma unroll
            for (int j = 0; j < vec_width; ++j) acc[k][j] += p * v[d0 + j];
          }
        }
      }
    }
    m = m_new;
    __syncthreads();  // the staged rows are free again
  }

  if (!active) return;
  if (a.splits == 1) {
    bf16* o = a.out + t * a.out_token + h * a.out_head;
#pragma unroll
    for (int k = 0; k < Source::value_chunks; ++k) {
      const int d0 = (lane + k * attn_lanes) * vec_width;
      if (d0 < a.value_dim) {
#pragma unroll
        for (int j = 0; j < vec_width; ++j) o[d0 + j] = to_bf16(div(acc[k][j], l));
      }
    }
  } else {
    const index_t row = (t * a.q_heads + h) * a.splits + split;
    float* pa = a.partial_acc + row * a.value_dim;
#pragma unroll
    for (int k = 0; k < Source::value_chunks; ++k) {
      const int d0 = (lane + k * attn_lanes) * vec_width;
      if (d0 < a.value_dim) {
#pragma unroll
        for (int j = 0; j < vec_width; ++j) pa[d0 + j] = acc[k][j];
      }
    }
    if (lane == 0) {
      a.partial_ml[2 * row] = m;
      a.partial_ml[2 * row + 1] = l;
    }
  }
}

// One block per (token, head): out = sum_s w_s acc_s / sum_s w_s l_s with w_s = exp(m_s - max m)
// over the splits the token's context reaches; NaN when any of them saw a bad block id. Thread i
// takes columns 4 (i % quads) .. + 3 of the splits i / quads, i / quads + lanes, ... (quads =
// value_dim / 4 column groups, lanes of them side by side), so that the whole block has loads in
// flight; the lanes' sums then meet in shared memory in lane order.
__global__ void __launch_bounds__(attn_combine_threads) combine_kernel(DecodeArgs a) {
  gpu::start_after_prior_grid();
  __shared__ float weight[attn_max_splits];
  __shared__ float scratch[attn_combine_threads];
  __shared__ float4 lane_sum[attn_combine_threads];
  const int tid = static_cast<int>(threadIdx.x);
  const index_t t = blockIdx.x / a.q_heads;
  const index_t h = blockIdx.x % a.q_heads;
  bf16* o = a.out + t * a.out_token + h * a.out_head;
  const ops::TokenContext c = context_of(a, t);
  if (c.padding || c.bad) {
    for (int d = tid; d < a.value_dim; d += attn_combine_threads)
      o[d] = c.padding ? bf16{} : attn_nan;
    return;
  }
  const index_t n = c.length;
  const int used = static_cast<int>((n + a.chunk - 1) / a.chunk);
  const index_t row0 = (t * a.q_heads + h) * a.splits;
  float m = attn_neg_inf;
  int bad = 0;
  for (int s = tid; s < used; s += attn_combine_threads) {
    const float ms = a.partial_ml[2 * (row0 + s)];
    if (isnan(ms)) bad = 1;
    m = ms > m ? ms : m;
  }
  if (__syncthreads_or(bad) != 0) {
    for (int d = tid; d < a.value_dim; d += attn_combine_threads) o[d] = attn_nan;
    return;
  }
  m = block_reduce(m, MaxFloat{}, scratch);
  float sum = 0.0f;
  for (int s = tid; s < used; s += attn_combine_threads) {
    const float w = expf(a.partial_ml[2 * (row0 + s)] - m);
    weight[s] = w;
    sum += w * a.partial_ml[2 * (row0 + s) + 1];
  }
  sum = block_reduce(sum, Sum{}, scratch);  // its barriers also publish `weight`
  // value_dim is a multiple of 8, so rows are 16-byte aligned.
  const int quads = a.value_dim / 4;
  const int lanes = attn_combine_threads / quads < attn_combine_lanes ? attn_combine_threads / quads
                                                                      : attn_combine_lanes;
  const int quad = tid % quads;
  const int lane = tid / quads;
  if (lane < lanes) {
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const float* column = a.partial_acc + row0 * a.value_dim + 4 * quad;
#pragma unroll 4
    for (int s = lane; s < used; s += lanes) {
      const float4 x = *reinterpret_cast<const float4*>(column + s * a.value_dim);
      v[0] += weight[s] * x.x;
      v[1] += weight[s] * x.y;
      v[2] += weight[s] * x.z;
      v[3] += weight[s] * x.w;
    }
    lane_sum[tid] = make_float4(v[0], v[1], v[2], v[3]);
  }
  __syncthreads();
  if (tid < quads) {
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int k = 0; k < lanes; ++k) {
      const float4 x = lane_sum[k * quads + tid];
      v[0] += x.x;
      v[1] += x.y;
      v[2] += x.z;
      v[3] += x.w;
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) o[4 * tid + k] = to_bf16(div(v[k], sum));
  }
}

// MLA with tensor cores (NVIDIA). A block takes one token, 16 * MT heads and one context chunk,
// with 4 * MT warps. Per tile of mla_rows latent rows, staged in shared memory as bf16 by cp.async
// (the next two tiles' copies in flight while this one is used):
//   S = Q K^T * scale: warp w computes the 16 x 32 tile of heads 16 (w / 4).. over a quarter of
//     the key width's k steps (Q and K read with ldmatrix from shared memory: each Q fragment
//     feeds four mma), writing its part of the sums;
//   softmax: 8 threads per head add the four parts, update the running max and sum and write P
//     (bf16) and the factor that rescales the accumulator;
//   O += P V: warp w owns value columns [w * 128 / MT, (w + 1) * 128 / MT) of every head, V being
//     the staged rows' first kv_lora columns read transposed by ldmatrix.
// Rows past the chunk are staged as zeros and get P = 0; key columns past the width, up to a
// multiple of 16, are zeros in both Q and K.
inline constexpr int mla_rows = 32;     // cache rows per tile
inline constexpr int mla_stride = 584;  // bf16 per staged row: 576 + 8 (no bank conflicts)
inline constexpr int mla_s_stride = mla_rows + 4;  // floats per score row
inline constexpr int mla_s_parts = 4;              // k parts of S, summed by the softmax
inline constexpr int mla_p_stride = mla_rows + 8;  // bf16 per probability row
inline constexpr int mla_stages = 3;               // staged tiles: two in flight while one is used
inline constexpr index_t mla_min_chunk = 2 * mla_rows;

template <int MT>
constexpr int mla_shared_bytes() {
  constexpr int heads = 16 * MT;
  return (mla_stages * mla_rows * mla_stride + heads * mla_stride) * 2 +
         mla_s_parts * heads * mla_s_stride * 4 + heads * mla_p_stride * 2 + 3 * heads * 4 +
         mla_stages * mla_rows * 8;
}

template <int MT, bool Vec>
__global__ void __launch_bounds__(128 * MT, 1) mla_mma_kernel(DecodeArgs a, MlaSource src) {
  gpu::start_after_prior_grid();
  constexpr int heads = 16 * MT;
  constexpr int threads = 128 * MT;
  constexpr int n_tiles = 16 / MT;  // value n8 tiles per warp
  extern __shared__ uint4 mla_shared[];
  bf16* const kbuf = reinterpret_cast<bf16*>(mla_shared);
  bf16* const qbuf = kbuf + mla_stages * mla_rows * mla_stride;
  float* const sbuf = reinterpret_cast<float*>(qbuf + heads * mla_stride);
  bf16* const pbuf = reinterpret_cast<bf16*>(sbuf + mla_s_parts * heads * mla_s_stride);
  float* const alpha_s = reinterpret_cast<float*>(pbuf + heads * mla_p_stride);
  float* const l_s = alpha_s + heads;
  float* const m_s = l_s + heads;
  // Per staged tile (tile k in slot k % mla_stages): each row's element offset in the cache, -1
  // past the chunk.
  index_t* const row_offset = reinterpret_cast<index_t*>(m_s + heads);

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  const int lane = tid % 32;
  const index_t t = blockIdx.z;
  const int split = static_cast<int>(blockIdx.x);
  const int h0 = static_cast<int>(blockIdx.y) * heads;

  const Chunk chunk = chunk_of(a, t, split);
  if (chunk.past) return;
  const index_t begin = chunk.begin;
  const index_t end = chunk.end;
  const std::int32_t* table = chunk.table;
  const int key_dim = a.key_dim;
  const int padded = (key_dim + 15) / 16 * 16;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  // Queries first (always in bounds, so their copies overlap the block-id check); zero past the
  // key width and for heads past the last.
  for (int i = tid; i < heads * (padded / vec_width); i += threads) {
    const int r = i / (padded / vec_width);
    const int d0 = i % (padded / vec_width) * vec_width;
    const int h = h0 + r;
    bf16* const dst = qbuf + r * mla_stride + d0;
    uint4 v = zero;
    if (h < a.q_heads && d0 < key_dim) {
      const bf16* q = d0 < a.q0_dim ? a.q0 + t * a.q0_token + h * a.q0_head + d0
                                    : a.q1 + t * a.q1_token + h * a.q1_head + (d0 - a.q0_dim);
      if (a.q_vec) {
        cp_async_16(shared_address(dst), q);
        continue;
      }
      std::uint32_t w[4];
      for (int j = 0; j < 4; ++j)
        w[j] = static_cast<std::uint32_t>(q[2 * j].bits) |
               (static_cast<std::uint32_t>(q[2 * j + 1].bits) << 16);
      v = make_uint4(w[0], w[1], w[2], w[3]);
    }
    *reinterpret_cast<uint4*>(dst) = v;
  }
  cp_async_commit();

  if (chunk_is_constant(a, chunk)) {
    cp_async_wait<0>();
    write_constant(a, chunk, t, split, h0, h0 + heads < a.q_heads ? h0 + heads : a.q_heads);
    return;
  }
  if (padded != key_dim)
    for (int r = tid; r < mla_stages * mla_rows; r += threads)
      *reinterpret_cast<uint4*>(kbuf + r * mla_stride + key_dim) = zero;

  const int tiles = static_cast<int>((end - begin + mla_rows - 1) / mla_rows);
  // Where row r of tile k starts in the cache (-1 past the chunk); the block ids were checked.
  const auto offset_of = [&](int k, int r) -> index_t {
    const index_t j = begin + static_cast<index_t>(k) * mla_rows + r;
    if (j >= end) return -1;
    return table[(j / a.block_size) * a.table_col] * src.block_stride +
           (j % a.block_size) * src.row_stride;
  };
  for (int i = tid; i < mla_stages * mla_rows; i += threads)
    if (i / mla_rows < tiles) row_offset[i] = offset_of(i / mla_rows, i % mla_rows);
  __syncthreads();

  const int row_chunks = key_dim / vec_width;
  // Copies of tile k into its slot (one commit group), zeros past the chunk.
  const auto stage = [&](int k) {
    bf16* const dst0 = kbuf + (k % mla_stages) * mla_rows * mla_stride;
    const index_t* const offsets = row_offset + (k % mla_stages) * mla_rows;
    for (int i = tid; i < mla_rows * row_chunks; i += threads) {
      const int r = i / row_chunks;
      const int c = i - r * row_chunks;
      const index_t offset = offsets[r];
      bf16* const dst = dst0 + r * mla_stride + c * vec_width;
      if (offset < 0) {
        *reinterpret_cast<uint4*>(dst) = zero;
      } else if constexpr (Vec) {
        cp_async_16(shared_address(dst), src.cache + offset + c * vec_width);
      } else {
        const bf16* const row = src.cache + offset + c * vec_width;
        std::uint32_t w[4];
        for (int j = 0; j < 4; ++j)
          w[j] = static_cast<std::uint32_t>(row[2 * j].bits) |
                 (static_cast<std::uint32_t>(row[2 * j + 1].bits) << 16);
        *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
      }
    }
    cp_async_commit();
  };

  // Softmax state of head row tid / 8 (the 8 threads of a row keep identical copies).
  const int s_row = tid / 8;
  const int s_sub = tid % 8;
  float m = attn_neg_inf;
  float l = 0.0f;
  // Value accumulators: [m tile][n tile][fragment], float bits.
  std::uint32_t acc[MT][n_tiles][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < n_tiles; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0;
  const int g = lane / 4;
  const int tq = lane % 4;
  const int col0 = warp * (128 / MT);

  stage(0);
  if (tiles > 1)
    stage(1);
  else
    cp_async_commit();
  for (int it = 0; it < tiles; ++it) {
    const index_t first = begin + static_cast<index_t>(it) * mla_rows;
    // Row offsets of tile it + 3, read now and stored into this tile's slot once it is used.
    const bool fetch_next = tid < mla_rows && it + mla_stages < tiles;
    const index_t next_offset = fetch_next ? offset_of(it + mla_stages, tid) : -1;
    cp_async_wait<1>();  // the queries and tiles up to this one have landed
    // Every thread's copies of this tile are visible, and every thread is past the previous
    // tile's P V: its staged rows, P and the scores are free again.
    __syncthreads();
    if (it + 2 < tiles)
      stage(it + 2);
    else
      cp_async_commit();
    const bf16* const kt = kbuf + (it % mla_stages) * mla_rows * mla_stride;

    {  // S: warp w takes heads 16 (w / 4) .. + 15 and all 32 rows over the k steps w % 4,
       // w % 4 + 4, ..., so one Q fragment feeds four mma (Q is read once per tile, not four
       // times); the four k parts meet in the softmax.
      const int mt = warp / 4;
      const int kq = warp % 4;
      const std::uint32_t qa =
          shared_address(qbuf + (mt * 16 + lane % 16) * mla_stride + (lane / 16) * 8);
      // Matrices of one ldmatrix_x4: rows 0-7 at k, k + 8 (n tile 0), rows 8-15 at k, k + 8.
      const std::uint32_t kb =
          shared_address(kt + ((lane / 16) * 8 + lane % 8) * mla_stride + ((lane / 8) % 2) * 8);
      std::uint32_t c[4][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}};
#pragma unroll 3
      for (int k0 = 16 * kq; k0 < padded; k0 += 16 * mla_s_parts) {
        std::uint32_t af[4];
        std::uint32_t b0[4];
        std::uint32_t b1[4];
        ldmatrix_x4(af, qa + 2 * k0);
        ldmatrix_x4(b0, kb + 2 * k0);
        ldmatrix_x4(b1, kb + 2 * (16 * mla_stride + k0));
        mma_bf16_m16n8k16(c[0], af, b0[0], b0[1]);
        mma_bf16_m16n8k16(c[1], af, b0[2], b0[3]);
        mma_bf16_m16n8k16(c[2], af, b1[0], b1[1]);
        mma_bf16_m16n8k16(c[3], af, b1[2], b1[3]);
      }
      float* const part = sbuf + (kq * heads + mt * 16 + g) * mla_s_stride + 2 * tq;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        *reinterpret_cast<float2*>(part + nt * 8) =
            make_float2(as_float(c[nt][0]), as_float(c[nt][1]));
        *reinterpret_cast<float2*>(part + 8 * mla_s_stride + nt * 8) =
            make_float2(as_float(c[nt][2]), as_float(c[nt][3]));
      }
    }
    __syncthreads();

    {  // online softmax over the tile's rows, 4 per thread
      float4 sv[mla_s_parts];
#pragma unroll
      for (int q = 0; q < mla_s_parts; ++q)
        sv[q] =
            *reinterpret_cast<const float4*>(sbuf + (q * heads + s_row) * mla_s_stride + s_sub * 4);
      const float s[4] = {mul(add(add(sv[0].x, sv[1].x), add(sv[2].x, sv[3].x)), a.scale),
                          mul(add(add(sv[0].y, sv[1].y), add(sv[2].y, sv[3].y)), a.scale),
                          mul(add(add(sv[0].z, sv[1].z), add(sv[2].z, sv[3].z)), a.scale),
                          mul(add(add(sv[0].w, sv[1].w), add(sv[2].w, sv[3].w)), a.scale)};
      const index_t j0 = first + s_sub * 4;
      float mx = attn_neg_inf;
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (j0 + e < end && s[e] > mx) mx = s[e];
      mx = lanes_reduce<8>(mx, MaxFloat{});
      const float m_new = mx > m ? mx : m;
      const float alpha = expf(m - m_new);
      float p[4];
      float sum = 0.0f;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        p[e] = j0 + e < end ? expf(s[e] - m_new) : 0.0f;
        sum = add(sum, p[e]);
      }
      sum = lanes_reduce<8>(sum, Sum{});
      l = add(mul(l, alpha), sum);
      m = m_new;
      bf16* const prow = pbuf + s_row * mla_p_stride + s_sub * 4;
      const bf16 pb[4] = {to_bf16(p[0]), to_bf16(p[1]), to_bf16(p[2]), to_bf16(p[3])};
      *reinterpret_cast<uint2*>(prow) = make_uint2(
          static_cast<std::uint32_t>(pb[0].bits) | (static_cast<std::uint32_t>(pb[1].bits) << 16),
          static_cast<std::uint32_t>(pb[2].bits) | (static_cast<std::uint32_t>(pb[3].bits) << 16));
      if (s_sub == 0) alpha_s[s_row] = alpha;
    }
    __syncthreads();

    // O = alpha O + P V over this warp's value columns.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const float a0 = alpha_s[mt * 16 + g];
      const float a1 = alpha_s[mt * 16 + g + 8];
#pragma unroll
      for (int nt = 0; nt < n_tiles; ++nt) {
        acc[mt][nt][0] = __float_as_uint(as_float(acc[mt][nt][0]) * a0);
        acc[mt][nt][1] = __float_as_uint(as_float(acc[mt][nt][1]) * a0);
        acc[mt][nt][2] = __float_as_uint(as_float(acc[mt][nt][2]) * a1);
        acc[mt][nt][3] = __float_as_uint(as_float(acc[mt][nt][3]) * a1);
      }
    }
    if (col0 < a.value_dim) {
#pragma unroll
      for (int k0 = 0; k0 < mla_rows; k0 += 16) {
        std::uint32_t pa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
          ldmatrix_x4(pa[mt], shared_address(pbuf + (mt * 16 + lane % 16) * mla_p_stride + k0 +
                                             (lane / 16) * 8));
#pragma unroll
        for (int np = 0; np < n_tiles; np += 2) {
          std::uint32_t vb[4];
          ldmatrix_x4_trans(
              vb, shared_address(kt + (k0 + lane % 8 + ((lane / 8) % 2) * 8) * mla_stride + col0 +
                                 np * 8 + (lane / 16) * 8));
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma_bf16_m16n8k16(acc[mt][np], pa[mt], vb[0], vb[1]);
            mma_bf16_m16n8k16(acc[mt][np + 1], pa[mt], vb[2], vb[3]);
          }
        }
      }
    }
    // Read by stage(it + 3) after the next iteration's first barrier.
    if (fetch_next) row_offset[(it % mla_stages) * mla_rows + tid] = next_offset;
  }

  if (s_sub == 0) {
    l_s[s_row] = l;
    m_s[s_row] = m;
  }
  __syncthreads();
  if (a.splits > 1 && tid < heads && h0 + tid < a.q_heads) {
    const index_t row = (t * a.q_heads + h0 + tid) * a.splits + split;
    a.partial_ml[2 * row] = m_s[tid];
    a.partial_ml[2 * row + 1] = l_s[tid];
  }
  if (col0 >= a.value_dim) return;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = mt * 16 + g + 8 * half;
      const int h = h0 + r;
      if (h >= a.q_heads) continue;
      const float lr = l_s[r];
#pragma unroll
      for (int nt = 0; nt < n_tiles; ++nt) {
        const int col = col0 + nt * 8 + 2 * tq;
        if (col >= a.value_dim) continue;
        const float v0 = as_float(acc[mt][nt][2 * half]);
        const float v1 = as_float(acc[mt][nt][2 * half + 1]);
        if (a.splits == 1) {
          bf16* const o = a.out + t * a.out_token + h * a.out_head + col;
          o[0] = to_bf16(div(v0, lr));
          o[1] = to_bf16(div(v1, lr));
        } else {
          const index_t row = (t * a.q_heads + h) * a.splits + split;
          *reinterpret_cast<float2*>(a.partial_acc + row * a.value_dim + col) = make_float2(v0, v1);
        }
      }
    }
  }
}

// Paged GQA with tensor cores (NVIDIA; e4m3 to f16 in hardware needs sm_89), one kernel for the
// FP8 caches (Code fp8_e4m3: f16 mma.sync on converted codes) and the bf16 cache (Code bf16: bf16
// mma.sync on the rows as they are). A block takes one token, up to 8 query heads of one kv head
// and one context chunk with 4 warps; warp w takes the chunk's 16-row steps w, w + 4, ..., staged
// by cp.async in a ring of its own in shared memory (two steps in flight while it uses one: no
// block barrier until the warps merge, in warp order). The products are transposed so that the
// heads are the n = 8 columns of m16n8k16 mma.sync (a group of 8 heads fills it) and the cache
// rows and value columns its m = 16 rows. E is the element's bytes (1 FP8, 2 bf16); thread
// (g, q) = (lane / 4, lane % 4):
//   S^T = K Q^T: the thread takes key bytes 64 c + 16 q .. + 15 (c < D E / 64) of rows g and
//     8 + g (so that the four q lanes of a row read 64 contiguous bytes) as A fragments: k step s
//     takes four elements of them, FP8 word s (d = 64 (s / 4) + 16 q + 4 (s % 4) .. + 3, converted
//     to f16 pairs), bf16 words 2 s and 2 s + 1 (d = 32 (s / 2) + 8 q + 4 (s % 2) .. + 3), in Q
//     (head g, the B fragment) as in K, so the dot product is unchanged. FP8: Q enters as f16
//     scaled per head by the power of two that puts its largest magnitude in [2^14, 2^15) (exact
//     for bf16 queries); the score is the fp32 sum times scale, that power's inverse and the
//     row's key scale. bf16: Q enters as it is; the score is the fp32 sum times scale. The thread
//     holds the scores of rows g, 8 + g for heads 2q, 2q + 1.
//   softmax: FP8: the value scale of row j enters its exponent, p_j = sign(s_j) 2^(t_j + log2|s_j|
//     - m + 15) with m the running max of t + log2|s| (t in log2 units), so that P, rounded to
//     f16, lies within 2^15 whatever the scales; the sum that normalizes adds 2^(t_j - m + 15) in
//     float. bf16: no value scale, p_j = 2^(t_j - m) with m the running max of t, rounded to bf16
//     (whose range is float's); the sum adds the same in float. P^T's two 8x8 halves are
//     transposed in registers (movmatrix) into the B fragments of the next product.
//   O^T += V^T P^T: the thread takes value elements [g D/8, (g + 1) D/8) of rows 2q, 2q + 1,
//     8 + 2q, 9 + 2q; element 2i stands for row g of m tile i, element 2i + 1 for its row 8 + g
//     (FP8: a word's bytes interleaved into code pairs; bf16: a word's halves paired across rows
//     by byte_permute), so the thread ends with heads 2q, 2q + 1 at d = g D/8 .. + D/8 - 1.
// Rows past the chunk are copied as zeros (score -inf). Needs block_size % 16 == 0 (a step lies in
// one cache block) and 16-byte aligned rows.
inline constexpr int gqa_warps = 4;
inline constexpr int gqa_rows = 16;  // cache rows per warp step
inline constexpr int gqa_heads = 8;  // query heads per block: the mma's n
inline constexpr index_t gqa_granule = gqa_warps * gqa_rows;
// The |value scale| floor: 2^(t - m + 15) stays finite.
inline constexpr float gqa_min_scale = 0x1p-64f;

// The elements thread (g, q) uses of one 16-row step, in registers (E bytes each).
template <int D, class Code>
struct GqaStep {
  static constexpr int bytes = static_cast<int>(sizeof(Code));
  std::uint32_t key[2][D * bytes / 16];    // rows g, 8 + g: E words per k step
  std::uint32_t value[4][D * bytes / 32];  // rows 2q, 2q + 1, 8 + 2q, 9 + 2q

  // The step row of value row r of thread q.
  __device__ static int value_row(int r, int q) { return 2 * q + (r & 1) + 8 * (r >> 1); }
};

// The same, staged: each thread copies (cp.async) the bytes it later reads itself, so a warp's
// ring of steps needs only cp.async.wait_group and, for the FP8 scales (lane l copies the key
// scale of row l, lane 16 + l its value scale, and every thread reads the two rows it needs), a
// warp barrier. [piece][lane]: conflict-free.
template <int D, class Code>
struct GqaSlotRows {
  static constexpr int bytes = static_cast<int>(sizeof(Code));
  static constexpr int key_pieces = D * bytes / 64;  // 16-byte pieces of a row's D E / 4 bytes
  static constexpr int value_bytes = D * bytes / 8;  // of a row: 8, 16 or 32
  static constexpr int value_pieces = value_bytes > 16 ? value_bytes / 16 : 1;
  static constexpr int piece_bytes = value_bytes / value_pieces;  // 8 or 16
  using Value = std::conditional_t<piece_bytes == 16, uint4, uint2>;
  uint4 key[2 * key_pieces][32];
  Value value[4 * value_pieces][32];
};

template <int D, class Code>
struct GqaSlot : GqaSlotRows<D, Code> {
  float scale[2][gqa_rows];  // key scales of the step's rows, then their value scales
};

template <int D>
struct GqaSlot<D, bf16> : GqaSlotRows<D, bf16> {};  // no scales

// Issues the copies of rows [j0, j0 + 16) into `slot` (rows from `end` on as zeros); false, with
// nothing read, when their block id is outside the cache.
template <int D, class Code>
__device__ inline bool gqa_issue(GqaSlot<D, Code>& slot, const DecodeArgs& a,
                                 const GqaSource<Code>& src, const std::int32_t* table, index_t j0,
                                 index_t end, int kv_head, int lane) {
  using Rows = GqaSlotRows<D, Code>;
  constexpr int piece = 16 / Rows::bytes;  // elements per 16 bytes
  const int g = lane / 4;
  const int q = lane % 4;
  // Context positions are int32 (context_lens), so 32-bit arithmetic finds the block.
  const auto j = static_cast<std::uint32_t>(j0);
  const auto block_size = static_cast<std::uint32_t>(a.block_size);
  const std::uint32_t column = j / block_size;
  const index_t block = table[column * a.table_col];
  if (block < 0 || block >= a.num_blocks) return false;
  const index_t slot0 = j - column * block_size;
  const int left = static_cast<int>(end - j0);  // rows of the step inside the chunk
  const Code* const key = src.key + block * src.key_strides[0] + slot0 * src.key_strides[1] +
                          kv_head * src.key_strides[2] + piece * q;
  const Code* const value = src.value + block * src.value_strides[0] +
                            slot0 * src.value_strides[1] + kv_head * src.value_strides[2] +
                            g * (D / 8);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = g + 8 * r;
    const Code* const p = key + row * src.key_strides[1];
#pragma unroll
    for (int c = 0; c < Rows::key_pieces; ++c)
      cp_async_or_zero<16>(shared_address(&slot.key[r * Rows::key_pieces + c][lane]),
                           p + 4 * piece * c, row < left);
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int row = GqaStep<D, Code>::value_row(r, q);
    const Code* const p = value + row * src.value_strides[1];
#pragma unroll
    for (int c = 0; c < Rows::value_pieces; ++c)
      cp_async_or_zero<Rows::piece_bytes>(
          shared_address(&slot.value[r * Rows::value_pieces + c][lane]), p + piece * c, row < left);
  }
  if constexpr (GqaSource<Code>::scaled) {
    const int row = lane % gqa_rows;
    const bool is_value = lane >= gqa_rows;
    const float* const scales = is_value ? src.value_scale : src.key_scale;
    const index_t* const ss = is_value ? src.value_scale_strides : src.key_scale_strides;
    cp_async_or_zero<4>(shared_address(&slot.scale[is_value ? 1 : 0][row]),
                        scales + block * ss[0] + (slot0 + row) * ss[1] + kv_head * ss[2],
                        row < left);
  }
  return true;
}

template <int D, class Code>
__device__ inline GqaStep<D, Code> gqa_read(const GqaSlot<D, Code>& slot, int lane) {
  using Rows = GqaSlotRows<D, Code>;
  GqaStep<D, Code> s;
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int c = 0; c < Rows::key_pieces; ++c) {
      const uint4 v = slot.key[r * Rows::key_pieces + c][lane];
      s.key[r][4 * c] = v.x;
      s.key[r][4 * c + 1] = v.y;
      s.key[r][4 * c + 2] = v.z;
      s.key[r][4 * c + 3] = v.w;
    }
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int c = 0; c < Rows::value_pieces; ++c) {
      constexpr int words = Rows::piece_bytes / 4;
      const auto v = slot.value[r * Rows::value_pieces + c][lane];
      s.value[r][words * c] = v.x;
      s.value[r][words * c + 1] = v.y;
      if constexpr (words == 4) {
        s.value[r][words * c + 2] = v.z;
        s.value[r][words * c + 3] = v.w;
      }
    }
  return s;
}

inline constexpr int gqa_stages = 3;  // steps per warp staged: two in flight while one is used

// The warps' merge, in the same shared memory as the rings once they are drained.
template <int D>
struct GqaMerge {
  float ml[gqa_warps][2][gqa_heads];         // each warp's max and sum per head
  float acc[gqa_warps - 1][D / 16 * 4][32];  // warps 1..: accumulators in fragment order
};

// Dynamic shared memory of a block: FP8 4224 (D = 128) or 2176 (D = 64) bytes a slot, bf16 8192 or
// 4096, 12 slots.
template <int D, class Code>
constexpr int gqa_shared_bytes() {
  constexpr int ring = static_cast<int>(gqa_warps * gqa_stages * sizeof(GqaSlot<D, Code>));
  constexpr int merge = static_cast<int>(sizeof(GqaMerge<D>));
  return ring > merge ? ring : merge;
}

// Blocks per multiprocessor the launch bounds ask for: 4 where 4 blocks' shared memory fits the
// 228 KB of an sm_90 multiprocessor (1 KB reserved per block), else 2 (bf16 at D = 128: 96 KB a
// block). Every shape fits sm_89's 99 KB per block.
inline constexpr int gqa_multiprocessor_shared = 228 * 1024;
template <int D, class Code>
constexpr int gqa_min_blocks() {
  constexpr int block = gqa_shared_bytes<D, Code>() + 1024;
  static_assert(gqa_shared_bytes<D, Code>() <= 99 * 1024);
  return 4 * block <= gqa_multiprocessor_shared ? 4 : 2;
}

template <int D, class Code>
__global__ void __launch_bounds__(32 * gqa_warps, (gqa_min_blocks<D, Code>()))
    gqa_mma_kernel(DecodeArgs a, GqaSource<Code> src) {
  gpu::start_after_prior_grid();
  static_assert(D == 64 || D == 128);
  constexpr bool scaled = GqaSource<Code>::scaled;
  constexpr float shift = scaled ? 15.0f : 0.0f;  // log2 of the weight at the running max
  constexpr int ksteps = D / 16;
  constexpr int mtiles = D / 16;  // of O^T
  constexpr float log2e = 1.4426950408889634f;
  extern __shared__ uint4 gqa_shared[];

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;
  const int q = lane % 4;
  GqaSlot<D, Code>* const ring =
      reinterpret_cast<GqaSlot<D, Code>*>(gqa_shared) + warp * gqa_stages;
  auto& merge = *reinterpret_cast<GqaMerge<D>*>(gqa_shared);
  const index_t t = blockIdx.z;
  const int split = static_cast<int>(blockIdx.x);
  const int kv_head = static_cast<int>(blockIdx.y) / a.head_groups;
  const int first = static_cast<int>(blockIdx.y) % a.head_groups * gqa_heads;  // in the group
  const int heads = a.group - first < gqa_heads ? a.group - first : gqa_heads;
  const index_t h0 = static_cast<index_t>(kv_head) * a.group + first;

  // A bad length or padding leaves the chunk empty; each step's block id is checked where its
  // copies are issued (a step lies in one block, so every block the chunk reaches is checked),
  // and the block learns of either at the merge.
  const Chunk chunk = chunk_of(a, t, split);
  if (chunk.past) return;
  const std::int32_t* table = chunk.table;
  const index_t begin = chunk.begin;
  const index_t end = chunk.end;
  bool bad = chunk.bad || chunk.pad;

  // Q^T fragments of head g (zero past the block's heads); the score factors of heads 2q, 2q + 1.
  std::uint32_t qf[ksteps][2];
  float qmul[2];
  {
    constexpr int piece = 16 / static_cast<int>(sizeof(Code));  // elements per 16 key bytes
    float x[D / 4];
    // x[i] is d = 4 P (i / P) + P q + i % P with P = piece, the key elements this thread copies.
#pragma unroll
    for (int c = 0; c < D / 32; ++c) {
      const bf16* const qx = a.q0 + t * a.q0_token + (h0 + g) * a.q0_head +
                             4 * piece * (8 * c / piece) + piece * q + 8 * c % piece;
      if (g >= heads) {
#pragma unroll
        for (int i = 0; i < vec_width; ++i) x[c * vec_width + i] = 0.0f;
      } else if (a.q_vec) {
        unpack_bf16x8(*reinterpret_cast<const uint4*>(qx), x + c * vec_width);
      } else {
#pragma unroll
        for (int i = 0; i < vec_width; ++i) x[c * vec_width + i] = to_float(qx[i]);
      }
    }
    if constexpr (scaled) {
      float amax = 0.0f;
#pragma unroll
      for (int i = 0; i < D / 4; ++i) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
      amax = lanes_reduce<4>(amax, MaxFloat{});
      int e = 0;
      frexpf(amax, &e);         // amax < 2^e
      e = e < -100 ? -100 : e;  // 2^(15 - e) stays a finite float
      const float up = ldexpf(1.0f, 15 - e);
      const float own = g < heads ? ldexpf(a.scale * log2e, e - 15) : 0.0f;
      qmul[0] = __shfl(own, 8 * q);  // head 2q's factor, from lane 4 (2q)
      qmul[1] = __shfl(own, 8 * q + 4);
#pragma unroll
      for (int s = 0; s < ksteps; ++s) {
        qf[s][0] = pack_f16x2(x[4 * s] * up, x[4 * s + 1] * up);
        qf[s][1] = pack_f16x2(x[4 * s + 2] * up, x[4 * s + 3] * up);
      }
    } else {
      // bf16 queries as they are (the round trip through float is exact).
      qmul[0] = a.scale * log2e;
      qmul[1] = qmul[0];
#pragma unroll
      for (int s = 0; s < ksteps; ++s) {
        qf[s][0] = pack_bf16x2(x[4 * s], x[4 * s + 1]);
        qf[s][1] = pack_bf16x2(x[4 * s + 2], x[4 * s + 3]);
      }
    }
  }

  // Running max of t + log2|s| (FP8) or t (bf16), heads 2q, 2q + 1.
  float m[2] = {attn_neg_inf, attn_neg_inf};
  float l[2] = {0.0f, 0.0f};     // this thread's rows of the sum
  std::uint32_t acc[mtiles][4];  // O^T: [i][2 e + h] is head 2q + h, d = g D/8 + 2i + e
#pragma unroll
  for (int i = 0; i < mtiles; ++i)
#pragma unroll
    for (int k = 0; k < 4; ++k) acc[i][k] = 0;

  // This warp's k-th step is step w + 4 k of the chunk, staged in slot k % stages; one commit
  // group per step (empty past the last), so that wait_group counts steps.
  const int steps = static_cast<int>((end - begin + gqa_rows - 1) / gqa_rows);
  const auto issue = [&](int k) {
    const int step = warp + k * gqa_warps;
    if (step < steps && !gqa_issue<D, Code>(ring[k % gqa_stages], a, src, table,
                                            begin + step * gqa_rows, end, kv_head, lane))
      bad = true;  // the slot keeps stale rows: computed on, never written out
    cp_async_commit();
  };
#pragma unroll
  for (int k = 0; k < gqa_stages - 1; ++k) issue(k);
  for (int k = 0; warp + k * gqa_warps < steps; ++k) {
    const index_t j0 = begin + static_cast<index_t>(warp + k * gqa_warps) * gqa_rows;
    // The slot refilled now was read in the previous iteration: by every lane once this warp
    // barrier is passed.
    warp_barrier();
    issue(k + gqa_stages - 1);
    cp_async_wait<gqa_stages - 1>();
    if constexpr (scaled) warp_barrier();  // the scales of this step were copied by other lanes
    const GqaSlot<D, Code>& slot = ring[k % gqa_stages];
    const GqaStep<D, Code> cur = gqa_read<D, Code>(slot, lane);
    const int left = static_cast<int>(end - j0);

    // S^T: rows g, 8 + g (c[0], c[1]: heads 2q, 2q + 1 of row g; c[2], c[3]: of row 8 + g).
    std::uint32_t c[4] = {0, 0, 0, 0};
#pragma unroll
    for (int s = 0; s < ksteps; ++s) {
      if constexpr (scaled) {
        const std::uint32_t ka[4] = {
            e4m3x2_to_f16x2<false>(cur.key[0][s]), e4m3x2_to_f16x2<false>(cur.key[1][s]),
            e4m3x2_to_f16x2<true>(cur.key[0][s]), e4m3x2_to_f16x2<true>(cur.key[1][s])};
        mma_f16_m16n8k16(c, ka, qf[s][0], qf[s][1]);
      } else {
        const std::uint32_t ka[4] = {cur.key[0][2 * s], cur.key[1][2 * s], cur.key[0][2 * s + 1],
                                     cur.key[1][2 * s + 1]};
        mma_bf16_m16n8k16(c, ka, qf[s][0], qf[s][1]);
      }
    }

    // Scores t (log2 units) and shifted exponents of rows g, 8 + g: t + log2|s| (FP8), t (bf16).
    float score[2][2];  // [row][head]
    float shifted[2][2];
    float vscale[2] = {1.0f, 1.0f};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = g + 8 * r;
      float lg = 0.0f;
      float ks = 1.0f;
      if constexpr (scaled) {
        vscale[r] = slot.scale[1][row];
        float vs = fabsf(vscale[r]);
        vs = vs < gqa_min_scale ? gqa_min_scale : vs;  // NaN stays NaN
        lg = __log2f(vs);
        ks = slot.scale[0][row];
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float s = as_float(c[2 * r + h]) * qmul[h];
        score[r][h] = row < left ? (scaled ? s * ks : s) : attn_neg_inf;
        shifted[r][h] = scaled ? score[r][h] + lg : score[r][h];
      }
    }
    std::uint32_t pb[2];  // P^T halves (rows g and 8 + g; heads 2q, 2q + 1) as f16 or bf16
    {
      float p[2][2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float step_max = shifted[0][h] > shifted[1][h] ? shifted[0][h] : shifted[1][h];
#pragma unroll
        for (int offset = 4; offset < 32; offset *= 2)
          step_max = MaxFloat{}(step_max, __shfl_xor(step_max, offset));
        const float m_new = step_max > m[h] ? step_max : m[h];
        const float base = (m_new == attn_neg_inf ? 0.0f : m_new) - shift;
        const float alpha = exp2f(m[h] - base - shift);
        float sum = 0.0f;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          if constexpr (scaled) {
            p[r][h] = copysignf(exp2f(shifted[r][h] - base), vscale[r]);
            sum += exp2f(score[r][h] - base);
          } else {
            p[r][h] = exp2f(score[r][h] - base);  // 2^(t - m), the weight itself
            sum += p[r][h];
          }
        }
        l[h] = l[h] * alpha + sum;
        if (m_new != m[h]) {  // mostly not, once the max has settled: the warp skips it
#pragma unroll
          for (int i = 0; i < mtiles; ++i) {
            acc[i][h] = __float_as_uint(as_float(acc[i][h]) * alpha);
            acc[i][2 + h] = __float_as_uint(as_float(acc[i][2 + h]) * alpha);
          }
        }
        m[h] = m_new;
      }
      // Lane (g, q) holds P^T rows g (and 8 + g), columns 2q, 2q + 1; transposed it holds P^T
      // rows 2q, 2q + 1 (and 8 + 2q, 9 + 2q) of column g: the B fragment of V^T P^T.
      if constexpr (scaled) {
        pb[0] = transpose_8x8_b16(pack_f16x2(p[0][0], p[0][1]));
        pb[1] = transpose_8x8_b16(pack_f16x2(p[1][0], p[1][1]));
      } else {
        pb[0] = transpose_8x8_b16(pack_bf16x2(p[0][0], p[0][1]));
        pb[1] = transpose_8x8_b16(pack_bf16x2(p[1][0], p[1][1]));
      }
    }
    if constexpr (!scaled) {
#pragma unroll
      for (int i = 0; i < mtiles; ++i) {
        // Word i of rows 2q, 2q + 1 (and 8 + 2q, 9 + 2q) holds m tile i's rows g (low half) and
        // 8 + g (high half): pairing the rows' low halves, then their high halves, gives the A
        // fragment.
        const std::uint32_t va[4] = {byte_permute(cur.value[0][i], cur.value[1][i], 0x5410),
                                     byte_permute(cur.value[0][i], cur.value[1][i], 0x7632),
                                     byte_permute(cur.value[2][i], cur.value[3][i], 0x5410),
                                     byte_permute(cur.value[2][i], cur.value[3][i], 0x7632)};
        mma_bf16_m16n8k16(acc[i], va, pb[0], pb[1]);
      }
    } else {
#pragma unroll
      for (int w = 0; w < D / 32; ++w) {
        // Byte i of word w of rows (2q, 2q + 1) and (8 + 2q, 9 + 2q), interleaved into code pairs:
        // bytes 0, 1 are m tile 2w (its rows g, 8 + g), bytes 2, 3 m tile 2w + 1.
        const std::uint32_t lo01 = byte_permute(cur.value[0][w], cur.value[1][w], 0x5140);
        const std::uint32_t hi01 = byte_permute(cur.value[0][w], cur.value[1][w], 0x7362);
        const std::uint32_t lo23 = byte_permute(cur.value[2][w], cur.value[3][w], 0x5140);
        const std::uint32_t hi23 = byte_permute(cur.value[2][w], cur.value[3][w], 0x7362);
        const std::uint32_t va0[4] = {e4m3x2_to_f16x2<false>(lo01), e4m3x2_to_f16x2<true>(lo01),
                                      e4m3x2_to_f16x2<false>(lo23), e4m3x2_to_f16x2<true>(lo23)};
        const std::uint32_t va1[4] = {e4m3x2_to_f16x2<false>(hi01), e4m3x2_to_f16x2<true>(hi01),
                                      e4m3x2_to_f16x2<false>(hi23), e4m3x2_to_f16x2<true>(hi23)};
        mma_f16_m16n8k16(acc[2 * w], va0, pb[0], pb[1]);
        mma_f16_m16n8k16(acc[2 * w + 1], va1, pb[0], pb[1]);
      }
    }
  }

  // Merge the warps in warp order: factors 2^(m_w - M) against the block's max M.
  cp_async_wait<0>();  // only empty groups are left, but the rings must be idle
  // before the merge reuses their memory
  if (__syncthreads_or(bad ? 1 : 0) != 0) {
    write_constant(a, chunk, t, split, h0, h0 + heads);
    return;
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
#pragma unroll
    for (int offset = 4; offset < 32; offset *= 2) l[h] += __shfl_xor(l[h], offset);
    if (g == 0) {
      merge.ml[warp][0][2 * q + h] = m[h];
      merge.ml[warp][1][2 * q + h] = l[h];
    }
  }
  __syncthreads();
  float block_m[2];
  float block_l[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = 2 * q + h;
    float mx = attn_neg_inf;
#pragma unroll
    for (int w = 0; w < gqa_warps; ++w) mx = merge.ml[w][0][r] > mx ? merge.ml[w][0][r] : mx;
    const float base = (mx == attn_neg_inf ? 0.0f : mx) - shift;
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < gqa_warps; ++w)
      sum += exp2f(merge.ml[w][0][r] - base - shift) * merge.ml[w][1][r];
    block_m[h] = mx == attn_neg_inf ? attn_neg_inf : base;
    block_l[h] = sum;
    const float f = exp2f(m[h] - base - shift);
#pragma unroll
    for (int i = 0; i < mtiles; ++i) {
      acc[i][h] = __float_as_uint(as_float(acc[i][h]) * f);
      acc[i][2 + h] = __float_as_uint(as_float(acc[i][2 + h]) * f);
    }
  }
  if (warp > 0) {
#pragma unroll
    for (int i = 0; i < mtiles; ++i)
#pragma unroll
      for (int k = 0; k < 4; ++k) merge.acc[warp - 1][4 * i + k][lane] = as_float(acc[i][k]);
  }
  __syncthreads();
  if (warp > 0) return;
  float o[mtiles][4];
#pragma unroll
  for (int i = 0; i < mtiles; ++i)
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      float v = as_float(acc[i][k]);
#pragma unroll
      for (int w = 1; w < gqa_warps; ++w) v += merge.acc[w - 1][4 * i + k][lane];
      o[i][k] = v;
    }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = 2 * q + h;
    if (r >= heads) continue;
    const index_t head = h0 + r;
    if (a.splits == 1) {
      bf16* const out = a.out + t * a.out_token + head * a.out_head + g * (D / 8);
#pragma unroll
      for (int i = 0; i < mtiles; ++i) {
        out[2 * i] = to_bf16(div(o[i][h], block_l[h]));
        out[2 * i + 1] = to_bf16(div(o[i][2 + h], block_l[h]));
      }
    } else {
      const index_t row = (t * a.q_heads + head) * a.splits + split;
      float* const pa = a.partial_acc + row * D + g * (D / 8);
#pragma unroll
      for (int i = 0; i < mtiles; i += 2)
        *reinterpret_cast<float4*>(pa + 2 * i) =
            make_float4(o[i][h], o[i][2 + h], o[i + 1][h], o[i + 1][2 + h]);
      if (g == 0) {
        // The combine weighs splits by e^(m_s - max m): the natural-log form of the base.
        a.partial_ml[2 * row] = block_m[h] * 0.6931471805599453f;
        a.partial_ml[2 * row + 1] = block_l[h];
      }
    }
  }
}

int multiprocessors(int device) {
  return gpu::once_per_device(device, [device] {
    hipDeviceProp_t p;
    ATOM_GPU_CHECK(hipGetDeviceProperties(&p, device));
    return p.multiProcessorCount;
  });
}

// The split partials of a launch, per stream (detail/stream_scratch.hpp).
void* split_scratch(const ops::Gpu& gpu, std::size_t bytes) {
  static constexpr char owner[] = "attention split partials";
  return stream_scratch(owner, gpu, bytes);
}

bool aligned(const void* p, std::size_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

// The context split of a launch: blocks * splits near `target` blocks, chunks a multiple of
// `granule` rows and at least `min_chunk`; then the partials' scratch when there is more than one.
void plan_split(const ops::Gpu& gpu, DecodeArgs& a, index_t tokens, index_t blocks, index_t target,
                index_t granule, index_t min_chunk) {
  const index_t capacity = a.table_cols * a.block_size;
  index_t splits = (target + blocks - 1) / blocks;
  splits = splits < 1 ? 1 : (splits > attn_max_splits ? attn_max_splits : splits);
  index_t chunk = (capacity + splits - 1) / splits;
  chunk = (chunk + granule - 1) / granule * granule;
  chunk = chunk < min_chunk ? min_chunk : chunk;
  splits = capacity > chunk ? (capacity + chunk - 1) / chunk : 1;
  a.chunk = chunk;
  a.splits = static_cast<int>(splits);
  if (splits > 1) {
    const index_t rows = tokens * a.q_heads * splits;
    auto* base = static_cast<float*>(
        split_scratch(gpu, static_cast<std::size_t>(rows * (a.value_dim + 2)) * sizeof(float)));
    a.partial_acc = base;
    a.partial_ml = base + rows * a.value_dim;
  }
}

// The combine when the context was split; on sm_90 it launches while the decode kernel runs and
// waits for its partials (gpu::launch).
void finish_split(const DecodeArgs& a, index_t tokens, hipStream_t stream) {
  if (a.splits > 1)
    gpu::launch(combine_kernel, static_cast<unsigned>(tokens * a.q_heads), attn_combine_threads, 0,
                stream, a);
}

void expect_tokens(std::string_view op, index_t tokens) {
  expect(tokens <= 65535, op,
         "the GPU kernel takes at most 65535 tokens, got " + std::to_string(tokens));
}

// Picks heads per block and the context split, then launches the SIMT decode kernel (and the
// combine when the context is split).
template <class Source>
void launch_decode(std::string_view op, const ops::Gpu& gpu, DecodeArgs a, const Source& src,
                   index_t tokens, index_t kv_heads) {
  if (tokens == 0 || a.q_heads == 0) return;
  expect_tokens(op, tokens);
  int heads_per_block = attn_min_heads;
  while (heads_per_block < a.group && heads_per_block < attn_max_heads) heads_per_block *= 2;
  a.head_groups = (a.group + heads_per_block - 1) / heads_per_block;
  const index_t grid_y = kv_heads * a.head_groups;
  expect(grid_y <= 65535, op, "too many heads for the GPU kernel");
  const int device = gpu::current_device();
  plan_split(gpu, a, tokens, tokens * grid_y, 4 * multiprocessors(device), attn_tile,
             attn_min_chunk);
  const auto stream = static_cast<hipStream_t>(gpu.stream);
  const dim3 grid(static_cast<unsigned>(a.splits), static_cast<unsigned>(grid_y),
                  static_cast<unsigned>(tokens));
  gpu::launch(decode_kernel<Source>, grid, static_cast<unsigned>(heads_per_block * attn_lanes), 0,
              stream, a, src);
  finish_split(a, tokens, stream);
}

// Lets Kernel take `bytes` of dynamic shared memory on `device` (once per host thread and device).
template <auto Kernel>
void allow_shared(int device, int bytes) {
  gpu::once_per_device(device, [bytes] {
    gpu::allow_dynamic_shared(Kernel, bytes);
    return true;
  });
}

template <int MT, bool Vec>
void launch_mla_kernel(const dim3& grid, hipStream_t stream, const DecodeArgs& a,
                       const MlaSource& src, int device) {
  constexpr int bytes = mla_shared_bytes<MT>();
  allow_shared<mla_mma_kernel<MT, Vec>>(device, bytes);
  gpu::launch(mla_mma_kernel<MT, Vec>, grid, 128 * MT, bytes, stream, a, src);
}

// MLA: the tensor-core kernel where mma.sync exists (one block of 16, 32 or 64 heads per
// multiprocessor, the context split until the blocks cover the GPU), else the SIMT kernel.
template <bool Mma>
void launch_mla(std::string_view op, const ops::Gpu& gpu, DecodeArgs a, const MlaSource& src,
                index_t tokens) {
  if constexpr (!Mma) {
    launch_decode(op, gpu, a, src, tokens, 1);
  } else {
    if (tokens == 0 || a.q_heads == 0) return;
    expect_tokens(op, tokens);
    const int mt = a.q_heads <= 16 ? 1 : (a.q_heads <= 32 ? 2 : 4);
    const index_t head_groups = (a.q_heads + 16 * mt - 1) / (16 * mt);
    expect(head_groups <= 65535, op, "too many heads for the GPU kernel");
    const int device = gpu::current_device();
    plan_split(gpu, a, tokens, tokens * head_groups, multiprocessors(device), mla_rows,
               mla_min_chunk);
    const auto stream = static_cast<hipStream_t>(gpu.stream);
    const dim3 grid(static_cast<unsigned>(a.splits), static_cast<unsigned>(head_groups),
                    static_cast<unsigned>(tokens));
    if (src.vec) {
      if (mt == 1) launch_mla_kernel<1, true>(grid, stream, a, src, device);
      if (mt == 2) launch_mla_kernel<2, true>(grid, stream, a, src, device);
      if (mt == 4) launch_mla_kernel<4, true>(grid, stream, a, src, device);
    } else {
      if (mt == 1) launch_mla_kernel<1, false>(grid, stream, a, src, device);
      if (mt == 2) launch_mla_kernel<2, false>(grid, stream, a, src, device);
      if (mt == 4) launch_mla_kernel<4, false>(grid, stream, a, src, device);
    }
    finish_split(a, tokens, stream);
  }
}

// Whether this build's code for `device` has the tensor-core GQA kernel's body: it is compiled
// for sm_89 and newer only (the PTX target of the loaded code, not the card, decides).
template <int D, class Code>
bool gqa_mma_built(int device) {
  return gpu::once_per_device(device, [] {
    return gpu::compiled_arch(reinterpret_cast<const void*>(gqa_mma_kernel<D, Code>)) >= 89;
  });
}

template <int D, class Code>
void launch_gqa_mma(const ops::Gpu& gpu, DecodeArgs a, const GqaSource<Code>& src, index_t tokens,
                    index_t grid_y, int device) {
  plan_split(gpu, a, tokens, tokens * grid_y, 2 * multiprocessors(device), gqa_granule,
             gqa_granule);
  const auto stream = static_cast<hipStream_t>(gpu.stream);
  const dim3 grid(static_cast<unsigned>(a.splits), static_cast<unsigned>(grid_y),
                  static_cast<unsigned>(tokens));
  constexpr int bytes = gqa_shared_bytes<D, Code>();
  allow_shared<gqa_mma_kernel<D, Code>>(device, bytes);
  gpu::launch(gqa_mma_kernel<D, Code>, grid, 32 * gqa_warps, bytes, stream, a, src);
  finish_split(a, tokens, stream);
}

// GQA over any cache format: the tensor-core kernel where it is built (sm_89 and newer: mma.sync
// and the e4m3 conversion), head_dim is 64 or 128, a 16-row step lies in one cache block and the
// cache rows are 16-byte aligned; else the SIMT kernel.
template <bool Mma, class Code>
void launch_gqa(std::string_view op, const ops::Gpu& gpu, DecodeArgs a, const GqaSource<Code>& src,
                index_t tokens, index_t kv_heads, bool rows_aligned) {
  if constexpr (Mma) {
    const bool shape = (a.key_dim == 64 || a.key_dim == 128) && a.block_size % gqa_rows == 0;
    if (shape && rows_aligned && tokens > 0 && a.q_heads > 0) {
      const int device = gpu::current_device();
      if (a.key_dim == 64 ? gqa_mma_built<64, Code>(device) : gqa_mma_built<128, Code>(device)) {
        expect_tokens(op, tokens);
        a.head_groups = (a.group + gqa_heads - 1) / gqa_heads;
        const index_t grid_y = kv_heads * a.head_groups;
        expect(grid_y <= 65535, op, "too many heads for the GPU kernel");
        if (a.key_dim == 64)
          launch_gqa_mma<64, Code>(gpu, a, src, tokens, grid_y, device);
        else
          launch_gqa_mma<128, Code>(gpu, a, src, tokens, grid_y, device);
        return;
      }
    }
  }
  launch_decode(op, gpu, a, src, tokens, kv_heads);
}

template <class Q, class O>
DecodeArgs common_args(const Q& q, int key_dim, int value_dim, int group,
                       const ops::DecodeBatch& batch, index_t num_blocks, index_t block_size,
                       float softmax_scale, const O& out) {
  DecodeArgs a{};
  a.q0 = q.data;
  a.q0_token = q.stride(0);
  a.q0_head = q.stride(1);
  a.q0_dim = key_dim;
  a.q1 = nullptr;
  a.key_dim = key_dim;
  a.value_dim = value_dim;
  a.q_heads = static_cast<int>(q.size(1));
  a.group = group;
  a.batch = batch;
  a.block_table = batch.block_table.data;
  a.table_row = batch.block_table.stride(0);
  a.table_col = batch.block_table.stride(1);
  a.table_cols = batch.block_table.size(1);
  a.num_blocks = num_blocks;
  a.block_size = block_size;
  a.scale = softmax_scale;
  a.out = out.data;
  a.out_token = out.stride(0);
  a.out_head = out.stride(1);
  return a;
}

}  // namespace
}  // namespace atom::kernels

namespace atom::ops {

void mla_decode(const Gpu& gpu, View3<const bf16> q_latent, View3<const bf16> q_pe,
                View3<const bf16> cache, const DecodeBatch& batch, float softmax_scale,
                View3<bf16> out) {
  constexpr std::string_view op = "mla_decode";
  expect_mla_decode_args(op, q_latent, q_pe, cache, batch, softmax_scale, out);
  const index_t kv_lora = q_latent.size(2);
  const index_t rope_dim = q_pe.size(2);
  expect(kv_lora % 8 == 0 && rope_dim % 8 == 0 && kv_lora <= 512 && kv_lora + rope_dim <= 576, op,
         "the GPU kernel takes kv_lora and rope multiples of 8 with kv_lora <= 512 and kv_lora + "
         "rope <= 576, got kv_lora " +
             std::to_string(kv_lora) + ", rope " + std::to_string(rope_dim));
  const index_t heads = q_latent.size(1);
  expect(heads <= 0x7fffffff, op, "too many heads");
  kernels::DecodeArgs a = kernels::common_args(
      q_latent, static_cast<int>(kv_lora + rope_dim), static_cast<int>(kv_lora),
      static_cast<int>(heads), batch, cache.size(0), cache.size(1), softmax_scale, out);
  a.q0_dim = static_cast<int>(kv_lora);
  a.q1 = q_pe.data;
  a.q1_token = q_pe.stride(0);
  a.q1_head = q_pe.stride(1);
  a.q_vec = kernels::aligned(q_latent.data, 16) && q_latent.stride(0) % 8 == 0 &&
            q_latent.stride(1) % 8 == 0 && kernels::aligned(q_pe.data, 16) &&
            q_pe.stride(0) % 8 == 0 && q_pe.stride(1) % 8 == 0;
  const bool vec =
      kernels::aligned(cache.data, 16) && cache.stride(0) % 8 == 0 && cache.stride(1) % 8 == 0;
  const kernels::MlaSource src{cache.data, cache.stride(0), cache.stride(1), vec};
  kernels::launch_mla<gpu::nvidia_ptx>(op, gpu, a, src, q_latent.size(0));
}

template <KvCacheFormat F>
void gqa_decode(const Gpu& gpu, View3<const bf16> q, const ConstKvCache<F>& cache,
                const DecodeBatch& batch, float softmax_scale, View3<bf16> out) {
  constexpr std::string_view op = "gqa_decode";
  expect_gqa_decode_args(op, q, cache, batch, softmax_scale, out);
  const index_t dim = cache.head_dim();
  expect(dim % 8 == 0 && dim <= 256, op,
         "the GPU kernel takes head_dim a multiple of 8 up to 256, got " + std::to_string(dim));
  const index_t kv_heads = cache.kv_heads();
  expect(q.size(1) <= 0x7fffffff, op, "too many heads");
  kernels::DecodeArgs a = kernels::common_args(
      q, static_cast<int>(dim), static_cast<int>(dim), static_cast<int>(q.size(1) / kv_heads),
      batch, cache.num_blocks(), cache.block_size(), softmax_scale, out);
  a.q_vec = kernels::aligned(q.data, 16) && q.stride(0) % 8 == 0 && q.stride(1) % 8 == 0;
  using Code = typename ConstKvCache<F>::Code;
  constexpr auto code_bytes = static_cast<index_t>(sizeof(Code));
  // Whether every row of the key and value views starts `bytes`-aligned.
  const auto rows_aligned = [&](index_t bytes) {
    const auto rows = [bytes](const auto& v) {
      return kernels::aligned(v.data, static_cast<std::size_t>(bytes)) &&
             v.stride(0) * code_bytes % bytes == 0 && v.stride(1) * code_bytes % bytes == 0 &&
             v.stride(2) * code_bytes % bytes == 0;
    };
    return rows(cache.key) && rows(cache.value);
  };
  const bool vec = rows_aligned(kernels::vec_width * code_bytes);  // one load of 8 elements
  const kernels::GqaSource<Code> src{
      cache.key.data,
      cache.value.data,
      cache.key_scale.data,
      cache.value_scale.data,
      {cache.key.stride(0), cache.key.stride(1), cache.key.stride(2)},
      {cache.value.stride(0), cache.value.stride(1), cache.value.stride(2)},
      {cache.key_scale.stride(0), cache.key_scale.stride(1), cache.key_scale.stride(2)},
      {cache.value_scale.stride(0), cache.value_scale.stride(1), cache.value_scale.stride(2)},
      vec};
  kernels::launch_gqa<gpu::nvidia_ptx>(op, gpu, a, src, q.size(0), kv_heads, rows_aligned(16));
}

#define ATOM_GPU_GQA_DECODE(F)                                                      \
  template void gqa_decode<KvCacheFormat::F>(const Gpu&, View3<const bf16>,         \
                                             const ConstKvCache<KvCacheFormat::F>&, \
                                             const DecodeBatch&, float, View3<bf16>);
ATOM_GPU_GQA_DECODE(fp8_row)
ATOM_GPU_GQA_DECODE(fp8_tensor)
ATOM_GPU_GQA_DECODE(bf16)
#undef ATOM_GPU_GQA_DECODE

}  // namespace atom::ops
