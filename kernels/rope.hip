// RoPE in place over [tokens, heads, rot_dim] with a cos/sin cache and per-token positions.

#include "atom/ops/gpu/rope.hpp"

#include <algorithm>
#include <string>

#include "atom/ops/formats.hpp"
#include "detail/reduce.hpp"

namespace atom::kernels {
namespace {

struct RopeArgs {
  const std::int64_t* positions;
  index_t position_stride;
  const float* cos_sin;
  index_t cos_sin_stride;
  index_t max_positions;
  bf16* x;
  index_t token_stride;
  index_t head_stride;
  int heads;
  int rot_dim;
};

inline constexpr bf16 bf16_nan{0x7fc0};

// One block per token, one thread per rotated pair.
template <ops::RopeStyle S>
__global__ void rope_kernel(RopeArgs a) {
  gpu::start_after_prior_grid();
  const index_t t = blockIdx.x;
  const std::int64_t p = a.positions[t * a.position_stride];
  const bool valid = p >= 0 && p < a.max_positions;
  const int half = a.rot_dim / 2;
  const float* row = a.cos_sin + (valid ? p : 0) * a.cos_sin_stride;
  for (int i = static_cast<int>(threadIdx.x); i < a.heads * half;
       i += static_cast<int>(blockDim.x)) {
    const int h = i / half;
    const int f = i % half;
    bf16* head = a.x + t * a.token_stride + h * a.head_stride;
    bf16& first = head[ops::rope_first<S>(f)];
    bf16& second = head[ops::rope_second<S>(f, half)];
    if (!valid) {
      first = bf16_nan;
      second = bf16_nan;
      continue;
    }
    const float c = row[f];
    const float s = row[half + f];
    const float fa = to_float(first);
    const float fb = to_float(second);
    // rotate_pair with every product and sum rounded on its own.
    first = to_bf16(sub(mul(fa, c), mul(fb, s)));
    second = to_bf16(add(mul(fb, c), mul(fa, s)));
  }
}

}  // namespace
}  // namespace atom::kernels

namespace atom::ops {

template <RopeStyle S>
void rope(const Gpu& gpu, View1<const std::int64_t> positions, View2<const float> cos_sin,
          View3<bf16> x) {
  constexpr std::string_view op = "rope";
  const index_t tokens = positions.size(0);
  const index_t rot_dim = x.size(2);
  expect(rot_dim > 0 && rot_dim % 2 == 0, op,
         "argument 'x' must have an even, positive last dimension (rot_dim), got " +
             std::to_string(rot_dim));
  expect_view(op, "x", x, {tokens, -1, rot_dim});
  expect_view(op, "cos_sin", cos_sin, {-1, rot_dim});
  expect_disjoint(op, "x", x, "cos_sin", cos_sin);
  expect_disjoint(op, "x", x, "positions", positions);
  expect_shape(op, "positions", positions, {tokens});
  if (tokens == 0 || x.size(1) == 0) return;
  const kernels::RopeArgs args{positions.data,
                               positions.stride(0),
                               cos_sin.data,
                               cos_sin.stride(0),
                               cos_sin.size(0),
                               x.data,
                               x.stride(0),
                               x.stride(1),
                               static_cast<int>(x.size(1)),
                               static_cast<int>(rot_dim)};
  const index_t pairs = x.size(1) * rot_dim / 2;
  const auto threads = static_cast<unsigned>(std::min<index_t>(256, (pairs + 63) / 64 * 64));
  gpu::launch(kernels::rope_kernel<S>, static_cast<unsigned>(tokens), threads, 0,
              static_cast<hipStream_t>(gpu.stream), args);
}

template void rope<RopeStyle::neox>(const Gpu&, View1<const std::int64_t>, View2<const float>,
                                    View3<bf16>);
template void rope<RopeStyle::interleaved>(const Gpu&, View1<const std::int64_t>,
                                           View2<const float>, View3<bf16>);

}  // namespace atom::ops
