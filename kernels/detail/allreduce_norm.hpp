// The fused all-reduce + residual add + RMSNorm kernel of the tensor-parallel group.
//
// Each rank registers one region of device memory that its peers map: 2 call slots x ranks
// contributions of slot_bytes each, every bf16 initially the empty mark (-0.0). Call k (counted
// on the device, so graph replays count too) uses slot k % 2. A block pushes its rows of this
// rank's x into every peer's slot for this rank, then, row by row, polls its own slot for each
// peer's row until no value is the mark (bounded by the timeout), puts the mark back, sums the
// ranks in rank order in float, rounds once to bf16 (the all-reduce's result), adds the residual
// and runs the GPU norm's row engine and epilogue. The data is its own signal: no flag, no fence,
// one device-to-device write latency. Pushed values pass through x + 0, which turns -0.0 into
// +0.0 and leaves every other value as it is, so no real value is the mark (the one difference
// from NCCL: an exactly zero sum of negative zeros comes out +0).
//
// Why two slots suffice: a rank pushes into slot k % 2 in call k only after its call k - 1
// completed, which needed this rank's call k - 1 pushes, which this rank made after its call
// k - 2 completed, and call k - 2 consumed and re-marked every row of that slot. Every rank gives
// the same grid and rows to the same call, and no block waits for a row before it has pushed all
// of its own, so with every block resident at once nothing waits on a block that cannot run.
#pragma once

#include <cstddef>
#include <cstdint>

#include "atom/dist/tp.hpp"
#include "atom/gpu/arch.hpp"
#include "rows.hpp"

namespace atom::kernels {

inline constexpr int tp_max_ranks = static_cast<int>(dist::tp_max_ranks);
// A contribution not yet arrived: bf16 -0.0, two per 32-bit word.
inline constexpr std::uint16_t empty_mark = 0x8000;
inline constexpr std::uint32_t empty_mark_pair = 0x80008000u;
// Most blocks of one launch.
inline constexpr int fused_max_blocks = 1024;

struct FusedArgs {
  const bf16* x;  // this rank's partial sums [rows, cols]
  index_t x_stride;
  bf16* residual;  // in and out
  index_t residual_stride;
  const bf16* weight;
  index_t rows;
  int cols;
  float eps;
  int rank;
  int world;
  std::uint8_t* data[tp_max_ranks];  // every rank's slots, this rank's own included
  std::size_t slot_bytes;
  std::uint32_t* calls;         // fused calls started on this rank
  std::uint32_t* blocks_done;   // blocks of the current call that read `calls`
  std::uint32_t* failed;        // nonzero once a wait timed out: later launches return at once
  std::uint32_t* missing_host;  // host-mapped: 1 + the rank that did not arrive
  std::uint64_t timeout_ns;
};

// Rank `source`'s row `row` in call slot `slot` of a region.
__device__ inline bf16* contribution_row(const FusedArgs& a, std::uint8_t* region, std::size_t slot,
                                         int source, index_t row) {
  return reinterpret_cast<bf16*>(region + (slot * static_cast<std::size_t>(a.world) +
                                           static_cast<std::size_t>(source)) *
                                              a.slot_bytes) +
         row * a.cols;
}

__device__ inline bool has_mark(std::uint32_t w) {
  return (w & 0xffffu) == empty_mark || (w >> 16) == empty_mark;
}

// -0.0 becomes +0.0, every other value (NaN included) stays as it is.
template <int Chunks>
__device__ inline void clear_negative_zeros(RowValues<Chunks>& v) {
  for (int c = 0; c < Chunks; ++c)
    for (int j = 0; j < vec_width; ++j) v[c][j] = add(v[c][j], 0.0f);
}

template <int Chunks>
__device__ inline void copy_row(const RowValues<Chunks>& from, RowValues<Chunks>& to) {
  for (int c = 0; c < Chunks; ++c)
    for (int j = 0; j < vec_width; ++j) to[c][j] = from[c][j];
}

// This thread's values of a pushed row, polled until none is the mark, then marked empty again.
// All of the thread's chunks are read at once on every round. False when the timeout passed.
template <int Chunks, bool Vec>
__device__ inline bool take_row(bf16* src, int cols, RowValues<Chunks>& v, std::uint64_t start,
                                std::uint64_t timeout_ns) {
  if constexpr (Vec) {
    bool pending[Chunks];
    for (int c = 0; c < Chunks; ++c) {
      pending[c] = chunk_base<Chunks>(c) < cols;
      if (!pending[c])
        for (int j = 0; j < vec_width; ++j) v[c][j] = 0.0f;
    }
    for (;;) {
      uint4 u[Chunks];
      for (int c = 0; c < Chunks; ++c)
        if (pending[c]) u[c] = gpu::load_volatile_16(src + chunk_base<Chunks>(c));
      bool waiting = false;
      for (int c = 0; c < Chunks; ++c) {
        if (!pending[c]) continue;
        if (has_mark(u[c].x) || has_mark(u[c].y) || has_mark(u[c].z) || has_mark(u[c].w)) {
          waiting = true;
          continue;
        }
        unpack_bf16x8(u[c], v[c]);
        pending[c] = false;
        *reinterpret_cast<uint4*>(src + chunk_base<Chunks>(c)) =
            make_uint4(empty_mark_pair, empty_mark_pair, empty_mark_pair, empty_mark_pair);
      }
      if (!waiting) return true;
      if (gpu::clock_ns() - start > timeout_ns) return false;
    }
  } else {
    for (int c = 0; c < Chunks; ++c) {
      const int base = chunk_base<Chunks>(c);
      for (int j = 0; j < vec_width; ++j) {
        if (base + j >= cols) {
          v[c][j] = 0.0f;
          continue;
        }
        auto* p = reinterpret_cast<volatile std::uint16_t*>(src + base + j);
        std::uint16_t bits = *p;
        while (bits == empty_mark) {
          if (gpu::clock_ns() - start > timeout_ns) return false;
          bits = *p;
        }
        *p = empty_mark;
        v[c][j] = to_float(bf16{bits});
      }
    }
    return true;
  }
}

template <class Out, int Chunks, bool Vec>
__global__ void allreduce_add_rms_norm_kernel(FusedArgs a, Out out) {
  gpu::start_after_prior_grid();
  __shared__ float sum_scratch[32];
  __shared__ std::uint32_t max_scratch[32];
  __shared__ std::uint32_t call_shared;
  __shared__ std::uint32_t abandon;
  const auto first = static_cast<index_t>(blockIdx.x);
  const auto step = static_cast<index_t>(gridDim.x);
  // The first row's load is in flight while the call count is read.
  RowValues<Chunks> own;
  load_row<Chunks, Vec>(a.x + first * a.x_stride, a.cols, own);
  if (threadIdx.x == 0) {
    call_shared = *static_cast<volatile std::uint32_t*>(a.calls);
    abandon = *static_cast<volatile std::uint32_t*>(a.failed);
  }
  __syncthreads();
  if (abandon != 0) return;
  const std::uint32_t call = call_shared;
  const std::size_t slot = call & 1u;
  // The block has read the count; the last block to say so advances it. One thread that pushes
  // and polls like the others does it, so its atomic's latency hides behind theirs.
  if (threadIdx.x == blockDim.x - 1) {
    __threadfence();
    if (atomicAdd(a.blocks_done, 1u) == gridDim.x - 1) {
      *static_cast<volatile std::uint32_t*>(a.blocks_done) = 0;
      *static_cast<volatile std::uint32_t*>(a.calls) = call + 1;
    }
  }

  // Push every row of this block into every peer's slot for this rank.
  clear_negative_zeros<Chunks>(own);
  for (int p = 0; p < a.world; ++p)
    if (p != a.rank)
      store_bf16_row<Chunks, Vec>(contribution_row(a, a.data[p], slot, a.rank, first), a.cols, own);
  for (index_t row = first + step; row < a.rows; row += step) {
    RowValues<Chunks> v;
    load_row<Chunks, Vec>(a.x + row * a.x_stride, a.cols, v);
    clear_negative_zeros<Chunks>(v);
    for (int p = 0; p < a.world; ++p)
      if (p != a.rank)
        store_bf16_row<Chunks, Vec>(contribution_row(a, a.data[p], slot, a.rank, row), a.cols, v);
  }

  // Take every rank's row in rank order, sum in float, round once, add the residual, normalize.
  const std::uint64_t start = gpu::clock_ns();
  for (index_t row = first; row < a.rows; row += step) {
    bf16* residual = a.residual + row * a.residual_stride;
    RowValues<Chunks> r;
    load_row<Chunks, Vec>(residual, a.cols, r);
    // Rank p's row into `dst`; false when the peer did not arrive in time.
    const auto fetch = [&](int p, RowValues<Chunks>& dst) {
      if (p != a.rank)
        return take_row<Chunks, Vec>(contribution_row(a, a.data[a.rank], slot, p, row), a.cols, dst,
                                     start, a.timeout_ns);
      if (row == first) {
        copy_row<Chunks>(own, dst);
      } else {
        load_row<Chunks, Vec>(a.x + row * a.x_stride, a.cols, dst);
        clear_negative_zeros<Chunks>(dst);
      }
      return true;
    };
    RowValues<Chunks> s;
    RowValues<Chunks> v;
    int missing = fetch(0, s) ? -1 : 0;
    for (int p = 1; p < a.world && missing < 0; ++p) {
      if (!fetch(p, v)) {
        missing = p;
        break;
      }
      for (int c = 0; c < Chunks; ++c)
        for (int j = 0; j < vec_width; ++j) s[c][j] = add(s[c][j], v[c][j]);
    }
    if (missing >= 0) {
      abandon = 1;
      *static_cast<volatile std::uint32_t*>(a.failed) = 1;
      *static_cast<volatile std::uint32_t*>(a.missing_host) =
          static_cast<std::uint32_t>(missing + 1);
      __threadfence_system();
    }
    __syncthreads();
    if (abandon != 0) return;
    for (int c = 0; c < Chunks; ++c)
      for (int j = 0; j < vec_width; ++j) s[c][j] = round_bf16(add(round_bf16(s[c][j]), r[c][j]));
    store_bf16_row<Chunks, Vec>(residual, a.cols, s);
    normalize_row<Chunks, Vec>(s, a.weight, a.cols, a.eps, sum_scratch);
    store_row<Chunks, Vec>(out, row, a.cols, s, max_scratch);
  }
}

}  // namespace atom::kernels
