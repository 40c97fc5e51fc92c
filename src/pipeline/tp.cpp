#include "atom/pipeline/tp.hpp"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "atom/dist/tp.hpp"
#include "atom/ops/norm.hpp"
#include "atom/pipeline/storage.hpp"
#include "weight_memory.hpp"

namespace atom::pipeline {

using policy::WeightFormat;

index_t quant_group(WeightFormat f) {
  switch (f) {
    case WeightFormat::mxfp4:
      return mx_block;
    case WeightFormat::fp8_block:
      return ops::fp8_weight_block_k;
    case WeightFormat::bf16:
      return 1;
  }
  return 1;
}

namespace {

[[noreturn]] void impossible(const ModelConfig& m, TpShape tp, const std::string& why) {
  throw std::invalid_argument("tensor parallel size " + std::to_string(tp.size) + " cannot split " +
                              m.name + ": " + why);
}

// Rank r's equal part of n.
Part part_of(index_t n, TpShape tp) {
  return {tp.rank * (n / tp.size), n / tp.size};
}

void expect_rank(TpShape tp) {
  if (tp.size < 1 || tp.rank < 0 || tp.rank >= tp.size)
    throw std::invalid_argument("tensor parallel rank " + std::to_string(tp.rank) + " of size " +
                                std::to_string(tp.size) + " is not a rank of the group");
}

}  // namespace

AttentionSplit attention_split(const ModelConfig& m, TpShape tp, WeightFormat f) {
  expect_rank(tp);
  if (m.num_heads % tp.size != 0)
    impossible(m, tp, std::to_string(m.num_heads) + " query heads are not divisible by the size");
  AttentionSplit s;
  s.heads = part_of(m.num_heads, tp);
  if (m.attention == AttentionKind::gqa) {
    const index_t kv = m.num_kv_heads;
    if (kv % tp.size == 0)
      s.kv_heads = part_of(kv, tp);
    else if (tp.size % kv == 0)
      s.kv_heads = {tp.rank / (tp.size / kv), 1};
    else
      impossible(m, tp,
                 std::to_string(kv) + " KV heads neither divide nor are divided by the size");
  }
  const index_t head_out = m.attention == AttentionKind::mla ? m.v_head_dim : m.head_dim;
  if (tp.size > 1 && (s.heads.count * head_out) % quant_group(f) != 0) {
    s.replicated = true;
    s.heads = {0, m.num_heads};
    s.kv_heads = {0, m.num_kv_heads};
  }
  return s;
}

MlpSplit mlp_split(index_t intermediate, TpShape tp, WeightFormat f) {
  expect_rank(tp);
  MlpSplit s;
  s.intermediate = part_of(intermediate, tp);
  if (tp.size > 1 && (intermediate % tp.size != 0 || s.intermediate.count % quant_group(f) != 0)) {
    s.replicated = true;
    s.intermediate = {0, intermediate};
  }
  return s;
}

ExpertSplit expert_split(const ModelConfig& m, TpShape tp, WeightFormat f) {
  expect_rank(tp);
  ExpertSplit s;
  s.experts = {0, m.num_experts};
  s.intermediate = part_of(m.moe_intermediate, tp);
  if (tp.size > 1 &&
      (m.moe_intermediate % tp.size != 0 || s.intermediate.count % quant_group(f) != 0)) {
    if (m.num_experts % tp.size != 0)
      impossible(m, tp,
                 "the experts' intermediate size " + std::to_string(m.moe_intermediate) +
                     " cannot be split into whole quant groups of " +
                     std::to_string(quant_group(f)) + " and " + std::to_string(m.num_experts) +
                     " experts are not divisible by the size");
    s.expert_parallel = true;
    s.experts = part_of(m.num_experts, tp);
    s.intermediate = {0, m.moe_intermediate};
  }
  return s;
}

// ---- cutting weights ----

namespace {

using detail::alloc;
using detail::Buffers;

// The source rows of the parts, in order.
std::vector<index_t> rows_of_parts(const std::vector<Part>& parts) {
  std::vector<index_t> rows;
  for (const Part& p : parts)
    for (index_t r = p.begin; r < p.end(); ++r) rows.push_back(r);
  return rows;
}

// dst [experts.count, rows.size(), cols], contiguous: row i of stack e is columns
// [c0, c0 + cols) of row rows[i] of stack experts.begin + e of src.
template <class T>
View3<T> copy_rows(Buffers& b, View3<const T> src, Part experts, const std::vector<index_t>& rows,
                   index_t c0, index_t cols) {
  const auto n = static_cast<index_t>(rows.size());
  auto dst = alloc<T>(b, experts.count, n, cols);
  for (index_t e = 0; e < experts.count; ++e)
    for (index_t i = 0; i < n; ++i)
      std::memcpy(&dst(e, i, 0), &src(experts.begin + e, rows[static_cast<std::size_t>(i)], c0),
                  static_cast<std::size_t>(cols) * sizeof(T));
  return dst;
}

// The stacks `experts`, rows `parts` (stacked in order) and K columns `cols` of w, in its format.
// MXFP4 and FP8 column cuts start on a quant group (the splits guarantee it); FP8 rows that do not
// keep whole blocks of block_n rows get one scale row each (the same values).
ExpertWeights cut(Buffers& b, const ExpertWeights& w, Part experts, const std::vector<Part>& parts,
                  Part cols) {
  const std::vector<index_t> rows = rows_of_parts(parts);
  ExpertWeights out;
  out.format = w.format;
  switch (w.format) {
    case WeightFormat::bf16:
      out.bf16.w = copy_rows<bf16>(b, w.bf16.w, experts, rows, cols.begin, cols.count);
      break;
    case WeightFormat::mxfp4:
      out.mxfp4 = {copy_rows<std::uint8_t>(b, w.mxfp4.packed, experts, rows, cols.begin / 2,
                                           ops::mxfp4_packed_cols(cols.count)),
                   copy_rows<e8m0>(b, w.mxfp4.scale, experts, rows, cols.begin / mx_block,
                                   ops::mxfp4_scale_cols(cols.count)),
                   cols.count};
      break;
    case WeightFormat::fp8_block: {
      const index_t bn = w.fp8.block_n;
      const bool whole = std::all_of(parts.begin(), parts.end(), [&](const Part& p) {
        return p.begin % bn == 0 && p.count % bn == 0;
      });
      out.fp8.q = copy_rows<fp8_e4m3>(b, w.fp8.q, experts, rows, cols.begin, cols.count);
      out.fp8.block_n = whole ? bn : 1;
      // A scale row per block of the cut (whole blocks) or per row, from its source block.
      std::vector<index_t> scale_rows;
      for (std::size_t i = 0; i < rows.size(); i += static_cast<std::size_t>(out.fp8.block_n))
        scale_rows.push_back(rows[i] / bn);
      out.fp8.scale = copy_rows<float>(b, w.fp8.scale, experts, scale_rows,
                                       cols.begin / ops::fp8_weight_block_k,
                                       ops::ceil_div(cols.count, ops::fp8_weight_block_k));
      break;
    }
  }
  return out;
}

index_t rows_of(const ExpertWeights& w) {
  switch (w.format) {
    case WeightFormat::bf16:
      return w.bf16.w.size(1);
    case WeightFormat::mxfp4:
      return w.mxfp4.packed.size(1);
    case WeightFormat::fp8_block:
      return w.fp8.q.size(1);
  }
  return 0;
}

index_t k_of(const ExpertWeights& w) {
  switch (w.format) {
    case WeightFormat::bf16:
      return w.bf16.w.size(2);
    case WeightFormat::mxfp4:
      return w.mxfp4.k;
    case WeightFormat::fp8_block:
      return w.fp8.q.size(2);
  }
  return 0;
}

LinearWeight cut(Buffers& b, const LinearWeight& w, const std::vector<Part>& rows, Part cols) {
  return detail::as_linear(cut(b, detail::as_stack(w), {0, 1}, rows, cols));
}
Part all_rows(const LinearWeight& w) {
  return {0, w.n()};
}
Part all_cols(const LinearWeight& w) {
  return {0, k_of(detail::as_stack(w))};
}

// Column-parallel (rows `rows`, all of K) and row-parallel (all rows, K columns `cols`) cuts.
LinearWeight column_parallel(Buffers& b, const LinearWeight& w, const std::vector<Part>& rows) {
  return cut(b, w, rows, all_cols(w));
}
LinearWeight row_parallel(Buffers& b, const LinearWeight& w, Part cols) {
  return cut(b, w, {all_rows(w)}, cols);
}

// The heads `h` of a per-head weight [H, N, K].
template <class T>
View3<T> heads_of(Buffers& b, View3<const T> w, Part h) {
  auto out = alloc<T>(b, h.count, w.size(1), w.size(2));
  for (index_t i = 0; i < h.count; ++i)
    for (index_t n = 0; n < w.size(1); ++n)
      std::copy_n(&w(h.begin + i, n, 0), w.size(2), &out(i, n, 0));
  return out;
}

// A gated MLP's gate_up [2I, K] and down [H, I] cut to intermediate part p (gate rows, up rows).
void cut_gated(Buffers& b, const LinearWeight& gate_up, const LinearWeight& down, Part p,
               index_t inter, LinearWeight& gate_up_out, LinearWeight& down_out) {
  gate_up_out = column_parallel(b, gate_up, {p, {inter + p.begin, p.count}});
  down_out = row_parallel(b, down, p);
}

}  // namespace

std::unique_ptr<LayerWeights> shard(const LayerWeights& full, const ModelConfig& m, TpShape tp) {
  LayerWeightParts parts;
  Buffers& b = parts.buffers;
  // Attention: the heads this rank holds.
  if (m.attention == AttentionKind::mla) {
    const MlaWeights& w = full.mla();
    const AttentionSplit s = attention_split(m, tp, weight_format(w));
    MlaWeights& o = parts.mla;
    o = w;
    if (!s.replicated) {
      const Part h = s.heads;
      const index_t q_head = m.qk_nope_dim + m.qk_rope_dim;
      o.q_b = column_parallel(b, w.q_b, {{h.begin * q_head, h.count * q_head}});
      o.o_proj = row_parallel(b, w.o_proj, {h.begin * m.v_head_dim, h.count * m.v_head_dim});
      o.w_uk_fp8 = {heads_of<fp8_e4m3>(b, w.w_uk_fp8.w, h), alloc<float>(b, h.count)};
      std::copy_n(w.w_uk_fp8.scale.data + h.begin, h.count, o.w_uk_fp8.scale.data);
      o.w_uv_fp8 = {heads_of<fp8_e4m3>(b, w.w_uv_fp8.w, h), alloc<float>(b, h.count)};
      std::copy_n(w.w_uv_fp8.scale.data + h.begin, h.count, o.w_uv_fp8.scale.data);
      o.w_uk_mxfp4 = {heads_of<std::uint8_t>(b, w.w_uk_mxfp4.packed, h),
                      heads_of<e8m0>(b, w.w_uk_mxfp4.scale, h), w.w_uk_mxfp4.k};
      o.w_uv_mxfp4 = {heads_of<std::uint8_t>(b, w.w_uv_mxfp4.packed, h),
                      heads_of<e8m0>(b, w.w_uv_mxfp4.scale, h), w.w_uv_mxfp4.k};
    }
  } else {
    const Qwen3AttentionWeights& w = full.qwen3();
    const AttentionSplit s = attention_split(m, tp, weight_format(w));
    Qwen3AttentionWeights& o = parts.qwen3;
    o = w;
    if (!s.replicated) {
      const index_t d = m.head_dim;
      const index_t q_rows = m.num_heads * d;
      const index_t kv_rows = m.num_kv_heads * d;
      const Part q{s.heads.begin * d, s.heads.count * d};
      const Part k{q_rows + s.kv_heads.begin * d, s.kv_heads.count * d};
      const Part v{q_rows + kv_rows + s.kv_heads.begin * d, s.kv_heads.count * d};
      o.qkv = column_parallel(b, w.qkv, {q, k, v});
      o.o_proj = row_parallel(b, w.o_proj, q);
    }
  }
  // The MLP block of the layer: the routed experts and shared experts, or the dense MLP.
  const MoeWeights& moe = full.moe();
  if (rows_of(moe.gate_up) > 0) {
    const ExpertSplit s = expert_split(m, tp, weight_format(moe));
    MoeWeights& o = parts.moe;
    o = moe;
    const index_t inter = m.moe_intermediate;
    const Part i = s.intermediate;
    o.gate_up =
        cut(b, moe.gate_up, s.experts, {i, {inter + i.begin, i.count}}, {0, k_of(moe.gate_up)});
    o.down = cut(b, moe.down, s.experts, {{0, rows_of(moe.down)}}, i);
    if (moe.shared_gate_up.present()) {
      const index_t shared = m.num_shared_experts * inter;
      const MlpSplit ss = mlp_split(shared, tp, weight_format(moe));
      if (!ss.computes(tp)) {
        o.shared_gate_up = o.shared_down = LinearWeight{};
        o.shared_gate_up.format = o.shared_down.format = moe.gate_up.format;
      } else if (!ss.replicated) {
        cut_gated(b, moe.shared_gate_up, moe.shared_down, ss.intermediate, shared, o.shared_gate_up,
                  o.shared_down);
      }
    }
  }
  const DenseMlpWeights& dense = full.dense();
  if (dense.gate_up.present()) {
    const MlpSplit s = mlp_split(m.intermediate, tp, weight_format(dense));
    DenseMlpWeights& o = parts.dense;
    o = dense;
    if (!s.replicated)
      cut_gated(b, dense.gate_up, dense.down, s.intermediate, m.intermediate, o.gate_up, o.down);
  }
  // Views that were not cut still point into `full`: the shard shares them (norms, router, the
  // replicated blocks), so `full` must outlive it.
  return std::make_unique<LayerWeights>(std::move(parts));
}

// ---- the in-process group ----

struct HostTpGroup::State {
  index_t size;
  std::chrono::milliseconds timeout;
  std::mutex mutex;
  std::condition_variable changed;
  std::uint64_t generation = 0;  // completed rendezvous
  index_t arrived = 0;
  std::vector<bool> here;  // which ranks wait in the current rendezvous
  std::vector<const void*> published;
  index_t failed_rank = -1;
  std::string failure;
  std::vector<std::unique_ptr<Rank>> ranks;

  // Waits until every rank has arrived; each rank's `mine`, unless null, is visible to all as
  // published[r] until the next rendezvous.
  void rendezvous(index_t r, const void* mine, const char* what) {
    std::unique_lock lock(mutex);
    if (failed_rank >= 0) throw dist::TpError(r, what, failure);
    if (mine != nullptr) published[static_cast<std::size_t>(r)] = mine;
    const std::uint64_t gen = generation;
    here[static_cast<std::size_t>(r)] = true;
    if (++arrived == size) {
      arrived = 0;
      std::fill(here.begin(), here.end(), false);
      ++generation;
      changed.notify_all();
      return;
    }
    const bool done =
        changed.wait_for(lock, timeout, [&] { return generation != gen || failed_rank >= 0; });
    if (generation != gen) return;
    if (!done) {
      std::string missing;
      for (index_t p = 0; p < size; ++p)
        if (!here[static_cast<std::size_t>(p)])
          missing += (missing.empty() ? "" : ", ") + std::to_string(p);
      failed_rank = r;
      failure = "rank " + std::to_string(r) + " waited " + std::to_string(timeout.count()) +
                " ms for rank(s) " + missing + ", which did not arrive";
      changed.notify_all();
    }
    throw dist::TpError(r, what, failure);
  }
};

class HostTpGroup::Rank final : public TpComm {
 public:
  Rank(State& s, index_t r) : s_(s), r_(r) {}
  index_t rank() const noexcept override { return r_; }
  index_t size() const noexcept override { return s_.size; }

  void all_reduce(View2<const bf16> x, View2<bf16> out, void*) override {
    const index_t t = x.size(0);
    const index_t c = x.size(1);
    ops::expect_view("all_reduce", "x", x, {t, c});
    ops::expect_view("all_reduce", "out", out, {t, c});
    std::vector<bf16> sum(static_cast<std::size_t>(t * c));
    s_.rendezvous(r_, &x, "all_reduce");
    for (index_t i = 0; i < t; ++i)
      for (index_t j = 0; j < c; ++j) {
        float acc = 0.0f;
        for (index_t p = 0; p < s_.size; ++p) {
          const auto& peer = *static_cast<const View2<const bf16>*>(s_.published[std::size_t(p)]);
          expect(peer.size(0) == t && peer.size(1) == c, "all_reduce",
                 "rank " + std::to_string(p) + " reduces another shape");
          acc += to_float(peer(i, j));
        }
        sum[static_cast<std::size_t>(i * c + j)] = to_bf16(acc);
      }
    // Every rank has read every input before any writes its output (out may be x).
    s_.rendezvous(r_, nullptr, "all_reduce");
    for (index_t i = 0; i < t; ++i) std::copy_n(sum.data() + i * c, c, &out(i, 0));
  }

  void all_reduce_add_rms_norm(View2<const bf16> x, View2<bf16> residual, View1<const bf16> weight,
                               float eps, const NormOutput& out, void* stream) override {
    // On the host the one pass and the two are the same arithmetic in the same order.
    std::vector<bf16> summed(static_cast<std::size_t>(x.numel()));
    const auto sum = make_view(summed.data(), x.size(0), x.size(1));
    all_reduce(x, sum, stream);
    add_rms_norm_into(ops::Host{}, sum, residual, weight, eps, out);
  }

 private:
  State& s_;
  index_t r_;
};

HostTpGroup::HostTpGroup(index_t size, std::chrono::milliseconds timeout)
    : state_(std::make_unique<State>()) {
  if (size < 1 || size > dist::tp_max_ranks)
    throw std::invalid_argument("tensor parallel size " + std::to_string(size) + " is outside 1.." +
                                std::to_string(dist::tp_max_ranks));
  if (timeout.count() <= 0) throw std::invalid_argument("the TP group's timeout must be positive");
  state_->size = size;
  state_->timeout = timeout;
  state_->here.assign(static_cast<std::size_t>(size), false);
  state_->published.assign(static_cast<std::size_t>(size), nullptr);
  for (index_t r = 0; r < size; ++r) state_->ranks.push_back(std::make_unique<Rank>(*state_, r));
}

HostTpGroup::~HostTpGroup() = default;

index_t HostTpGroup::size() const noexcept {
  return state_->size;
}

TpComm& HostTpGroup::rank(index_t r) {
  if (r < 0 || r >= state_->size)
    throw std::out_of_range("rank " + std::to_string(r) + " is outside 0.." +
                            std::to_string(state_->size - 1));
  return *state_->ranks[static_cast<std::size_t>(r)];
}

void HostTpGroup::fail(index_t r, const std::string& cause) {
  std::lock_guard lock(state_->mutex);
  if (state_->failed_rank < 0) {
    state_->failed_rank = r;
    state_->failure = "rank " + std::to_string(r) + " failed: " + cause;
  }
  state_->changed.notify_all();
}

void run_ranks(index_t size, const std::function<void(TpComm&)>& body,
               std::chrono::milliseconds timeout) {
  HostTpGroup group(size, timeout);
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(size));
  std::mutex order;
  std::vector<index_t> failed;  // ranks in the order they failed
  {
    std::vector<std::jthread> ranks;
    for (index_t r = 0; r < size; ++r)
      ranks.emplace_back([&, r] {
        try {
          body(group.rank(r));
        } catch (const std::exception& e) {
          errors[static_cast<std::size_t>(r)] = std::current_exception();
          group.fail(r, e.what());
          const std::lock_guard lock(order);
          failed.push_back(r);
        }
      });
  }
  if (failed.empty()) return;
  // A rank's own failure is not a TpError; the others' are the group telling them of it.
  for (const index_t r : failed) {
    try {
      std::rethrow_exception(errors[static_cast<std::size_t>(r)]);
    } catch (const dist::TpError&) {
    } catch (...) {
      throw;
    }
  }
  std::rethrow_exception(errors[static_cast<std::size_t>(failed.front())]);
}

}  // namespace atom::pipeline
