// The pipelines as templates over a policy point and a backend. Every fusion choice is an
// `if constexpr` on the point; a fused producer is wired to its consumer through link<>, which
// fails to compile when the producer's output format is not the consumer's input format.
#pragma once

#include <cmath>
#include <future>
#include <string>
#include <type_traits>

#include "atom/gpu/device.hpp"
#include "atom/ops/attention.hpp"
#include "atom/ops/bmm.hpp"
#include "atom/ops/cache.hpp"
#include "atom/ops/gemm.hpp"
#include "atom/ops/gpu/attention.hpp"
#include "atom/ops/gpu/bmm.hpp"
#include "atom/ops/gpu/cache.hpp"
#include "atom/ops/gpu/gemm.hpp"
#include "atom/ops/gpu/moe.hpp"
#include "atom/ops/gpu/norm.hpp"
#include "atom/ops/gpu/quant.hpp"
#include "atom/ops/gpu/qwen_qk.hpp"
#include "atom/ops/gpu/rope.hpp"
#include "atom/ops/moe.hpp"
#include "atom/ops/norm.hpp"
#include "atom/ops/quant.hpp"
#include "atom/ops/qwen_qk.hpp"
#include "atom/ops/rope.hpp"
#include "atom/pipeline/args.hpp"
#include "atom/pipeline/link.hpp"

namespace atom::pipeline {

// What each pipeline declares next to its template: the axes it reads (the only axes its
// template can branch on; the others fold) and the template's name for the generated code. A
// pipeline id without a declaration does not compile.
template <policy::PipelineId P>
struct Declared;
template <policy::PipelineId P>
using PointOf = policy::PointFor<Declared<P>::reads>;

namespace detail {

// The checks every pipeline runs first; returns its weights. Tensor parallelism beyond one rank
// needs a TP communicator, which the pipelines' backends do not take yet.
template <class Weights>
const Weights& checked(std::string_view pipeline, const BlockIo& io, const Weights* weights) {
  expect(io.tp.size == 1 && io.tp.rank == 0, pipeline,
         "tensor parallel size " + std::to_string(io.tp.size) +
             " needs a TP communicator; this backend runs tensor parallel size 1");
  expect(io.model != nullptr && io.workspace != nullptr && weights != nullptr, pipeline,
         "model, workspace and weights must be set");
  return *weights;
}

template <class Backend>
inline constexpr bool on_gpu = std::is_same_v<Backend, ops::Gpu>;

// The backend value a run uses: the GPU backend enqueues on the io's stream.
template <class Backend>
Backend backend_of(const BlockIo& io) {
  if constexpr (on_gpu<Backend>)
    return ops::Gpu{io.stream};
  else
    return Backend{};
}

// The form of a weight the backend reads (see LinearWeight): the host layout, or the GPU copy
// prepared for GEMM backend G.
template <policy::GemmBackend G, class Backend, class Weight>
const auto& weight_for(const Weight& w) {
  if constexpr (!on_gpu<Backend>) {
    return w.host;
  } else {
    const auto* prepared = [&] {
      if constexpr (G == policy::GemmBackend::matrix_core)
        return w.matrix_core;
      else if constexpr (G == policy::GemmBackend::portable)
        return w.portable;
      else
        static_assert(policy::unhandled<G>, "a GEMM backend without a prepared weight form");
    }();
    expect(prepared != nullptr, "GPU pipeline",
           std::string("a weight has no device copy prepared for GEMM backend ") +
               std::string(policy::gemm_backend.label(static_cast<std::uint8_t>(G))) +
               " (load the weights for the GPU with that backend)");
    return *prepared;
  }
}

// Runs `side` and `main` (each called with the backend to enqueue on) concurrently and returns
// when both are done (host) or enqueued so that later work waits for both (GPU: `side` on the
// side stream, forked from and joined back into the main stream; with no side stream, in order).
template <class Backend, class Main, class Side>
void concurrently(const Backend& b, const BlockIo& io, Main main, Side side) {
  if constexpr (on_gpu<Backend>) {
    if (io.side_stream == nullptr) {
      main(b);
      side(b);
      return;
    }
    gpu::stream_wait(io.side_stream, b.stream);
    side(ops::Gpu{io.side_stream});
    main(b);
    gpu::stream_wait(b.stream, io.side_stream);
  } else {
    auto side_done = std::async(std::launch::async, [&] { side(b); });
    main(b);
    side_done.get();
  }
}

template <class Act>
Act take_act(Workspace& ws, index_t rows, index_t cols) {
  if constexpr (std::is_same_v<Act, ops::Bf16Act>) {
    return {ws.take<bf16>(rows, cols)};
  } else if constexpr (std::is_same_v<Act, ops::Mxfp4Act>) {
    return {ws.take<std::uint8_t>(rows, ops::mxfp4_packed_cols(cols)),
            ws.take<e8m0>(rows, ops::mxfp4_scale_cols(cols)), cols};
  } else if constexpr (std::is_same_v<Act, ops::Fp8GroupAct>) {
    return {ws.take<fp8_e4m3>(rows, cols), ws.take<float>(rows, ops::fp8_group_cols(cols))};
  } else {
    static_assert(std::is_same_v<Act, ops::Fp8TokenAct>);
    return {ws.take<fp8_e4m3>(rows, cols), ws.take<float>(rows)};
  }
}

// [AR +] residual add + RMSNorm, producing MXFP4 activations for the next GEMM. With the
// input-norm quant fusion the norm writes MXFP4 itself; otherwise it writes bf16 and a separate
// quant follows. At tensor parallel size 1 the all-reduce is the identity in both forms.
template <policy::InputNormQuant Fusion, class Backend>
ops::Mxfp4Act norm_to_mxfp4(const Backend& b, const BlockIo& io, View1<const bf16> weight) {
  Workspace& ws = *io.workspace;
  const index_t t = io.x.size(0);
  const index_t h = io.x.size(1);
  auto act = take_act<ops::Mxfp4Act>(ws, t, h);
  if constexpr (Fusion == policy::InputNormQuant::fused) {
    using Epi = link<ops::epi::Mxfp4, GemmInput>;
    ops::add_rms_norm<Epi>(b, io.x, io.residual, weight, io.model->rms_eps, act);
  } else if constexpr (Fusion == policy::InputNormQuant::separate) {
    auto normed = take_act<ops::Bf16Act>(ws, t, h);
    ops::add_rms_norm<ops::epi::Bf16>(b, io.x, io.residual, weight, io.model->rms_eps, normed);
    ops::quantize<link<ops::epi::Mxfp4, GemmInput>>(b, normed.x, act);
  } else {
    static_assert(policy::unhandled<Fusion>);
  }
  return act;
}

template <class Backend>
ops::Mxfp4Act quantize_rows(const Backend& b, Workspace& ws, View2<const bf16> x) {
  auto act = take_act<ops::Mxfp4Act>(ws, x.size(0), x.size(1));
  ops::quantize<link<ops::epi::Mxfp4, GemmInput>>(b, x, act);
  return act;
}

// Views of a contiguous [T, H, D] tensor: as [T, H * D] (one row per token) and as [T * H, D]
// (one row per token and head).
template <class T>
View2<T> merge_heads(View3<T> v) {
  return make_view(v.data, v.size(0), v.size(1) * v.size(2));
}
template <class T>
View2<T> rows_per_head(View3<T> v) {
  return make_view(v.data, v.size(0) * v.size(1), v.size(2));
}

// Both GEMM backends compute the same function; on the host they share the reference kernel.
template <policy::GemmBackend G, class Backend>
void gemm(const Backend& b, const ops::Mxfp4Act& a, const LinearWeight& w, View2<bf16> out) {
  ops::gemm_a4w4(b, a, weight_for<G, Backend>(w), out);
}

template <policy::GemmBackend G, class Backend>
void moe_gemm(const Backend& b, const ops::Mxfp4Act& a, View2<const std::int32_t> ids,
              const ExpertWeights& w, View2<bf16> out) {
  ops::moe_gemm_a4w4(b, a, ids, weight_for<G, Backend>(w), out);
}

}  // namespace detail

// DeepSeek MLA attention, decode: [AR+]add+RMSNorm[+MXFP4 quant] -> qkv_a GEMM -> q_a/kv_a norms
// -> q_b GEMM -> absorbed W_UK BMM -> RoPE, latent cache write -> MLA decode -> W_UV BMM -> o_proj.
template <>
struct Declared<policy::PipelineId::mla_attention> {
  static constexpr auto reads =
      policy::axes_read<policy::GemmBackend, policy::BmmFormat, policy::AllReduceNorm,
                        policy::InputNormQuant, policy::QkNorm>;
  static constexpr std::string_view type = "pipeline::MlaAttention";
};
template <PointOf<policy::PipelineId::mla_attention> P, class Backend>
struct MlaAttention {
  static constexpr auto gemm = P.get<policy::GemmBackend>();
  static constexpr auto qk_norm = P.get<policy::QkNorm>();

  static void run(const MlaArgs& a) {
    const MlaWeights& w = detail::checked("mla_attention", a.io, a.weights);
    const Backend b = detail::backend_of<Backend>(a.io);
    const ModelConfig& m = *a.io.model;
    Workspace& ws = *a.io.workspace;
    const index_t t = a.io.x.size(0);
    const index_t heads = m.num_heads / a.io.tp.size;
    const index_t qk_head = m.qk_nope_dim + m.qk_rope_dim;

    const auto x_act =
        detail::norm_to_mxfp4<P.get<policy::InputNormQuant>()>(b, a.io, w.input_norm);
    auto qkv_a = ws.take<bf16>(t, m.q_lora_rank + m.kv_lora_rank + m.qk_rope_dim);
    detail::gemm<gemm>(b, x_act, w.qkv_a, qkv_a);

    auto kv_c = ws.take<bf16>(t, m.kv_lora_rank);
    auto k_pe = ws.take<bf16>(t, m.qk_rope_dim);
    ops::Mxfp4Act q_c_act;
    if constexpr (qk_norm == policy::QkNorm::fused_quant) {
      q_c_act = detail::take_act<ops::Mxfp4Act>(ws, t, m.q_lora_rank);
      ops::qk_norm_fused<link<ops::epi::Mxfp4, GemmInput>>(b, qkv_a, w.q_a_norm, w.kv_a_norm,
                                                           m.rms_eps, q_c_act, kv_c, k_pe);
    } else {
      auto q_c = detail::take_act<ops::Bf16Act>(ws, t, m.q_lora_rank);
      if constexpr (qk_norm == policy::QkNorm::fused) {
        ops::qk_norm_fused<ops::epi::Bf16>(b, qkv_a, w.q_a_norm, w.kv_a_norm, m.rms_eps, q_c, kv_c,
                                           k_pe);
      } else if constexpr (qk_norm == policy::QkNorm::separate) {
        ops::rms_norm<ops::epi::Bf16>(b, qkv_a.slice(1, 0, m.q_lora_rank), w.q_a_norm, m.rms_eps,
                                      q_c);
        ops::rms_norm<ops::epi::Bf16>(b, qkv_a.slice(1, m.q_lora_rank, m.kv_lora_rank), w.kv_a_norm,
                                      m.rms_eps, ops::Bf16Act{kv_c});
        ops::copy(b, qkv_a.slice(1, m.q_lora_rank + m.kv_lora_rank, m.qk_rope_dim), k_pe);
      } else {
        static_assert(policy::unhandled<qk_norm>);
      }
      q_c_act = detail::quantize_rows(b, ws, q_c.x);
    }

    auto q = ws.take<bf16>(t, heads, qk_head);
    detail::gemm<gemm>(b, q_c_act, w.q_b, detail::merge_heads(q));
    const View3<bf16> q_nope = q.slice(2, 0, m.qk_nope_dim);
    const View3<bf16> q_pe = q.slice(2, m.qk_nope_dim, m.qk_rope_dim);

    auto q_latent = ws.take<bf16>(t, heads, m.kv_lora_rank);
    absorbed_bmm(b, ws, q_nope, w.w_uk_fp8, w.w_uk_mxfp4, q_latent);

    ops::rope<ops::RopeStyle::interleaved>(b, a.batch.positions, w.cos_sin, q_pe);
    ops::rope<ops::RopeStyle::interleaved>(b, a.batch.positions, w.cos_sin,
                                           make_view(k_pe.data, t, index_t{1}, m.qk_rope_dim));
    ops::mla_cache_write(b, kv_c, k_pe, a.batch.slots, a.cache);

    auto o_latent = ws.take<bf16>(t, heads, m.kv_lora_rank);
    const float scale = mla_softmax_scale(m);  // with the YaRN correction where the model has it
    ops::mla_decode(b, q_latent, q_pe, a.cache, a.batch.block_table, a.batch.context_lens, scale,
                    o_latent);

    auto o = ws.take<bf16>(t, heads, m.v_head_dim);
    absorbed_bmm(b, ws, o_latent, w.w_uv_fp8, w.w_uv_mxfp4, o);
    detail::gemm<gemm>(b, detail::quantize_rows(b, ws, detail::merge_heads(o)), w.o_proj, a.io.out);
  }

 private:
  // in [T, H, K] -> out [T, H, N] through the per-head weight of the policy's BMM format.
  static void absorbed_bmm(const Backend& b, Workspace& ws, View3<bf16> in,
                           const ops::Fp8HeadWeight& w_fp8, const ops::Mxfp4HeadWeight& w_mxfp4,
                           View3<bf16> out) {
    constexpr auto format = P.get<policy::BmmFormat>();
    if constexpr (format == policy::BmmFormat::fp8) {
      // Activations FP8 per token-group of 128, one row per (token, head).
      auto dense = ws.take<bf16>(in.size(0), in.size(1), in.size(2));
      for (index_t i = 0; i < in.size(0); ++i) ops::copy(b, in[i], dense[i]);
      auto act = detail::take_act<ops::Fp8GroupAct>(ws, in.size(0) * in.size(1), in.size(2));
      ops::quantize<link<ops::epi::Fp8PerGroup128, BmmFp8Input>>(b, detail::rows_per_head(dense),
                                                                 act);
      ops::bmm_fp8(b, act, w_fp8, out);
    } else if constexpr (format == policy::BmmFormat::mxfp4) {
      ops::bmm_mxfp4(b, in, w_mxfp4, out);
    } else {
      static_assert(policy::unhandled<format>);
    }
  }
};

// Qwen3 attention, decode: [AR+]add+RMSNorm -> MXFP4 quant -> qkv GEMM -> per-head Q/K norm +
// RoPE + FP8 KV-cache write (one fused op or the separate chain) -> GQA decode -> o_proj.
template <>
struct Declared<policy::PipelineId::qwen3_attention> {
  // The DS_* input norm fusion is DeepSeek's: Qwen3's input norm is always norm, then quant.
  static constexpr auto reads =
      policy::axes_read<policy::GemmBackend, policy::AllReduceNorm, policy::QkNormRopeCache>;
  static constexpr std::string_view type = "pipeline::Qwen3Attention";
};
template <PointOf<policy::PipelineId::qwen3_attention> P, class Backend>
struct Qwen3Attention {
  static constexpr auto gemm = P.get<policy::GemmBackend>();
  static constexpr auto qk_norm_rope_cache = P.get<policy::QkNormRopeCache>();

  static void run(const Qwen3AttentionArgs& a) {
    const Qwen3AttentionWeights& w = detail::checked("qwen3_attention", a.io, a.weights);
    const Backend b = detail::backend_of<Backend>(a.io);
    const ModelConfig& m = *a.io.model;
    Workspace& ws = *a.io.workspace;
    const index_t t = a.io.x.size(0);
    const index_t heads = m.num_heads / a.io.tp.size;
    const index_t kv_heads = m.num_kv_heads / a.io.tp.size;

    const auto x_act =
        detail::norm_to_mxfp4<policy::InputNormQuant::separate>(b, a.io, w.input_norm);
    auto qkv = ws.take<bf16>(t, (heads + 2 * kv_heads) * m.head_dim);
    detail::gemm<gemm>(b, x_act, w.qkv, qkv);

    auto q = ws.take<bf16>(t, heads, m.head_dim);
    if constexpr (qk_norm_rope_cache == policy::QkNormRopeCache::fused) {
      ops::qk_norm_rope_cache_fused<ops::RopeStyle::neox>(b, qkv, w.q_norm, w.k_norm, m.rms_eps,
                                                          a.batch.positions, w.cos_sin,
                                                          a.batch.slots, a.cache, q);
    } else if constexpr (qk_norm_rope_cache == policy::QkNormRopeCache::separate) {
      ops::qk_norm_rope_cache_separate<ops::RopeStyle::neox>(b, qkv, w.q_norm, w.k_norm, m.rms_eps,
                                                             a.batch.positions, w.cos_sin,
                                                             a.batch.slots, a.cache, q);
    } else {
      static_assert(policy::unhandled<qk_norm_rope_cache>);
    }
    auto o = ws.take<bf16>(t, heads, m.head_dim);
    const float scale = 1.0f / std::sqrt(static_cast<float>(m.head_dim));
    ops::gqa_decode(b, q, a.cache, a.batch.block_table, a.batch.context_lens, scale, o);
    detail::gemm<gemm>(b, detail::quantize_rows(b, ws, detail::merge_heads(o)), w.o_proj, a.io.out);
  }
};

// MoE block: [AR+]add+RMSNorm -> router -> routed experts (MXFP4 grouped GEMMs, SiLU*mul) and the
// shared expert -> combine. With dual streams the shared expert runs concurrently with the routed
// ones for 0 < tokens <= threshold.
template <>
struct Declared<policy::PipelineId::moe_block> {
  // The router reads the bf16 normed activations, so the MoE norm is never fused with quant.
  static constexpr auto reads =
      policy::axes_read<policy::GemmBackend, policy::AllReduceNorm, policy::MoeStreams>;
  static constexpr std::string_view type = "pipeline::MoeBlock";
};
template <PointOf<policy::PipelineId::moe_block> P, class Backend>
struct MoeBlock {
  static constexpr auto gemm = P.get<policy::GemmBackend>();

  static void run(const MoeArgs& a) {
    const MoeWeights& w = detail::checked("moe_block", a.io, a.weights);
    const Backend b = detail::backend_of<Backend>(a.io);
    const ModelConfig& m = *a.io.model;
    Workspace& ws = *a.io.workspace;
    const index_t t = a.io.x.size(0);
    const index_t k = m.top_k;

    // The router reads the bf16 normed activations, the experts their MXFP4 quant.
    auto normed = detail::take_act<ops::Bf16Act>(ws, t, m.hidden);
    ops::add_rms_norm<ops::epi::Bf16>(b, a.io.x, a.io.residual, w.post_norm, m.rms_eps, normed);
    const auto x_act = detail::quantize_rows(b, ws, normed.x);

    auto logits = ws.take<float>(t, m.num_experts);
    ops::gemm_bf16(b, normed.x, w.router, logits);
    auto ids = ws.take<std::int32_t>(t, k);
    auto weights = ws.take<float>(t, k);
    if (m.router == RouterKind::sigmoid_grouped)
      ops::route_grouped_topk(b, logits, w.router_bias, static_cast<int>(m.n_group),
                              static_cast<int>(m.topk_group), m.routed_scaling, ids, weights);
    else
      ops::route_softmax_topk(b, logits, m.renormalize, ids, weights);

    const bool has_shared = m.num_shared_experts > 0;
    const index_t shared_width = has_shared ? w.shared_gate_up.n() : 0;
    auto shared_out = has_shared ? ws.take<bf16>(t, m.hidden) : View2<bf16>{};
    auto shared_inter =
        has_shared ? detail::take_act<ops::Mxfp4Act>(ws, t, shared_width / 2) : ops::Mxfp4Act{};
    auto shared_gate_up = has_shared ? ws.take<bf16>(t, shared_width) : View2<bf16>{};
    auto shared_expert = [&](const Backend& on) {
      detail::gemm<gemm>(on, x_act, w.shared_gate_up, shared_gate_up);
      ops::silu_mul<link<ops::epi::Mxfp4, GemmInput>>(on, shared_gate_up, shared_inter);
      detail::gemm<gemm>(on, shared_inter, w.shared_down, shared_out);
    };

    auto gate_up = ws.take<bf16>(t * k, 2 * m.moe_intermediate);
    auto inter = detail::take_act<ops::Mxfp4Act>(ws, t * k, m.moe_intermediate);
    auto expert_out = ws.take<bf16>(t * k, m.hidden);
    auto routed_experts = [&](const Backend& on) {
      detail::moe_gemm<gemm>(on, x_act, ids, w.gate_up, gate_up);
      ops::silu_mul<link<ops::epi::Mxfp4, GemmInput>>(on, gate_up, inter);
      detail::moe_gemm<gemm>(on, inter, ids, w.down, expert_out);
    };

    constexpr auto streams = P.get<policy::MoeStreams>();
    static_assert(streams == policy::MoeStreams::single || streams == policy::MoeStreams::dual);
    const bool concurrent =
        streams == policy::MoeStreams::dual && has_shared && t > 0 && t <= a.dual_stream_threshold;
    if (concurrent) {
      // The host's second stream is a second thread; the GPU's is the io's side stream.
      detail::concurrently(b, a.io, routed_experts, shared_expert);
    } else {
      routed_experts(b);
      if (has_shared) shared_expert(b);
    }
    ops::moe_combine(b, expert_out, weights, shared_out, a.io.out);
  }
};

// A decoder layer: the attention block, then the MoE block on its output. A layer reads what its
// blocks read; each block folds the layer's point to its own axes.
template <class Attention, class Moe>
struct DecoderLayer {
  template <class AttentionArgs>
  static void run(const LayerArgs<AttentionArgs>& a) {
    Attention::run(a.attention);
    MoeArgs moe{a.attention.io, a.moe_weights, a.dual_stream_threshold};
    moe.io.x = a.attention.io.out;
    moe.io.out = a.out;
    Moe::run(moe);
  }
};

template <>
struct Declared<policy::PipelineId::ds_layer> {
  static constexpr auto reads = policy::union_of(Declared<policy::PipelineId::mla_attention>::reads,
                                                 Declared<policy::PipelineId::moe_block>::reads);
  static constexpr std::string_view type = "pipeline::DsLayer";
};
template <PointOf<policy::PipelineId::ds_layer> P, class Backend>
struct DsLayer : DecoderLayer<MlaAttention<P.point, Backend>, MoeBlock<P.point, Backend>> {};

template <>
struct Declared<policy::PipelineId::qwen3_layer> {
  static constexpr auto reads =
      policy::union_of(Declared<policy::PipelineId::qwen3_attention>::reads,
                       Declared<policy::PipelineId::moe_block>::reads);
  static constexpr std::string_view type = "pipeline::Qwen3Layer";
};
template <PointOf<policy::PipelineId::qwen3_layer> P, class Backend>
struct Qwen3Layer : DecoderLayer<Qwen3Attention<P.point, Backend>, MoeBlock<P.point, Backend>> {};

// Calls f(std::integral_constant<PipelineId, P>) for every pipeline, in id order.
template <class F>
constexpr void for_each_pipeline(F&& f) {
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (f(std::integral_constant<policy::PipelineId, policy::pipelines[I]>{}), ...);
  }
  (std::make_index_sequence<policy::pipelines.size()>{});
}

}  // namespace atom::pipeline
