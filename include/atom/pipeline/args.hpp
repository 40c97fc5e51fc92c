// The typed data of the pipelines: weights, decode batches, workspaces and the arguments of one
// run. All are views; ownership stays with the caller (see pipeline/storage.hpp for an owner).
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "atom/ops/bmm.hpp"
#include "atom/ops/cache.hpp"
#include "atom/ops/formats.hpp"
#include "atom/pipeline/model.hpp"
#include "atom/policy/point.hpp"

namespace atom::pipeline {

// Scratch memory for a run's intermediates: take() hands out fresh zero-initialised blocks that
// stay valid until reset().
class Workspace {
 public:
  template <class T, class... Extent>
  View<T, static_cast<int>(sizeof...(Extent))> take(Extent... extent) {
    index_t n = 1;
    ((n *= static_cast<index_t>(extent)), ...);
    blocks_.push_back(std::make_unique<std::byte[]>(static_cast<std::size_t>(n) * sizeof(T)));
    return make_view(reinterpret_cast<T*>(blocks_.back().get()), extent...);
  }
  void reset() { blocks_.clear(); }

 private:
  std::vector<std::unique_ptr<std::byte[]>> blocks_;
};

// Per-token decode metadata: each token has its own context (ragged batch).
struct DecodeBatch {
  View1<const std::int64_t> positions;     // [T] position of the token being decoded
  View1<const std::int64_t> slots;         // [T] cache slot it writes (block * block_size + offset)
  View2<const std::int32_t> block_table;   // [T, max_blocks] cache blocks of its context
  View1<const std::int32_t> context_lens;  // [T] context length including the token itself
};

struct MlaWeights {
  View1<const bf16> input_norm;     // [hidden]
  ops::Mxfp4Weight qkv_a;           // [q_lora + kv_lora + rope, hidden]
  View1<const bf16> q_a_norm;       // [q_lora]
  View1<const bf16> kv_a_norm;      // [kv_lora]
  ops::Mxfp4Weight q_b;             // [heads * (nope + rope), q_lora]
  ops::Fp8HeadWeight w_uk_fp8;      // [heads, kv_lora, nope]
  ops::Fp8HeadWeight w_uv_fp8;      // [heads, v, kv_lora]
  ops::Mxfp4HeadWeight w_uk_mxfp4;  // same shapes, MXFP4
  ops::Mxfp4HeadWeight w_uv_mxfp4;
  ops::Mxfp4Weight o_proj;     // [hidden, heads * v]
  View2<const float> cos_sin;  // [max_position, rope] RoPE table (ops::make_cos_sin_cache)
};

struct Qwen3AttentionWeights {
  View1<const bf16> input_norm;  // [hidden]
  ops::Mxfp4Weight qkv;          // [(heads + 2 * kv_heads) * head_dim, hidden]
  View1<const bf16> q_norm;      // [head_dim]
  View1<const bf16> k_norm;      // [head_dim]
  ops::Mxfp4Weight o_proj;       // [hidden, heads * head_dim]
  View2<const float> cos_sin;    // [max_position, head_dim] RoPE table
};

struct MoeWeights {
  View1<const bf16> post_norm;      // [hidden]
  View2<const bf16> router;         // [experts, hidden]
  View1<const float> router_bias;   // [experts] (sigmoid_grouped routing only)
  ops::Mxfp4Experts gate_up;        // [experts, 2 * intermediate, hidden]
  ops::Mxfp4Experts down;           // [experts, hidden, intermediate]
  ops::Mxfp4Weight shared_gate_up;  // [2 * shared intermediate, hidden]; absent when no shared
  ops::Mxfp4Weight shared_down;     // [hidden, shared intermediate]
};

// Arguments common to every pipeline: x is the previous block's output (this rank's partial sum
// under tensor parallelism), residual the residual stream (updated in place to x + residual),
// out this block's output.
struct BlockIo {
  const ModelConfig* model = nullptr;
  TpShape tp;
  View2<const bf16> x;   // [T, hidden]
  View2<bf16> residual;  // [T, hidden]
  View2<bf16> out;       // [T, hidden]
  Workspace* workspace = nullptr;
};

struct MlaArgs {
  BlockIo io;
  const MlaWeights* weights = nullptr;
  DecodeBatch batch;
  View3<bf16> cache;  // latent cache [blocks, block_size, kv_lora + rope]
};

struct Qwen3AttentionArgs {
  BlockIo io;
  const Qwen3AttentionWeights* weights = nullptr;
  DecodeBatch batch;
  ops::KvCacheFp8 cache;
};

struct MoeArgs {
  BlockIo io;
  const MoeWeights* weights = nullptr;
  // ATOM_DUAL_STREAM_MOE_TOKEN_THRESHOLD: the shared expert runs concurrently for
  // 0 < tokens <= threshold (dual-stream instantiations only).
  std::int64_t dual_stream_threshold = 0;
};

// A decoder layer: attention, then the MoE block on its output. io.out receives the MoE output;
// `attention_out` holds the attention block's output in between.
template <class AttentionArgs>
struct LayerArgs {
  AttentionArgs attention;  // attention.io.out is the intermediate buffer
  const MoeWeights* moe_weights = nullptr;
  std::int64_t dual_stream_threshold = 0;
  View2<bf16> out;  // [T, hidden]
};
using DsLayerArgs = LayerArgs<MlaArgs>;
using Qwen3LayerArgs = LayerArgs<Qwen3AttentionArgs>;

template <policy::PipelineId P>
struct RunArgsOf;
template <>
struct RunArgsOf<policy::PipelineId::mla_attention> {
  using type = MlaArgs;
};
template <>
struct RunArgsOf<policy::PipelineId::moe_block> {
  using type = MoeArgs;
};
template <>
struct RunArgsOf<policy::PipelineId::qwen3_attention> {
  using type = Qwen3AttentionArgs;
};
template <>
struct RunArgsOf<policy::PipelineId::ds_layer> {
  using type = DsLayerArgs;
};
template <>
struct RunArgsOf<policy::PipelineId::qwen3_layer> {
  using type = Qwen3LayerArgs;
};
template <policy::PipelineId P>
using RunArgs = typename RunArgsOf<P>::type;

}  // namespace atom::pipeline
