// The pipelines as templates over a policy point and a backend. Every fusion choice is an
// `if constexpr` on the point; a fused producer is wired to its consumer through link<>, which
// fails to compile when the producer's output format is not the consumer's input format.
#pragma once

#include <cmath>
#include <future>
#include <optional>
#include <string>
#include <type_traits>

#include "atom/gpu/device.hpp"
#include "atom/ops/attention.hpp"
#include "atom/ops/bmm.hpp"
#include "atom/ops/cache.hpp"
#include "atom/ops/decode_batch.hpp"
#include "atom/ops/gemm.hpp"
#include "atom/ops/gpu/attention.hpp"
#include "atom/ops/gpu/bmm.hpp"
#include "atom/ops/gpu/cache.hpp"
#include "atom/ops/gpu/decode_batch.hpp"
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
#include "atom/pipeline/tp.hpp"

namespace atom::pipeline {

// What each pipeline declares next to its template: the axes it reads (the only axes its
// template can branch on; the others fold) and the template's name for the generated code. A
// pipeline id without a declaration does not compile.
template <policy::PipelineId P>
struct Declared;
template <policy::PipelineId P>
using PointOf = policy::PointFor<Declared<P>::reads>;

namespace detail {

// The checks every pipeline runs first; returns its weights.
template <class Weights>
const Weights& checked(std::string_view pipeline, const BlockIo& io, const Weights* weights) {
  expect(io.model != nullptr && io.workspace != nullptr && weights != nullptr, pipeline,
         "model, workspace and weights must be set");
  return *weights;
}

// A backend type is atom's or derived from it (an extension's backend, atom/extend).
template <class Backend>
inline constexpr bool on_gpu = std::is_base_of_v<ops::Gpu, Backend>;

// The backend value a run uses: a GPU backend enqueues on the io's stream.
template <class Backend>
Backend backend_of(const BlockIo& io) {
  if constexpr (std::is_same_v<Backend, ops::Gpu>)
    return ops::Gpu{io.stream};
  else if constexpr (on_gpu<Backend>)
    return Backend{ops::Gpu{io.stream}};
  else
    return Backend{};
}

// The form of a weight that a pipeline at weight format F and GEMM backend G reads on the
// backend (see LinearWeight, ExpertWeights): bf16 and FP8 weights as they are; MXFP4 in the host
// layout or the GPU copy prepared for G. Throws when the weight has another format.
template <policy::WeightFormat F, policy::GemmBackend G, class Backend, class Weight>
const auto& weight_for(const Weight& w) {
  using policy::WeightFormat;
  expect(w.format == F, "pipeline",
         "the instantiation reads " + std::string(policy::weight_format.label(std::uint8_t(F))) +
             " weights, but a weight of its block is " +
             std::string(policy::weight_format.label(static_cast<std::uint8_t>(w.format))) +
             " (a block's point takes the format of its weights)");
  if constexpr (F == WeightFormat::bf16) {
    return w.bf16;
  } else if constexpr (F == WeightFormat::fp8_block) {
    return w.fp8;
  } else if constexpr (F == WeightFormat::mxfp4) {
    if constexpr (!on_gpu<Backend>) {
      return w.mxfp4;
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
  } else {
    static_assert(policy::unhandled<F>);
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

// A block that another rank computes (pipeline/tp.hpp: a replicated block) contributes zeros.
template <class Backend>
void write_zeros(const Backend& b, View2<bf16> out) {
  expect(out.contiguous(), "pipeline", "a block's output must be contiguous");
  ops::fill_uniform(b, make_view(out.data, out.numel()), 0, 0.0f, 0.0f);
}

// The block's entry: [AR +] residual add + RMSNorm of io.x into `out` (epilogue Epi). At tensor
// parallel size 1 the add + norm alone (the all-reduce is the identity); beyond, the all-reduce of
// the ranks' partial sums in one pass with the add + norm (AllReduceNorm::fused), or into scratch
// before it (separate).
template <policy::AllReduceNorm AR, class Epi, class Backend>
void entry_norm(const Backend& b, const BlockIo& io, View1<const bf16> weight,
                typename Epi::Output out) {
  const float eps = io.model->rms_eps;
  if (io.tp == nullptr || io.tp->size() == 1) {
    ops::add_rms_norm<Epi>(b, io.x, io.residual, weight, eps, out);
  } else if constexpr (AR == policy::AllReduceNorm::fused) {
    io.tp->all_reduce_add_rms_norm(io.x, io.residual, weight, eps, NormOutput{out}, io.stream);
  } else if constexpr (AR == policy::AllReduceNorm::separate) {
    auto sum = io.workspace->take<bf16>(io.x.size(0), io.x.size(1));
    io.tp->all_reduce(io.x, sum, io.stream);
    ops::add_rms_norm<Epi>(b, sum, io.residual, weight, eps, out);
  } else {
    static_assert(policy::unhandled<AR>);
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

// [AR +] residual add + RMSNorm (entry_norm), producing what the next GEMM reads (GemmAct<F>).
// With the input-norm quant fusion the norm writes the quantized activations itself; otherwise it
// writes bf16 and a separate quant follows. bf16 weights read the norm's bf16 output (the fusion
// folds, see policy::canonical).
template <policy::AllReduceNorm AR, policy::InputNormQuant Fusion, policy::WeightFormat F,
          class Backend>
GemmAct<F> norm_to_gemm_input(const Backend& b, const BlockIo& io, View1<const bf16> weight) {
  Workspace& ws = *io.workspace;
  const index_t t = io.x.size(0);
  const index_t h = io.x.size(1);
  auto act = take_act<GemmAct<F>>(ws, t, h);
  if constexpr (Fusion == policy::InputNormQuant::fused || F == policy::WeightFormat::bf16) {
    static_assert(F != policy::WeightFormat::bf16 || Fusion == policy::InputNormQuant::separate);
    entry_norm<AR, gemm_epi<F>>(b, io, weight, act);
  } else if constexpr (Fusion == policy::InputNormQuant::separate) {
    auto normed = take_act<ops::Bf16Act>(ws, t, h);
    entry_norm<AR, ops::epi::Bf16>(b, io, weight, normed);
    ops::quantize<gemm_epi<F>>(b, normed.x, act);
  } else {
    static_assert(policy::unhandled<Fusion>);
  }
  return act;
}

// bf16 rows as the GEMMs of format F read them: quantized, or (bf16) as they are.
template <policy::WeightFormat F, class Backend>
GemmAct<F> to_gemm_input(const Backend& b, Workspace& ws, View2<bf16> x) {
  if constexpr (F == policy::WeightFormat::bf16) {
    return {x};
  } else {
    auto act = take_act<GemmAct<F>>(ws, x.size(0), x.size(1));
    ops::quantize<gemm_epi<F>>(b, x, act);
    return act;
  }
}

// Views of a contiguous [T, H, D] tensor as [T, H * D] (one row per token), and of a [T, H, D]
// tensor whose (token, head) rows are evenly strided (uniform_head_rows: contiguous, or a column
// slice of a wider head dimension) as [T * H, D] (one row per token and head).
template <class T>
View2<T> merge_heads(View3<T> v) {
  return make_view(v.data, v.size(0), v.size(1) * v.size(2));
}
template <class T>
bool uniform_head_rows(View3<T> v) {
  return v.stride(2) == 1 && v.stride(0) == v.size(1) * v.stride(1);
}
template <class T>
View2<T> rows_per_head(View3<T> v) {
  return {v.data, {v.size(0) * v.size(1), v.size(2)}, {v.stride(1), 1}};
}

// The GEMM of weight format F (A4W4, W8A8 with block scales, bf16); both GEMM backends compute
// the same function, and on the host they share the reference kernel.
template <policy::WeightFormat F, policy::GemmBackend G, class Backend>
void gemm(const Backend& b, const GemmAct<F>& a, const LinearWeight& w, View2<bf16> out) {
  const auto& weight = weight_for<F, G, Backend>(w);
  if constexpr (F == policy::WeightFormat::mxfp4)
    ops::gemm_a4w4(b, a, weight, out);
  else if constexpr (F == policy::WeightFormat::fp8_block)
    ops::gemm_a8w8_block(b, a, weight, out);
  else if constexpr (F == policy::WeightFormat::bf16)
    ops::gemm_a16w16(b, a, weight, out);
  else
    static_assert(policy::unhandled<F>);
}

template <policy::WeightFormat F, policy::GemmBackend G, class Backend>
void moe_gemm(const Backend& b, const GemmAct<F>& a, View2<const std::int32_t> ids,
              const ExpertWeights& w, View2<bf16> out) {
  const auto& weight = weight_for<F, G, Backend>(w);
  if constexpr (F == policy::WeightFormat::mxfp4)
    ops::moe_gemm_a4w4(b, a, ids, weight, out);
  else if constexpr (F == policy::WeightFormat::fp8_block)
    ops::moe_gemm_a8w8_block(b, a, ids, weight, out);
  else if constexpr (F == policy::WeightFormat::bf16)
    ops::moe_gemm_a16w16(b, a, ids, weight, out);
  else
    static_assert(policy::unhandled<F>);
}

// A SiLU-gated MLP on GEMM-ready input rows: gate_up GEMM -> SiLU(gate) * up, quantized for the
// down GEMM -> down GEMM. The dense MLP block and the MoE block's shared expert. Its buffers are
// taken from the workspace when it is made, so that run() may go on another stream or thread.
template <policy::WeightFormat F, policy::GemmBackend G, class Backend>
class GatedMlp {
 public:
  GatedMlp(Workspace& ws, index_t rows, const LinearWeight& gate_up, const LinearWeight& down)
      : gate_up_(gate_up),
        down_(down),
        gate_up_out_(ws.take<bf16>(rows, gate_up.n())),
        inter_(take_act<GemmAct<F>>(ws, rows, gate_up.n() / 2)) {}

  void run(const Backend& on, const GemmAct<F>& x, View2<bf16> out) const {
    gemm<F, G>(on, x, gate_up_, gate_up_out_);
    ops::silu_mul<gemm_epi<F>>(on, gate_up_out_, inter_);
    gemm<F, G>(on, inter_, down_, out);
  }

 private:
  const LinearWeight& gate_up_;
  const LinearWeight& down_;
  View2<bf16> gate_up_out_;
  GemmAct<F> inter_;
};

}  // namespace detail

// DeepSeek MLA attention, decode: [AR+]add+RMSNorm[+quant] -> qkv_a GEMM -> q_a/kv_a norms
// -> q_b GEMM -> absorbed W_UK BMM -> RoPE, latent cache write -> MLA decode -> W_UV BMM -> o_proj.
// The GEMMs read the block's weight format; the absorbed BMMs the format ATOM_USE_TRITON_MXFP4_BMM
// selects, whatever the checkpoint's.
template <>
struct Declared<policy::PipelineId::mla_attention> {
  static constexpr auto reads =
      policy::axes_read<policy::GemmBackend, policy::BmmFormat, policy::AllReduceNorm,
                        policy::InputNormQuant, policy::QkNorm, policy::WeightFormat>;
  static constexpr std::string_view type = "pipeline::MlaAttention";
};
template <PointOf<policy::PipelineId::mla_attention> P, class Backend>
struct MlaAttention {
  static constexpr auto gemm = P.get<policy::GemmBackend>();
  static constexpr auto format = P.get<policy::WeightFormat>();
  static constexpr auto qk_norm = P.get<policy::QkNorm>();
  static constexpr auto all_reduce = P.get<policy::AllReduceNorm>();
  using Act = GemmAct<format>;

  static void run(const MlaArgs& a) {
    const MlaWeights& w = detail::checked("mla_attention", a.io, a.weights);
    const Backend b = detail::backend_of<Backend>(a.io);
    const ModelConfig& m = *a.io.model;
    Workspace& ws = *a.io.workspace;
    const index_t t = a.io.x.size(0);
    const TpShape tp = tp_shape(a.io.tp);
    const AttentionSplit split = attention_split(m, tp, format);
    const index_t heads = split.heads.count;
    const index_t qk_head = m.qk_nope_dim + m.qk_rope_dim;

    const auto x_act =
        detail::norm_to_gemm_input<all_reduce, P.get<policy::InputNormQuant>(), format>(
            b, a.io, w.input_norm);
    if (!split.computes(tp)) return detail::write_zeros(b, a.io.out);
    auto qkv_a = ws.take<bf16>(t, m.q_lora_rank + m.kv_lora_rank + m.qk_rope_dim);
    detail::gemm<format, gemm>(b, x_act, w.qkv_a, qkv_a);

    auto kv_c = ws.take<bf16>(t, m.kv_lora_rank);
    auto k_pe = ws.take<bf16>(t, m.qk_rope_dim);
    Act q_c_act;
    if constexpr (qk_norm == policy::QkNorm::fused_quant) {
      q_c_act = detail::take_act<Act>(ws, t, m.q_lora_rank);
      ops::qk_norm_fused<gemm_epi<format>>(b, qkv_a, w.q_a_norm, w.kv_a_norm, m.rms_eps, q_c_act,
                                           kv_c, k_pe);
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
      q_c_act = detail::to_gemm_input<format>(b, ws, q_c.x);
    }

    auto q = ws.take<bf16>(t, heads, qk_head);
    detail::gemm<format, gemm>(b, q_c_act, w.q_b, detail::merge_heads(q));
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
    ops::mla_decode(b, q_latent, q_pe, a.cache, a.batch, scale, o_latent);

    auto o = ws.take<bf16>(t, heads, m.v_head_dim);
    absorbed_bmm(b, ws, o_latent, w.w_uv_fp8, w.w_uv_mxfp4, o);
    detail::gemm<format, gemm>(b, detail::to_gemm_input<format>(b, ws, detail::merge_heads(o)),
                               w.o_proj, a.io.out);
  }

 private:
  // in [T, H, K] -> out [T, H, N] through the per-head weight of the policy's BMM format.
  static void absorbed_bmm(const Backend& b, Workspace& ws, View3<bf16> in,
                           const ops::Fp8HeadWeight& w_fp8, const ops::Mxfp4HeadWeight& w_mxfp4,
                           View3<bf16> out) {
    constexpr auto bmm = P.get<policy::BmmFormat>();
    if constexpr (bmm == policy::BmmFormat::fp8) {
      // Activations FP8 per token-group of 128, one row per (token, head), quantized where they
      // lie (q_nope is a column slice of q, o_latent contiguous: both rows evenly strided), else
      // from a contiguous copy.
      View3<bf16> rows = in;
      if (!detail::uniform_head_rows(in)) {
        rows = ws.take<bf16>(in.size(0), in.size(1), in.size(2));
        for (index_t i = 0; i < in.size(0); ++i) ops::copy(b, in[i], rows[i]);
      }
      auto act = detail::take_act<ops::Fp8GroupAct>(ws, in.size(0) * in.size(1), in.size(2));
      ops::quantize<link<ops::epi::Fp8PerGroup128, BmmFp8Input>>(b, detail::rows_per_head(rows),
                                                                 act);
      ops::bmm_fp8(b, act, w_fp8, out);
    } else if constexpr (bmm == policy::BmmFormat::mxfp4) {
      ops::bmm_mxfp4(b, in, w_mxfp4, out);
    } else {
      static_assert(policy::unhandled<bmm>);
    }
  }
};

// Qwen3 attention, decode: [AR+]add+RMSNorm -> quant -> qkv GEMM -> per-head Q/K norm + RoPE +
// KV-cache write (one fused op or the separate chain) -> GQA decode -> o_proj, over a cache of
// the instantiation's format (the caller's: Qwen3AttentionArgs::cache holds any, checked here).
template <>
struct Declared<policy::PipelineId::qwen3_attention> {
  // The DS_* input norm fusion is DeepSeek's: Qwen3's input norm is always norm, then quant.
  static constexpr auto reads =
      policy::axes_read<policy::GemmBackend, policy::AllReduceNorm, policy::QkNormRopeCache,
                        policy::WeightFormat, policy::KvCacheFormat>;
  static constexpr std::string_view type = "pipeline::Qwen3Attention";
};
template <PointOf<policy::PipelineId::qwen3_attention> P, class Backend>
struct Qwen3Attention {
  static constexpr auto gemm = P.get<policy::GemmBackend>();
  static constexpr auto format = P.get<policy::WeightFormat>();
  static constexpr auto qk_norm_rope_cache = P.get<policy::QkNormRopeCache>();
  static constexpr auto all_reduce = P.get<policy::AllReduceNorm>();
  static constexpr auto kv_format = P.get<policy::KvCacheFormat>();

  static void run(const Qwen3AttentionArgs& a) {
    const Qwen3AttentionWeights& w = detail::checked("qwen3_attention", a.io, a.weights);
    const auto& cache = ops::kv_cache_of<kv_format>("qwen3_attention", a.cache);
    const Backend b = detail::backend_of<Backend>(a.io);
    const ModelConfig& m = *a.io.model;
    Workspace& ws = *a.io.workspace;
    const index_t t = a.io.x.size(0);
    const TpShape tp = tp_shape(a.io.tp);
    const AttentionSplit split = attention_split(m, tp, format);
    const index_t heads = split.heads.count;
    const index_t kv_heads = split.kv_heads.count;

    const auto x_act =
        detail::norm_to_gemm_input<all_reduce, policy::InputNormQuant::separate, format>(
            b, a.io, w.input_norm);
    if (!split.computes(tp)) return detail::write_zeros(b, a.io.out);
    auto qkv = ws.take<bf16>(t, (heads + 2 * kv_heads) * m.head_dim);
    detail::gemm<format, gemm>(b, x_act, w.qkv, qkv);

    auto q = ws.take<bf16>(t, heads, m.head_dim);
    if constexpr (qk_norm_rope_cache == policy::QkNormRopeCache::fused) {
      ops::qk_norm_rope_cache_fused<ops::RopeStyle::neox, kv_format>(
          b, qkv, w.q_norm, w.k_norm, m.rms_eps, a.batch.positions, w.cos_sin, a.batch.slots, cache,
          q);
    } else if constexpr (qk_norm_rope_cache == policy::QkNormRopeCache::separate) {
      ops::qk_norm_rope_cache_separate<ops::RopeStyle::neox, kv_format>(
          b, qkv, w.q_norm, w.k_norm, m.rms_eps, a.batch.positions, w.cos_sin, a.batch.slots, cache,
          q);
    } else {
      static_assert(policy::unhandled<qk_norm_rope_cache>);
    }
    auto o = ws.take<bf16>(t, heads, m.head_dim);
    const float scale = 1.0f / std::sqrt(static_cast<float>(m.head_dim));
    ops::gqa_decode(b, q, cache, a.batch, scale, o);
    detail::gemm<format, gemm>(b, detail::to_gemm_input<format>(b, ws, detail::merge_heads(o)),
                               w.o_proj, a.io.out);
  }
};

// MoE block: [AR+]add+RMSNorm -> router -> routed experts (grouped GEMMs, SiLU*mul) and the
// shared expert -> combine. With dual streams the shared expert runs concurrently with the routed
// ones for 0 < tokens <= threshold.
template <>
struct Declared<policy::PipelineId::moe_block> {
  // The router reads the bf16 normed activations, so the MoE norm is never fused with quant.
  static constexpr auto reads = policy::axes_read<policy::GemmBackend, policy::AllReduceNorm,
                                                  policy::MoeStreams, policy::WeightFormat>;
  static constexpr std::string_view type = "pipeline::MoeBlock";
};
template <PointOf<policy::PipelineId::moe_block> P, class Backend>
struct MoeBlock {
  static constexpr auto gemm = P.get<policy::GemmBackend>();
  static constexpr auto format = P.get<policy::WeightFormat>();
  using Act = GemmAct<format>;

  static void run(const MoeArgs& a) {
    const MoeWeights& w = detail::checked("moe_block", a.io, a.weights);
    const Backend b = detail::backend_of<Backend>(a.io);
    const ModelConfig& m = *a.io.model;
    Workspace& ws = *a.io.workspace;
    const index_t t = a.io.x.size(0);
    const index_t k = m.top_k;
    const TpShape tp = tp_shape(a.io.tp);
    const ExpertSplit split = expert_split(m, tp, format);
    const index_t inter = split.intermediate.count;

    // The router reads the bf16 normed activations, the experts what their GEMMs read.
    auto normed = detail::take_act<ops::Bf16Act>(ws, t, m.hidden);
    detail::entry_norm<P.get<policy::AllReduceNorm>(), ops::epi::Bf16>(b, a.io, w.post_norm,
                                                                       normed);
    const Act x_act = detail::to_gemm_input<format>(b, ws, normed.x);

    auto logits = ws.take<float>(t, m.num_experts);
    ops::gemm_bf16(b, normed.x, w.router, logits);
    auto ids = a.routes.data != nullptr ? a.routes : ws.take<std::int32_t>(t, k);
    auto weights = ws.take<float>(t, k);
    if (m.router == RouterKind::sigmoid_grouped)
      ops::route_grouped_topk(b, logits, w.router_bias, static_cast<int>(m.n_group),
                              static_cast<int>(m.topk_group), m.renormalize, m.routed_scaling, ids,
                              weights);
    else
      ops::route_softmax_topk(b, logits, m.renormalize, ids, weights);

    // Expert parallel: this rank's experts by their index in its weights, the others' no_expert.
    View2<const std::int32_t> local_ids = ids;
    if (split.expert_parallel) {
      auto localized = ws.take<std::int32_t>(t, k);
      ops::localize_experts(b, ids, static_cast<std::int32_t>(split.experts.begin),
                            static_cast<std::int32_t>(split.experts.count), localized);
      local_ids = localized;
    }

    const bool has_shared =
        m.num_shared_experts > 0 &&
        mlp_split(m.num_shared_experts * m.moe_intermediate, tp, format).computes(tp);
    auto shared_out = has_shared ? ws.take<bf16>(t, m.hidden) : View2<bf16>{};
    std::optional<detail::GatedMlp<format, gemm, Backend>> shared;
    if (has_shared) shared.emplace(ws, t, w.shared_gate_up, w.shared_down);
    auto shared_expert = [&](const Backend& on) { shared->run(on, x_act, shared_out); };

    auto gate_up = ws.take<bf16>(t * k, 2 * inter);
    auto activated = detail::take_act<Act>(ws, t * k, inter);
    auto expert_out = ws.take<bf16>(t * k, m.hidden);
    auto routed_experts = [&](const Backend& on) {
      detail::moe_gemm<format, gemm>(on, x_act, local_ids, w.gate_up, gate_up);
      ops::silu_mul<gemm_epi<format>>(on, gate_up, activated);
      detail::moe_gemm<format, gemm>(on, activated, local_ids, w.down, expert_out);
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

// Dense MLP block (DeepSeek's first_k_dense_replace layers, Qwen3's mlp_only_layers):
// [AR+]add+RMSNorm -> quant -> gate_up GEMM -> SiLU*mul -> down GEMM.
template <>
struct Declared<policy::PipelineId::dense_mlp> {
  static constexpr auto reads =
      policy::axes_read<policy::GemmBackend, policy::AllReduceNorm, policy::WeightFormat>;
  static constexpr std::string_view type = "pipeline::DenseMlp";
};
template <PointOf<policy::PipelineId::dense_mlp> P, class Backend>
struct DenseMlp {
  static constexpr auto format = P.get<policy::WeightFormat>();

  static void run(const DenseMlpArgs& a) {
    const DenseMlpWeights& w = detail::checked("dense_mlp", a.io, a.weights);
    const Backend b = detail::backend_of<Backend>(a.io);
    const index_t t = a.io.x.size(0);
    const TpShape tp = tp_shape(a.io.tp);
    const auto x_act =
        detail::norm_to_gemm_input<P.get<policy::AllReduceNorm>(), policy::InputNormQuant::separate,
                                   format>(b, a.io, w.post_norm);
    if (!mlp_split(a.io.model->intermediate, tp, format).computes(tp))
      return detail::write_zeros(b, a.io.out);
    const detail::GatedMlp<format, P.get<policy::GemmBackend>(), Backend> mlp(*a.io.workspace, t,
                                                                              w.gate_up, w.down);
    mlp.run(b, x_act, a.io.out);
  }
};

// Calls f(std::integral_constant<PipelineId, P>) for every pipeline, in id order.
template <class F>
constexpr void for_each_pipeline(F&& f) {
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (f(std::integral_constant<policy::PipelineId, policy::pipelines[I]>{}), ...);
  }
  (std::make_index_sequence<policy::pipelines.size()>{});
}

}  // namespace atom::pipeline
