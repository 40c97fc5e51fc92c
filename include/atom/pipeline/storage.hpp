// Owners of host memory behind the pipeline views: random weights of one decoder layer, and a
// decode batch with its caches already holding each sequence's earlier context. Deterministic in
// their seed, so two owners made alike hold identical bytes. For tests, benchmarks and atom-run.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "atom/pipeline/args.hpp"
#include "atom/pipeline/tp.hpp"

namespace atom::pipeline {

// The memory and views of one layer's weights, as a loader fills them (model/checkpoint.hpp).
struct LayerWeightParts {
  std::vector<std::unique_ptr<std::byte[]>> buffers;
  MlaWeights mla;
  Qwen3AttentionWeights qwen3;
  MoeWeights moe;
  DenseMlpWeights dense;
};

class LayerWeights {
 public:
  // Takes the weights a loader filled.
  explicit LayerWeights(LayerWeightParts parts);
  // Random weights of every block the model's layers have (attention, MoE, and the dense MLP
  // where intermediate > 0), their linear weights in format `format`.
  LayerWeights(const ModelConfig& model, std::uint64_t seed,
               policy::WeightFormat format = policy::WeightFormat::mxfp4);
  LayerWeights(const LayerWeights&) = delete;
  LayerWeights& operator=(const LayerWeights&) = delete;

  const MlaWeights& mla() const { return mla_; }
  const Qwen3AttentionWeights& qwen3() const { return qwen3_; }
  const MoeWeights& moe() const { return moe_; }
  const DenseMlpWeights& dense() const { return dense_; }

 private:
  std::vector<std::unique_ptr<std::byte[]>> buffers_;
  MlaWeights mla_;
  Qwen3AttentionWeights qwen3_;
  MoeWeights moe_;
  DenseMlpWeights dense_;
};

// The scales of the fp8_tensor caches a DecodeState makes: its random contexts' keys and values
// are the weights' approximately standard normal draws (|z| < 3.47), so 448 x scale (5.5 and 4.5)
// never saturates.
inline constexpr float state_key_scale = 0.0123f;
inline constexpr float state_value_scale = 0.0101f;

class DecodeState {
 public:
  // One sequence per entry of context_lens, each with its own context of that length (at least
  // its query tokens) and `query_tokens` query tokens (1: plain decode; more: the tokens a
  // speculative step verifies), the last rows of its context; a GQA model's cache in format
  // `kv_format`.
  DecodeState(const ModelConfig& model, std::vector<std::int32_t> context_lens, std::uint64_t seed,
              index_t query_tokens = 1, ops::KvCacheFormat kv_format = ops::KvCacheFormat::fp8_row);
  // Rank tp's share of the state made alike at size 1: the same batch and residual; x as this
  // rank's partial sum (x / size on every rank for a power-of-two size, which sums back to x
  // exactly; otherwise x on rank 0 and zeros elsewhere); a GQA cache of KV heads `kv_heads` only.
  DecodeState(const ModelConfig& model, std::vector<std::int32_t> context_lens, std::uint64_t seed,
              TpShape tp, Part kv_heads, index_t query_tokens = 1,
              ops::KvCacheFormat kv_format = ops::KvCacheFormat::fp8_row);
  DecodeState(const DecodeState&) = delete;
  DecodeState& operator=(const DecodeState&) = delete;

  index_t tokens() const { return static_cast<index_t>(slots_.size()); }
  DecodeBatch batch() const;
  View2<const bf16> x() const { return x_; }
  View2<bf16> residual() const { return residual_; }
  View2<bf16> out() const { return out_; }
  View2<bf16> intermediate() const { return intermediate_; }
  View3<bf16> mla_cache() const { return mla_cache_; }
  ops::AnyKvCache kv_cache() const { return kv_cache_; }

 private:
  std::vector<std::int32_t> query_start_;
  std::vector<std::int32_t> context_lens_;
  std::vector<std::int64_t> positions_;
  std::vector<std::int64_t> slots_;
  std::vector<std::int32_t> block_table_;
  index_t max_blocks_ = 0;
  std::vector<std::unique_ptr<std::byte[]>> buffers_;
  View2<bf16> x_;
  View2<bf16> residual_;
  View2<bf16> out_;
  View2<bf16> intermediate_;
  View3<bf16> mla_cache_;
  ops::AnyKvCache kv_cache_;
};

}  // namespace atom::pipeline
