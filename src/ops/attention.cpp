#include "atom/ops/attention.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "atom/ops/formats.hpp"

namespace atom::ops {
namespace {

// The context of each token: rows [0, length) of its sequence, none for padding. The batch's
// contents are checked first (expect_batch_contents), so none is bad.
std::vector<TokenContext> token_contexts(std::string_view op, const DecodeBatch& b,
                                         index_t num_blocks, index_t block_size) {
  expect_batch_contents(op, b, num_blocks, block_size);
  std::vector<TokenContext> out;
  const index_t max_context = b.block_table.size(1) * block_size;
  for (index_t t = 0; t < b.tokens(); ++t) out.push_back(token_context(b, t, max_context));
  return out;
}

index_t longest(const std::vector<TokenContext>& contexts) {
  index_t n = 0;
  for (const auto& c : contexts) n = std::max(n, c.length);
  return n;
}

void expect_scale(std::string_view op, float softmax_scale) {
  expect(std::isfinite(softmax_scale), op,
         "argument 'softmax_scale' must be finite, got " + std::to_string(softmax_scale));
}

// Turns scores[0, n) into unnormalized weights exp(s - max) in place; returns their sum.
float softmax_weights(float* scores, index_t n) {
  float max = scores[0];
  for (index_t j = 1; j < n; ++j) max = scores[j] > max ? scores[j] : max;
  float sum = 0.0f;
  for (index_t j = 0; j < n; ++j) {
    scores[j] = std::exp(scores[j] - max);
    sum += scores[j];
  }
  return sum;
}

float dot(const float* a, const float* b, index_t n) {
  float s = 0.0f;
  for (index_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// out[0, dim) = bf16((sum_j weights[j] * rows[j * row_stride + i]) / sum).
void weighted_sum_bf16(const float* weights, float sum, const float* rows, index_t n,
                       index_t row_stride, index_t dim, float* acc, bf16* out) {
  for (index_t i = 0; i < dim; ++i) acc[i] = 0.0f;
  for (index_t j = 0; j < n; ++j) {
    const float* row = rows + j * row_stride;
    for (index_t i = 0; i < dim; ++i) acc[i] += weights[j] * row[i];
  }
  for (index_t i = 0; i < dim; ++i) out[i] = to_bf16(acc[i] / sum);
}

std::size_t sz(index_t n) {
  return static_cast<std::size_t>(n);
}

// A padded token's attention output.
void zero_token(View3<bf16> out, index_t t) {
  for (index_t h = 0; h < out.size(1); ++h)
    for (index_t i = 0; i < out.size(2); ++i) out(t, h, i) = bf16{};
}

}  // namespace

void expect_mla_decode_args(std::string_view op, View3<const bf16> q_latent, View3<const bf16> q_pe,
                            View3<const bf16> cache, const DecodeBatch& batch, float softmax_scale,
                            View3<bf16> out) {
  const index_t tokens = q_latent.size(0);
  const index_t heads = q_latent.size(1);
  const index_t kv_lora = q_latent.size(2);
  const index_t rope_dim = q_pe.size(2);
  expect_view(op, "q_latent", q_latent, {tokens, heads, kv_lora});
  expect_view(op, "q_pe", q_pe, {tokens, heads, rope_dim});
  expect_view(op, "cache", cache, {-1, -1, kv_lora + rope_dim});
  expect_view(op, "out", out, {tokens, heads, kv_lora});
  expect(cache.size(1) > 0, op, "argument 'cache' has block_size 0");
  expect_disjoint(op, "out", out, "q_latent", q_latent);
  expect_disjoint(op, "out", out, "q_pe", q_pe);
  expect_disjoint(op, "out", out, "cache", cache);
  expect_scale(op, softmax_scale);
  expect_batch_shape(op, batch, tokens);
}

template <KvCacheFormat F>
void expect_gqa_decode_args(std::string_view op, View3<const bf16> q, const ConstKvCache<F>& cache,
                            const DecodeBatch& batch, float softmax_scale, View3<bf16> out) {
  expect_kv_cache(op, "cache", cache, -1, -1);
  const index_t tokens = q.size(0);
  const index_t q_heads = q.size(1);
  const index_t kv_heads = cache.kv_heads();
  const index_t dim = cache.head_dim();
  expect_view(op, "q", q, {tokens, q_heads, dim});
  expect(q_heads % kv_heads == 0, op,
         "argument 'q' has " + std::to_string(q_heads) + " heads, not a multiple of the cache's " +
             std::to_string(kv_heads) + " kv heads");
  expect_view(op, "out", out, {tokens, q_heads, dim});
  expect_disjoint(op, "out", out, "q", q);
  expect_disjoint(op, "out", out, "cache.key", cache.key);
  expect_disjoint(op, "out", out, "cache.value", cache.value);
  expect_disjoint(op, "out", out, "cache.key_scale", cache.key_scale);
  expect_disjoint(op, "out", out, "cache.value_scale", cache.value_scale);
  expect_scale(op, softmax_scale);
  expect_batch_shape(op, batch, tokens);
}

void mla_decode(const Host&, View3<const bf16> q_latent, View3<const bf16> q_pe,
                View3<const bf16> cache, const DecodeBatch& batch, float softmax_scale,
                View3<bf16> out) {
  constexpr std::string_view op = "mla_decode";
  expect_mla_decode_args(op, q_latent, q_pe, cache, batch, softmax_scale, out);
  const index_t tokens = q_latent.size(0);
  const index_t heads = q_latent.size(1);
  const index_t kv_lora = q_latent.size(2);
  const index_t rope_dim = q_pe.size(2);
  const index_t width = kv_lora + rope_dim;
  const index_t block_size = cache.size(1);
  const auto contexts = token_contexts(op, batch, cache.size(0), block_size);

  // The latent rows double as keys (all width dims) and values (the first kv_lora dims).
  std::vector<float> context(sz(longest(contexts) * width));
  std::vector<float> query(sz(width));
  std::vector<float> scores(sz(longest(contexts)));
  std::vector<float> acc(sz(kv_lora));
  for (index_t t = 0; t < tokens; ++t) {
    const TokenContext& c = contexts[sz(t)];
    if (c.padding) {
      zero_token(out, t);
      continue;
    }
    const index_t n = c.length;
    for (index_t j = 0; j < n; ++j) {
      const bf16* row = &cache(batch.block_table(c.sequence, j / block_size), j % block_size, 0);
      for (index_t i = 0; i < width; ++i) context[sz(j * width + i)] = to_float(row[i]);
    }
    for (index_t h = 0; h < heads; ++h) {
      for (index_t i = 0; i < kv_lora; ++i) query[sz(i)] = to_float(q_latent(t, h, i));
      for (index_t i = 0; i < rope_dim; ++i) query[sz(kv_lora + i)] = to_float(q_pe(t, h, i));
      for (index_t j = 0; j < n; ++j)
        scores[sz(j)] = dot(query.data(), &context[sz(j * width)], width) * softmax_scale;
      const float sum = softmax_weights(scores.data(), n);
      weighted_sum_bf16(scores.data(), sum, context.data(), n, width, kv_lora, acc.data(),
                        &out(t, h, 0));
    }
  }
}

template <KvCacheFormat F>
void gqa_decode(const Host&, View3<const bf16> q, const ConstKvCache<F>& cache,
                const DecodeBatch& batch, float softmax_scale, View3<bf16> out) {
  constexpr std::string_view op = "gqa_decode";
  expect_gqa_decode_args(op, q, cache, batch, softmax_scale, out);
  const index_t tokens = q.size(0);
  const index_t q_heads = q.size(1);
  const index_t kv_heads = cache.kv_heads();
  const index_t dim = cache.head_dim();
  const index_t block_size = cache.block_size();
  const auto contexts = token_contexts(op, batch, cache.num_blocks(), block_size);

  const index_t group = q_heads / kv_heads;
  std::vector<float> keys(sz(longest(contexts) * dim));
  std::vector<float> values(sz(longest(contexts) * dim));
  std::vector<float> query(sz(dim));
  std::vector<float> scores(sz(longest(contexts)));
  std::vector<float> acc(sz(dim));
  for (index_t t = 0; t < tokens; ++t) {
    const TokenContext& c = contexts[sz(t)];
    if (c.padding) {
      zero_token(out, t);
      continue;
    }
    const index_t n = c.length;
    for (index_t kvh = 0; kvh < kv_heads; ++kvh) {
      for (index_t j = 0; j < n; ++j) {
        const index_t block = batch.block_table(c.sequence, j / block_size);
        const index_t offset = j % block_size;
        for (index_t d = 0; d < dim; ++d) {
          keys[sz(j * dim + d)] = cache.element(false, block, offset, kvh, d);
          values[sz(j * dim + d)] = cache.element(true, block, offset, kvh, d);
        }
      }
      for (index_t h = kvh * group; h < (kvh + 1) * group; ++h) {
        for (index_t d = 0; d < dim; ++d) query[sz(d)] = to_float(q(t, h, d));
        for (index_t j = 0; j < n; ++j)
          scores[sz(j)] = dot(query.data(), &keys[sz(j * dim)], dim) * softmax_scale;
        const float sum = softmax_weights(scores.data(), n);
        weighted_sum_bf16(scores.data(), sum, values.data(), n, dim, dim, acc.data(),
                          &out(t, h, 0));
      }
    }
  }
}

#define ATOM_GQA_FORMAT(F)                                                                        \
  template void expect_gqa_decode_args(std::string_view, View3<const bf16>,                       \
                                       const ConstKvCache<KvCacheFormat::F>&, const DecodeBatch&, \
                                       float, View3<bf16>);                                       \
  template void gqa_decode(const Host&, View3<const bf16>, const ConstKvCache<KvCacheFormat::F>&, \
                           const DecodeBatch&, float, View3<bf16>);
ATOM_GQA_FORMAT(fp8_row)
ATOM_GQA_FORMAT(fp8_tensor)
ATOM_GQA_FORMAT(bf16)
#undef ATOM_GQA_FORMAT

}  // namespace atom::ops
