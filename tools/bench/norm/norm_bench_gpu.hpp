// The device side of atom-bench-norm, callable from plain C++: a stream, graph-replay and
// back-to-back timing of launches on it, and the comparison of a policy-specialised RMSNorm kernel
// with the same kernel taking its epilogue as a run-time argument.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "atom/numeric/numeric.hpp"

namespace atom::bench {

class Stream {
 public:
  Stream();
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  void* get() const { return s_; }

 private:
  void* s_ = nullptr;
};

// Median microseconds per launch. stream_us: batches of `per_batch` launches issued back to back
// from the host, device events around each batch. graph_us: `per_graph` launches captured into one
// graph, the graph replayed `replays` times with events around each replay (no host launch cost
// between the kernels). `launch` must enqueue its work on `stream` only.
double stream_us(void* stream, const std::function<void()>& launch, int per_batch, int batches);
double graph_us(void* stream, const std::function<void()>& launch, int per_graph, int replays);

enum class Epilogue : std::uint8_t { bf16, fp8_token, fp8_group128, mxfp4 };

// The compiler's resource use of a kernel.
struct KernelInfo {
  int registers;
  std::size_t local_bytes;
};

// rms_norm over contiguous [rows, cols] rows (cols a multiple of 8 that the library runs as 4
// chunks per thread, e.g. 7168) with one epilogue's contiguous outputs: `out` is the bf16 rows or
// the codes, `scale` the FP8 / e8m0 scales (unused for bf16). policy_rms_norm launches the
// epilogue's own kernel (the library's template, instantiated for that epilogue);
// runtime_rms_norm launches the one kernel that switches on `e` at run time.
void policy_rms_norm(void* stream, Epilogue e, const bf16* x, const bf16* weight, int rows,
                     int cols, float eps, void* out, void* scale);
void runtime_rms_norm(void* stream, Epilogue e, const bf16* x, const bf16* weight, int rows,
                      int cols, float eps, void* out, void* scale);
KernelInfo policy_rms_norm_info(Epilogue e);
KernelInfo runtime_rms_norm_info();

// The library's RMSNorm kernel (kernels/detail/norm_launch.hpp) on a shape given explicitly, over
// contiguous rows (cols a multiple of 8): `chunks` vectors of 8 values per thread (1, 2, 4 or 8)
// and `rows_per_block` rows per block, the threads per row following from cols. add: add_rms_norm
// with `residual` (read and written); otherwise residual is unused.
struct Shape {
  int chunks;
  int rows_per_block;
};
void shaped_rms_norm(void* stream, Epilogue e, bool add, const bf16* x, bf16* residual,
                     const bf16* weight, int rows, int cols, float eps, void* out, void* scale,
                     Shape shape);
KernelInfo shaped_rms_norm_info(Epilogue e, bool add, int chunks);
// Threads per row of `shape` for rows of `cols` values, and the shape the library picks ({0, 0}
// where it runs its block-wide kernel instead: the plain norms below 1024 rows).
int shaped_group(int cols, Shape shape);
Shape library_shape(Epilogue e, bool add, int cols, int rows);

// An empty kernel of `blocks` x `threads`: the launch floor of a kernel with that grid.
void null_launch(void* stream, int blocks, int threads);

}  // namespace atom::bench
