// Device side of atom-bench-norm (norm_bench_gpu.hpp). The two RMSNorm kernels are built from the
// library's row engine (kernels/detail/rows.hpp): the policy kernel is the library's kernel for
// one epilogue type; the run-time kernel holds every epilogue and branches on an argument, as a
// kernel without compile-time policies would.

#include "norm_bench_gpu.hpp"

#include <algorithm>
#include <string>
#include <vector>

#include "atom/gpu/runtime.hpp"
#include "atom/ops/formats.hpp"
#include "kernels/detail/norm_launch.hpp"
#include "kernels/detail/rows.hpp"

namespace atom::bench {
namespace {

namespace k = kernels;

// The chunk count the library picks for rows of 7168 (and every width from 6145 to 8192).
constexpr int chunks = 4;

struct Args {
  const bf16* x;
  index_t x_stride;
  const bf16* weight;
  int cols;
  float eps;
};

template <class Out>
__global__ void policy_kernel(Args a, Out out) {
  __shared__ float sum_scratch[32];
  __shared__ std::uint32_t max_scratch[32];
  const index_t row = blockIdx.x;
  k::RowValues<chunks> x;
  k::load_row<chunks, true>(a.x + row * a.x_stride, a.cols, x);
  k::normalize_row<chunks, true>(x, a.weight, a.cols, a.eps, sum_scratch);
  k::store_row<chunks, true>(out, row, a.cols, x, max_scratch);
}

struct AnyRows {
  k::Bf16Rows bf16;
  k::Fp8TokenRows token;
  k::Fp8GroupRows group;
  k::Mxfp4Rows mxfp4;
};

__global__ void runtime_kernel(Args a, AnyRows out, Epilogue e) {
  __shared__ float sum_scratch[32];
  __shared__ std::uint32_t max_scratch[32];
  const index_t row = blockIdx.x;
  k::RowValues<chunks> x;
  k::load_row<chunks, true>(a.x + row * a.x_stride, a.cols, x);
  k::normalize_row<chunks, true>(x, a.weight, a.cols, a.eps, sum_scratch);
  switch (e) {
    case Epilogue::bf16:
      k::store_row<chunks, true>(out.bf16, row, a.cols, x, max_scratch);
      break;
    case Epilogue::fp8_token:
      k::store_row<chunks, true>(out.token, row, a.cols, x, max_scratch);
      break;
    case Epilogue::fp8_group128:
      k::store_row<chunks, true>(out.group, row, a.cols, x, max_scratch);
      break;
    case Epilogue::mxfp4:
      k::store_row<chunks, true>(out.mxfp4, row, a.cols, x, max_scratch);
      break;
  }
}

AnyRows rows_for(int cols, void* out, void* scale) {
  auto* codes = static_cast<fp8_e4m3*>(out);
  auto* scales = static_cast<float*>(scale);
  return {k::Bf16Rows{static_cast<bf16*>(out), k::RowMap{1, cols, 0}},
          k::Fp8TokenRows{codes, cols, scales, 1},
          k::Fp8GroupRows{codes, cols, scales, ops::fp8_group_cols(cols)},
          k::Mxfp4Rows{static_cast<std::uint8_t*>(out), ops::mxfp4_packed_cols(cols),
                       static_cast<e8m0*>(scale), ops::mxfp4_scale_cols(cols)}};
}

dim3 block_for(int cols) {
  const k::RowShape shape = k::row_shape(cols);
  if (shape.chunks != chunks || cols % k::vec_width != 0)
    throw gpu::GpuError(
        "atom-bench-norm: the policy comparison runs rows of 6145..8192 columns, "
        "a multiple of 8; got " +
        std::to_string(cols));
  return dim3(static_cast<unsigned>(shape.threads));
}

const void* policy_kernel_for(Epilogue e) {
  switch (e) {
    case Epilogue::bf16:
      return reinterpret_cast<const void*>(&policy_kernel<k::Bf16Rows>);
    case Epilogue::fp8_token:
      return reinterpret_cast<const void*>(&policy_kernel<k::Fp8TokenRows>);
    case Epilogue::fp8_group128:
      return reinterpret_cast<const void*>(&policy_kernel<k::Fp8GroupRows>);
    case Epilogue::mxfp4:
      return reinterpret_cast<const void*>(&policy_kernel<k::Mxfp4Rows>);
  }
  throw gpu::GpuError("atom-bench-norm: unknown epilogue");
}

KernelInfo info_of(const void* kernel) {
  hipFuncAttributes a{};
  ATOM_GPU_CHECK(hipFuncGetAttributes(&a, kernel));
  return {a.numRegs, static_cast<std::size_t>(a.localSizeBytes)};
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

class Events {
 public:
  Events() {
    ATOM_GPU_CHECK(hipEventCreate(&start_));
    ATOM_GPU_CHECK(hipEventCreate(&stop_));
  }
  ~Events() {
    (void)hipEventDestroy(start_);
    (void)hipEventDestroy(stop_);
  }
  Events(const Events&) = delete;
  Events& operator=(const Events&) = delete;
  template <class Work>
  double time_us(hipStream_t s, Work work) {
    ATOM_GPU_CHECK(hipEventRecord(start_, s));
    work();
    ATOM_GPU_CHECK(hipEventRecord(stop_, s));
    ATOM_GPU_CHECK(hipEventSynchronize(stop_));
    float ms = 0;
    ATOM_GPU_CHECK(hipEventElapsedTime(&ms, start_, stop_));
    return static_cast<double>(ms) * 1000.0;
  }

 private:
  hipEvent_t start_ = nullptr;
  hipEvent_t stop_ = nullptr;
};

}  // namespace

Stream::Stream() {
  hipStream_t s = nullptr;
  ATOM_GPU_CHECK(hipStreamCreateWithFlags(&s, hipStreamNonBlocking));
  s_ = s;
}

Stream::~Stream() {
  (void)hipStreamDestroy(static_cast<hipStream_t>(s_));
}

double stream_us(void* stream, const std::function<void()>& launch, int per_batch, int batches) {
  const auto s = static_cast<hipStream_t>(stream);
  for (int i = 0; i < 3; ++i) launch();
  ATOM_GPU_CHECK(hipStreamSynchronize(s));
  Events events;
  std::vector<double> samples;
  for (int b = 0; b < batches; ++b)
    samples.push_back(events.time_us(s, [&] {
      for (int i = 0; i < per_batch; ++i) launch();
    }) / per_batch);
  return median(samples);
}

double graph_us(void* stream, const std::function<void()>& launch, int per_graph, int replays) {
  const auto s = static_cast<hipStream_t>(stream);
  launch();  // lazy allocations and module loads stay out of the capture
  ATOM_GPU_CHECK(hipStreamSynchronize(s));
  hipGraph_t graph = nullptr;
  ATOM_GPU_CHECK(hipStreamBeginCapture(s, hipStreamCaptureModeThreadLocal));
  for (int i = 0; i < per_graph; ++i) launch();
  ATOM_GPU_CHECK(hipStreamEndCapture(s, &graph));
  hipGraphExec_t exec = nullptr;
  ATOM_GPU_CHECK(hipGraphInstantiate(&exec, graph, nullptr, nullptr, 0));
  ATOM_GPU_CHECK(hipGraphLaunch(exec, s));  // warm-up replay
  ATOM_GPU_CHECK(hipStreamSynchronize(s));
  Events events;
  std::vector<double> samples;
  for (int r = 0; r < replays; ++r)
    samples.push_back(events.time_us(s, [&] { ATOM_GPU_CHECK(hipGraphLaunch(exec, s)); }) /
                      per_graph);
  ATOM_GPU_CHECK(hipGraphExecDestroy(exec));
  ATOM_GPU_CHECK(hipGraphDestroy(graph));
  return median(samples);
}

void policy_rms_norm(void* stream, Epilogue e, const bf16* x, const bf16* weight, int rows,
                     int cols, float eps, void* out, void* scale) {
  const Args a{x, cols, weight, cols, eps};
  const AnyRows r = rows_for(cols, out, scale);
  const dim3 block = block_for(cols);
  const auto s = static_cast<hipStream_t>(stream);
  const auto grid = static_cast<unsigned>(rows);
  switch (e) {
    case Epilogue::bf16:
      policy_kernel<<<grid, block, 0, s>>>(a, r.bf16);
      break;
    case Epilogue::fp8_token:
      policy_kernel<<<grid, block, 0, s>>>(a, r.token);
      break;
    case Epilogue::fp8_group128:
      policy_kernel<<<grid, block, 0, s>>>(a, r.group);
      break;
    case Epilogue::mxfp4:
      policy_kernel<<<grid, block, 0, s>>>(a, r.mxfp4);
      break;
  }
  ATOM_GPU_CHECK(hipGetLastError());
}

void runtime_rms_norm(void* stream, Epilogue e, const bf16* x, const bf16* weight, int rows,
                      int cols, float eps, void* out, void* scale) {
  const Args a{x, cols, weight, cols, eps};
  runtime_kernel<<<static_cast<unsigned>(rows), block_for(cols), 0,
                   static_cast<hipStream_t>(stream)>>>(a, rows_for(cols, out, scale), e);
  ATOM_GPU_CHECK(hipGetLastError());
}

namespace {

// Calls f.template operator()<Chunks>() for chunks in {1, 2, 4, 8}.
template <class F>
void with_chunks(int chunks, F&& f) {
  switch (chunks) {
    case 1:
      f.template operator()<1>();
      break;
    case 2:
      f.template operator()<2>();
      break;
    case 4:
      f.template operator()<4>();
      break;
    case 8:
      f.template operator()<8>();
      break;
    default:
      throw gpu::GpuError("atom-bench-norm: chunks must be 1, 2, 4 or 8; got " +
                          std::to_string(chunks));
  }
}

// Calls f(kernel pointer, epilogue rows) for the shaped kernel of (e, add, Chunks).
template <int Chunks, class F>
void with_shaped_kernel(Epilogue e, bool add, const AnyRows& r, F&& f) {
  using k::Prologue;
  const auto pick = [&]<class Out>(const Out& out) {
    if (add)
      f(&k::rms_norm_kernel<Prologue::add_norm, Out, Chunks, true>, out);
    else
      f(&k::rms_norm_kernel<Prologue::norm, Out, Chunks, true>, out);
  };
  switch (e) {
    case Epilogue::bf16:
      pick(r.bf16);
      break;
    case Epilogue::fp8_token:
      pick(r.token);
      break;
    case Epilogue::fp8_group128:
      pick(r.group);
      break;
    case Epilogue::mxfp4:
      pick(r.mxfp4);
      break;
  }
}

}  // namespace

void shaped_rms_norm(void* stream, Epilogue e, bool add, const bf16* x, bf16* residual,
                     const bf16* weight, int rows, int cols, float eps, void* out, void* scale,
                     Shape shape) {
  if (cols % k::vec_width != 0)
    throw gpu::GpuError("atom-bench-norm: shaped rows need a multiple of 8 columns; got " +
                        std::to_string(cols));
  const k::GroupShape g = k::group_shape(cols, shape.chunks, shape.rows_per_block);
  if (g.threads() > 1024)
    throw gpu::GpuError("atom-bench-norm: shape of " + std::to_string(g.threads()) +
                        " threads per block");
  const k::NormArgs a{x, k::RowMap{1, cols, 0}, residual, cols, weight, cols, eps};
  const auto blocks =
      static_cast<unsigned>((rows + shape.rows_per_block - 1) / shape.rows_per_block);
  const AnyRows r = rows_for(cols, out, scale);
  with_chunks(shape.chunks, [&]<int Chunks>() {
    with_shaped_kernel<Chunks>(e, add, r, [&](auto kernel, const auto& o) {
      kernel<<<blocks, static_cast<unsigned>(g.threads()), 0, static_cast<hipStream_t>(stream)>>>(
          a, static_cast<index_t>(rows), g.group, o);
    });
  });
  ATOM_GPU_CHECK(hipGetLastError());
}

KernelInfo shaped_rms_norm_info(Epilogue e, bool add, int chunks) {
  KernelInfo info{};
  with_chunks(chunks, [&]<int Chunks>() {
    with_shaped_kernel<Chunks>(
        e, add, rows_for(8, nullptr, nullptr),
        [&](auto kernel, const auto&) { info = info_of(reinterpret_cast<const void*>(kernel)); });
  });
  return info;
}

int shaped_group(int cols, Shape shape) {
  return k::group_shape(cols, shape.chunks, shape.rows_per_block).group;
}

Shape library_shape(Epilogue e, bool add, int cols, int rows) {
  if (!add && rows < k::streaming_rows) return {0, 0};
  const k::EpilogueWeight weight = add                        ? k::EpilogueWeight::other
                                   : e == Epilogue::bf16      ? k::EpilogueWeight::bf16_plain
                                   : e == Epilogue::fp8_token ? k::EpilogueWeight::token_plain
                                                              : k::EpilogueWeight::other;
  const k::GroupShape g = k::norm_shape(cols, rows, weight);
  return {g.chunks, g.rows_per_block};
}

namespace {
__global__ void null_kernel() {}
}  // namespace

void null_launch(void* stream, int blocks, int threads) {
  null_kernel<<<static_cast<unsigned>(blocks), static_cast<unsigned>(threads), 0,
                static_cast<hipStream_t>(stream)>>>();
  ATOM_GPU_CHECK(hipGetLastError());
}

KernelInfo policy_rms_norm_info(Epilogue e) {
  return info_of(policy_kernel_for(e));
}

KernelInfo runtime_rms_norm_info() {
  return info_of(reinterpret_cast<const void*>(&runtime_kernel));
}

}  // namespace atom::bench
