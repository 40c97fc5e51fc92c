// RMSNorm (plain and with the residual add), the DeepSeek fused q_a/kv_a norm and the row copy.
// One kernel template per op, the output format an epilogue policy composed at compile time; the
// RMSNorm in two forms (block-wide float rows, packed rows in groups), chosen per size.

#include "atom/ops/gpu/norm.hpp"

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "atom/gpu/device.hpp"

#include "detail/norm_launch.hpp"
#include "detail/rows.hpp"

namespace atom::kernels {
namespace {

// The block-wide form: one row per block, kept as floats. Measured faster than the packed-row
// kernel for the plain norms below streaming_rows (decode), so those sizes keep it.
template <Prologue P, class Out, int Chunks, bool Vec>
__global__ void rms_norm_block_kernel(NormArgs a, Out out) {
  gpu::start_after_prior_grid();
  __shared__ float sum_scratch[32];
  __shared__ std::uint32_t max_scratch[32];
  const index_t row = blockIdx.x;
  RowValues<Chunks> x;
  load_row<Chunks, Vec>(a.x + a.x_map.offset(row), a.cols, x);
  if constexpr (P == Prologue::add_norm) {
    bf16* residual = a.residual + row * a.residual_stride;
    RowValues<Chunks> r;
    load_row<Chunks, Vec>(residual, a.cols, r);
    // s = bf16(x + residual) is both the new residual and the value normalized.
    for (int c = 0; c < Chunks; ++c)
      for (int j = 0; j < vec_width; ++j) x[c][j] = round_bf16(add(x[c][j], r[c][j]));
    store_bf16_row<Chunks, Vec>(residual, a.cols, x);
  }
  normalize_row<Chunks, Vec>(x, a.weight, a.cols, a.eps, sum_scratch);
  store_row<Chunks, Vec>(out, row, a.cols, x, max_scratch);
}

struct QkArgs {
  const bf16* qkv;
  index_t qkv_stride;
  const bf16* q_weight;
  const bf16* kv_weight;
  int q_cols;
  int kv_cols;
  int rope_cols;
  float eps;
  bf16* kv_out;
  index_t kv_stride;
  bf16* pe_out;
  index_t pe_stride;
};

template <class QOut, int Chunks, bool Vec>
__global__ void qk_norm_fused_kernel(QkArgs a, QOut q_out) {
  gpu::start_after_prior_grid();
  __shared__ float sum_scratch[32];
  __shared__ std::uint32_t max_scratch[32];
  const index_t row = blockIdx.x;
  const bf16* src = a.qkv + row * a.qkv_stride;
  RowValues<Chunks> q;
  RowValues<Chunks> kv;
  // Both loads in flight before either reduction.
  load_row<Chunks, Vec>(src, a.q_cols, q);
  load_row<Chunks, Vec>(src + a.q_cols, a.kv_cols, kv);
  normalize_row<Chunks, Vec>(q, a.q_weight, a.q_cols, a.eps, sum_scratch);
  store_row<Chunks, Vec>(q_out, row, a.q_cols, q, max_scratch);
  normalize_row<Chunks, Vec>(kv, a.kv_weight, a.kv_cols, a.eps, sum_scratch);
  store_bf16_row<Chunks, Vec>(a.kv_out + row * a.kv_stride, a.kv_cols, kv);
  const bf16* pe = src + a.q_cols + a.kv_cols;
  for (int i = static_cast<int>(threadIdx.x); i < a.rope_cols; i += static_cast<int>(blockDim.x))
    a.pe_out[row * a.pe_stride + i] = pe[i];
}

__global__ void copy_kernel(const bf16* src, index_t src_stride, bf16* dst, index_t dst_stride,
                            index_t rows, index_t cols, bool vec) {
  gpu::start_after_prior_grid();
  const index_t step = static_cast<index_t>(gridDim.x) * blockDim.x;
  const index_t first = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (index_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const bf16* s = src + row * src_stride;
    bf16* d = dst + row * dst_stride;
    if (vec) {
      for (index_t i = first; i < cols / vec_width; i += step)
        reinterpret_cast<uint4*>(d)[i] = reinterpret_cast<const uint4*>(s)[i];
    } else {
      for (index_t i = first; i < cols; i += step) d[i] = s[i];
    }
  }
}

hipStream_t stream_of(const ops::Gpu& gpu) {
  return static_cast<hipStream_t>(gpu.stream);
}

// Calls launch.template operator()<Chunks, Vec>() for the shape's chunk count.
template <class Launch>
void with_shape(const RowShape& shape, bool vec, Launch&& launch) {
  const auto go = [&]<int Chunks>() {
    if (vec)
      launch.template operator()<Chunks, true>();
    else
      launch.template operator()<Chunks, false>();
  };
  switch (shape.chunks) {
    case 1:
      go.template operator()<1>();
      break;
    case 2:
      go.template operator()<2>();
      break;
    case 4:
      go.template operator()<4>();
      break;
    default:
      go.template operator()<8>();
      break;
  }
}

template <class T>
bool vec_ok(const T* p, index_t stride, int bytes_per_vec) {
  const auto bytes = static_cast<index_t>(sizeof(T)) * vec_width;
  return reinterpret_cast<std::uintptr_t>(p) % static_cast<std::uintptr_t>(bytes_per_vec) == 0 &&
         (stride * static_cast<index_t>(sizeof(T))) % bytes == 0;
}

// The device description of an output format, and whether its rows allow vector stores.
Bf16Rows rows_of(const ops::Bf16Act& a) {
  return {a.x.data, RowMap{1, a.x.stride(0), 0}};
}
Fp8TokenRows rows_of(const ops::Fp8TokenAct& a) {
  return {a.q.data, a.q.stride(0), a.scale.data, a.scale.stride(0)};
}
Fp8GroupRows rows_of(const ops::Fp8GroupAct& a) {
  return {a.q.data, a.q.stride(0), a.scale.data, a.scale.stride(0)};
}
Mxfp4Rows rows_of(const ops::Mxfp4Act& a) {
  return {a.packed.data, a.packed.stride(0), a.scale.data, a.scale.stride(0)};
}
bool vec_out(const ops::Bf16Act& a) {
  return vec_ok(a.x.data, a.x.stride(0), 16);
}
bool vec_out(const ops::Fp8TokenAct& a) {
  return vec_ok(a.q.data, a.q.stride(0), 8);
}
bool vec_out(const ops::Fp8GroupAct& a) {
  return vec_ok(a.q.data, a.q.stride(0), 8);
}
bool vec_out(const ops::Mxfp4Act& a) {
  return reinterpret_cast<std::uintptr_t>(a.packed.data) % 4 == 0 && a.packed.stride(0) % 4 == 0;
}

void expect_cols(std::string_view op, index_t cols) {
  expect(cols <= ops::gpu_norm_max_cols, op,
         "rows of " + std::to_string(cols) + " columns exceed the GPU norm's limit of " +
             std::to_string(ops::gpu_norm_max_cols));
}

template <Prologue P, class Out>
constexpr EpilogueWeight weight_of() {
  if constexpr (P == Prologue::norm && std::is_same_v<Out, Bf16Rows>)
    return EpilogueWeight::bf16_plain;
  else if constexpr (P == Prologue::norm && std::is_same_v<Out, Fp8TokenRows>)
    return EpilogueWeight::token_plain;
  else
    return EpilogueWeight::other;
}

template <Prologue P, class Out>
void launch_norm(const ops::Gpu& gpu, const NormArgs& args, index_t rows, const Out& out,
                 bool vec) {
  if (rows == 0) return;
  if (P == Prologue::norm && rows < streaming_rows) {
    const RowShape shape = row_shape(args.cols);
    with_shape(shape, vec, [&]<int Chunks, bool Vec>() {
      gpu::launch(rms_norm_block_kernel<P, Out, Chunks, Vec>, static_cast<unsigned>(rows),
                  static_cast<unsigned>(shape.threads), 0, stream_of(gpu), args, out);
    });
  } else {
    const GroupShape shape = norm_shape(args.cols, rows, weight_of<P, Out>());
    const index_t blocks = (rows + shape.rows_per_block - 1) / shape.rows_per_block;
    with_shape(RowShape{shape.chunks, shape.threads()}, vec, [&]<int Chunks, bool Vec>() {
      gpu::launch(rms_norm_kernel<P, Out, Chunks, Vec>, static_cast<unsigned>(blocks),
                  static_cast<unsigned>(shape.threads()), 0, stream_of(gpu), args, rows,
                  shape.group, out);
    });
  }
}

}  // namespace

void launch_rms_norm_bf16(const ops::Gpu& gpu, const bf16* src, RowMap in, index_t rows,
                          index_t cols, const bf16* weight, float eps, bf16* dst, RowMap out) {
  const NormArgs args{src, in, nullptr, 0, weight, static_cast<int>(cols), eps};
  const bool vec = cols % vec_width == 0 && aligned16(src) && aligned16(dst) && aligned16(weight) &&
                   in.outer % vec_width == 0 && in.inner % vec_width == 0 &&
                   out.outer % vec_width == 0 && out.inner % vec_width == 0;
  launch_norm<Prologue::norm>(gpu, args, rows, Bf16Rows{dst, out}, vec);
}

}  // namespace atom::kernels

namespace atom::ops {

using kernels::vec_width;

template <class Epi>
requires Epilogue<Epi>
void rms_norm(const Gpu& gpu, View2<const bf16> x, View1<const bf16> weight, float eps,
              typename Epi::Output out) {
  constexpr const char* op = "rms_norm";
  expect_view(op, "x", x, {-1, -1});
  expect(x.shape[1] > 0, op, "argument 'x' has no columns");
  kernels::expect_cols(op, x.shape[1]);
  expect_view(op, "weight", weight, {x.shape[1]});
  expect_format(op, "out", out, x.shape[0], x.shape[1]);
  expect_disjoint(op, "out", out, "x", x);
  expect_disjoint(op, "out", out, "weight", weight);
  const index_t cols = x.shape[1];
  const kernels::NormArgs args{
      x.data, kernels::RowMap{1, x.stride(0), 0}, nullptr, 0, weight.data, static_cast<int>(cols),
      eps};
  const bool vec = cols % vec_width == 0 && kernels::vec_ok(x.data, x.stride(0), 16) &&
                   kernels::aligned16(weight.data) && kernels::vec_out(out);
  kernels::launch_norm<kernels::Prologue::norm>(gpu, args, x.shape[0], kernels::rows_of(out), vec);
}

template <class Epi>
requires Epilogue<Epi>
void add_rms_norm(const Gpu& gpu, View2<const bf16> x, View2<bf16> residual,
                  View1<const bf16> weight, float eps, typename Epi::Output out) {
  constexpr const char* op = "add_rms_norm";
  expect_view(op, "x", x, {-1, -1});
  expect(x.shape[1] > 0, op, "argument 'x' has no columns");
  kernels::expect_cols(op, x.shape[1]);
  expect_view(op, "residual", residual, {x.shape[0], x.shape[1]});
  expect_view(op, "weight", weight, {x.shape[1]});
  expect_format(op, "out", out, x.shape[0], x.shape[1]);
  expect_disjoint(op, "residual", residual, "x", x);
  expect_disjoint(op, "residual", residual, "weight", weight);
  expect_disjoint(op, "out", out, "x", x);
  expect_disjoint(op, "out", out, "residual", residual);
  expect_disjoint(op, "out", out, "weight", weight);
  const index_t cols = x.shape[1];
  const kernels::NormArgs args{x.data,
                               kernels::RowMap{1, x.stride(0), 0},
                               residual.data,
                               residual.stride(0),
                               weight.data,
                               static_cast<int>(cols),
                               eps};
  const bool vec = cols % vec_width == 0 && kernels::vec_ok(x.data, x.stride(0), 16) &&
                   kernels::vec_ok(residual.data, residual.stride(0), 16) &&
                   kernels::aligned16(weight.data) && kernels::vec_out(out);
  kernels::launch_norm<kernels::Prologue::add_norm>(gpu, args, x.shape[0], kernels::rows_of(out),
                                                    vec);
}

template <class QEpi>
requires Epilogue<QEpi>
void qk_norm_fused(const Gpu& gpu, View2<const bf16> qkv_a, View1<const bf16> q_weight,
                   View1<const bf16> kv_weight, float eps, typename QEpi::Output q_out,
                   View2<bf16> kv_c_out, View2<bf16> k_pe_out) {
  constexpr const char* op = "qk_norm_fused";
  expect_view(op, "q_weight", q_weight, {-1});
  expect_view(op, "kv_weight", kv_weight, {-1});
  const index_t q_lora = q_weight.shape[0];
  const index_t kv_lora = kv_weight.shape[0];
  expect(q_lora > 0 && kv_lora > 0, op, "'q_weight' and 'kv_weight' must not be empty");
  kernels::expect_cols(op, q_lora);
  kernels::expect_cols(op, kv_lora);
  expect_view(op, "qkv_a", qkv_a, {-1, -1});
  const index_t tokens = qkv_a.shape[0];
  const index_t rope = qkv_a.shape[1] - q_lora - kv_lora;
  expect(rope >= 0, op,
         "argument 'qkv_a' has " + std::to_string(qkv_a.shape[1]) +
             " columns, fewer than q_weight + kv_weight = " + std::to_string(q_lora + kv_lora));
  expect_format(op, "q_out", q_out, tokens, q_lora);
  expect_view(op, "kv_c_out", kv_c_out, {tokens, kv_lora});
  expect_view(op, "k_pe_out", k_pe_out, {tokens, rope});
  expect_disjoint(op, "q_out", q_out, "qkv_a", qkv_a);
  expect_disjoint(op, "q_out", q_out, "kv_c_out", kv_c_out);
  expect_disjoint(op, "q_out", q_out, "k_pe_out", k_pe_out);
  expect_disjoint(op, "kv_c_out", kv_c_out, "qkv_a", qkv_a);
  expect_disjoint(op, "k_pe_out", k_pe_out, "qkv_a", qkv_a);
  expect_disjoint(op, "k_pe_out", k_pe_out, "kv_c_out", kv_c_out);
  if (tokens == 0) return;
  const kernels::QkArgs args{qkv_a.data,
                             qkv_a.stride(0),
                             q_weight.data,
                             kv_weight.data,
                             static_cast<int>(q_lora),
                             static_cast<int>(kv_lora),
                             static_cast<int>(rope),
                             eps,
                             kv_c_out.data,
                             kv_c_out.stride(0),
                             k_pe_out.data,
                             k_pe_out.stride(0)};
  const bool vec = q_lora % vec_width == 0 && kv_lora % vec_width == 0 &&
                   kernels::vec_ok(qkv_a.data, qkv_a.stride(0), 16) &&
                   kernels::aligned16(q_weight.data) && kernels::aligned16(kv_weight.data) &&
                   kernels::vec_ok(kv_c_out.data, kv_c_out.stride(0), 16) &&
                   kernels::vec_out(q_out);
  const kernels::RowShape shape = kernels::row_shape(std::max(q_lora, kv_lora));
  const auto rows = kernels::rows_of(q_out);
  kernels::with_shape(shape, vec, [&]<int Chunks, bool Vec>() {
    gpu::launch(kernels::qk_norm_fused_kernel<decltype(rows), Chunks, Vec>,
                static_cast<unsigned>(tokens), static_cast<unsigned>(shape.threads), 0,
                kernels::stream_of(gpu), args, rows);
  });
}

void copy(const Gpu& gpu, View2<const bf16> src, View2<bf16> dst) {
  constexpr const char* op = "copy";
  expect_view(op, "src", src, {-1, -1});
  expect_view(op, "dst", dst, {src.shape[0], src.shape[1]});
  expect_disjoint(op, "dst", dst, "src", src);
  const index_t rows = src.shape[0];
  const index_t cols = src.shape[1];
  if (rows == 0 || cols == 0) return;
  const bool vec = cols % vec_width == 0 && kernels::vec_ok(src.data, src.stride(0), 16) &&
                   kernels::vec_ok(dst.data, dst.stride(0), 16);
  constexpr int threads = 256;
  const index_t items = vec ? cols / vec_width : cols;
  // Enough blocks per row to put ~4 blocks per multiprocessor in flight overall.
  const index_t per_row = std::max<index_t>(
      1, std::min<index_t>((items + threads - 1) / threads, (132 * 4 + rows - 1) / rows));
  const index_t grid_rows = std::min<index_t>(rows, 65535);
  gpu::launch(kernels::copy_kernel,
              dim3(static_cast<unsigned>(per_row), static_cast<unsigned>(grid_rows)), threads, 0,
              kernels::stream_of(gpu), src.data, src.stride(0), dst.data, dst.stride(0), rows, cols,
              vec);
}

double copy_gbs(const Gpu& gpu, index_t values) {
  const index_t cols = 16384;
  const index_t rows = std::max<index_t>(1, values / cols);
  gpu::Buffer<bf16> a(static_cast<std::size_t>(rows * cols)),
      b(static_cast<std::size_t>(rows * cols));
  a.fill(0x3c);
  gpu::synchronize();  // the fill runs on the default stream, which gpu's stream may not wait for
  const auto src = make_view(static_cast<const bf16*>(a.data()), rows, cols);
  const auto dst = make_view(b.data(), rows, cols);
  copy(gpu, src, dst);
  gpu::StreamMarks marks(gpu.stream);
  for (int i = 0; i < 5; ++i) {
    marks.mark();
    copy(gpu, src, dst);
  }
  marks.mark();
  std::vector<double> ms = marks.intervals_ms();
  std::sort(ms.begin(), ms.end());
  return 2.0 * 2.0 * static_cast<double>(rows * cols) / (ms[2] * 1e6);
}

#define ATOM_INSTANTIATE_GPU_NORMS(Epi)                                                          \
  template void rms_norm<Epi>(const Gpu&, View2<const bf16>, View1<const bf16>, float,           \
                              Epi::Output);                                                      \
  template void add_rms_norm<Epi>(const Gpu&, View2<const bf16>, View2<bf16>, View1<const bf16>, \
                                  float, Epi::Output);                                           \
  template void qk_norm_fused<Epi>(const Gpu&, View2<const bf16>, View1<const bf16>,             \
                                   View1<const bf16>, float, Epi::Output, View2<bf16>,           \
                                   View2<bf16>);

ATOM_INSTANTIATE_GPU_NORMS(epi::Bf16)
ATOM_INSTANTIATE_GPU_NORMS(epi::Fp8PerToken)
ATOM_INSTANTIATE_GPU_NORMS(epi::Fp8PerGroup128)
ATOM_INSTANTIATE_GPU_NORMS(epi::Mxfp4)

}  // namespace atom::ops
