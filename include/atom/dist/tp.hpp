// The tensor-parallel group: one process per GPU, bootstrapped through the same rendezvous store
// as the DP group (rank 0 serves it; the NCCL unique id and the peer-memory handles travel
// through it). It runs the all-reduce that follows a row-parallel projection, fused with the
// residual add, the RMSNorm and the norm's output epilogue (ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION):
//
//   separate: NCCL / RCCL all-reduce (bf16 sum) into a scratch tensor, then add_rms_norm<Epi>.
//   fused:    one kernel: every rank pushes its rows into each peer's registered buffer, whose
//             values start as an empty mark; each block polls (bounded) until its rows of every
//             rank have arrived, marks them empty again, sums them in rank order in float,
//             rounds the sum to bf16 once (the all-reduce's bf16 result), adds the residual and
//             runs the GPU norm's row engine and epilogue (kernels/detail/allreduce_norm.hpp).
//             Every rank computes identical bits; at TP 2 they equal the separate path's bits
//             (NCCL's two-rank bf16 sum is the same single rounding).
//   plain:    TP size 1: add_rms_norm<Epi>, no store, no NCCL.
//
// Calls are enqueued on the group's stream (gpu()); synchronize() waits for them with the
// group's timeout. A peer that dies or stalls makes the waiting rank fail with TpError within
// the timeout: the fused kernel's waits are bounded (then it records which peer is missing and
// every later fused launch returns at once), the NCCL path is aborted at the deadline. After a
// failure every call throws.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "atom/core/tensor.hpp"
#include "atom/env/config.hpp"
#include "atom/gpu/graph.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/formats.hpp"
#include "atom/ops/gpu.hpp"

namespace atom::dist {

// A failure of a tensor-parallel group, as seen by one rank: which rank, what it was doing, why.
class TpError : public std::runtime_error {
 public:
  TpError(std::int64_t rank, std::string operation, std::string cause);

  std::int64_t rank() const noexcept { return rank_; }
  const std::string& operation() const noexcept { return operation_; }
  const std::string& cause() const noexcept { return cause_; }

 private:
  std::int64_t rank_;
  std::string operation_;
  std::string cause_;
};

// Most ranks a group may have (the fused kernel keeps one peer pointer per rank in registers).
inline constexpr std::int64_t tp_max_ranks = 8;

// The fused path's default size limit per call (rows * cols * 2 bytes of this rank's partial
// sums) for a group of `size` ranks. Above it the call takes the separate path. The one-shot
// kernel has every rank read all size - 1 peers' rows, so its advantage shrinks with the size:
// on H100s (docs/bench-notes.md, hidden 7168) it is faster up to 14.7 MB (T = 1024) and slower
// from 29 MB at TP 2, faster up to 1.8 MB (T = 128) and slower from 3.7 MB at TP 4. The limit
// 16 MiB / (size - 1)^2 sits inside both windows. Each rank registers 2 * size buffers of this
// many bytes: two call slots (alternating, so a call never writes where a peer may still read the
// call before) for every source rank.
constexpr std::size_t tp_default_fused_max_bytes(std::int64_t size) {
  const auto peers = static_cast<std::size_t>(size > 1 ? size - 1 : 1);
  return (std::size_t{16} << 20) / (peers * peers);
}

struct TpOptions {
  std::int64_t rank = 0;
  std::int64_t size = 1;
  int device = 0;  // the GPU this rank drives
  // Rank 0 serves the rendezvous store at host:port; every rank joins it.
  std::string host = "127.0.0.1";
  std::uint16_t port = 29600;
  // Bounds joining, each wait in the fused kernel, synchronize() and shutdown.
  std::chrono::milliseconds timeout{30000};
  // ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION: whether automatic calls may take the fused path.
  bool fusion = true;
  // 0: tp_default_fused_max_bytes(size).
  std::size_t fused_max_bytes = 0;
  // The largest rows * cols of one call (sizes the separate path's scratch, allocated once so
  // that calls can be captured in a graph).
  index_t max_elements = index_t{8192} * 7168;
  // NCCL / RCCL library names tried in order; empty: the backend's defaults.
  std::vector<std::string> nccl_libraries;
};

// The options with fusion taken from ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION.
TpOptions tp_options(const env::Config& config, std::int64_t rank, std::int64_t size, int device);

// Throws TpError naming the first invalid option (rank out of range, size < 1 or above
// tp_max_ranks, port 0 with size > 1, non-positive timeout, negative max_elements).
void check_tp_options(const TpOptions& options);

enum class TpPath : std::uint8_t {
  automatic,  // fused when enabled and within the size limit, else separate
  separate,
  fused,  // a call above the size limit throws
  plain,  // TP size 1: add_rms_norm alone (what path_for reports there)
};

// A captured sequence of calls on the group's stream, replayed as one launch there.
class TpGraph {
 public:
  void replay() { graph_.replay(stream_); }

 private:
  friend class TpGroup;
  TpGraph(gpu::Graph graph, void* stream) : graph_(std::move(graph)), stream_(stream) {}
  gpu::Graph graph_;
  void* stream_ = nullptr;
};

class TpGroup {
 public:
  // Joins the group: selects the device, connects to the store, creates the NCCL communicator
  // and maps every peer's buffers. Throws TpError (a peer that never arrives, bad options,
  // "NCCL not found: ...") within the timeout.
  explicit TpGroup(const TpOptions& options);
  // Waits (bounded) for the peers to stop using this rank's buffers, then frees them.
  ~TpGroup();
  TpGroup(const TpGroup&) = delete;
  TpGroup& operator=(const TpGroup&) = delete;

  std::int64_t rank() const noexcept;
  std::int64_t size() const noexcept;
  // The stream every call is enqueued on.
  ops::Gpu gpu() const noexcept;
  // The path an automatic call on [rows, cols] takes.
  TpPath path_for(index_t rows, index_t cols) const noexcept;

  // out = rms_norm<Epi>(residual := bf16(all_reduce(x) + residual)), where all_reduce(x) is the
  // bf16 sum of every rank's x. x [T, C], residual [T, C] (in and out), weight [C], out [T, C] in
  // Epi's format; the same shapes on every rank, and every rank calls in the same order.
  template <class Epi>
  requires ops::Epilogue<Epi>
  void all_reduce_add_rms_norm(View2<const bf16> x, View2<bf16> residual, View1<const bf16> weight,
                               float eps, typename Epi::Output out,
                               TpPath path = TpPath::automatic);

  // out = the bf16 sum over ranks of x (NCCL / RCCL), both [T, C]; out may be x.
  void all_reduce(View2<const bf16> x, View2<bf16> out);

  // Waits for every call enqueued so far; throws TpError on a missing peer, a timeout or a
  // device error.
  void synchronize();

  // Captures what `enqueue` puts on the group's stream (no synchronize() inside).
  TpGraph capture(const std::function<void()>& enqueue);

  // Waits (bounded) for every rank to arrive, then leaves the store. Afterwards calls throw.
  void shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace atom::dist
