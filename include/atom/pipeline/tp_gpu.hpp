// The GPU's tensor-parallel communicator for the pipelines: a dist::TpGroup (one process per GPU,
// NCCL / RCCL and the fused one-shot kernel over peer memory) behind pipeline::TpComm. A call is
// ordered on the block's stream: the group's stream waits for it, the collective runs there, and
// the block's stream waits for the group's, so a block with its collectives can be captured in
// one graph. The fused form takes the group's automatic path (fused within its size limit,
// all-reduce then norm above it).
#pragma once

#include "atom/dist/tp.hpp"
#include "atom/pipeline/tp.hpp"

namespace atom::pipeline {

class GpuTpComm final : public TpComm {
 public:
  explicit GpuTpComm(dist::TpGroup& group) : group_(group) {}

  index_t rank() const noexcept override { return group_.rank(); }
  index_t size() const noexcept override { return group_.size(); }
  void all_reduce(View2<const bf16> x, View2<bf16> out, void* stream) override;
  void all_reduce_add_rms_norm(View2<const bf16> x, View2<bf16> residual, View1<const bf16> weight,
                               float eps, const NormOutput& out, void* stream) override;

 private:
  dist::TpGroup& group_;
};

}  // namespace atom::pipeline
