#include "atom/pipeline/storage.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>

#include "weight_memory.hpp"

namespace atom::pipeline {

namespace {

using detail::alloc;
using detail::Buffers;
using detail::rope_table;

// Random weights are drawn in parallel by a counter-based generator: value i of a layer's j-th
// tensor is a function of the seed, j and i alone, so a layer's bits do not depend on the number
// of threads, and no tensor is ever held whole as floats. The values before quantization are the
// same in every weight format.
constexpr std::uint64_t golden = 0x9e3779b97f4a7c15ull;

constexpr std::uint64_t mix(std::uint64_t z) {  // splitmix64's finalizer
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// One tensor's values: approximately standard normal, the sum of four uniform 16-bit fractions of
// one hash, centred and scaled to unit variance (Irwin-Hall of order 4, |z| < 3.47).
struct Stream {
  std::uint64_t key;
  float normal(std::uint64_t i) const {
    const std::uint64_t h = mix(key + (i + 1) * golden);
    const float sum = static_cast<float>(h & 0xffff) + static_cast<float>((h >> 16) & 0xffff) +
                      static_cast<float>((h >> 32) & 0xffff) + static_cast<float>(h >> 48);
    constexpr float sqrt3 = 1.7320508f;
    return ((sum + 2.0f) * (1.0f / 65536.0f) - 2.0f) * sqrt3;
  }
};

class Draws {
 public:
  explicit Draws(std::uint64_t seed) : seed_(mix(seed + golden)) {}
  Stream next() { return Stream{mix(seed_ ^ mix(++count_ * golden))}; }

 private:
  std::uint64_t seed_;
  std::uint64_t count_ = 0;
};

// Runs task(0..count-1) on the machine's threads, each task once; rethrows the first failure.
template <class Task>
void parallel_tasks(index_t count, const Task& task) {
  const auto threads =
      static_cast<index_t>(std::clamp<unsigned>(std::thread::hardware_concurrency(), 1u, 64u));
  std::atomic<index_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_lock;
  const auto work = [&] {
    for (index_t i = next++; i < count; i = next++) try {
        task(i);
      } catch (...) {
        const std::lock_guard lock(failure_lock);
        if (!failure) failure = std::current_exception();
      }
  };
  std::vector<std::jthread> pool;
  for (index_t t = 1; t < std::min(threads, count); ++t) pool.emplace_back(work);
  work();
  pool.clear();  // joins
  if (failure) std::rethrow_exception(failure);
}

// `groups` x `per` rows of k values (stddev 1/sqrt(k), so that activations keep unit scale
// through a GEMM), drawn in chunks of whole multiples of `granule` rows that never cross a group,
// each into a float buffer of its own and handed to sink(values, first row overall, row count).
template <class Sink>
void draw_rows(Stream s, index_t groups, index_t per, index_t k, index_t granule,
               const Sink& sink) {
  const index_t target = std::max<index_t>(1, (index_t{1} << 20) / std::max<index_t>(k, 1));
  const index_t chunk = ops::ceil_div(target, granule) * granule;
  const index_t chunks = ops::ceil_div(per, chunk);
  const float stddev = 1.0f / std::sqrt(static_cast<float>(k));
  parallel_tasks(groups * chunks, [&](index_t c) {
    const index_t in_group = (c % chunks) * chunk;
    const index_t first = (c / chunks) * per + in_group;
    const index_t n = std::min(chunk, per - in_group);
    std::vector<float> x(static_cast<std::size_t>(n * k));
    const auto base = static_cast<std::uint64_t>(first * k);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = stddev * s.normal(base + i);
    sink(x.data(), first, n);
  });
}

// A contiguous view's values, drawn in parallel chunks: value i is mean + stddev * s.normal(i),
// whatever the thread count.
template <int R>
void fill_bf16(View<bf16, R> v, Stream s, float mean, float stddev) {
  constexpr index_t chunk = index_t{1} << 20;
  bf16* const p = v.data;
  const index_t n = v.numel();
  parallel_tasks(ops::ceil_div(n, chunk), [&](index_t c) {
    const index_t end = std::min(n, (c + 1) * chunk);
    for (index_t i = c * chunk; i < end; ++i)
      p[i] = to_bf16(mean + stddev * s.normal(static_cast<std::uint64_t>(i)));
  });
}

// All h * n * k values at once (the per-head quantizers need a head whole): a few MB.
std::vector<float> draw_all(Stream s, index_t h, index_t n, index_t k) {
  std::vector<float> x(static_cast<std::size_t>(h * n * k));
  draw_rows(s, 1, h * n, k, 1, [&](const float* v, index_t first, index_t rows) {
    std::copy_n(v, rows * k, x.data() + first * k);
  });
  return x;
}

// Per-head weights: MXFP4, or FP8 with one scale per head (amax / 448).
ops::Mxfp4HeadWeight mxfp4_heads(Buffers& b, Stream s, index_t h, index_t n, index_t k) {
  return detail::mxfp4_heads(b, draw_all(s, h, n, k).data(), h, n, k);
}
ops::Fp8HeadWeight fp8_heads(Buffers& b, Stream s, index_t h, index_t n, index_t k) {
  return detail::fp8_heads(b, draw_all(s, h, n, k).data(), h, n, k);
}

// rows x k floats into FP8 e4m3 with one scale per block of 128 rows x 128 columns, the block's
// amax / 448 (1 for an all-zero block); scale holds ceil(rows / 128) x ceil(k / 128) of them.
void fp8_block_rows(const float* x, index_t rows, index_t k, fp8_e4m3* q, float* scale) {
  constexpr index_t block = ops::fp8_weight_block_k;
  const index_t scale_cols = ops::ceil_div(k, block);
  for (index_t bn = 0; bn < ops::ceil_div(rows, index_t{128}); ++bn)
    for (index_t bk = 0; bk < scale_cols; ++bk) {
      const index_t r_end = std::min(rows, (bn + 1) * 128);
      const index_t k_end = std::min(k, (bk + 1) * block);
      float amax = 0.0f;
      for (index_t r = bn * 128; r < r_end; ++r)
        for (index_t c = bk * block; c < k_end; ++c) amax = std::max(amax, std::fabs(x[r * k + c]));
      const float sc = amax > 0.0f ? amax / fp8_max<Fp8Kind::e4m3fn> : 1.0f;
      scale[bn * scale_cols + bk] = sc;
      for (index_t r = bn * 128; r < r_end; ++r)
        for (index_t c = bk * block; c < k_end; ++c)
          q[r * k + c] = to_fp8<Fp8Kind::e4m3fn>(x[r * k + c] / sc);
    }
}

// A linear weight [n, k] (groups = 1) or experts [groups, n, k] of drawn values in format f.
template <class W>
W quantized(Buffers& b, Stream s, policy::WeightFormat f, index_t groups, index_t n, index_t k) {
  W w;
  w.format = f;
  // [rows, cols], or per expert for experts.
  const auto view = [&]<class T>(T, index_t rows, index_t cols) {
    if constexpr (std::is_same_v<W, LinearWeight>)
      return alloc<T>(b, rows, cols);
    else
      return alloc<T>(b, groups, rows, cols);
  };
  switch (f) {
    case policy::WeightFormat::mxfp4: {
      const index_t pc = ops::mxfp4_packed_cols(k);
      const index_t sc = ops::mxfp4_scale_cols(k);
      w.mxfp4 = {view(std::uint8_t{}, n, pc), view(e8m0{}, n, sc), k};
      draw_rows(s, groups, n, k, 1, [&](const float* x, index_t first, index_t rows) {
        detail::quantize_mxfp4_rows(x, rows, k, w.mxfp4.packed.data + first * pc,
                                    w.mxfp4.scale.data + first * sc);
      });
      break;
    }
    case policy::WeightFormat::bf16:
      w.bf16.w = view(bf16{}, n, k);
      draw_rows(s, groups, n, k, 1, [&](const float* x, index_t first, index_t rows) {
        std::transform(x, x + rows * k, w.bf16.w.data + first * k, to_bf16);
      });
      break;
    case policy::WeightFormat::fp8_block: {
      // Block scales of each expert (fp8_block_rows); chunks of whole 128-row blocks.
      const index_t sn = ops::ceil_div(n, index_t{128});
      const index_t sk = ops::ceil_div(k, ops::fp8_weight_block_k);
      w.fp8 = {view(fp8_e4m3{}, n, k), view(float{}, sn, sk), 128};
      draw_rows(s, groups, n, k, 128, [&](const float* x, index_t first, index_t rows) {
        const index_t scale_row = (first / n) * sn + (first % n) / 128;
        fp8_block_rows(x, rows, k, w.fp8.q.data + first * k, w.fp8.scale.data + scale_row * sk);
      });
      break;
    }
  }
  return w;
}

LinearWeight linear_weight(Buffers& b, Draws& d, policy::WeightFormat f, index_t n, index_t k) {
  return quantized<LinearWeight>(b, d.next(), f, 1, n, k);
}
ExpertWeights expert_weights(Buffers& b, Draws& d, policy::WeightFormat f, index_t e, index_t n,
                             index_t k) {
  return quantized<ExpertWeights>(b, d.next(), f, e, n, k);
}
View1<bf16> norm_weight(Buffers& b, Draws& d, index_t n) {
  auto w = alloc<bf16>(b, n);
  fill_bf16(w, d.next(), 1.0f, 0.1f);
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
  Draws r(seed);
  Buffers& b = buffers_;
  if (m.attention == AttentionKind::mla) {
    const index_t qk_head = m.qk_nope_dim + m.qk_rope_dim;
    mla_.input_norm = norm_weight(b, r, m.hidden);
    mla_.qkv_a = linear_weight(b, r, f, m.q_lora_rank + m.kv_lora_rank + m.qk_rope_dim, m.hidden);
    mla_.q_a_norm = norm_weight(b, r, m.q_lora_rank);
    mla_.kv_a_norm = norm_weight(b, r, m.kv_lora_rank);
    mla_.q_b = linear_weight(b, r, f, m.num_heads * qk_head, m.q_lora_rank);
    mla_.w_uk_fp8 = fp8_heads(b, r.next(), m.num_heads, m.kv_lora_rank, m.qk_nope_dim);
    mla_.w_uv_fp8 = fp8_heads(b, r.next(), m.num_heads, m.v_head_dim, m.kv_lora_rank);
    mla_.w_uk_mxfp4 = mxfp4_heads(b, r.next(), m.num_heads, m.kv_lora_rank, m.qk_nope_dim);
    mla_.w_uv_mxfp4 = mxfp4_heads(b, r.next(), m.num_heads, m.v_head_dim, m.kv_lora_rank);
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
  fill_bf16(make_view(router.data, router.numel()), r.next(), 0.0f,
            1.0f / std::sqrt(static_cast<float>(m.hidden)));
  moe_.router = router;
  auto bias = alloc<float>(b, m.num_experts);
  const Stream bias_values = r.next();
  for (index_t e = 0; e < m.num_experts; ++e)
    bias(e) = 0.1f * bias_values.normal(static_cast<std::uint64_t>(e));
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
                         std::uint64_t seed, index_t query_tokens, ops::KvCacheFormat kv_format)
    : context_lens_(std::move(context_lens)) {
  // Drawn like the weights, in parallel, from other streams than the weights of the same seed.
  Draws r(~seed);
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
  std::shuffle(pool.begin(), pool.end(), std::mt19937_64(seed));
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
  fill_bf16(x_, r.next(), 0.0f, 1.0f);
  residual_ = alloc<bf16>(b, t, m.hidden);
  fill_bf16(residual_, r.next(), 0.0f, 1.0f);
  out_ = alloc<bf16>(b, t, m.hidden);
  intermediate_ = alloc<bf16>(b, t, m.hidden);
  const bf16 poison = to_bf16(std::nanf(""));
  std::fill_n(out_.data, out_.numel(), poison);
  std::fill_n(intermediate_.data, intermediate_.numel(), poison);

  // The caches hold random earlier context, written by the cache ops themselves, on chunks of
  // the earlier rows in parallel (the slots are distinct, so the chunks write disjoint rows).
  const auto prior = static_cast<index_t>(prior_slots.size());
  const auto prior_rows = [&](const auto& write) {
    constexpr index_t chunk = index_t{1} << 14;
    parallel_tasks(ops::ceil_div(prior, chunk), [&](index_t c) {
      const index_t first = c * chunk;
      const index_t n = std::min(chunk, prior - first);
      write(first, n, make_view(static_cast<const std::int64_t*>(prior_slots.data()) + first, n));
    });
  };
  const ops::Host host;
  if (m.attention == AttentionKind::mla) {
    mla_cache_ = alloc<bf16>(b, total_blocks, bs, m.kv_lora_rank + m.qk_rope_dim);
    fill_bf16(mla_cache_, r.next(), 0.0f, 1.0f);
    auto kv_c = alloc<bf16>(b, prior, m.kv_lora_rank);
    auto k_pe = alloc<bf16>(b, prior, m.qk_rope_dim);
    fill_bf16(kv_c, r.next(), 0.0f, 1.0f);
    fill_bf16(k_pe, r.next(), 0.0f, 1.0f);
    prior_rows([&](index_t first, index_t n, View1<const std::int64_t> slots) {
      ops::mla_cache_write(host, make_view(kv_c.data + first * kv_c.size(1), n, kv_c.size(1)),
                           make_view(k_pe.data + first * k_pe.size(1), n, k_pe.size(1)), slots,
                           mla_cache_);
    });
  } else {
    const index_t kvh = m.num_kv_heads;
    detail::BufferMemory mem{b};
    kv_cache_ = detail::empty_kv_cache(mem, kv_format, total_blocks, bs, kvh, m.head_dim,
                                       {state_key_scale, state_value_scale});
    auto k = alloc<bf16>(b, prior, kvh, m.head_dim);
    auto v = alloc<bf16>(b, prior, kvh, m.head_dim);
    fill_bf16(k, r.next(), 0.0f, 1.0f);
    fill_bf16(v, r.next(), 0.0f, 1.0f);
    const index_t row = kvh * m.head_dim;
    prior_rows([&](index_t first, index_t n, View1<const std::int64_t> slots) {
      const auto rows = [&](View3<bf16> x) {
        return make_view(static_cast<const bf16*>(x.data) + first * row, n, kvh, m.head_dim);
      };
      std::visit([&](const auto& c) { ops::kv_cache_write(host, rows(k), rows(v), slots, c); },
                 kv_cache_);
    });
  }
}

DecodeState::DecodeState(const ModelConfig& m, std::vector<std::int32_t> context_lens,
                         std::uint64_t seed, TpShape tp, Part kv_heads, index_t query_tokens,
                         ops::KvCacheFormat kv_format)
    : DecodeState(m, std::move(context_lens), seed, query_tokens, kv_format) {
  const bool power_of_two = tp.size > 0 && (tp.size & (tp.size - 1)) == 0;
  for (index_t i = 0; i < x_.numel(); ++i) {
    const float v = to_float(x_.data[i]);
    x_.data[i] = to_bf16(power_of_two ? v / static_cast<float>(tp.size) : tp.rank == 0 ? v : 0.0f);
  }
  if (m.attention != AttentionKind::gqa || kv_heads.count == m.num_kv_heads) return;
  std::visit(
      [&](const auto& full) {
        const index_t blocks = full.num_blocks();
        const index_t bs = full.block_size();
        const index_t d = m.head_dim;
        const index_t h = kv_heads.count;
        const float* const key_scale = full.key_scale.data;
        const float* const value_scale = full.value_scale.data;
        const std::pair<float, float> scales =
            key_scale != nullptr ? std::pair{key_scale[0], value_scale[0]} : std::pair{1.0f, 1.0f};
        detail::BufferMemory mem{buffers_};
        kv_cache_ = detail::empty_kv_cache(mem, full.format, blocks, bs, h, d, scales);
        const auto& part = std::get<std::decay_t<decltype(full)>>(kv_cache_);
        for (index_t blk = 0; blk < blocks; ++blk)
          for (index_t s = 0; s < bs; ++s)
            for (index_t i = 0; i < h; ++i) {
              const index_t src = kv_heads.begin + i;
              std::copy_n(&full.key(blk, s, src, 0), d, &part.key(blk, s, i, 0));
              std::copy_n(&full.value(blk, s, src, 0), d, &part.value(blk, s, i, 0));
              if constexpr (std::decay_t<decltype(full)>::format == ops::KvCacheFormat::fp8_row) {
                part.key_scale(blk, s, i) = full.key_scale(blk, s, src);
                part.value_scale(blk, s, i) = full.value_scale(blk, s, src);
              }
            }
      },
      ops::AnyKvCache(kv_cache_));
}

DecodeBatch DecodeState::batch() const {
  const auto s = static_cast<index_t>(context_lens_.size());
  const index_t t = tokens();
  return {make_view(query_start_.data(), s + 1), make_view(context_lens_.data(), s),
          make_view(block_table_.data(), s, max_blocks_), make_view(positions_.data(), t),
          make_view(slots_.data(), t)};
}

}  // namespace atom::pipeline
