// The routed expert GEMMs' rows: which rows of ids name a CTA's expert, handed to a dense GEMM
// tile (the MXFP4 decode tiles of kernels/detail/gemm_*_decode.hpp, the bf16 and FP8 block tiles
// of kernels/gemm_dense.hip) a chunk at a time, with the weight pointers moved to that expert.
//
// Grid y is the CTA's slot. By row (R <= E, decode): slot s serves expert ids[s] if no earlier
// row names it (the first row of an expert leads it), so each expert present is served once; an
// id outside [0, E) makes its own row NaN. Each CTA finds its rows in ids itself (at most E ids),
// without scratch memory or another launch. By expert (R > E): the rows are grouped by expert
// once per call, on the device (group_rows_by_expert), and slot e serves expert e's rows from that
// list; slot E writes the rows of ids outside [0, E).
#pragma once

#include <cstdint>

#include "atom/gpu/runtime.hpp"
#include "atom/ops/gpu.hpp"
#include "atom/ops/moe.hpp"
#include "gemm_args.hpp"

namespace atom::kernels {

// CTAs of the decode kernels have at most this many threads; one gathering window each.
inline constexpr int moe_max_window = 512;

struct MoeRowsArgs {
  const std::int32_t* ids;  // [T, k], rows ids_stride apart
  index_t ids_stride;
  int k;
  int rows;  // T * k
  int experts;
  bool a_per_token;             // a has T rows (row r reads a[r / k]) rather than T * k
  index_t expert_stride;        // weight elements (code bytes, values) from one expert to the next
  index_t expert_scale_stride;  // weight scales from one expert to the next
  bool by_expert;
  // By expert: expert e's rows are expert_rows[expert_offsets[e], expert_offsets[e + 1]), in no
  // particular order; bucket E holds the rows of ids outside [0, E) (ops::no_expert included).
  const int* expert_rows;
  const int* expert_offsets;  // [E + 2]
};

// Fills m.expert_rows and m.expert_offsets for m.by_expert from m.ids on gpu's stream (one launch
// of one CTA; the list lives in the stream's scratch, which an eager call sizes before a graph
// capture, as for the ops' other scratch).
void group_rows_by_expert(const ops::Gpu& gpu, MoeRowsArgs& m);

// The GEMM arguments of one expert: each argument struct of a routed GEMM has an overload, found
// by argument-dependent lookup, that moves its weight pointers to expert e.
__device__ inline A4W4Args at_expert(A4W4Args p, const MoeRowsArgs& m, int e) {
  p.w_packed += static_cast<index_t>(e) * m.expert_stride;
  p.w_scale += static_cast<index_t>(e) * m.expert_scale_stride;
  return p;
}

__device__ inline int routed_expert(const MoeRowsArgs& m, int r) {
  return m.ids[static_cast<index_t>(r / m.k) * m.ids_stride + r % m.k];
}

__device__ inline bool bad_expert(const MoeRowsArgs& m, int e) {
  return e < 0 || e >= m.experts;
}

// A chunk of gathered rows as the decode tiles see them: row i of the chunk is output row
// list[i] and reads a[list[i] / k] or a[list[i]].
struct GatheredRows {
  const int* list;
  int k;
  bool a_per_token;
  __device__ int a(int i) const { return a_per_token ? list[i] / k : list[i]; }
  __device__ int out(int i) const { return list[i]; }
};

// The row of a slot without an expert of this rank: zeros for ops::no_expert, NaN for a bad id.
template <class Args>
__device__ inline void write_unserved_row(const Args& p, int expert, int row, int col0, int cols,
                                          int first, int step) {
  const bf16 v = expert == ops::no_expert ? bf16{0} : bf16{0x7FC0};
  for (int c = first; c < cols; c += step)
    if (col0 + c < p.n) p.out[static_cast<index_t>(row) * p.out_stride + col0 + c] = v;
}

// The by-row path of for_each_expert_chunk: the rows of this slot's expert are gathered a window
// (one per thread) at a time, and a chunk runs only when it is full or the last window is
// gathered.
template <int C, class Args, class Tile, class Prefetch>
__device__ inline void for_each_row_led_chunk(const Args& p, const MoeRowsArgs& m, int col0,
                                              int cols, Tile tile, Prefetch prefetch) {
  const int tid = static_cast<int>(threadIdx.x);
  const int window = static_cast<int>(blockDim.x);
  const int slot = static_cast<int>(blockIdx.y);
  __shared__ int list[moe_max_window + C];
  __shared__ int count;
  const int expert = routed_expert(m, slot);
  if (bad_expert(m, expert)) {
    write_unserved_row(p, expert, slot, col0, cols, tid, window);
    return;
  }
  // The weight is fetched while the rows are found; a slot that does not lead its expert fetches
  // the same bytes as the one that does, which L2 serves once.
  Args args = at_expert(p, m, expert);
  prefetch(args);
  // Only the expert's first row leads it.
  for (int w0 = 0; w0 < slot; w0 += window) {
    const int r = w0 + tid;
    if (__syncthreads_or(r < slot && routed_expert(m, r) == expert)) return;
  }
  if (tid == 0) count = 0;
  __syncthreads();
  for (int w0 = slot; w0 < m.rows; w0 += window) {
    // At most C - 1 rows are carried into this window, so the list has room for all it finds.
    const int r = w0 + tid;
    if (r < m.rows && routed_expert(m, r) == expert) list[atomicAdd(&count, 1)] = r;
    __syncthreads();
    const int found = count;
    const bool last = w0 + window >= m.rows;
    const int ready = last ? found : found / C * C;
    for (int c0 = 0; c0 < ready; c0 += C) {
      args.m = ready - c0 < C ? ready - c0 : C;
      tile(args, GatheredRows{list + c0, m.k, m.a_per_token});
      __syncthreads();
    }
    // The rows of a partial chunk move to the front (fewer than C, and C is at most the CTA's
    // thread count: one per thread).
    const int carried = found - ready;
    const int moved = tid < carried ? list[ready + tid] : 0;
    __syncthreads();
    if (tid < carried) list[tid] = moved;
    if (tid == 0) count = carried;
    __syncthreads();
  }
}

// The prefetch of a tile that takes none.
struct NoPrefetch {
  template <class Args>
  __device__ void operator()(const Args&) const {}
};

// Runs tile(args, rows) for every chunk of at most C rows of this CTA's expert, args being p with
// the expert's weight (at_expert) and the chunk's row count, after prefetch(args) (a hint: fetch
// the CTA's weight bytes into L2; none by default) as soon as the expert is known. Args has the
// output's `out`, `out_stride`, `n` and the row count `m`. The CTA's output columns are [col0, col0
// + cols) (for NaN rows). Every thread of the CTA calls it; the decisions are uniform. The order of
// rows within a chunk is free: each output row's arithmetic does not depend on it. ByExpert is
// m.by_expert, a template argument so that each kernel holds one of the two paths (and the
// registers it needs).
template <int C, bool ByExpert, class Args, class Tile, class Prefetch = NoPrefetch>
__device__ inline void for_each_expert_chunk(const Args& p, const MoeRowsArgs& m, int col0,
                                             int cols, Tile tile, Prefetch prefetch = {}) {
  if constexpr (ByExpert) {
    const int tid = static_cast<int>(threadIdx.x);
    const int window = static_cast<int>(blockDim.x);
    const int slot = static_cast<int>(blockIdx.y);
    const int begin = m.expert_offsets[slot];
    const int end = m.expert_offsets[slot + 1];
    if (slot == m.experts) {
      for (int i = begin + tid; i < end; i += window) {
        const int r = m.expert_rows[i];
        write_unserved_row(p, routed_expert(m, r), r, col0, cols, 0, 1);
      }
      return;
    }
    Args args = at_expert(p, m, slot);
    if (begin < end) prefetch(args);
    for (int c0 = begin; c0 < end; c0 += C) {
      args.m = end - c0 < C ? end - c0 : C;
      tile(args, GatheredRows{m.expert_rows + c0, m.k, m.a_per_token});
      __syncthreads();
    }
  } else {
    for_each_row_led_chunk<C>(p, m, col0, cols, tile, prefetch);
  }
}

}  // namespace atom::kernels
