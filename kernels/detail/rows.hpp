// The row engine of the norm and quant kernels. A row is served by a group of threads: the whole
// block (RowValues, the block-wide entry points) or `group` consecutive threads of it, a multiple
// of the warp size, so that one block serves several rows (RowLane, PackedRow). Each thread holds
// Chunks groups of 8 consecutive values (element (c * group + lane) * 8 + j of chunk c), so a
// chunk across the group is one coalesced sweep of 16-byte accesses. The row stays in registers
// from the load through the sum of squares to the epilogue: as floats (RowValues) or, for rows of
// bf16 values, as the bf16 bits themselves (PackedRow, half the registers), from which the
// epilogue recomputes each float value with the same operations. Vec selects 16-byte accesses
// (every pointer and row stride aligned, columns a multiple of 8); otherwise each value is
// accessed on its own with the same layout.
//
// The epilogues mirror store_row (src/ops/quant.cpp): a FP8 group of 128 columns is 16
// consecutive threads of one chunk, a MXFP4 block of 32 columns is 4, so their amax is a butterfly
// over those lanes; the per-token amax is a block reduction. Block sizes are multiples of 64, so
// the groups never straddle a warp on either vendor.
#pragma once

#include <cstdint>

#include "atom/core/tensor.hpp"
#include "atom/ops/formats.hpp"
#include "fast_quant.hpp"
#include "reduce.hpp"

namespace atom::kernels {

// Row r of a matrix that may be a [rows / heads, heads] grid of rows (the per-head norms of a
// packed projection): offset (r / heads) * outer + (r % heads) * inner.
struct RowMap {
  index_t heads = 1;
  index_t outer = 0;
  index_t inner = 0;
  __device__ index_t offset(index_t r) const { return (r / heads) * outer + (r % heads) * inner; }
};

template <int Chunks>
using RowValues = float[Chunks][vec_width];

// This thread's place among the threads serving its row: `lane` of `group`.
struct RowLane {
  int lane;
  int group;
};

__device__ inline RowLane block_lane() {
  return {static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x)};
}

// Groups of `group` consecutive threads, one row each (group a multiple of the warp size).
__device__ inline RowLane group_lane(int group) {
  return {static_cast<int>(threadIdx.x) % group, group};
}

template <int Chunks>
__device__ inline int chunk_base(int c, const RowLane& at) {
  return (c * at.group + at.lane) * vec_width;
}

template <int Chunks>
__device__ inline int chunk_base(int c) {
  return chunk_base<Chunks>(c, block_lane());
}

// Columns past `cols` read as 0.
template <int Chunks, bool Vec>
__device__ inline void load_row(const bf16* src, int cols, RowValues<Chunks>& x,
                                const RowLane& at) {
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    const int base = chunk_base<Chunks>(c, at);
    if constexpr (Vec) {
      if (base < cols) {
        unpack_bf16x8(*reinterpret_cast<const uint4*>(src + base), x[c]);
      } else {
#pragma unroll
        for (int j = 0; j < vec_width; ++j) x[c][j] = 0.0f;
      }
    } else {
#pragma unroll
      for (int j = 0; j < vec_width; ++j)
        x[c][j] = base + j < cols ? to_float(src[base + j]) : 0.0f;
    }
  }
}

template <int Chunks, bool Vec>
__device__ inline void load_row(const bf16* src, int cols, RowValues<Chunks>& x) {
  load_row<Chunks, Vec>(src, cols, x, block_lane());
}

template <int Chunks, bool Vec>
__device__ inline void store_bf16_row(bf16* dst, int cols, const RowValues<Chunks>& y) {
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    const int base = chunk_base<Chunks>(c);
    if constexpr (Vec) {
      if (base < cols) *reinterpret_cast<uint4*>(dst + base) = pack_bf16x8(y[c]);
    } else {
#pragma unroll
      for (int j = 0; j < vec_width; ++j)
        if (base + j < cols) dst[base + j] = to_bf16(y[c][j]);
    }
  }
}

// x becomes y = (x * r) * w with r = 1 / sqrt(ss / cols + eps). ss: each thread sums its values
// in column order, then block_reduce. Padding values are 0 and add nothing.
template <int Chunks, bool Vec>
__device__ inline void normalize_row(RowValues<Chunks>& x, const bf16* weight, int cols, float eps,
                                     float* scratch) {
  RowValues<Chunks> w;
  load_row<Chunks, Vec>(weight, cols, w);
  float sum_sq = 0.0f;
#pragma unroll
  for (int c = 0; c < Chunks; ++c)
#pragma unroll
    for (int j = 0; j < vec_width; ++j) sum_sq = add(sum_sq, mul(x[c][j], x[c][j]));
  sum_sq = block_reduce(sum_sq, Sum{}, scratch);
  const float r = rms_inverse(sum_sq, static_cast<float>(cols), eps);
#pragma unroll
  for (int c = 0; c < Chunks; ++c)
#pragma unroll
    for (int j = 0; j < vec_width; ++j) x[c][j] = mul(mul(x[c][j], r), w[c][j]);
}

// ---- rows kept as bf16 bits ----

// Chunk c of a row of bf16 values: 8 values in one uint4, exactly as they sit in memory.
template <int Chunks>
using PackedRow = uint4[Chunks];

// Columns past `cols` read as 0.
template <int Chunks, bool Vec>
__device__ inline void load_packed(const bf16* src, int cols, PackedRow<Chunks>& x,
                                   const RowLane& at) {
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    const int base = chunk_base<Chunks>(c, at);
    if constexpr (Vec) {
      x[c] = base < cols ? *reinterpret_cast<const uint4*>(src + base) : make_uint4(0, 0, 0, 0);
    } else {
      std::uint32_t words[4] = {0, 0, 0, 0};
#pragma unroll
      for (int j = 0; j < vec_width; ++j)
        if (base + j < cols) words[j / 2] |= std::uint32_t{src[base + j].bits} << (16 * (j % 2));
      x[c] = make_uint4(words[0], words[1], words[2], words[3]);
    }
  }
}

template <int Chunks, bool Vec>
__device__ inline void store_packed(bf16* dst, int cols, const PackedRow<Chunks>& x,
                                    const RowLane& at) {
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    const int base = chunk_base<Chunks>(c, at);
    if constexpr (Vec) {
      if (base < cols) *reinterpret_cast<uint4*>(dst + base) = x[c];
    } else {
      const std::uint32_t words[4] = {x[c].x, x[c].y, x[c].z, x[c].w};
#pragma unroll
      for (int j = 0; j < vec_width; ++j)
        if (base + j < cols)
          dst[base + j] = bf16{static_cast<std::uint16_t>(words[j / 2] >> (16 * (j % 2)))};
    }
  }
}

// bf16(x + r) element by element: the residual add's new residual.
__device__ inline uint4 add_bf16x8(const uint4& x, const uint4& r) {
  float a[vec_width];
  float b[vec_width];
  unpack_bf16x8(x, a);
  unpack_bf16x8(r, b);
#pragma unroll
  for (int j = 0; j < vec_width; ++j) a[j] = add(a[j], b[j]);
  return pack_bf16x8(a);
}

// This thread's sum of squares of its values in column order (as normalize_row sums them).
template <int Chunks>
__device__ inline float sum_squares(const PackedRow<Chunks>& x) {
  float sum_sq = 0.0f;
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    float v[vec_width];
    unpack_bf16x8(x[c], v);
#pragma unroll
    for (int j = 0; j < vec_width; ++j) sum_sq = add(sum_sq, mul(v[j], v[j]));
  }
  return sum_sq;
}

// ---- row sources: the float values an epilogue stores, chunk by chunk ----

template <int Chunks>
struct FloatRow {
  const RowValues<Chunks>& v;
  __device__ void values(int c, float* y) const {
#pragma unroll
    for (int j = 0; j < vec_width; ++j) y[j] = v[c][j];
  }
};

template <int Chunks>
struct PlainRow {
  PackedRow<Chunks> x;
  __device__ void values(int c, float* y) const { unpack_bf16x8(x[c], y); }
};

// y = (x * r) * w, as normalize_row computes it.
template <int Chunks>
struct NormedRow {
  PackedRow<Chunks> x;
  PackedRow<Chunks> w;
  float r;
  __device__ void values(int c, float* y) const {
    float wv[vec_width];
    unpack_bf16x8(x[c], y);
    unpack_bf16x8(w[c], wv);
#pragma unroll
    for (int j = 0; j < vec_width; ++j) y[j] = mul(mul(y[j], r), wv[j]);
  }
};

// ---- epilogues: device-side descriptions of the output formats ----

struct Bf16Rows {
  bf16* x;
  RowMap map;
};
struct Fp8TokenRows {
  fp8_e4m3* q;
  index_t q_stride;
  float* scale;
  index_t scale_stride;
};
struct Fp8GroupRows {
  fp8_e4m3* q;
  index_t q_stride;
  float* scale;
  index_t scale_stride;
};
struct Mxfp4Rows {
  std::uint8_t* packed;
  index_t packed_stride;
  e8m0* scale;
  index_t scale_stride;
};

inline constexpr float fp8_scale_max = fp8_max<Fp8Kind::e4m3fn>;

__device__ inline std::uint32_t abs_bits(float v) {
  return bits_of(v) & float_abs_mask;
}

// quant.cpp's fp8_scale_for on the amax bits (NaN bits win the max, so NaN gives a NaN scale).
__device__ inline float fp8_scale_for(std::uint32_t amax_bits) {
  const float amax = float_of(amax_bits);
  return amax == 0.0f ? 1.0f : div(amax, fp8_scale_max);
}

template <bool Vec>
__device__ inline void store_fp8_codes(fp8_e4m3* q, int cols, int base, const float* y,
                                       const Fp8Divisor& d) {
  const uint2 codes = fp8x8(y, d);
  if constexpr (Vec) {
    if (base < cols) *reinterpret_cast<uint2*>(q + base) = codes;
  } else {
#pragma unroll
    for (int j = 0; j < vec_width; ++j)
      if (base + j < cols)
        q[base + j] =
            fp8_e4m3{static_cast<std::uint8_t>((j < 4 ? codes.x : codes.y) >> (8 * (j % 4)))};
  }
}

// store_values: the row's values from `src` in the output format. A thread group whose `cols` is
// 0 (a row past the matrix) stores nothing but takes part in the group's reductions.
template <int Chunks, bool Vec, class Src>
__device__ inline void store_values(const Bf16Rows& out, index_t row, int cols, const Src& src,
                                    std::uint32_t*, const RowLane& at) {
  bf16* dst = out.x + out.map.offset(row);
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    const int base = chunk_base<Chunks>(c, at);
    float y[vec_width];
    src.values(c, y);
    if constexpr (Vec) {
      if (base < cols) *reinterpret_cast<uint4*>(dst + base) = pack_bf16x8(y);
    } else {
#pragma unroll
      for (int j = 0; j < vec_width; ++j)
        if (base + j < cols) dst[base + j] = to_bf16(y[j]);
    }
  }
}

template <int Chunks, bool Vec, class Src>
__device__ inline void store_values(const Fp8TokenRows& out, index_t row, int cols, const Src& src,
                                    std::uint32_t* scratch, const RowLane& at) {
  // The whole row's values stay live between the amax and the codes; the source's own registers
  // die as they are produced.
  RowValues<Chunks> y;
  std::uint32_t amax = 0;
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    src.values(c, y[c]);
#pragma unroll
    for (int j = 0; j < vec_width; ++j) amax = MaxBits{}(amax, abs_bits(y[c][j]));
  }
  amax = group_reduce(amax, MaxBits{}, scratch, at.group);
  const Fp8Divisor d(fp8_scale_for(amax));
  if (at.lane == 0 && cols > 0) out.scale[row * out.scale_stride] = d.scale;
#pragma unroll
  for (int c = 0; c < Chunks; ++c)
    store_fp8_codes<Vec>(out.q + row * out.q_stride, cols, chunk_base<Chunks>(c, at), y[c], d);
}

template <int Chunks, bool Vec, class Src>
__device__ inline void store_values(const Fp8GroupRows& out, index_t row, int cols, const Src& src,
                                    std::uint32_t*, const RowLane& at) {
  constexpr int lanes = static_cast<int>(ops::fp8_group) / vec_width;
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    float y[vec_width];
    src.values(c, y);
    std::uint32_t amax = 0;
#pragma unroll
    for (int j = 0; j < vec_width; ++j) amax = MaxBits{}(amax, abs_bits(y[j]));
    amax = lanes_reduce<lanes>(amax, MaxBits{});
    const Fp8Divisor d(fp8_scale_for(amax));
    const int base = chunk_base<Chunks>(c, at);
    if (base < cols && base % static_cast<int>(ops::fp8_group) == 0)
      out.scale[row * out.scale_stride + base / static_cast<int>(ops::fp8_group)] = d.scale;
    store_fp8_codes<Vec>(out.q + row * out.q_stride, cols, base, y, d);
  }
}

// quantize_mx_block on the 8 values of one thread, the block's amax shared by 4 lanes.
template <int Chunks, bool Vec, class Src>
__device__ inline void store_values(const Mxfp4Rows& out, index_t row, int cols, const Src& src,
                                    std::uint32_t*, const RowLane& at) {
  constexpr int lanes = mx_block / vec_width;
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    const int base = chunk_base<Chunks>(c, at);
    float y[vec_width];
    src.values(c, y);
    std::uint32_t amax = 0;
#pragma unroll
    for (int j = 0; j < vec_width; ++j)
      if (base + j < cols) amax = MaxBits{}(amax, abs_bits(y[j]));
    amax = lanes_reduce<lanes>(amax, MaxBits{});
    const e8m0 scale = mx_scale_for(float_of(amax > float_inf_bits ? float_inf_bits : amax));
    const bool nan_scale = scale.bits == e8m0_nan_code;
    const float inv = nan_scale ? 0.0f : inverse_scale(scale);
    // A NaN scale zeroes every code; so does a column past the row (the padding nibble).
    std::uint32_t word = 0;
#pragma unroll
    for (int j = 0; j < vec_width; ++j) {
      const bool in = Vec || base + j < cols;
      const std::uint32_t code = e2m1_code(mul(y[j], inv));
      word |= (nan_scale || !in ? 0u : code) << (4 * j);
    }
    std::uint8_t* packed = out.packed + row * out.packed_stride + base / 2;
    if constexpr (Vec) {
      if (base < cols) *reinterpret_cast<std::uint32_t*>(packed) = word;
    } else {
#pragma unroll
      for (int j = 0; j < vec_width; j += 2)
        if (base + j < cols) packed[j / 2] = static_cast<std::uint8_t>(word >> (4 * j));
    }
    if (base < cols && base % mx_block == 0)
      out.scale[row * out.scale_stride + base / mx_block] = scale;
  }
}

// The block-wide form: one row per block, its float values in registers.
template <int Chunks, bool Vec, class Out>
__device__ inline void store_row(const Out& out, index_t row, int cols, const RowValues<Chunks>& y,
                                 std::uint32_t* scratch) {
  store_values<Chunks, Vec>(out, row, cols, FloatRow<Chunks>{y}, scratch, block_lane());
}

// ---- host-side choice of the block shape ----

// Chunks per thread and threads per block for a row of `cols` values: the fewest chunks that keep
// the block at 256 threads or less (up to 8 chunks, then up to 1024 threads).
struct RowShape {
  int chunks;
  int threads;
};

inline RowShape row_shape(index_t cols) {
  const index_t vectors = (cols + vec_width - 1) / vec_width;
  int chunks = 1;
  while (chunks < 8 && (vectors + chunks - 1) / chunks > 256) chunks *= 2;
  const index_t threads = (vectors + chunks - 1) / chunks;
  // Multiples of 64: whole warps on both vendors, so quant groups never straddle one.
  const index_t rounded = (threads + 63) / 64 * 64;
  return {chunks, static_cast<int>(rounded)};
}

// The warp size of the device code the launching pass builds for (nvcc: 32, AMD: 64).
inline constexpr int launch_warp = gpu::nvidia_ptx ? 32 : 64;

// Several rows per block: `group` threads per row (a multiple of launch_warp), `rows_per_block`
// rows, `chunks` vectors of 8 values per thread.
struct GroupShape {
  int chunks;
  int group;
  int rows_per_block;
  int threads() const { return group * rows_per_block; }
};

// The group shape with `chunks` per thread and `rows_per_block` rows for rows of `cols` values.
inline GroupShape group_shape(index_t cols, int chunks, int rows_per_block) {
  const index_t vectors = (cols + vec_width - 1) / vec_width;
  const index_t threads = (vectors + chunks - 1) / chunks;
  const index_t group = (threads + launch_warp - 1) / launch_warp * launch_warp;
  return {chunks, static_cast<int>(group), rows_per_block};
}

// How many registers a row's epilogue holds besides the row: the plain norms into bf16 or FP8 per
// token hold the fewest (no residual, no per-chunk scale work).
enum class EpilogueWeight { bf16_plain, token_plain, other };

// From this many rows on the kernel streams from memory and the shape is chosen for throughput;
// below it, for the latency of a few rows spread over the multiprocessors.
inline constexpr index_t streaming_rows = 1024;

// The library's shape for the packed-row RMSNorm over `rows` rows of `cols` values, from the
// H100 measurements in docs/bench-notes.md (hidden 7168 and 2048, 64 to 16384 rows). Few rows:
// the fewest chunks that keep a row at 256 threads or less, one row per block. Streaming: at
// least 4 chunks (7168: 224 threads per row, no idle lane), 8 for the plain bf16 norm, and for the
// two light epilogues one warp per row (8 chunks, two rows per block) where that holds the row.
// More rows per block than that measured slower at every size: they couple the rows' barriers.
inline GroupShape norm_shape(index_t cols, index_t rows, EpilogueWeight weight) {
  const index_t vectors = (cols + vec_width - 1) / vec_width;
  const auto fewest_chunks = [&](int at_least) {
    int chunks = at_least;
    while (chunks < 8 && (vectors + chunks - 1) / chunks > 256) chunks *= 2;
    return chunks;
  };
  if (rows < streaming_rows) return group_shape(cols, fewest_chunks(1), 1);
  if (weight != EpilogueWeight::other && (vectors + 7) / 8 <= launch_warp)
    return group_shape(cols, 8, 2);
  if (weight == EpilogueWeight::bf16_plain) return group_shape(cols, 8, 1);
  return group_shape(cols, fewest_chunks(4), 1);
}

inline bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

}  // namespace atom::kernels
