#include "atom/pipeline/storage.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "weight_memory.hpp"

namespace atom::pipeline {

namespace {

using detail::alloc;
using detail::Buffers;
using detail::rope_table;

struct Random {
  std::mt19937_64 rng;
  std::normal_distribution<float> normal{0.0f, 1.0f};
  float operator()(float mean, float stddev) { return mean + stddev * normal(rng); }
};

template <int R>
void fill_bf16(View<bf16, R> v, Random& r, float mean, float stddev) {
  bf16* p = v.data;
  for (index_t i = 0; i < v.numel(); ++i) p[i] = to_bf16(r(mean, stddev));
}

// n floats drawn with stddev 1/sqrt(K) (activations keep unit scale through a GEMM).
std::vector<float> draw(Random& r, index_t n, index_t k) {
  std::vector<float> x(static_cast<std::size_t>(n));
  const float stddev = 1.0f / std::sqrt(static_cast<float>(k));
  for (auto& v : x) v = r(0.0f, stddev);
  return x;
}

// Rows of K drawn values, quantized into MXFP4 blocks along each row.
void quantize_rows(Random& r, index_t rows, index_t k, std::uint8_t* packed, e8m0* scale) {
  detail::quantize_mxfp4_rows(draw(r, rows * k, k).data(), rows, k, packed, scale);
}

ops::Mxfp4Weight mxfp4_weight(Buffers& b, Random& r, index_t n, index_t k) {
  ops::Mxfp4Weight w{alloc<std::uint8_t>(b, n, ops::mxfp4_packed_cols(k)),
                     alloc<e8m0>(b, n, ops::mxfp4_scale_cols(k)), k};
  quantize_rows(r, n, k, w.packed.data, w.scale.data);
  return w;
}

ops::Mxfp4Experts mxfp4_experts(Buffers& b, Random& r, index_t e, index_t n, index_t k) {
  ops::Mxfp4Experts w{alloc<std::uint8_t>(b, e, n, ops::mxfp4_packed_cols(k)),
                      alloc<e8m0>(b, e, n, ops::mxfp4_scale_cols(k)), k};
  quantize_rows(r, e * n, k, w.packed.data, w.scale.data);
  return w;
}

// Per-head weights of drawn values: MXFP4, or FP8 with one scale per head (amax / 448).
ops::Mxfp4HeadWeight mxfp4_heads(Buffers& b, Random& r, index_t h, index_t n, index_t k) {
  return detail::mxfp4_heads(b, draw(r, h * n * k, k).data(), h, n, k);
}
ops::Fp8HeadWeight fp8_heads(Buffers& b, Random& r, index_t h, index_t n, index_t k) {
  return detail::fp8_heads(b, draw(r, h * n * k, k).data(), h, n, k);
}

// Rows of K values drawn as quantize_rows draws them, as bf16 or as FP8 e4m3 with one scale per
// block of 128 x 128 (scale = the block's amax / 448, 1 for an all-zero block).
void bf16_rows(Random& r, index_t rows, index_t k, bf16* out) {
  for (const float x : draw(r, rows * k, k)) *out++ = to_bf16(x);
}

void fp8_block_rows(Random& r, index_t rows, index_t k, fp8_e4m3* q, float* scale) {
  constexpr index_t block = ops::fp8_weight_block_k;
  const std::vector<float> m = draw(r, rows * k, k);
  const index_t scale_cols = ops::ceil_div(k, block);
  for (index_t bn = 0; bn < ops::ceil_div(rows, block); ++bn)
    for (index_t bk = 0; bk < scale_cols; ++bk) {
      const index_t n_end = std::min(rows, (bn + 1) * block);
      const index_t k_end = std::min(k, (bk + 1) * block);
      float amax = 0.0f;
      for (index_t n = bn * block; n < n_end; ++n)
        for (index_t c = bk * block; c < k_end; ++c)
          amax = std::max(amax, std::fabs(m[static_cast<std::size_t>(n * k + c)]));
      const float s = amax > 0.0f ? amax / fp8_max<Fp8Kind::e4m3fn> : 1.0f;
      scale[bn * scale_cols + bk] = s;
      for (index_t n = bn * block; n < n_end; ++n)
        for (index_t c = bk * block; c < k_end; ++c)
          q[n * k + c] = to_fp8<Fp8Kind::e4m3fn>(m[static_cast<std::size_t>(n * k + c)] / s);
    }
}

// A random linear weight [n, k] or experts [e, n, k] in format f.
LinearWeight linear_weight(Buffers& b, Random& r, policy::WeightFormat f, index_t n, index_t k) {
  LinearWeight w;
  w.format = f;
  switch (f) {
    case policy::WeightFormat::mxfp4:
      w.mxfp4 = mxfp4_weight(b, r, n, k);
      break;
    case policy::WeightFormat::bf16:
      w.bf16.w = alloc<bf16>(b, n, k);
      bf16_rows(r, n, k, w.bf16.w.data);
      break;
    case policy::WeightFormat::fp8_block:
      w.fp8 = {alloc<fp8_e4m3>(b, n, k),
               alloc<float>(b, ops::ceil_div(n, 128), ops::ceil_div(k, ops::fp8_weight_block_k)),
               128};
      fp8_block_rows(r, n, k, w.fp8.q.data, w.fp8.scale.data);
      break;
  }
  return w;
}

ExpertWeights expert_weights(Buffers& b, Random& r, policy::WeightFormat f, index_t e, index_t n,
                             index_t k) {
  ExpertWeights w;
  w.format = f;
  switch (f) {
    case policy::WeightFormat::mxfp4:
      w.mxfp4 = mxfp4_experts(b, r, e, n, k);
      break;
    case policy::WeightFormat::bf16:
      w.bf16.w = alloc<bf16>(b, e, n, k);
      bf16_rows(r, e * n, k, w.bf16.w.data);
      break;
    case policy::WeightFormat::fp8_block: {
      const index_t sn = ops::ceil_div(n, 128);
      const index_t sk = ops::ceil_div(k, ops::fp8_weight_block_k);
      w.fp8 = {alloc<fp8_e4m3>(b, e, n, k), alloc<float>(b, e, sn, sk), 128};
      for (index_t i = 0; i < e; ++i)
        fp8_block_rows(r, n, k, w.fp8.q.data + i * n * k, w.fp8.scale.data + i * sn * sk);
      break;
    }
  }
  return w;
}

View1<bf16> norm_weight(Buffers& b, Random& r, index_t n) {
  auto w = alloc<bf16>(b, n);
  fill_bf16(w, r, 1.0f, 0.1f);
  return w;
}

}  // namespace

LayerWeights::LayerWeights(LayerWeightParts parts)
    : buffers_(std::move(parts.buffers)),
      mla_(parts.mla),
      qwen3_(parts.qwen3),
      moe_(parts.moe),
      dense_(parts.dense) {}

LayerWeights::LayerWeights(const ModelConfig& m, std::uint64_t seed, policy::WeightFormat f) {
  Random r{std::mt19937_64(seed)};
  Buffers& b = buffers_;
  if (m.attention == AttentionKind::mla) {
    const index_t qk_head = m.qk_nope_dim + m.qk_rope_dim;
    mla_.input_norm = norm_weight(b, r, m.hidden);
    mla_.qkv_a = linear_weight(b, r, f, m.q_lora_rank + m.kv_lora_rank + m.qk_rope_dim, m.hidden);
    mla_.q_a_norm = norm_weight(b, r, m.q_lora_rank);
    mla_.kv_a_norm = norm_weight(b, r, m.kv_lora_rank);
    mla_.q_b = linear_weight(b, r, f, m.num_heads * qk_head, m.q_lora_rank);
    mla_.w_uk_fp8 = fp8_heads(b, r, m.num_heads, m.kv_lora_rank, m.qk_nope_dim);
    mla_.w_uv_fp8 = fp8_heads(b, r, m.num_heads, m.v_head_dim, m.kv_lora_rank);
    mla_.w_uk_mxfp4 = mxfp4_heads(b, r, m.num_heads, m.kv_lora_rank, m.qk_nope_dim);
    mla_.w_uv_mxfp4 = mxfp4_heads(b, r, m.num_heads, m.v_head_dim, m.kv_lora_rank);
    mla_.o_proj = linear_weight(b, r, f, m.hidden, m.num_heads * m.v_head_dim);
    mla_.cos_sin = rope_table(b, m, m.qk_rope_dim);
  } else {
    qwen3_.input_norm = norm_weight(b, r, m.hidden);
    qwen3_.qkv = linear_weight(b, r, f, (m.num_heads + 2 * m.num_kv_heads) * m.head_dim, m.hidden);
    qwen3_.q_norm = norm_weight(b, r, m.head_dim);
    qwen3_.k_norm = norm_weight(b, r, m.head_dim);
    qwen3_.o_proj = linear_weight(b, r, f, m.hidden, m.num_heads * m.head_dim);
    qwen3_.cos_sin = rope_table(b, m, m.head_dim);
  }
  moe_.post_norm = norm_weight(b, r, m.hidden);
  auto router = alloc<bf16>(b, m.num_experts, m.hidden);
  fill_bf16(router, r, 0.0f, 1.0f / std::sqrt(static_cast<float>(m.hidden)));
  moe_.router = router;
  auto bias = alloc<float>(b, m.num_experts);
  for (index_t e = 0; e < m.num_experts; ++e) bias(e) = r(0.0f, 0.1f);
  moe_.router_bias = bias;
  moe_.gate_up = expert_weights(b, r, f, m.num_experts, 2 * m.moe_intermediate, m.hidden);
  moe_.down = expert_weights(b, r, f, m.num_experts, m.hidden, m.moe_intermediate);
  if (m.num_shared_experts > 0) {
    const index_t shared = m.num_shared_experts * m.moe_intermediate;
    moe_.shared_gate_up = linear_weight(b, r, f, 2 * shared, m.hidden);
    moe_.shared_down = linear_weight(b, r, f, m.hidden, shared);
  } else {
    moe_.shared_gate_up.format = moe_.shared_down.format = f;
  }
  if (m.intermediate > 0) {
    dense_.post_norm = norm_weight(b, r, m.hidden);
    dense_.gate_up = linear_weight(b, r, f, 2 * m.intermediate, m.hidden);
    dense_.down = linear_weight(b, r, f, m.hidden, m.intermediate);
  }
}

DecodeState::DecodeState(const ModelConfig& m, std::vector<std::int32_t> context_lens,
                         std::uint64_t seed, index_t query_tokens)
    : context_lens_(std::move(context_lens)) {
  Random r{std::mt19937_64(seed)};
  if (query_tokens < 1)
    throw std::invalid_argument("query tokens per sequence must be at least 1, got " +
                                std::to_string(query_tokens));
  const auto sequences = static_cast<index_t>(context_lens_.size());
  const index_t t = sequences * query_tokens;
  const index_t bs = m.block_size;
  for (const auto len : context_lens_) {
    if (len < query_tokens || len > m.max_position)
      throw std::invalid_argument("context length " + std::to_string(len) + " is outside " +
                                  std::to_string(query_tokens) + ".." +
                                  std::to_string(m.max_position) + " for model " + m.name);
    max_blocks_ = std::max<index_t>(max_blocks_, (len + bs - 1) / bs);
  }
  // Every sequence owns distinct blocks, handed out in a shuffled order so that tables are not
  // contiguous.
  index_t total_blocks = 0;
  for (const auto len : context_lens_) total_blocks += (len + bs - 1) / bs;
  std::vector<std::int32_t> pool(static_cast<std::size_t>(total_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), r.rng);
  block_table_.assign(static_cast<std::size_t>(sequences * std::max<index_t>(max_blocks_, 1)), 0);
  std::size_t next = 0;
  std::vector<std::int64_t> prior_slots;
  query_start_.push_back(0);
  for (index_t i = 0; i < sequences; ++i) {
    const index_t len = context_lens_[static_cast<std::size_t>(i)];
    for (index_t j = 0; j < (len + bs - 1) / bs; ++j)
      block_table_[static_cast<std::size_t>(i * max_blocks_ + j)] = pool[next++];
    auto slot_of = [&](index_t pos) {
      return block_table_[static_cast<std::size_t>(i * max_blocks_ + pos / bs)] * bs + pos % bs;
    };
    for (index_t pos = len - query_tokens; pos < len; ++pos) {
      positions_.push_back(pos);
      slots_.push_back(slot_of(pos));
    }
    query_start_.push_back(static_cast<std::int32_t>((i + 1) * query_tokens));
    for (index_t pos = 0; pos < len - query_tokens; ++pos) prior_slots.push_back(slot_of(pos));
  }

  Buffers& b = buffers_;
  x_ = alloc<bf16>(b, t, m.hidden);
  fill_bf16(x_, r, 0.0f, 1.0f);
  residual_ = alloc<bf16>(b, t, m.hidden);
  fill_bf16(residual_, r, 0.0f, 1.0f);
  out_ = alloc<bf16>(b, t, m.hidden);
  intermediate_ = alloc<bf16>(b, t, m.hidden);
  const bf16 poison = to_bf16(std::nanf(""));
  std::fill_n(out_.data, out_.numel(), poison);
  std::fill_n(intermediate_.data, intermediate_.numel(), poison);

  // The caches hold random earlier context, written by the cache ops themselves.
  const auto prior = static_cast<index_t>(prior_slots.size());
  const auto prior_view = make_view(static_cast<const std::int64_t*>(prior_slots.data()), prior);
  const ops::Host host;
  if (m.attention == AttentionKind::mla) {
    mla_cache_ = alloc<bf16>(b, total_blocks, bs, m.kv_lora_rank + m.qk_rope_dim);
    fill_bf16(mla_cache_, r, 0.0f, 1.0f);
    auto kv_c = alloc<bf16>(b, prior, m.kv_lora_rank);
    auto k_pe = alloc<bf16>(b, prior, m.qk_rope_dim);
    fill_bf16(kv_c, r, 0.0f, 1.0f);
    fill_bf16(k_pe, r, 0.0f, 1.0f);
    ops::mla_cache_write(host, kv_c, k_pe, prior_view, mla_cache_);
  } else {
    const index_t kvh = m.num_kv_heads;
    kv_cache_ = {alloc<fp8_e4m3>(b, total_blocks, bs, kvh, m.head_dim),
                 alloc<fp8_e4m3>(b, total_blocks, bs, kvh, m.head_dim),
                 alloc<float>(b, total_blocks, bs, kvh), alloc<float>(b, total_blocks, bs, kvh)};
    auto k = alloc<bf16>(b, prior, kvh, m.head_dim);
    auto v = alloc<bf16>(b, prior, kvh, m.head_dim);
    fill_bf16(k, r, 0.0f, 1.0f);
    fill_bf16(v, r, 0.0f, 1.0f);
    ops::kv_cache_write_fp8(host, k, v, prior_view, kv_cache_);
  }
}

DecodeState::DecodeState(const ModelConfig& m, std::vector<std::int32_t> context_lens,
                         std::uint64_t seed, TpShape tp, Part kv_heads, index_t query_tokens)
    : DecodeState(m, std::move(context_lens), seed, query_tokens) {
  const bool power_of_two = tp.size > 0 && (tp.size & (tp.size - 1)) == 0;
  for (index_t i = 0; i < x_.numel(); ++i) {
    const float v = to_float(x_.data[i]);
    x_.data[i] = to_bf16(power_of_two ? v / static_cast<float>(tp.size) : tp.rank == 0 ? v : 0.0f);
  }
  if (m.attention != AttentionKind::gqa || kv_heads.count == m.num_kv_heads) return;
  const ops::KvCacheFp8 full = kv_cache_;
  const index_t blocks = full.num_blocks();
  const index_t bs = full.block_size();
  const index_t d = m.head_dim;
  const index_t h = kv_heads.count;
  kv_cache_ = {alloc<fp8_e4m3>(buffers_, blocks, bs, h, d),
               alloc<fp8_e4m3>(buffers_, blocks, bs, h, d), alloc<float>(buffers_, blocks, bs, h),
               alloc<float>(buffers_, blocks, bs, h)};
  for (index_t blk = 0; blk < blocks; ++blk)
    for (index_t s = 0; s < bs; ++s)
      for (index_t i = 0; i < h; ++i) {
        const index_t src = kv_heads.begin + i;
        std::copy_n(&full.key(blk, s, src, 0), d, &kv_cache_.key(blk, s, i, 0));
        std::copy_n(&full.value(blk, s, src, 0), d, &kv_cache_.value(blk, s, i, 0));
        kv_cache_.key_scale(blk, s, i) = full.key_scale(blk, s, src);
        kv_cache_.value_scale(blk, s, i) = full.value_scale(blk, s, src);
      }
}

DecodeBatch DecodeState::batch() const {
  const auto s = static_cast<index_t>(context_lens_.size());
  const index_t t = tokens();
  return {make_view(query_start_.data(), s + 1), make_view(context_lens_.data(), s),
          make_view(block_table_.data(), s, max_blocks_), make_view(positions_.data(), t),
          make_view(slots_.data(), t)};
}

}  // namespace atom::pipeline
