#include "atom/pipeline/tp_gpu.hpp"

#include <type_traits>
#include <variant>

#include "atom/gpu/device.hpp"

namespace atom::pipeline {

namespace {

// Runs `collective` on the group's stream between the two waits that order it on `stream`.
template <class Collective>
void on_group_stream(dist::TpGroup& group, void* stream, Collective collective) {
  void* own = group.gpu().stream;
  if (own != stream) gpu::stream_wait(own, stream);
  collective();
  if (own != stream) gpu::stream_wait(stream, own);
}

}  // namespace

void GpuTpComm::all_reduce(View2<const bf16> x, View2<bf16> out, void* stream) {
  on_group_stream(group_, stream, [&] { group_.all_reduce(x, out); });
}

void GpuTpComm::all_reduce_add_rms_norm(View2<const bf16> x, View2<bf16> residual,
                                        View1<const bf16> weight, float eps, const NormOutput& out,
                                        void* stream) {
  on_group_stream(group_, stream, [&] {
    std::visit(
        [&](const auto& o) {
          using Act = std::decay_t<decltype(o)>;
          if constexpr (std::is_same_v<Act, ops::Bf16Act>)
            group_.all_reduce_add_rms_norm<ops::epi::Bf16>(x, residual, weight, eps, o);
          else if constexpr (std::is_same_v<Act, ops::Mxfp4Act>)
            group_.all_reduce_add_rms_norm<ops::epi::Mxfp4>(x, residual, weight, eps, o);
          else
            group_.all_reduce_add_rms_norm<ops::epi::Fp8PerGroup128>(x, residual, weight, eps, o);
        },
        out);
  });
}

}  // namespace atom::pipeline
