// Two model configs compared field by field, for the model tests.
#pragma once

#include <catch2/catch.hpp>

#include "atom/pipeline/model.hpp"

namespace atom::test {

// Every field of the model the computation reads, compared one by one (the name and the KV-cache
// page, an engine's choice, exempt).
inline void check_same_model(const pipeline::ModelConfig& a, const pipeline::ModelConfig& b) {
  CHECK(a.architecture == b.architecture);
  CHECK(a.attention == b.attention);
  CHECK(a.hidden == b.hidden);
  CHECK(a.num_layers == b.num_layers);
  CHECK(a.rms_eps == b.rms_eps);
  CHECK(a.rope_theta == b.rope_theta);
  CHECK(a.rope_scaling.kind == b.rope_scaling.kind);
  CHECK(a.rope_scaling.factor == b.rope_scaling.factor);
  CHECK(a.rope_scaling.original_max_position == b.rope_scaling.original_max_position);
  CHECK(a.rope_scaling.beta_fast == b.rope_scaling.beta_fast);
  CHECK(a.rope_scaling.beta_slow == b.rope_scaling.beta_slow);
  CHECK(a.rope_scaling.mscale == b.rope_scaling.mscale);
  CHECK(a.rope_scaling.mscale_all_dim == b.rope_scaling.mscale_all_dim);
  CHECK(a.rope_scaling.attention_factor == b.rope_scaling.attention_factor);
  CHECK(a.rope_scaling.truncate == b.rope_scaling.truncate);
  CHECK(a.rope_style == b.rope_style);
  CHECK(a.max_position == b.max_position);
  CHECK(a.q_lora_rank == b.q_lora_rank);
  CHECK(a.kv_lora_rank == b.kv_lora_rank);
  CHECK(a.qk_rope_dim == b.qk_rope_dim);
  CHECK(a.qk_nope_dim == b.qk_nope_dim);
  CHECK(a.v_head_dim == b.v_head_dim);
  CHECK(a.num_heads == b.num_heads);
  CHECK(a.num_kv_heads == b.num_kv_heads);
  CHECK(a.head_dim == b.head_dim);
  CHECK(a.intermediate == b.intermediate);
  CHECK(a.first_k_dense == b.first_k_dense);
  CHECK(a.moe_layer_freq == b.moe_layer_freq);
  CHECK(a.decoder_sparse_step == b.decoder_sparse_step);
  CHECK(a.mlp_only_layers == b.mlp_only_layers);
  CHECK(a.router == b.router);
  CHECK(a.num_experts == b.num_experts);
  CHECK(a.top_k == b.top_k);
  CHECK(a.n_group == b.n_group);
  CHECK(a.topk_group == b.topk_group);
  CHECK(a.moe_intermediate == b.moe_intermediate);
  CHECK(a.num_shared_experts == b.num_shared_experts);
  CHECK(a.routed_scaling == b.routed_scaling);
  CHECK(a.renormalize == b.renormalize);
}

}  // namespace atom::test
