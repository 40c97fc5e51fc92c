// The decode steps of model/step.hpp over a Memory policy (decode_loop.hpp's, plus
// `ops()`: the backend tag the batch's own ops run with), shared by the host backend (step.cpp)
// and the GPU backend (pipeline_gpu/decode_gpu.cpp). The batch's ops are called unqualified: each
// backend's overloads are found through its tag.
#pragma once

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "atom/model/step.hpp"
#include "atom/ops/decode_batch.hpp"
#include "decode_loop.hpp"

namespace atom::model::detail {

// Bytes of weights in their checkpoint format (model/step.hpp's StepBytes).
inline double weight_bytes(const pipeline::LinearWeight& w) {
  switch (w.format) {
    case policy::WeightFormat::mxfp4:
      return static_cast<double>(w.mxfp4.packed.numel() + w.mxfp4.scale.numel());
    case policy::WeightFormat::fp8_block:
      return static_cast<double>(w.fp8.q.numel() + 4 * w.fp8.scale.numel());
    case policy::WeightFormat::bf16:
      return 2.0 * static_cast<double>(w.bf16.w.numel());
  }
  return 0;
}
// One expert's share of a stacked expert weight.
inline double expert_bytes(const pipeline::ExpertWeights& w) {
  switch (w.format) {
    case policy::WeightFormat::mxfp4:
      return static_cast<double>(w.mxfp4.packed.numel() + w.mxfp4.scale.numel()) /
             static_cast<double>(w.mxfp4.packed.size(0));
    case policy::WeightFormat::fp8_block:
      return static_cast<double>(w.fp8.q.numel() + 4 * w.fp8.scale.numel()) /
             static_cast<double>(w.fp8.q.size(0));
    case policy::WeightFormat::bf16:
      return 2.0 * static_cast<double>(w.bf16.w.numel()) / static_cast<double>(w.bf16.w.size(0));
  }
  return 0;
}
template <class T, int R>
double norm_bytes(const View<T, R>& v) {
  return static_cast<double>(v.numel() * static_cast<index_t>(sizeof(T)));
}
inline double weight_bytes(const pipeline::MlaWeights& w, policy::BmmFormat bmm) {
  const double heads =
      bmm == policy::BmmFormat::fp8
          ? static_cast<double>(w.w_uk_fp8.w.numel() + w.w_uv_fp8.w.numel()) +
                norm_bytes(w.w_uk_fp8.scale) + norm_bytes(w.w_uv_fp8.scale)
          : static_cast<double>(w.w_uk_mxfp4.packed.numel() + w.w_uk_mxfp4.scale.numel() +
                                w.w_uv_mxfp4.packed.numel() + w.w_uv_mxfp4.scale.numel());
  return weight_bytes(w.qkv_a) + weight_bytes(w.q_b) + weight_bytes(w.o_proj) + heads +
         norm_bytes(w.input_norm) + norm_bytes(w.q_a_norm) + norm_bytes(w.kv_a_norm);
}
inline double weight_bytes(const pipeline::Qwen3AttentionWeights& w) {
  return weight_bytes(w.qkv) + weight_bytes(w.o_proj) + norm_bytes(w.input_norm) +
         norm_bytes(w.q_norm) + norm_bytes(w.k_norm);
}
inline double weight_bytes(const pipeline::DenseMlpWeights& w) {
  return weight_bytes(w.gate_up) + weight_bytes(w.down) + norm_bytes(w.post_norm);
}
// `experts`: how many distinct routed experts the step's tokens chose; the router's bias is read
// by the grouped sigmoid routing only.
inline double weight_bytes(const pipeline::MoeWeights& w, double experts, pipeline::RouterKind r) {
  const double shared =
      w.shared_gate_up.present() ? weight_bytes(w.shared_gate_up) + weight_bytes(w.shared_down) : 0;
  return experts * (expert_bytes(w.gate_up) + expert_bytes(w.down)) + shared +
         norm_bytes(w.router) +
         (r == pipeline::RouterKind::sigmoid_grouped ? norm_bytes(w.router_bias) : 0) +
         norm_bytes(w.post_norm);
}

template <class Memory>
class StepLoop {
 public:
  StepLoop(Memory& mem, const StepSetup& s) : mem_(mem), s_(s) {
    const pipeline::ModelConfig& m = *s.model;
    if (s.layers.empty()) throw std::invalid_argument("decode steps: no layers");
    if (s.context_lens.empty()) throw std::invalid_argument("decode steps: no sequences");
    if (s.steps < 1) throw std::invalid_argument("decode steps: steps must be at least 1");
    if (s.padding < 0) throw std::invalid_argument("decode steps: negative padding");
    const index_t bs = m.block_size;
    const auto n = static_cast<index_t>(s.context_lens.size());  // sequences
    const index_t t = n + s.padding;                             // tokens
    // Sequence i owns the blocks [first[i], first[i] + count[i]) that hold its longest context;
    // the rest of its block-table row is -1.
    std::vector<index_t> first, count;
    index_t blocks = 0;
    for (std::size_t i = 0; i < s.context_lens.size(); ++i) {
      const index_t len = s.context_lens[i];
      const index_t longest = len + s.steps - 1;
      if (len < 1 || longest > m.max_position)
        throw std::invalid_argument(
            "decode steps: sequence " + std::to_string(i) + " has context " + std::to_string(len) +
            " and grows by " + std::to_string(s.steps - 1) + "; expected 1 <= context and " +
            "context + steps - 1 <= the model's " + std::to_string(m.max_position) + " positions");
      first.push_back(blocks);
      count.push_back((longest + bs - 1) / bs);
      blocks += count.back();
    }
    const index_t width = *std::max_element(count.begin(), count.end());
    const auto u = [](index_t v) { return static_cast<std::size_t>(v); };
    // One query token per sequence: token i is sequence i's; the padding tokens after them
    // belong to no sequence (slot -1: they write and read no cache row).
    std::vector<std::int32_t> table(u(n * width), -1);
    std::vector<std::int32_t> starts;
    std::vector<std::int64_t> positions, slots;
    for (index_t i = 0; i < n; ++i) {
      for (index_t b = 0; b < count[u(i)]; ++b)
        table[u(i * width + b)] = static_cast<std::int32_t>(first[u(i)] + b);
      const index_t pos = s.context_lens[u(i)] - 1;
      starts.push_back(static_cast<std::int32_t>(i));
      positions.push_back(pos);
      slots.push_back((first[u(i)] + pos / bs) * bs + pos % bs);
    }
    starts.push_back(static_cast<std::int32_t>(n));
    positions.resize(u(t), 0);
    slots.resize(u(t), -1);
    mirror_ = {starts, positions, slots, table, s.context_lens, width};
    starts_ = make_view(mem.template alloc<std::int32_t>(u(n + 1)), n + 1);
    positions_ = make_view(mem.template alloc<std::int64_t>(u(t)), t);
    slots_ = make_view(mem.template alloc<std::int64_t>(u(t)), t);
    table_ = make_view(mem.template alloc<std::int32_t>(table.size()), n, width);
    context_ = make_view(mem.template alloc<std::int32_t>(u(n)), n);
    mem.put(starts_.data, starts);
    mem.put(positions_.data, positions);
    mem.put(slots_.data, slots);
    mem.put(table_.data, table);
    mem.put(context_.data, s.context_lens);

    const index_t h = m.hidden;
    input_ = make_view(mem.template alloc<bf16>(u(t * h)), t, h);
    residual_ = make_view(mem.template alloc<bf16>(u(t * h)), t, h);
    ping_ = make_view(mem.template alloc<bf16>(u(t * h)), t, h);
    pong_ = make_view(mem.template alloc<bf16>(u(t * h)), t, h);
    intermediate_ = make_view(mem.template alloc<bf16>(u(t * h)), t, h);
    fill_uniform(mem.ops(), View1<bf16>(make_view(input_.data, t * h)), s.seed, -1.0f, 1.0f);

    // Per layer its blocks' instantiations and its cache, prefilled with random rows (the rows
    // past each context are overwritten before they are read).
    const bool mla = m.attention == pipeline::AttentionKind::mla;
    for (std::size_t l = 0; l < s.layers.size(); ++l) {
      const DecodeLayer& dl = s.layers[l];
      const pipeline::LayerKind kind = pipeline::layer_kind(m, dl.index);
      const auto [attention_format, mlp_format] = block_formats(m, dl);
      Layer r{
          pipeline::resolve_layer(m, kind, s.point, attention_format, mlp_format, Memory::backend),
          {},
          {},
          {}};
      if (kind == pipeline::LayerKind::moe)
        r.routes = make_view(mem.template alloc<std::int32_t>(u(t * m.top_k)), t, m.top_k);
      const std::uint64_t seed = s.seed + 1000 * (l + 1);
      if (mla) {
        const index_t row = m.kv_lora_rank + m.qk_rope_dim;
        r.mla_cache = make_view(mem.template alloc<bf16>(u(blocks * bs * row)), blocks, bs, row);
        fill(make_view(r.mla_cache.data, blocks * bs * row), seed, -1.0f, 1.0f);
      } else {
        r.kv_cache = random_kv_cache(m, blocks, seed);
      }
      layers_.push_back(std::move(r));
    }
  }

  // One step: the residual stream starts at zero and x at the fed hidden state, so the first
  // block's add makes the residual the input; each layer's output is the next one's x (two
  // buffers in turn); then the batch advances. With `marks`, a timing point before the first block
  // and after each block.
  void enqueue(typename Memory::Marks* marks = nullptr) {
    const pipeline::ModelConfig& m = *s_.model;
    const index_t t = slots_.size(0);
    const index_t h = m.hidden;
    // Zeros: the uniform fill over the empty range [0, 0).
    fill_uniform(mem_.ops(), View1<bf16>(make_view(residual_.data, t * h)), 0, 0.0f, 0.0f);
    const ops::DecodeCursor cursor{starts_, context_, table_, positions_, slots_};
    const pipeline::DecodeBatch batch = cursor.batch();
    const auto mark = [&] {
      if (marks != nullptr) marks->mark();
    };
    mark();
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const Layer& r = layers_[l];
      pipeline::BlockIo io{
          &m,        {},     l == 0 ? View2<const bf16>(input_) : View2<const bf16>(out(l - 1)),
          residual_, out(l), &mem_.workspace()};
      io.stream = mem_.stream();
      io.side_stream = mem_.side_stream();
      const pipeline::LayerIo layer{
          io, intermediate_, batch, r.mla_cache, r.kv_cache, s_.dual_stream_threshold, r.routes};
      pipeline::run_attention(r.handles, mem_.weights(l), layer);
      mark();
      pipeline::run_mlp(r.handles, mem_.weights(l), layer);
      mark();
      mem_.workspace().reset();
    }
    advance_decode(mem_.ops(), cursor, m.block_size);
  }

  // Host bookkeeping of a step the device runs (eagerly or replayed): what it attends to, then
  // the advance.
  void mirror() {
    // Per token the rows it attends to: a padded token (of a sequence that ran out of its table,
    // or a padding token after the sequences) reads nothing.
    attended_.assign(mirror_.slots.size(), 0);
    for (std::size_t i = 0; i < mirror_.context.size(); ++i)
      if (mirror_.slots[i] >= 0) attended_[i] = mirror_.context[i];
    written_ = static_cast<double>(
        std::count_if(mirror_.slots.begin(), mirror_.slots.end(), [](auto v) { return v >= 0; }));
    const auto n = static_cast<index_t>(mirror_.context.size());
    const auto t = static_cast<index_t>(mirror_.slots.size());
    const ops::DecodeCursor host{
        make_view(static_cast<const std::int32_t*>(mirror_.starts.data()), n + 1),
        make_view(mirror_.context.data(), n),
        make_view(static_cast<const std::int32_t*>(mirror_.table.data()), n, mirror_.width),
        make_view(mirror_.positions.data(), t), make_view(mirror_.slots.data(), t)};
    ops::advance_decode(ops::Host{}, host, s_.model->block_size);
  }

  // The byte floor of each block of the last step run, in the order run (model/step.hpp).
  std::vector<BlockCost> last_block_costs() {
    std::vector<BlockCost> out;
    if (attended_.empty()) return out;
    const pipeline::ModelConfig& m = *s_.model;
    const auto t = static_cast<double>(attended_.size());
    double attended = 0;
    for (const auto len : attended_) attended += len;
    const double row = cache_row_bytes(m, s_.point.get<policy::KvCacheFormat>());
    // Each block reads x and the residual and writes the residual and its output.
    const double activations = 4 * t * static_cast<double>(m.hidden) * 2.0;
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const DecodeLayer& dl = s_.layers[l];
      const pipeline::LayerBlockWeights w = block_weights(m, dl, *dl.weights);
      BlockCost attention{dl.index, pipeline::attention_pipeline(m), {}, 0};
      attention.bytes.weights = w.mla != nullptr
                                    ? weight_bytes(*w.mla, s_.point.get<policy::BmmFormat>())
                                    : weight_bytes(*w.qwen3);
      attention.bytes.cache_read = attended * row;
      attention.bytes.cache_write = written_ * row;  // padded tokens (slot -1) write nothing
      attention.bytes.activations = activations;
      BlockCost mlp{dl.index, pipeline::mlp_pipeline(pipeline::layer_kind(m, dl.index)), {}, 0};
      if (w.moe != nullptr) {
        std::vector<std::int32_t> routes(static_cast<std::size_t>(layers_[l].routes.numel()));
        mem_.get(routes, layers_[l].routes.data);
        std::sort(routes.begin(), routes.end());
        const auto used = std::unique(routes.begin(), routes.end()) - routes.begin();
        mlp.bytes.weights = weight_bytes(*w.moe, static_cast<double>(used), m.router);
      } else {
        mlp.bytes.weights = weight_bytes(*w.dense);
      }
      mlp.bytes.activations = activations;
      out.push_back(attention);
      out.push_back(mlp);
    }
    return out;
  }

  StepBytes last_step_bytes() {
    StepBytes b;
    for (const BlockCost& c : last_block_costs()) {
      b.weights += c.bytes.weights;
      b.cache_read += c.bytes.cache_read;
      b.cache_write += c.bytes.cache_write;
      b.activations += c.bytes.activations;
    }
    return b;
  }

  std::vector<std::string> instances() const {
    std::vector<std::string> out;
    for (const auto& l : layers_) out.push_back(l.handles.name());
    return out;
  }

  std::vector<float> hidden() {
    const auto n = static_cast<std::size_t>(residual_.numel());
    std::vector<bf16> o(n), r(n);
    mem_.get(o, out(layers_.size() - 1).data);
    mem_.get(r, residual_.data);
    std::vector<float> sum(n);
    for (std::size_t i = 0; i < n; ++i) sum[i] = to_float(o[i]) + to_float(r[i]);
    return sum;
  }

  std::vector<std::byte> snapshot() {
    std::vector<std::byte> all;
    const auto add = [&](const auto* p, index_t n) {
      using T = std::remove_cv_t<std::remove_pointer_t<decltype(p)>>;
      std::vector<T> v(static_cast<std::size_t>(n));
      mem_.get(v, p);
      const auto at = all.size();
      all.resize(at + v.size() * sizeof(T));
      std::memcpy(all.data() + at, v.data(), v.size() * sizeof(T));
    };
    add(out(layers_.size() - 1).data, residual_.numel());
    add(residual_.data, residual_.numel());
    add(positions_.data, positions_.numel());
    add(slots_.data, slots_.numel());
    add(context_.data, context_.numel());
    for (const auto& l : layers_) {
      if (l.mla_cache.data != nullptr) add(l.mla_cache.data, l.mla_cache.numel());
      std::visit(
          [&](const auto& c) {
            if (c.key.data == nullptr) return;
            add(c.key.data, c.key.numel());
            add(c.value.data, c.value.numel());
            // An fp8_tensor cache's scales are one float each (strides 0), a bf16 cache's none.
            if (c.key_scale.data != nullptr) {
              const bool per_tensor = c.format == ops::KvCacheFormat::fp8_tensor;
              add(c.key_scale.data, per_tensor ? 1 : c.key_scale.numel());
              add(c.value_scale.data, per_tensor ? 1 : c.value_scale.numel());
            }
          },
          l.kv_cache);
    }
    return all;
  }

 private:
  struct Layer {
    pipeline::LayerHandles handles;
    View3<bf16> mla_cache;
    ops::AnyKvCache kv_cache;
    View2<std::int32_t> routes;  // MoE layers: the experts each token chose
  };

  // The batch metadata as the device holds it, advanced on the host by the same rule
  // (ops::advance_sequence), so that the byte floor knows what each step attended to.
  struct Mirror {
    std::vector<std::int32_t> starts;
    std::vector<std::int64_t> positions, slots;
    std::vector<std::int32_t> table, context;
    index_t width = 1;
  };

  View2<bf16> out(std::size_t layer) const { return layer % 2 == 0 ? ping_ : pong_; }
  template <class T>
  void fill(View1<T> v, std::uint64_t seed, float lo, float hi) {
    fill_uniform(mem_.ops(), v, seed, lo, hi);
  }

  // A layer's GQA cache of `blocks` blocks in the point's format, prefilled with random rows: FP8
  // codes over the whole range with the scales the writer makes for rows of magnitude about 1
  // (amax / 448: per row in fp8_row, one per tensor in fp8_tensor), or bf16 values in [-1, 1].
  ops::AnyKvCache random_kv_cache(const pipeline::ModelConfig& m, index_t blocks,
                                  std::uint64_t seed) {
    ops::AnyKvCache c = empty_kv_cache(mem_, s_.point.get<policy::KvCacheFormat>(), blocks,
                                       m.block_size, m.num_kv_heads, m.head_dim);
    std::visit(
        [&](const auto& k) {
          const auto all = [](const auto& v) { return make_view(v.data, v.numel()); };
          const float range = k.format == ops::KvCacheFormat::bf16 ? 1.0f : 448.0f;
          fill(all(k.key), seed, -range, range);
          fill(all(k.value), seed + 1, -range, range);
          if (k.key_scale.data == nullptr) return;
          const bool per_tensor = k.format == ops::KvCacheFormat::fp8_tensor;
          const index_t n = per_tensor ? 1 : k.key_scale.numel();
          fill(make_view(k.key_scale.data, n), seed + 2, 1e-3f, 4e-3f);
          fill(make_view(k.value_scale.data, n), seed + 3, 1e-3f, 4e-3f);
        },
        c);
    return c;
  }

  Memory& mem_;
  const StepSetup& s_;
  View1<std::int32_t> starts_;
  View1<std::int64_t> positions_, slots_;
  View2<std::int32_t> table_;
  View1<std::int32_t> context_;
  View2<bf16> input_, residual_, ping_, pong_, intermediate_;
  std::vector<Layer> layers_;
  Mirror mirror_;
  std::vector<std::int32_t> attended_;  // context lengths of the last step run
  double written_ = 0;                  // its tokens that wrote a cache row
};

// What both backends' DecodeSteps share: the setup, the Memory (made from the setup's model and
// layers and `memory_args`), the loop and the step count. A backend adds capture, replay,
// synchronize and stream.
template <class Memory>
class StepsOn : public DecodeSteps {
 public:
  template <class... MemoryArgs>
  explicit StepsOn(const StepSetup& s, const MemoryArgs&... memory_args)
      : setup_(s), mem_(*setup_.model, setup_.layers, memory_args...), loop_(mem_, setup_) {}

  void step() override {
    loop_.enqueue();
    loop_.mirror();
    ++steps_;
  }
  std::vector<BlockCost> profile() override {
    typename Memory::Marks marks = mem_.marks();
    loop_.enqueue(&marks);
    loop_.mirror();
    ++steps_;
    const std::vector<double> ms = marks.intervals_ms();
    std::vector<BlockCost> costs = loop_.last_block_costs();
    for (std::size_t i = 0; i < costs.size() && i < ms.size(); ++i) costs[i].ms = ms[i];
    return costs;
  }
  double copy_gbs() override { return mem_.copy_gbs(); }
  index_t steps_run() const override { return steps_; }
  StepBytes last_step_bytes() const override { return loop_.last_step_bytes(); }
  const StepSetup& setup() const override { return setup_; }
  std::vector<std::string> instances() const override { return loop_.instances(); }
  std::vector<float> hidden() const override { return loop_.hidden(); }
  std::vector<std::byte> snapshot() const override { return loop_.snapshot(); }

 protected:
  StepSetup setup_;
  Memory mem_;
  mutable StepLoop<Memory> loop_;
  index_t steps_ = 0;
};

}  // namespace atom::model::detail
