// The decode loop of model/decode.hpp over a memory policy, shared by the host backend
// (decode.cpp) and the GPU backend (pipeline_gpu/decode_gpu.cpp). The step's metadata is planned
// on the host; Memory moves it, the inputs and the outputs between the host and the memory the
// backend runs on:
//   template <class T> T* alloc(std::size_t n)            zeroed memory owned by the Memory
//   template <class T> void put(T* dst, const std::vector<T>& src)
//   template <class T> void get(std::vector<T>& dst, const T* src)   (dst.size() elements)
//   pipeline::LayerBlockWeights weights(std::size_t layer)
//   pipeline::Workspace& workspace(); void* stream(); void* side_stream();
//   static constexpr policy::BackendId backend
// Under tensor parallelism (`tp` set) the layers' weights are the rank's shards, its caches hold
// its KV heads, and each layer's recorded output is the all-reduce of the ranks' partial outputs.
#pragma once

#include <algorithm>
#include <stdexcept>
#include <string>

#include "../pipeline/weight_memory.hpp"
#include "atom/model/decode.hpp"
#include "atom/pipeline/tp.hpp"

namespace atom::model::detail {

// The blocks' weights of a layer, from host weights or their device copies.
template <class Weights>
pipeline::LayerBlockWeights block_weights(const pipeline::ModelConfig& m, const DecodeLayer& l,
                                          const Weights& w) {
  return pipeline::block_weights(m, pipeline::layer_kind(m, l.index), w);
}

using pipeline::detail::empty_kv_cache;

template <class Memory>
std::vector<LayerOutput> decode_with(Memory& mem, const pipeline::ModelConfig& m,
                                     const std::vector<DecodeLayer>& layers,
                                     const std::vector<std::vector<bf16>>& inputs,
                                     policy::Point point, std::int64_t dual_stream_threshold,
                                     pipeline::TpComm* tp = nullptr) {
  const index_t h = m.hidden;
  const index_t bs = m.block_size;
  const auto n_seq = inputs.size();
  std::vector<index_t> len(n_seq), first(n_seq);
  index_t blocks = 0;
  index_t longest = 0;
  for (std::size_t s = 0; s < n_seq; ++s) {
    const auto size = static_cast<index_t>(inputs[s].size());
    if (size == 0 || size % h != 0)
      throw std::invalid_argument("input sequence " + std::to_string(s) + " has " +
                                  std::to_string(size) + " values, expected len x hidden (" +
                                  std::to_string(h) + ") with len >= 1");
    len[s] = size / h;
    if (len[s] > m.max_position)
      throw std::invalid_argument("input sequence " + std::to_string(s) + " has " +
                                  std::to_string(len[s]) + " tokens, more than the model's " +
                                  std::to_string(m.max_position) + " positions");
    first[s] = blocks;
    blocks += (len[s] + bs - 1) / bs;
    longest = std::max(longest, len[s]);
  }
  const auto max_t = static_cast<index_t>(n_seq);
  const index_t max_blocks = (longest + bs - 1) / bs;
  const bool mla = m.attention == pipeline::AttentionKind::mla;

  // Per layer: its blocks' instantiations, its caches (zeroed: empty) and its outputs.
  struct Layer {
    pipeline::LayerHandles handles;
    bool moe;
    View3<bf16> mla_cache;
    ops::AnyKvCache kv_cache;
  };
  std::vector<Layer> run;
  std::vector<LayerOutput> out;
  const auto u = [](index_t v) { return static_cast<std::size_t>(v); };
  for (const auto& l : layers) {
    const pipeline::LayerKind kind = pipeline::layer_kind(m, l.index);
    const auto [attention_format, mlp_format] = block_formats(m, l);
    Layer r{pipeline::resolve_layer(m, kind, point, attention_format, mlp_format, Memory::backend),
            kind == pipeline::LayerKind::moe,
            {},
            {}};
    if (mla) {
      const index_t row = m.kv_lora_rank + m.qk_rope_dim;
      r.mla_cache = make_view(mem.template alloc<bf16>(u(blocks * bs * row)), blocks, bs, row);
    } else {
      const index_t kvh =
          pipeline::attention_split(m, pipeline::tp_shape(tp), attention_format).kv_heads.count;
      r.kv_cache =
          empty_kv_cache(mem, point.get<policy::KvCacheFormat>(), blocks, bs, kvh, m.head_dim);
    }
    LayerOutput o;
    o.index = l.index;
    o.instances = r.handles.name();
    run.push_back(std::move(r));
    for (std::size_t s = 0; s < n_seq; ++s) {
      o.hidden.emplace_back(u(len[s] * h));
      if (kind == pipeline::LayerKind::moe) o.routes.emplace_back(u(len[s] * m.top_k));
    }
    out.push_back(std::move(o));
  }

  // The step's buffers, at the largest batch; a step of t tokens uses the first t rows.
  auto* starts = mem.template alloc<std::int32_t>(u(max_t + 1));
  auto* positions = mem.template alloc<std::int64_t>(u(max_t));
  auto* slots = mem.template alloc<std::int64_t>(u(max_t));
  auto* table = mem.template alloc<std::int32_t>(u(max_t * std::max<index_t>(max_blocks, 1)));
  auto* context = mem.template alloc<std::int32_t>(u(max_t));
  auto* x = mem.template alloc<bf16>(u(max_t * h));
  auto* residual = mem.template alloc<bf16>(u(max_t * h));
  auto* layer_out = mem.template alloc<bf16>(u(max_t * h));
  auto* intermediate = mem.template alloc<bf16>(u(max_t * h));
  auto* routes = mem.template alloc<std::int32_t>(u(max_t * std::max<index_t>(m.top_k, 1)));
  auto* reduced = tp != nullptr ? mem.template alloc<bf16>(u(max_t * h)) : nullptr;

  for (index_t step = 0; step < longest; ++step) {
    std::vector<std::size_t> running;
    for (std::size_t s = 0; s < n_seq; ++s)
      if (step < len[s]) running.push_back(s);
    const auto t = static_cast<index_t>(running.size());
    std::vector<std::int64_t> slot_rows;
    std::vector<std::int32_t> table_rows(u(t * max_blocks), 0);
    std::vector<bf16> input_rows(u(t * h));
    for (index_t i = 0; i < t; ++i) {
      const std::size_t s = running[u(i)];
      for (index_t b = 0; b < (len[s] + bs - 1) / bs; ++b)
        table_rows[u(i * max_blocks + b)] = static_cast<std::int32_t>(first[s] + b);
      slot_rows.push_back((first[s] + step / bs) * bs + step % bs);
      std::copy_n(inputs[s].begin() + step * h, h, input_rows.begin() + i * h);
    }
    std::vector<std::int32_t> start_rows(u(t + 1));
    for (index_t i = 0; i <= t; ++i) start_rows[u(i)] = static_cast<std::int32_t>(i);
    mem.put(starts, start_rows);  // one query token per running sequence
    mem.put(positions, std::vector<std::int64_t>(u(t), step));
    mem.put(slots, slot_rows);
    mem.put(table, table_rows);
    mem.put(context, std::vector<std::int32_t>(u(t), static_cast<std::int32_t>(step + 1)));
    // The residual stream starts as the input; x (the previous block's output) as zeros.
    mem.put(residual, input_rows);
    mem.put(x, std::vector<bf16>(u(t * h), bf16{}));
    const pipeline::DecodeBatch batch{
        make_view(static_cast<const std::int32_t*>(starts), t + 1),
        make_view(static_cast<const std::int32_t*>(context), t),
        make_view(static_cast<const std::int32_t*>(table), t, max_blocks),
        make_view(static_cast<const std::int64_t*>(positions), t),
        make_view(static_cast<const std::int64_t*>(slots), t)};
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const Layer& r = run[l];
      pipeline::BlockIo io{&m,
                           {},
                           make_view(static_cast<const bf16*>(x), t, h),
                           make_view(residual, t, h),
                           make_view(layer_out, t, h),
                           &mem.workspace()};
      io.tp = tp;
      io.stream = mem.stream();
      io.side_stream = mem.side_stream();
      pipeline::run_layer(
          r.handles, mem.weights(l),
          {io, make_view(intermediate, t, h), batch, r.mla_cache, r.kv_cache, dual_stream_threshold,
           r.moe ? make_view(routes, t, m.top_k) : View2<std::int32_t>{}});
      mem.workspace().reset();
      std::vector<bf16> got_out(u(t * h)), got_residual(u(t * h));
      std::vector<std::int32_t> got_routes(r.moe ? u(t * m.top_k) : 0);
      if (tp != nullptr) {
        tp->all_reduce(make_view(static_cast<const bf16*>(layer_out), t, h),
                       make_view(reduced, t, h), mem.stream());
        mem.get(got_out, reduced);
      } else {
        mem.get(got_out, layer_out);
      }
      mem.get(got_residual, residual);
      if (r.moe) mem.get(got_routes, routes);
      LayerOutput& o = out[l];
      for (index_t i = 0; i < t; ++i) {
        const std::size_t s = running[u(i)];
        float* dst = o.hidden[s].data() + step * h;
        for (index_t c = 0; c < h; ++c)
          dst[c] = to_float(got_out[u(i * h + c)]) + to_float(got_residual[u(i * h + c)]);
        if (r.moe) {
          auto* route = o.routes[s].data() + step * m.top_k;
          std::copy_n(got_routes.begin() + i * m.top_k, m.top_k, route);
          std::sort(route, route + m.top_k);
        }
      }
      // The next layer's first add folds this layer's output into the residual stream.
      std::swap(x, layer_out);
    }
  }
  return out;
}

}  // namespace atom::model::detail
