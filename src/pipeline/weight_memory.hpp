// The memory behind pipeline weights and the weight quantizers, shared by the random weights
// (storage.cpp) and the checkpoint loader (model/checkpoint.cpp): owned buffers, the RoPE table,
// float rows into MXFP4 blocks, and the absorbed MLA BMMs' per-head FP8 and MXFP4 weights from
// their float values.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <memory>
#include <stdexcept>
#include <utility>
#include <vector>

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/bmm.hpp"
#include "atom/ops/cache.hpp"
#include "atom/ops/formats.hpp"
#include "atom/ops/rope.hpp"
#include "atom/pipeline/args.hpp"
#include "atom/pipeline/model.hpp"

namespace atom::pipeline::detail {

using Buffers = std::vector<std::unique_ptr<std::byte[]>>;

// A view of fresh memory that `buffers` owns.
template <class T, class... Extent>
View<T, static_cast<int>(sizeof...(Extent))> alloc(Buffers& buffers, Extent... extent) {
  index_t n = 1;
  ((n *= static_cast<index_t>(extent)), ...);
  buffers.push_back(std::make_unique<std::byte[]>(static_cast<std::size_t>(n) * sizeof(T)));
  return make_view(reinterpret_cast<T*>(buffers.back().get()), extent...);
}

// The model's RoPE table [max_position, rot_dim] (ops::make_cos_sin_cache).
inline View2<float> rope_table(Buffers& b, const ModelConfig& m, index_t rot_dim) {
  const auto table = ops::make_cos_sin_cache(m.max_position, rot_dim, m.rope_theta, m.rope_scaling);
  auto v = alloc<float>(b, m.max_position, rot_dim);
  std::copy(table.begin(), table.end(), v.data);
  return v;
}

// rows x k floats into MXFP4 along each row (blocks of 32, the last may be partial).
inline void quantize_mxfp4_rows(const float* x, index_t rows, index_t k, std::uint8_t* packed,
                                e8m0* scale) {
  const index_t packed_cols = ops::mxfp4_packed_cols(k);
  const index_t scale_cols = ops::mxfp4_scale_cols(k);
  for (index_t i = 0; i < rows; ++i)
    for (index_t blk = 0; blk < scale_cols; ++blk) {
      const index_t begin = blk * mx_block;
      const int n = static_cast<int>(std::min<index_t>(mx_block, k - begin));
      quantize_mx_block(x + i * k + begin, n, packed + i * packed_cols + begin / 2,
                        scale + i * scale_cols + blk);
    }
}

// `count` floats into FP8 e4m3 with one scale: amax / 448 (1 when all are zero); returns it.
inline float quantize_fp8_matrix(const float* m, index_t count, fp8_e4m3* q) {
  float amax = 0.0f;
  for (index_t j = 0; j < count; ++j) amax = std::max(amax, std::fabs(m[j]));
  const float scale = amax > 0.0f ? amax / fp8_max<Fp8Kind::e4m3fn> : 1.0f;
  for (index_t j = 0; j < count; ++j) q[j] = to_fp8<Fp8Kind::e4m3fn>(m[j] / scale);
  return scale;
}

// Per-head weights [h, n, k] from their values x (h * n * k floats, head-major): FP8 with one
// scale per head, or MXFP4 along k.
inline ops::Fp8HeadWeight fp8_heads(Buffers& b, const float* x, index_t h, index_t n, index_t k) {
  ops::Fp8HeadWeight w{alloc<fp8_e4m3>(b, h, n, k), alloc<float>(b, h)};
  for (index_t i = 0; i < h; ++i)
    w.scale(i) = quantize_fp8_matrix(x + i * n * k, n * k, w.w.data + i * n * k);
  return w;
}
inline ops::Mxfp4HeadWeight mxfp4_heads(Buffers& b, const float* x, index_t h, index_t n,
                                        index_t k) {
  ops::Mxfp4HeadWeight w{alloc<std::uint8_t>(b, h, n, ops::mxfp4_packed_cols(k)),
                         alloc<e8m0>(b, h, n, ops::mxfp4_scale_cols(k)), k};
  quantize_mxfp4_rows(x, h * n, k, w.packed.data, w.scale.data);
  return w;
}

using policy::WeightFormat;

// A linear weight as a stack of one (the form the stacking and cutting code works on), and back.
inline ExpertWeights as_stack(const LinearWeight& w) {
  ExpertWeights s;
  s.format = w.format;
  const auto one = [](auto v) { return make_view(v.data, index_t{1}, v.size(0), v.size(1)); };
  switch (w.format) {
    case WeightFormat::bf16:
      s.bf16.w = one(w.bf16.w);
      break;
    case WeightFormat::mxfp4:
      s.mxfp4 = {one(w.mxfp4.packed), one(w.mxfp4.scale), w.mxfp4.k};
      break;
    case WeightFormat::fp8_block:
      s.fp8 = {one(w.fp8.q), one(w.fp8.scale), w.fp8.block_n};
      break;
  }
  return s;
}

inline LinearWeight as_linear(const ExpertWeights& s) {
  LinearWeight w;
  w.format = s.format;
  switch (s.format) {
    case WeightFormat::bf16:
      w.bf16.w = s.bf16.w[0];
      break;
    case WeightFormat::mxfp4:
      w.mxfp4 = {s.mxfp4.packed[0], s.mxfp4.scale[0], s.mxfp4.k};
      break;
    case WeightFormat::fp8_block:
      w.fp8 = {s.fp8.q[0], s.fp8.scale[0], s.fp8.block_n};
      break;
  }
  return w;
}

// Host memory that `buffers` owns, as a Memory of model/decode_loop.hpp (zeroed alloc, put).
struct BufferMemory {
  Buffers& buffers;
  template <class T>
  T* alloc(std::size_t n) {
    return detail::alloc<T>(buffers, static_cast<index_t>(n)).data;
  }
  template <class T>
  void put(T* dst, const std::vector<T>& src) {
    std::copy(src.begin(), src.end(), dst);
  }
};

// An empty (zeroed) GQA cache of `blocks` blocks of kv_heads heads in format f, from `mem` (a
// Memory: `template <class T> T* alloc(std::size_t)`, zeroed, and `put`); an fp8_tensor cache's
// key and value scales are `tensor_scales` (1: the scale an engine's FP8 cache uses where the
// checkpoint calibrates none).
template <class Memory>
ops::AnyKvCache empty_kv_cache(Memory& mem, ops::KvCacheFormat f, index_t blocks, index_t bs,
                               index_t kv_heads, index_t head_dim,
                               std::pair<float, float> tensor_scales = {1.0f, 1.0f}) {
  const auto rows = [&]<class T>() {
    return make_view(
        mem.template alloc<T>(static_cast<std::size_t>(blocks * bs * kv_heads * head_dim)), blocks,
        bs, kv_heads, head_dim);
  };
  const auto scales = [&] {
    return make_view(mem.template alloc<float>(static_cast<std::size_t>(blocks * bs * kv_heads)),
                     blocks, bs, kv_heads);
  };
  const auto tensor_scale = [&](float value) {
    float* p = mem.template alloc<float>(1);
    mem.put(p, std::vector<float>{value});
    return p;
  };
  using ops::KvCacheFormat;
  switch (f) {
    case KvCacheFormat::fp8_row:
      return ops::KvCacheFp8{rows.template operator()<fp8_e4m3>(),
                             rows.template operator()<fp8_e4m3>(), scales(), scales()};
    case KvCacheFormat::fp8_tensor:
      return ops::per_tensor_fp8_cache(
          rows.template operator()<fp8_e4m3>(), rows.template operator()<fp8_e4m3>(),
          tensor_scale(tensor_scales.first), tensor_scale(tensor_scales.second));
    case KvCacheFormat::bf16:
      return ops::bf16_cache(rows.template operator()<bf16>(), rows.template operator()<bf16>());
  }
  throw std::invalid_argument("unknown KV cache format");
}

}  // namespace atom::pipeline::detail
