// Tensor parallelism inside the pipelines: the communicator a block takes (BlockIo::tp), the one
// definition of how each block of a model is cut over the ranks (used by the pipelines, by the
// sharding of weights and by the caches), and the host's in-process group.
//
// How the blocks are cut, as the engines shard these models:
//   attention: query heads split (column-parallel q / qkv rows, row-parallel o_proj); GQA's KV
//              heads split while the size divides them and replicated beyond (TP 8 over 4 KV
//              heads holds each on two ranks); MLA's q_a / kv_a, norms and latent cache, which
//              has no head dimension, replicated, q_b and W_UK / W_UV split by heads.
//   routed experts: every expert split on its intermediate dimension where each rank's part keeps
//              the weight format's quant groups whole (32 for MXFP4, 128 for FP8 blocks), expert
//              parallel (each rank holds size-th of the experts, whole) where it would not.
//   dense MLP and shared experts: split on the intermediate dimension where groups stay whole.
//   router, norms: replicated.
// A block whose row-parallel GEMM would cut a quant group of its K (the attention's o_proj over a
// rank's heads, the MLP's down projection) is replicated instead: rank 0 computes it whole, the
// other ranks contribute zeros (no production shape needs this; small test models do).
// A block's output is this rank's partial sum; the next block's entry all-reduces it into its
// residual add + RMSNorm, fused in one pass (ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION) or as an
// all-reduce followed by the norm. A split that cannot be made (query heads not divisible by the
// size, KV heads that neither divide nor are divided by it, more experts ranks than experts)
// throws std::invalid_argument naming the model and the dimensions.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <variant>

#include "atom/core/tensor.hpp"
#include "atom/ops/formats.hpp"
#include "atom/pipeline/model.hpp"
#include "atom/policy/axes.hpp"

namespace atom::pipeline {

class LayerWeights;

// What a rank's norm writes: the activations of the next GEMM's format.
using NormOutput = std::variant<ops::Bf16Act, ops::Mxfp4Act, ops::Fp8GroupAct>;

// A tensor-parallel group as one rank's blocks see it. Every rank calls the collectives in the same
// order with the same shapes. Sums are taken in rank order in float and rounded to bf16 once, so
// every rank holds the same bits. A dead or stuck peer makes the call throw dist::TpError within
// the group's timeout.
class TpComm {
 public:
  virtual ~TpComm() = default;
  virtual index_t rank() const noexcept = 0;
  virtual index_t size() const noexcept = 0;
  // out = the bf16 sum over ranks of x, both [T, C] (out may be x).
  virtual void all_reduce(View2<const bf16> x, View2<bf16> out, void* stream) = 0;
  // The fused form: residual := bf16(all_reduce(x) + residual), out := rms_norm(residual) in out's
  // format; the arithmetic of all_reduce followed by ops::add_rms_norm.
  virtual void all_reduce_add_rms_norm(View2<const bf16> x, View2<bf16> residual,
                                       View1<const bf16> weight, float eps, const NormOutput& out,
                                       void* stream) = 0;
};

// add_rms_norm of the ops of `backend` (ops::Host, ops::Gpu: found by argument-dependent lookup,
// so the backend's ops header must be included where this is used) in the format `out` asks for:
// the norm that ends a TpComm's fused form when it is an all-reduce followed by the norm.
template <class Backend>
void add_rms_norm_into(const Backend& backend, View2<const bf16> x, View2<bf16> residual,
                       View1<const bf16> weight, float eps, const NormOutput& out) {
  std::visit(
      [&](const auto& o) {
        using Act = std::decay_t<decltype(o)>;
        if constexpr (std::is_same_v<Act, ops::Bf16Act>)
          add_rms_norm<ops::epi::Bf16>(backend, x, residual, weight, eps, o);
        else if constexpr (std::is_same_v<Act, ops::Mxfp4Act>)
          add_rms_norm<ops::epi::Mxfp4>(backend, x, residual, weight, eps, o);
        else
          add_rms_norm<ops::epi::Fp8PerGroup128>(backend, x, residual, weight, eps, o);
      },
      out);
}

// The position of a rank: size 1 when there is no communicator.
inline TpShape tp_shape(const TpComm* tp) {
  return tp == nullptr ? TpShape{} : TpShape{tp->rank(), tp->size()};
}

// A rank's part of one dimension: [begin, begin + count).
struct Part {
  index_t begin = 0;
  index_t count = 0;
  index_t end() const { return begin + count; }
};

// The elements one quant group spans along K in a weight of format f: 32 (MXFP4), 128 (FP8
// blocks), 1 (bf16).
index_t quant_group(policy::WeightFormat f);

struct AttentionSplit {
  Part heads;               // query heads (MLA: its heads)
  Part kv_heads;            // GQA: the KV heads this rank holds (the one it shares when replicated)
  bool replicated = false;  // rank 0 computes the block whole; the others write zeros
  bool computes(TpShape tp) const { return !replicated || tp.rank == 0; }
};
AttentionSplit attention_split(const ModelConfig& m, TpShape tp, policy::WeightFormat f);

// The dense MLP or the shared experts, of intermediate size `intermediate`.
struct MlpSplit {
  Part intermediate;
  bool replicated = false;  // rank 0 computes the block whole; the others write zeros
  bool computes(TpShape tp) const { return !replicated || tp.rank == 0; }
};
MlpSplit mlp_split(index_t intermediate, TpShape tp, policy::WeightFormat f);

struct ExpertSplit {
  bool expert_parallel = false;
  Part experts;       // the experts this rank holds (all of them unless expert parallel)
  Part intermediate;  // the part of every expert's intermediate dimension it holds
};
ExpertSplit expert_split(const ModelConfig& m, TpShape tp, policy::WeightFormat f);

// Rank tp's share of a layer's weights (host memory), cut as above from the whole layer's. Every
// block of `full` is cut by its own weight format. Throws when a split cannot be made.
std::unique_ptr<LayerWeights> shard(const LayerWeights& full, const ModelConfig& m, TpShape tp);

// The in-process group: ranks are threads of one process sharing memory (host backend). Each
// collective is a rendezvous of all ranks: each publishes its input, waits for the others (bounded
// by the timeout), reads every rank's rows in rank order and waits until all have read. A rank
// that fails (its thread throws) calls fail(), which makes every waiting and later collective
// throw dist::TpError naming that rank; a rank that never arrives makes the others throw after the
// timeout, naming the ranks that are missing.
class HostTpGroup {
 public:
  HostTpGroup(index_t size, std::chrono::milliseconds timeout = std::chrono::seconds(30));
  ~HostTpGroup();
  HostTpGroup(const HostTpGroup&) = delete;
  HostTpGroup& operator=(const HostTpGroup&) = delete;

  index_t size() const noexcept;
  TpComm& rank(index_t r);
  // Marks rank r failed with `cause`; wakes every waiting rank.
  void fail(index_t r, const std::string& cause);

 private:
  struct State;
  class Rank;
  std::unique_ptr<State> state_;
};

// Runs body(its rank of a HostTpGroup) on `size` threads, one per rank, and returns when all are
// done. A rank that throws fails the group, so that the others' collectives throw instead of
// waiting; then the exception of the rank that failed first is rethrown (not the dist::TpError it
// caused on the others).
void run_ranks(index_t size, const std::function<void(TpComm&)>& body,
               std::chrono::milliseconds timeout = std::chrono::seconds(30));

}  // namespace atom::pipeline
