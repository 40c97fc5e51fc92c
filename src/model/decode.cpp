#include "atom/model/decode.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace atom::model {

namespace {

// One layer's paged cache for every sequence: sequence s owns blocks [first[s], first[s] + n_s).
struct LayerCache {
  std::vector<bf16> mla;
  std::vector<fp8_e4m3> key, value;
  std::vector<float> key_scale, value_scale;
  View3<bf16> mla_view;
  ops::KvCacheFp8 kv;
};

LayerCache make_cache(const pipeline::ModelConfig& m, index_t blocks) {
  LayerCache c;
  const index_t bs = m.block_size;
  if (m.attention == pipeline::AttentionKind::mla) {
    const index_t row = m.kv_lora_rank + m.qk_rope_dim;
    c.mla.assign(static_cast<std::size_t>(blocks * bs * row), bf16{});
    c.mla_view = make_view(c.mla.data(), blocks, bs, row);
  } else {
    const index_t kvh = m.num_kv_heads;
    const index_t d = m.head_dim;
    c.key.assign(static_cast<std::size_t>(blocks * bs * kvh * d), fp8_e4m3{});
    c.value.assign(c.key.size(), fp8_e4m3{});
    c.key_scale.assign(static_cast<std::size_t>(blocks * bs * kvh), 0.0f);
    c.value_scale.assign(c.key_scale.size(), 0.0f);
    c.kv = {make_view(c.key.data(), blocks, bs, kvh, d),
            make_view(c.value.data(), blocks, bs, kvh, d),
            make_view(c.key_scale.data(), blocks, bs, kvh),
            make_view(c.value_scale.data(), blocks, bs, kvh)};
  }
  return c;
}

}  // namespace

std::vector<LayerOutput> decode_sequences(const pipeline::ModelConfig& m,
                                          const std::vector<DecodeLayer>& layers,
                                          const std::vector<std::vector<bf16>>& inputs,
                                          policy::Point point, std::int64_t dual_stream_threshold) {
  const index_t h = m.hidden;
  const index_t bs = m.block_size;
  const auto n_seq = static_cast<index_t>(inputs.size());
  std::vector<index_t> len(inputs.size()), first(inputs.size());
  index_t blocks = 0;
  index_t longest = 0;
  for (index_t s = 0; s < n_seq; ++s) {
    const auto size = static_cast<index_t>(inputs[static_cast<std::size_t>(s)].size());
    if (size == 0 || size % h != 0)
      throw std::invalid_argument("input sequence " + std::to_string(s) + " has " +
                                  std::to_string(size) + " values, expected len x hidden (" +
                                  std::to_string(h) + ") with len >= 1");
    len[static_cast<std::size_t>(s)] = size / h;
    if (size / h > m.max_position)
      throw std::invalid_argument("input sequence " + std::to_string(s) + " has " +
                                  std::to_string(size / h) + " tokens, more than the model's " +
                                  std::to_string(m.max_position) + " positions");
    first[static_cast<std::size_t>(s)] = blocks;
    blocks += (size / h + bs - 1) / bs;
    longest = std::max(longest, size / h);
  }

  std::vector<pipeline::LayerHandles> handles;
  std::vector<LayerCache> caches;
  std::vector<LayerOutput> out;
  for (const auto& l : layers) {
    const pipeline::LayerKind kind = pipeline::layer_kind(m, l.index);
    const pipeline::LayerWeights& w = *l.weights;
    const auto attention_format = m.attention == pipeline::AttentionKind::mla
                                      ? pipeline::weight_format(w.mla())
                                      : pipeline::weight_format(w.qwen3());
    const auto mlp_format = kind == pipeline::LayerKind::moe ? pipeline::weight_format(w.moe())
                                                             : pipeline::weight_format(w.dense());
    handles.push_back(pipeline::resolve_layer(m, kind, point, attention_format, mlp_format,
                                              policy::BackendId::host));
    caches.push_back(make_cache(m, blocks));
    LayerOutput o;
    o.index = l.index;
    for (index_t s = 0; s < n_seq; ++s) {
      o.hidden.emplace_back(static_cast<std::size_t>(len[static_cast<std::size_t>(s)] * h));
      if (kind == pipeline::LayerKind::moe)
        o.routes.emplace_back(static_cast<std::size_t>(len[static_cast<std::size_t>(s)] * m.top_k));
    }
    out.push_back(std::move(o));
  }

  pipeline::Workspace ws;
  const index_t max_blocks = (longest + bs - 1) / bs;
  for (index_t step = 0; step < longest; ++step) {
    std::vector<index_t> running;
    for (index_t s = 0; s < n_seq; ++s)
      if (step < len[static_cast<std::size_t>(s)]) running.push_back(s);
    const auto t = static_cast<index_t>(running.size());
    std::vector<std::int64_t> positions(static_cast<std::size_t>(t), step);
    std::vector<std::int64_t> slots;
    std::vector<std::int32_t> table(static_cast<std::size_t>(t * max_blocks), 0);
    std::vector<std::int32_t> context(static_cast<std::size_t>(t),
                                      static_cast<std::int32_t>(step + 1));
    std::vector<bf16> x(static_cast<std::size_t>(t * h), bf16{});
    std::vector<bf16> residual(static_cast<std::size_t>(t * h));
    std::vector<bf16> layer_out(static_cast<std::size_t>(t * h));
    std::vector<bf16> intermediate(static_cast<std::size_t>(t * h));
    std::vector<std::int32_t> routes(static_cast<std::size_t>(t * m.top_k));
    for (index_t i = 0; i < t; ++i) {
      const auto s = static_cast<std::size_t>(running[static_cast<std::size_t>(i)]);
      for (index_t b = 0; b < (len[s] + bs - 1) / bs; ++b)
        table[static_cast<std::size_t>(i * max_blocks + b)] =
            static_cast<std::int32_t>(first[s] + b);
      slots.push_back((first[s] + step / bs) * bs + step % bs);
      std::copy_n(inputs[s].begin() + step * h, h, residual.begin() + i * h);
    }
    const pipeline::DecodeBatch batch{
        make_view(static_cast<const std::int64_t*>(positions.data()), t),
        make_view(static_cast<const std::int64_t*>(slots.data()), t),
        make_view(static_cast<const std::int32_t*>(table.data()), t, max_blocks),
        make_view(static_cast<const std::int32_t*>(context.data()), t)};
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const pipeline::LayerWeights& w = *layers[l].weights;
      const bool moe = pipeline::layer_kind(m, layers[l].index) == pipeline::LayerKind::moe;
      pipeline::LayerIo io{{&m,
                            {},
                            make_view(static_cast<const bf16*>(x.data()), t, h),
                            make_view(residual.data(), t, h),
                            make_view(layer_out.data(), t, h),
                            &ws},
                           make_view(intermediate.data(), t, h),
                           batch,
                           caches[l].mla_view,
                           caches[l].kv,
                           dual_stream_threshold,
                           moe ? make_view(routes.data(), t, m.top_k) : View2<std::int32_t>{}};
      const bool mla = m.attention == pipeline::AttentionKind::mla;
      pipeline::run_layer(handles[l],
                          {mla ? &w.mla() : nullptr, mla ? nullptr : &w.qwen3(),
                           moe ? &w.moe() : nullptr, moe ? nullptr : &w.dense()},
                          io);
      ws.reset();
      LayerOutput& o = out[l];
      for (index_t i = 0; i < t; ++i) {
        const auto s = static_cast<std::size_t>(running[static_cast<std::size_t>(i)]);
        float* dst = o.hidden[s].data() + step * h;
        for (index_t c = 0; c < h; ++c)
          dst[c] = to_float(layer_out[static_cast<std::size_t>(i * h + c)]) +
                   to_float(residual[static_cast<std::size_t>(i * h + c)]);
        if (moe) {
          auto* r = o.routes[s].data() + step * m.top_k;
          std::copy_n(routes.begin() + i * m.top_k, m.top_k, r);
          std::sort(r, r + m.top_k);
        }
      }
      x = layer_out;  // the next layer's add folds this layer's output into the residual
    }
  }
  return out;
}

}  // namespace atom::model
