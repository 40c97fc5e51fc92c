// Activation and weight formats the ops exchange, the epilogue tags that select a producer's
// output format at compile time, and the boundary checks every op runs on them. A consumer takes
// exactly the format struct it reads, so wiring a producer to a consumer of another format does
// not compile.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"

namespace atom::ops {

enum class Format : std::uint8_t { bf16, fp8_token, fp8_group128, mxfp4 };

// Columns per FP8 scale group in Fp8GroupAct.
inline constexpr index_t fp8_group = 128;

constexpr index_t ceil_div(index_t a, index_t b) {
  return (a + b - 1) / b;
}
// Bytes per row holding `cols` packed e2m1 codes, and e8m0 scales per row.
constexpr index_t mxfp4_packed_cols(index_t cols) {
  return ceil_div(cols, 2);
}
constexpr index_t mxfp4_scale_cols(index_t cols) {
  return ceil_div(cols, mx_block);
}
constexpr index_t fp8_group_cols(index_t cols) {
  return ceil_div(cols, fp8_group);
}

// bf16 activations [rows, cols].
struct Bf16Act {
  static constexpr Format format = Format::bf16;
  View2<bf16> x;
};

// FP8 with one scale per row: scale = amax / 448 (1 when amax == 0), q = to_fp8(x / scale);
// the value is to_float(q) * scale.
struct Fp8TokenAct {
  static constexpr Format format = Format::fp8_token;
  View2<fp8_e4m3> q;   // [rows, cols]
  View1<float> scale;  // [rows]
};

// FP8 with one scale per row and group of 128 columns (the last group may be partial), same rule
// as Fp8TokenAct within each group.
struct Fp8GroupAct {
  static constexpr Format format = Format::fp8_group128;
  View2<fp8_e4m3> q;   // [rows, cols]
  View2<float> scale;  // [rows, ceil(cols / 128)]
};

// OCP MXFP4 along each row: blocks of 32 columns (the last may be partial) share an e8m0 scale.
struct Mxfp4Act {
  static constexpr Format format = Format::mxfp4;
  View2<std::uint8_t> packed;  // [rows, ceil(cols / 2)], element 2i in the low nibble
  View2<e8m0> scale;           // [rows, ceil(cols / 32)]
  index_t cols = 0;
};

// An MXFP4 weight: one output feature per row, the reduction dimension K along the row.
struct Mxfp4Weight {
  View2<std::uint8_t> packed;  // [N, ceil(K / 2)]
  View2<e8m0> scale;           // [N, ceil(K / 32)]
  index_t k = 0;
};

// One MXFP4 weight per expert.
struct Mxfp4Experts {
  View3<std::uint8_t> packed;  // [E, N, ceil(K / 2)]
  View3<e8m0> scale;           // [E, N, ceil(K / 32)]
  index_t k = 0;
};

// A bf16 weight [N, K] (what transformers saves, and Qwen3-30B-A3B's own format).
struct Bf16Weight {
  View2<bf16> w;  // [N, K]
};

// One bf16 weight per expert.
struct Bf16Experts {
  View3<bf16> w;  // [E, N, K]
};

// FP8 e4m3 weight block size along K: block scales line up with the activations' groups of 128
// (Fp8GroupAct) only when the weight's K blocks are as wide.
inline constexpr index_t fp8_weight_block_k = fp8_group;

// An FP8 e4m3 weight [N, K] with one float scale per block of block_n rows x 128 columns (the
// last block of a row or column may be partial), as DeepSeek-V3 stores it (weight_scale_inv):
// the value of element (n, k) is to_float(q(n, k)) * scale(n / block_n, k / 128).
struct Fp8BlockWeight {
  View2<fp8_e4m3> q;   // [N, K]
  View2<float> scale;  // [ceil(N / block_n), ceil(K / 128)]
  index_t block_n = 128;
};

// One FP8 block weight per expert.
struct Fp8BlockExperts {
  View3<fp8_e4m3> q;   // [E, N, K]
  View3<float> scale;  // [E, ceil(N / block_n), ceil(K / 128)]
  index_t block_n = 128;
};

// Epilogue tags: the output format a producer op writes. Epi::Output is the struct it fills.
namespace epi {
struct Bf16 {
  using Output = Bf16Act;
  static constexpr Format format = Format::bf16;
};
struct Fp8PerToken {
  using Output = Fp8TokenAct;
  static constexpr Format format = Format::fp8_token;
};
struct Fp8PerGroup128 {
  using Output = Fp8GroupAct;
  static constexpr Format format = Format::fp8_group128;
};
struct Mxfp4 {
  using Output = Mxfp4Act;
  static constexpr Format format = Format::mxfp4;
};
}  // namespace epi

template <class Epi>
concept Epilogue = requires {
  typename Epi::Output;
  requires Epi::format == Epi::Output::format;
};

// ---- boundary checks shared by the ops ----
// Each check builds its message only when it fails, so checks inside loops cost a comparison.

[[noreturn]] inline void fail(std::string_view op, const std::string& what) {
  throw ShapeError(std::string(op) + ": " + what);
}

// The innermost dimension must have stride 1 (a column slice keeps it); rows may be strided.
template <class T, int R>
void expect_rows_contiguous(std::string_view op, std::string_view arg, const View<T, R>& v) {
  if (v.shape[R - 1] > 1 && v.strides[R - 1] != 1)
    fail(op, "argument '" + std::string(arg) +
                 "' must have a contiguous last dimension (stride 1), got stride " +
                 std::to_string(v.strides[R - 1]));
}

// Shape and row contiguity in one step.
template <class T, int R>
void expect_view(std::string_view op, std::string_view arg, const View<T, R>& v,
                 const std::array<index_t, R>& expected) {
  expect_shape<T, R>(op, arg, v, expected);
  expect_rows_contiguous(op, arg, v);
}

// The half-open byte range a view can touch; empty views touch nothing.
template <class T, int R>
std::pair<const std::byte*, const std::byte*> byte_span(const View<T, R>& v) {
  if (v.numel() == 0 || v.data == nullptr) return {nullptr, nullptr};
  index_t last = 0;
  for (int d = 0; d < R; ++d) last += (v.shape[d] - 1) * (v.strides[d] < 0 ? 0 : v.strides[d]);
  const auto* begin = reinterpret_cast<const std::byte*>(v.data);
  return {begin, begin + (last + 1) * static_cast<index_t>(sizeof(T))};
}

template <class T, int R, class U, int S>
bool overlaps(const View<T, R>& a, const View<U, S>& b) {
  const auto [a0, a1] = byte_span(a);
  const auto [b0, b1] = byte_span(b);
  return a0 != nullptr && b0 != nullptr && a0 < b1 && b0 < a1;
}

// Outputs that an op writes while it still reads the input must not share memory with it.
template <class T, int R, class U, int S>
void expect_disjoint(std::string_view op, std::string_view out_arg, const View<T, R>& out,
                     std::string_view in_arg, const View<U, S>& in) {
  if (overlaps(out, in))
    fail(op, "output '" + std::string(out_arg) + "' overlaps input '" + std::string(in_arg) + "'");
}

// A format output against an input view: every member view must be disjoint from it.
template <class T, int R>
void expect_disjoint(std::string_view op, std::string_view out_arg, const Bf16Act& out,
                     std::string_view in_arg, const View<T, R>& in) {
  expect_disjoint(op, std::string(out_arg) + ".x", out.x, in_arg, in);
}
template <class T, int R>
void expect_disjoint(std::string_view op, std::string_view out_arg, const Fp8TokenAct& out,
                     std::string_view in_arg, const View<T, R>& in) {
  expect_disjoint(op, std::string(out_arg) + ".q", out.q, in_arg, in);
  expect_disjoint(op, std::string(out_arg) + ".scale", out.scale, in_arg, in);
}
template <class T, int R>
void expect_disjoint(std::string_view op, std::string_view out_arg, const Fp8GroupAct& out,
                     std::string_view in_arg, const View<T, R>& in) {
  expect_disjoint(op, std::string(out_arg) + ".q", out.q, in_arg, in);
  expect_disjoint(op, std::string(out_arg) + ".scale", out.scale, in_arg, in);
}
template <class T, int R>
void expect_disjoint(std::string_view op, std::string_view out_arg, const Mxfp4Act& out,
                     std::string_view in_arg, const View<T, R>& in) {
  expect_disjoint(op, std::string(out_arg) + ".packed", out.packed, in_arg, in);
  expect_disjoint(op, std::string(out_arg) + ".scale", out.scale, in_arg, in);
}

// Each format checked against [rows, cols]; -1 accepts any row count. `arg` prefixes the member
// names in messages (e.g. "out.packed").
inline void expect_format(std::string_view op, std::string_view arg, const Bf16Act& a, index_t rows,
                          index_t cols) {
  expect_view(op, std::string(arg) + ".x", a.x, {rows, cols});
}

inline void expect_format(std::string_view op, std::string_view arg, const Fp8TokenAct& a,
                          index_t rows, index_t cols) {
  expect_view(op, std::string(arg) + ".q", a.q, {rows, cols});
  expect_shape(op, std::string(arg) + ".scale", a.scale, {a.q.shape[0]});
}

inline void expect_format(std::string_view op, std::string_view arg, const Fp8GroupAct& a,
                          index_t rows, index_t cols) {
  expect_view(op, std::string(arg) + ".q", a.q, {rows, cols});
  expect_view(op, std::string(arg) + ".scale", a.scale,
              {a.q.shape[0], fp8_group_cols(a.q.shape[1])});
}

inline void expect_format(std::string_view op, std::string_view arg, const Mxfp4Act& a,
                          index_t rows, index_t cols) {
  const std::string name(arg);
  if (cols >= 0 && a.cols != cols)
    fail(op, "argument '" + name + "' has " + std::to_string(a.cols) + " columns, expected " +
                 std::to_string(cols));
  if (a.cols < 0) fail(op, "argument '" + name + "' has a negative column count");
  expect_view(op, name + ".packed", a.packed, {rows, mxfp4_packed_cols(a.cols)});
  expect_view(op, name + ".scale", a.scale, {a.packed.shape[0], mxfp4_scale_cols(a.cols)});
}

// A weight [n, k]; -1 accepts any n or k.
inline void expect_weight(std::string_view op, std::string_view arg, const Mxfp4Weight& w,
                          index_t n, index_t k) {
  const std::string name(arg);
  if (k >= 0 && w.k != k)
    fail(op, "argument '" + name + "' has K = " + std::to_string(w.k) + ", expected " +
                 std::to_string(k));
  if (w.k < 0) fail(op, "argument '" + name + "' has a negative K");
  expect_view(op, name + ".packed", w.packed, {n, mxfp4_packed_cols(w.k)});
  expect_view(op, name + ".scale", w.scale, {w.packed.shape[0], mxfp4_scale_cols(w.k)});
}

inline void expect_weight(std::string_view op, std::string_view arg, const Bf16Weight& w, index_t n,
                          index_t k) {
  expect_view(op, std::string(arg) + ".w", w.w, {n, k});
}

inline void expect_weight(std::string_view op, std::string_view arg, const Fp8BlockWeight& w,
                          index_t n, index_t k) {
  const std::string name(arg);
  if (w.block_n < 1)
    fail(op, "argument '" + name + "' has block_n = " + std::to_string(w.block_n) +
                 ", expected a positive block height");
  expect_view(op, name + ".q", w.q, {n, k});
  expect_view(op, name + ".scale", w.scale,
              {ceil_div(w.q.shape[0], w.block_n), ceil_div(w.q.shape[1], fp8_weight_block_k)});
}

}  // namespace atom::ops
