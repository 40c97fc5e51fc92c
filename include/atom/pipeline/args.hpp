// The typed data of the pipelines: weights, decode batches, workspaces and the arguments of one
// run. All are views; ownership stays with the caller (see pipeline/storage.hpp for an owner).
#pragma once

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

#include "atom/ops/bmm.hpp"
#include "atom/ops/cache.hpp"
#include "atom/ops/decode_batch.hpp"
#include "atom/ops/formats.hpp"
#include "atom/ops/gpu/gemm.hpp"
#include "atom/ops/gpu/moe.hpp"
#include "atom/pipeline/model.hpp"
#include "atom/policy/point.hpp"

namespace atom::pipeline {

class TpComm;  // pipeline/tp.hpp

// Scratch memory for a run's intermediates: an arena over chunks of one kind of memory (host
// memory by default; the GPU backend's workspace allocates device memory). take() hands out a
// block that stays valid until reset(); its contents are unspecified (every pipeline op writes
// its whole output). reset() keeps the chunks, so a run after the first takes the same addresses
// and allocates nothing.
class Workspace {
 public:
  // Allocates `bytes` of the workspace's memory; the deleter returns it.
  using Chunk = std::unique_ptr<std::byte, void (*)(std::byte*)>;
  using Allocate = Chunk (*)(std::size_t bytes);

  Workspace() : Workspace(&host_chunk) {}
  explicit Workspace(Allocate allocate) : allocate_(allocate) {}

  template <class T, class... Extent>
  View<T, static_cast<int>(sizeof...(Extent))> take(Extent... extent) {
    index_t n = 1;
    ((n *= static_cast<index_t>(extent)), ...);
    return make_view(static_cast<T*>(bytes(static_cast<std::size_t>(n) * sizeof(T))), extent...);
  }
  void reset() {
    chunk_ = 0;
    used_ = 0;
  }
  // Bytes held in chunks.
  std::size_t capacity() const;

  static Chunk host_chunk(std::size_t bytes);

 private:
  void* bytes(std::size_t n);

  Allocate allocate_;
  std::vector<std::pair<Chunk, std::size_t>> chunks_;  // memory, size
  std::size_t chunk_ = 0;                              // the chunk take() carves from
  std::size_t used_ = 0;                               // bytes of it handed out
};

// The decode batch, per sequence its query tokens, context length and block-table row, per token
// its position and cache slot (-1: padding): ops/decode_batch.hpp states the contract.
using ops::DecodeBatch;

// A linear layer's weight [N, K] in the format its checkpoint stores (`format`; a block's GEMMs
// read the member of that format) and the form each backend reads. bf16 and FP8: `bf16` / `fp8`
// in the logical layout, in the memory of the backend that runs the pipeline. MXFP4: for the host
// backend `mxfp4`, the logical layout in host memory; for the GPU backend a device copy
// preshuffled for the GEMM backend of its point (atom/ops/gpu/gemm.hpp), set by whoever loads the
// weights for the GPU (pipeline/device_storage.hpp). A pipeline throws, naming the weight's format
// or the GEMM backend, when its point's format is not the weight's or no such copy exists.
struct LinearWeight {
  policy::WeightFormat format = policy::WeightFormat::mxfp4;
  ops::Mxfp4Weight mxfp4;
  ops::Fp8BlockWeight fp8;
  ops::Bf16Weight bf16;
  const ops::PreparedMxfp4Weight<policy::GemmBackend::matrix_core>* matrix_core = nullptr;
  const ops::PreparedMxfp4Weight<policy::GemmBackend::portable>* portable = nullptr;

  index_t n() const;
  // Whether the weight holds data (a model without shared experts has none).
  bool present() const;
};

// The routed experts' weights [E, N, K], in the same formats and forms.
struct ExpertWeights {
  policy::WeightFormat format = policy::WeightFormat::mxfp4;
  ops::Mxfp4Experts mxfp4;
  ops::Fp8BlockExperts fp8;
  ops::Bf16Experts bf16;
  const ops::PreparedMxfp4Experts<policy::GemmBackend::matrix_core>* matrix_core = nullptr;
  const ops::PreparedMxfp4Experts<policy::GemmBackend::portable>* portable = nullptr;
};

// Every view of the weights, batches and caches below points to memory of the backend that runs
// the pipeline: host memory for the host backend, device memory for the GPU backend.
struct MlaWeights {
  View1<const bf16> input_norm;     // [hidden]
  LinearWeight qkv_a;               // [q_lora + kv_lora + rope, hidden]
  View1<const bf16> q_a_norm;       // [q_lora]
  View1<const bf16> kv_a_norm;      // [kv_lora]
  LinearWeight q_b;                 // [heads * (nope + rope), q_lora]
  ops::Fp8HeadWeight w_uk_fp8;      // [heads, kv_lora, nope]
  ops::Fp8HeadWeight w_uv_fp8;      // [heads, v, kv_lora]
  ops::Mxfp4HeadWeight w_uk_mxfp4;  // same shapes, MXFP4
  ops::Mxfp4HeadWeight w_uv_mxfp4;
  LinearWeight o_proj;         // [hidden, heads * v]
  View2<const float> cos_sin;  // [max_position, rope] RoPE table (ops::make_cos_sin_cache)
};

struct Qwen3AttentionWeights {
  View1<const bf16> input_norm;  // [hidden]
  LinearWeight qkv;              // [(heads + 2 * kv_heads) * head_dim, hidden]
  View1<const bf16> q_norm;      // [head_dim]
  View1<const bf16> k_norm;      // [head_dim]
  LinearWeight o_proj;           // [hidden, heads * head_dim]
  View2<const float> cos_sin;    // [max_position, head_dim] RoPE table
};

struct MoeWeights {
  View1<const bf16> post_norm;     // [hidden]
  View2<const bf16> router;        // [experts, hidden]
  View1<const float> router_bias;  // [experts] (sigmoid_grouped routing only)
  ExpertWeights gate_up;           // [experts, 2 * intermediate, hidden]
  ExpertWeights down;              // [experts, hidden, intermediate]
  LinearWeight shared_gate_up;     // [2 * shared intermediate, hidden]; absent when no shared
  LinearWeight shared_down;        // [hidden, shared intermediate]
};

// The dense MLP of DeepSeek's first layers and of Qwen3's mlp_only_layers.
struct DenseMlpWeights {
  View1<const bf16> post_norm;  // [hidden]
  LinearWeight gate_up;         // [2 * intermediate, hidden]: gate rows, then up rows
  LinearWeight down;            // [hidden, intermediate]
};

// The format of a block's linear weights (every one of them must have it; throws naming the
// block and the two formats otherwise): the value of policy::WeightFormat its point takes.
policy::WeightFormat weight_format(const MlaWeights& w);
policy::WeightFormat weight_format(const Qwen3AttentionWeights& w);
policy::WeightFormat weight_format(const MoeWeights& w);
policy::WeightFormat weight_format(const DenseMlpWeights& w);

// Arguments common to every pipeline: x is the previous block's output (this rank's partial sum
// under tensor parallelism: the block all-reduces it), residual the residual stream (updated in
// place to x + residual, the same on every rank), out this block's output (this rank's partial
// sum). `tp` is the rank's tensor-parallel group (pipeline/tp.hpp), null at size 1; the weights,
// caches and shapes are this rank's share (pipeline::shard). The GPU backend enqueues its work on
// `stream` (and the MoE block's concurrent shared expert on `side_stream`, when set); the host
// backend ignores both.
struct BlockIo {
  const ModelConfig* model = nullptr;
  TpComm* tp = nullptr;
  View2<const bf16> x;   // [T, hidden]
  View2<bf16> residual;  // [T, hidden]
  View2<bf16> out;       // [T, hidden]
  Workspace* workspace = nullptr;
  void* stream = nullptr;       // hipStream_t / cudaStream_t; null: the default stream
  void* side_stream = nullptr;  // null: the MoE shared expert runs on `stream`
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
  ops::AnyKvCache cache;  // of the instantiation's kv_cache_format
};

struct MoeArgs {
  BlockIo io;
  const MoeWeights* weights = nullptr;
  // ATOM_DUAL_STREAM_MOE_TOKEN_THRESHOLD: the shared expert runs concurrently for
  // 0 < tokens <= threshold (dual-stream instantiations only).
  std::int64_t dual_stream_threshold = 0;
  // Optional [T, top_k]: where the router writes each token's experts (in its slot order), for
  // callers that report routes; unset, the block keeps them in its workspace.
  View2<std::int32_t> routes;
};

struct DenseMlpArgs {
  BlockIo io;
  const DenseMlpWeights* weights = nullptr;
};

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
struct RunArgsOf<policy::PipelineId::dense_mlp> {
  using type = DenseMlpArgs;
};
template <policy::PipelineId P>
using RunArgs = typename RunArgsOf<P>::type;

}  // namespace atom::pipeline
