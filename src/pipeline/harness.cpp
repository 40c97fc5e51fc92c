#include "atom/pipeline/harness.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

namespace atom::pipeline {

namespace {

using policy::PipelineId;

std::vector<float> to_floats(View2<const bf16> v) {
  std::vector<float> out;
  out.reserve(static_cast<std::size_t>(v.numel()));
  for (index_t i = 0; i < v.size(0); ++i)
    for (index_t j = 0; j < v.size(1); ++j) out.push_back(to_float(v(i, j)));
  return out;
}

}  // namespace

bool pipeline_fits(PipelineId p, const ModelConfig& m) {
  switch (p) {
    case PipelineId::mla_attention:
      return m.attention == AttentionKind::mla;
    case PipelineId::qwen3_attention:
      return m.attention == AttentionKind::gqa;
    case PipelineId::moe_block:
      return m.num_experts > 0;
    case PipelineId::dense_mlp:
      return m.intermediate > 0;
  }
  return false;
}

void expect_runnable(PipelineId p, const RunInputs& in) {
  expect(in.model != nullptr && in.weights != nullptr, policy::pipeline_name(p),
         "model and weights must be set");
  expect(pipeline_fits(p, *in.model), policy::pipeline_name(p),
         "does not apply to model " + in.model->name);
}

namespace {

// The handle once on `state` (a DecodeState, or a SampleState below) with in.weights.
template <PipelineId P, class State>
RunOutput run_on(const dispatch::Handle<P>& handle, const RunInputs& in, const State& state) {
  Workspace ws;
  const RunArgs<P> args = make_args<P>(in, *in.weights, state, ws);
  const auto start = std::chrono::steady_clock::now();
  handle(args);
  const auto stop = std::chrono::steady_clock::now();
  return {to_floats(state.out()), to_floats(state.residual()),
          std::chrono::duration<double>(stop - start).count()};
}

}  // namespace

template <PipelineId P>
RunOutput run_once(const dispatch::Handle<P>& handle, const RunInputs& in) {
  expect_runnable(P, in);
  return run_on(
      handle, in,
      DecodeState(*in.model, in.context_lens, in.seed, in.query_tokens, kv_format_of(handle)));
}

double host_macs(PipelineId p, const RunInputs& in) {
  const ModelConfig& m = *in.model;
  const auto f = [](index_t v) { return static_cast<double>(v); };
  const double tokens = f(static_cast<index_t>(in.context_lens.size()) * in.query_tokens);
  double context = 0;  // rows attended, summed over tokens
  for (const auto len : in.context_lens) context += f(len) * f(in.query_tokens);
  const double h = f(m.hidden);
  switch (p) {
    case PipelineId::mla_attention: {
      const double heads = f(m.num_heads);
      const double weights = h * f(m.q_lora_rank + m.kv_lora_rank + m.qk_rope_dim) +
                             f(m.q_lora_rank) * heads * f(m.qk_nope_dim + m.qk_rope_dim) +
                             heads * f(m.qk_nope_dim) * f(m.kv_lora_rank) +
                             heads * f(m.kv_lora_rank) * f(m.v_head_dim) +
                             heads * f(m.v_head_dim) * h;
      return tokens * weights + context * heads * f(2 * m.kv_lora_rank + m.qk_rope_dim);
    }
    case PipelineId::qwen3_attention: {
      const double qkv = f(m.num_heads + 2 * m.num_kv_heads) * f(m.head_dim);
      return tokens * (h * qkv + f(m.num_heads * m.head_dim) * h) +
             context * f(m.num_heads) * 2 * f(m.head_dim);
    }
    case PipelineId::moe_block:
      return tokens * (f(m.top_k + m.num_shared_experts) * 3 * f(m.moe_intermediate) * h +
                       f(m.num_experts) * h);
    case PipelineId::dense_mlp:
      return tokens * 3 * f(m.intermediate) * h;
  }
  return 0;
}

std::vector<index_t> check_sample(PipelineId p, const RunInputs& in) {
  const auto n = static_cast<index_t>(in.context_lens.size());
  const double macs = host_macs(p, in);
  const index_t keep =
      macs <= check_budget_macs
          ? n
          : std::clamp<index_t>(
                static_cast<index_t>(static_cast<double>(n) * check_budget_macs / macs), 1, n);
  std::vector<index_t> out;
  for (index_t i = 0; i < keep; ++i) out.push_back(keep == 1 ? 0 : i * (n - 1) / (keep - 1));
  return out;
}

namespace {

// The state run_sample runs on: the sampled sequences' rows of a DecodeState and a batch of just
// them, over the state's caches (make_args reads it like a DecodeState).
class SampleState {
 public:
  SampleState(const DecodeState& whole, const std::vector<index_t>& sample) : whole_(whole) {
    const DecodeBatch b = whole.batch();
    const index_t h = whole.x().size(1);
    width_ = b.block_table.size(1);
    starts_.push_back(0);
    for (const index_t s : sample) {
      expect(s >= 0 && s < b.sequences() && (rows_.empty() || s > last_), "run_sample",
             "sample entries must increase within the batch's " + std::to_string(b.sequences()) +
                 " sequences");
      last_ = s;
      for (index_t t = b.query_start(s); t < b.query_start(s + 1); ++t) {
        rows_.push_back(t);
        positions_.push_back(b.positions(t));
        slots_.push_back(b.slots(t));
      }
      starts_.push_back(static_cast<std::int32_t>(rows_.size()));
      context_.push_back(b.context_lens(s));
      for (index_t c = 0; c < width_; ++c) table_.push_back(b.block_table(s, c));
    }
    const auto copy_rows = [&](View2<const bf16> from, std::vector<bf16>& to) {
      for (const index_t t : rows_) to.insert(to.end(), &from(t, 0), &from(t, 0) + h);
    };
    copy_rows(whole.x(), x_);
    copy_rows(View2<const bf16>(whole.residual()), residual_);
    copy_rows(View2<const bf16>(whole.out()), out_);
  }
  index_t tokens() const { return static_cast<index_t>(rows_.size()); }
  View2<const bf16> x() const { return make_view(x_.data(), tokens(), hidden()); }
  View2<bf16> residual() const { return make_view(residual_.data(), tokens(), hidden()); }
  View2<bf16> out() const { return make_view(out_.data(), tokens(), hidden()); }
  DecodeBatch batch() const {
    const auto s = static_cast<index_t>(context_.size());
    return {make_view(starts_.data(), s + 1), make_view(context_.data(), s),
            make_view(table_.data(), s, width_), make_view(positions_.data(), tokens()),
            make_view(slots_.data(), tokens())};
  }
  View3<bf16> mla_cache() const { return whole_.mla_cache(); }
  ops::AnyKvCache kv_cache() const { return whole_.kv_cache(); }

 private:
  index_t hidden() const { return whole_.x().size(1); }

  const DecodeState& whole_;
  std::vector<index_t> rows_;
  index_t last_ = -1, width_ = 0;
  std::vector<std::int32_t> starts_, context_, table_;
  std::vector<std::int64_t> positions_, slots_;
  mutable std::vector<bf16> x_, residual_, out_;
};

}  // namespace

template <PipelineId P>
RunOutput run_sample(const dispatch::Handle<P>& handle, const RunInputs& in,
                     const std::vector<index_t>& sample) {
  expect_runnable(P, in);
  const DecodeState state(*in.model, in.context_lens, in.seed, in.query_tokens,
                          kv_format_of(handle));
  return run_on(handle, in, SampleState(state, sample));
}

template RunOutput run_sample(const dispatch::Handle<PipelineId::mla_attention>&, const RunInputs&,
                              const std::vector<index_t>&);
template RunOutput run_sample(const dispatch::Handle<PipelineId::moe_block>&, const RunInputs&,
                              const std::vector<index_t>&);
template RunOutput run_sample(const dispatch::Handle<PipelineId::qwen3_attention>&,
                              const RunInputs&, const std::vector<index_t>&);
template RunOutput run_sample(const dispatch::Handle<PipelineId::dense_mlp>&, const RunInputs&,
                              const std::vector<index_t>&);

RunOutput sample_rows(const RunOutput& whole, const RunInputs& in,
                      const std::vector<index_t>& sample) {
  const auto h = static_cast<std::size_t>(in.model->hidden);
  const auto q = static_cast<std::size_t>(in.query_tokens);
  RunOutput out{{}, {}, whole.seconds};
  for (const index_t s : sample) {
    const std::size_t first = static_cast<std::size_t>(s) * q * h;
    out.out.insert(out.out.end(), whole.out.begin() + first, whole.out.begin() + first + q * h);
    out.residual.insert(out.residual.end(), whole.residual.begin() + first,
                        whole.residual.begin() + first + q * h);
  }
  return out;
}

DecodeState rank_state(const RunInputs& in, TpShape tp, ops::KvCacheFormat kv_format) {
  const ModelConfig& m = *in.model;
  const policy::WeightFormat attention_format = m.attention == AttentionKind::mla
                                                    ? weight_format(in.weights->mla())
                                                    : weight_format(in.weights->qwen3());
  return DecodeState(m, in.context_lens, in.seed, tp,
                     attention_split(m, tp, attention_format).kv_heads, in.query_tokens, kv_format);
}

template <PipelineId P>
RunOutput run_tp(const dispatch::Handle<P>& handle, const RunInputs& in, index_t size) {
  expect_runnable(P, in);
  expect(handle.backend() == policy::BackendId::host, policy::pipeline_name(P),
         "run_tp runs the host backend's ranks as threads");
  std::vector<RunOutput> outputs(static_cast<std::size_t>(size));
  run_ranks(size, [&](TpComm& comm) {
    const TpShape tp{comm.rank(), comm.size()};
    const auto weights = shard(*in.weights, *in.model, tp);
    const DecodeState state = rank_state(in, tp, kv_format_of(handle));
    Workspace ws;
    RunArgs<P> args = make_args<P>(in, *weights, state, ws);
    args.io.tp = &comm;
    const auto start = std::chrono::steady_clock::now();
    handle(args);
    const auto stop = std::chrono::steady_clock::now();
    comm.all_reduce(state.out(), state.out(), nullptr);
    outputs[static_cast<std::size_t>(comm.rank())] = {
        to_floats(state.out()), to_floats(state.residual()),
        std::chrono::duration<double>(stop - start).count()};
  });
  for (const RunOutput& o : outputs)
    expect(o.residual == outputs.front().residual && o.out == outputs.front().out,
           policy::pipeline_name(P), "the ranks of a TP run disagree on the residual or output");
  return outputs.front();
}

template RunOutput run_tp(const dispatch::Handle<PipelineId::mla_attention>&, const RunInputs&,
                          index_t);
template RunOutput run_tp(const dispatch::Handle<PipelineId::moe_block>&, const RunInputs&,
                          index_t);
template RunOutput run_tp(const dispatch::Handle<PipelineId::qwen3_attention>&, const RunInputs&,
                          index_t);
template RunOutput run_tp(const dispatch::Handle<PipelineId::dense_mlp>&, const RunInputs&,
                          index_t);

double tp_error_bound(PipelineId p, index_t size) {
  // At size N the residual add and the norm see exactly the input of size 1 (the ranks' partial
  // inputs sum back to it exactly, see DecodeState), and each quantized activation is quantized
  // from the same values in whole groups, so the only change is the summation of the row-parallel
  // GEMMs (o_proj, the experts' and MLPs' down projections): each rank rounds its partial sum to
  // bf16 (relative 2^-9 each) before the all-reduce adds them and rounds once more. With partials
  // of the size of the total divided by sqrt(N) (independent signs) the relative L2 error is about
  // 2^-9 * (sqrt(N) + 1): 0.005 at N = 2, 0.0059 at 4, 0.0075 at 8. The MoE block rounds every
  // expert's partial down projection to bf16 before the combine, which doubles that. The bound
  // is 4 * 2^-9 * (sqrt(N) + 1); a wrong head, expert or slice gives errors near 1.
  (void)p;
  return 4.0 * std::ldexp(1.0, -9) * (std::sqrt(static_cast<double>(size)) + 1.0);
}

template RunOutput run_once(const dispatch::Handle<PipelineId::mla_attention>&, const RunInputs&);
template RunOutput run_once(const dispatch::Handle<PipelineId::moe_block>&, const RunInputs&);
template RunOutput run_once(const dispatch::Handle<PipelineId::qwen3_attention>&, const RunInputs&);
template RunOutput run_once(const dispatch::Handle<PipelineId::dense_mlp>&, const RunInputs&);

double fused_error_bound(PipelineId p) {
  // A fused producer quantizes float values where the separate chain quantizes their bf16
  // rounding. On the coarse e2m1 grid a value next to a rounding boundary then lands one step
  // apart (and a block whose amax crosses a power of two gets another scale), so the MXFP4
  // re-quantizations in MLA attention leave differences of the order of MXFP4's own quantization
  // noise (~0.1 measured on the tiny presets; bound 0.25). In Qwen3 attention the fused op writes
  // K to the FP8 cache from float instead of from bf16: a few percent of the codes move by one
  // e4m3 step (2^-3 relative), which the attention and the o_proj's MXFP4 re-quantization carry to
  // the output (~0.025 measured; bound 0.06). A wrong rotation, norm or cache slot gives errors
  // near 1. The MoE block's fusions compute the same function at TP size 1 (the all-reduce is the
  // identity and streams only reorder independent work): it must match exactly, and so must the
  // dense MLP, whose only fusion is that all-reduce.
  switch (p) {
    case PipelineId::moe_block:
    case PipelineId::dense_mlp:
      return 0.0;
    case PipelineId::qwen3_attention:
      return 0.06;
    case PipelineId::mla_attention:
      return 0.25;
  }
  return 0.0;
}

template <PipelineId P>
ReferenceCheck check_against_reference(const dispatch::Handle<P>& handle, const RunInputs& in,
                                       RunOutput* got_out) {
  const auto reference =
      dispatch::resolve_point<P>(policy::separate_of(P, handle.point()), handle.backend());
  const RunOutput got = run_once(handle, in);
  const RunOutput want = run_once(reference, in);
  if (got_out != nullptr) *got_out = got;
  ReferenceCheck c = judge(std::string(reference.name()), fused_error_bound(P), got, want);
  c.sequences = c.checked_sequences = static_cast<index_t>(in.context_lens.size());
  return c;
}

template ReferenceCheck check_against_reference(const dispatch::Handle<PipelineId::mla_attention>&,
                                                const RunInputs&, RunOutput*);
template ReferenceCheck check_against_reference(const dispatch::Handle<PipelineId::moe_block>&,
                                                const RunInputs&, RunOutput*);
template ReferenceCheck check_against_reference(
    const dispatch::Handle<PipelineId::qwen3_attention>&, const RunInputs&, RunOutput*);
template ReferenceCheck check_against_reference(const dispatch::Handle<PipelineId::dense_mlp>&,
                                                const RunInputs&, RunOutput*);

ReferenceCheck judge(std::string reference, double bound, const RunOutput& got,
                     const RunOutput& want) {
  ReferenceCheck c;
  c.reference = std::move(reference);
  c.bound = bound;
  c.residual_error = relative_error(got.residual, want.residual);
  c.out_error = relative_error(got.out, want.out);
  c.ok = c.residual_error <= c.bound && c.out_error <= c.bound;
  return c;
}

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double diff = 0;
  double ref = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return std::numeric_limits<double>::infinity();
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    ref += double(b[i]) * b[i];
  }
  return ref > 0 ? std::sqrt(diff / ref) : std::sqrt(diff);
}

}  // namespace atom::pipeline
