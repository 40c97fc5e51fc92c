// Random inputs, poison values, paged block tables and float64 helpers for the attention op tests.
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/cache.hpp"
#include "atom/ops/decode_batch.hpp"

namespace atom::attn_test {

using Rng = std::mt19937_64;

inline Rng rng(std::uint64_t salt) {
  return Rng(Catch::rngSeed() * 0x9E3779B97F4A7C15ull + salt);
}

// bf16 unit roundoff: round to nearest even moves a value by at most this fraction of itself.
inline constexpr double u_bf16 = 1.0 / 256.0;

// A value with magnitude in [lo, hi] and a random sign: never zero.
inline float nonzero(Rng& g, float lo = 0.05f, float hi = 1.0f) {
  std::uniform_real_distribution<float> magnitude(lo, hi);
  const float m = magnitude(g);
  return (g() & 1u) ? m : -m;
}

inline std::vector<bf16> random_bf16(Rng& g, index_t n, float lo = 0.05f, float hi = 1.0f) {
  std::vector<bf16> v(static_cast<std::size_t>(n));
  for (bf16& x : v) x = to_bf16(nonzero(g, lo, hi));
  return v;
}

inline constexpr bf16 bf16_nan{0x7fc0};
inline constexpr fp8_e4m3 fp8_nan{0xff};

inline double value(bf16 x) {
  return static_cast<double>(to_float(x));
}

// A ragged batch's paging: sequence s owns ceil(context_lens[s] / block_size) blocks taken from a
// shuffled list of all block ids (so tables are not contiguous); unused table entries hold -1,
// which an op must never read. Its tokens are query_start[s] .. query_start[s + 1] - 1, the last
// rows of its context (make_paging: one token per sequence; with_queries: several), and tokens
// past query_start.back() are padding.
struct Paging {
  index_t block_size = 0;
  index_t num_blocks = 0;
  index_t max_blocks = 0;
  std::vector<std::int32_t> context_lens;  // [S]
  std::vector<std::int32_t> block_table;   // [S, max_blocks]
  std::vector<std::int32_t> query_start;   // [S + 1]
  std::vector<std::int64_t> positions;     // [T]
  std::vector<std::int64_t> slots;         // [T]

  index_t sequences() const { return static_cast<index_t>(context_lens.size()); }
  index_t tokens() const { return static_cast<index_t>(slots.size()); }
  View2<const std::int32_t> table() const {
    return make_view(block_table.data(), sequences(), max_blocks);
  }
  View1<const std::int32_t> lens() const { return make_view(context_lens.data(), sequences()); }
  ops::DecodeBatch batch() const {
    return {make_view(query_start.data(), sequences() + 1), lens(), table(),
            make_view(positions.data(), tokens()), make_view(slots.data(), tokens())};
  }
  // The cache slot of context position j of sequence s.
  index_t slot(index_t s, index_t j) const {
    return block_table[static_cast<std::size_t>(s * max_blocks + j / block_size)] * block_size +
           j % block_size;
  }
  // Sequence s gets counts[s] query tokens (at most its context; zero allowed), then `padding`
  // tokens follow that belong to no sequence.
  void with_queries(const std::vector<index_t>& counts, index_t padding = 0) {
    query_start.assign(1, 0);
    positions.clear();
    slots.clear();
    for (index_t s = 0; s < sequences(); ++s) {
      const index_t n = context_lens[static_cast<std::size_t>(s)];
      const index_t q = counts[static_cast<std::size_t>(s)];
      for (index_t j = n - q; j < n; ++j) {
        positions.push_back(j);
        slots.push_back(slot(s, j));
      }
      query_start.push_back(static_cast<std::int32_t>(positions.size()));
    }
    for (index_t i = 0; i < padding; ++i) {
      positions.push_back(0);
      slots.push_back(ops::skip_slot);
    }
  }
  // The same tokens, each a sequence of its own over its sequence's table row with its causal
  // context (a token past every sequence: context 1 over sequence 0's row; it stays padding).
  Paging one_per_token() const {
    Paging p = *this;
    p.context_lens.clear();
    p.block_table.clear();
    p.query_start.assign(1, 0);
    for (index_t t = 0; t < tokens(); ++t) {
      index_t s = 0;
      while (s < sequences() && query_start[static_cast<std::size_t>(s) + 1] <= t) ++s;
      const bool owned = s < sequences();
      const index_t end = owned ? query_start[static_cast<std::size_t>(s) + 1] : 0;
      p.context_lens.push_back(
          owned
              ? static_cast<std::int32_t>(context_lens[static_cast<std::size_t>(s)] - (end - 1 - t))
              : 1);
      const auto row = block_table.begin() + (owned ? s : 0) * max_blocks;
      p.block_table.insert(p.block_table.end(), row, row + max_blocks);
      p.query_start.push_back(static_cast<std::int32_t>(t + 1));
    }
    return p;
  }
};

inline Paging make_paging(Rng& g, const std::vector<std::int32_t>& contexts, index_t block_size) {
  Paging p;
  p.block_size = block_size;
  p.context_lens = contexts;
  index_t total = 0;
  for (std::int32_t n : contexts) {
    const index_t blocks = (n + block_size - 1) / block_size;
    total += blocks;
    p.max_blocks = std::max(p.max_blocks, blocks + 1);
  }
  p.num_blocks = total + 3;  // a few blocks nobody owns
  std::vector<std::int32_t> ids(static_cast<std::size_t>(p.num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), g);
  p.block_table.assign(contexts.size() * static_cast<std::size_t>(p.max_blocks), -1);
  std::size_t next = 0;
  for (std::size_t t = 0; t < contexts.size(); ++t)
    for (index_t b = 0; b < (contexts[t] + block_size - 1) / block_size; ++b)
      p.block_table[t * static_cast<std::size_t>(p.max_blocks) + static_cast<std::size_t>(b)] =
          ids[next++];
  p.with_queries(std::vector<index_t>(contexts.size(), 1));
  return p;
}

// Distinct random slots for `tokens` tokens out of `capacity`, every third token padding (-1).
inline std::vector<std::int64_t> random_slots(Rng& g, index_t tokens, index_t capacity) {
  std::vector<std::int64_t> all(static_cast<std::size_t>(capacity));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), g);
  std::vector<std::int64_t> slots(all.begin(), all.begin() + tokens);
  for (std::size_t t = 1; t < slots.size(); t += 3) slots[t] = ops::skip_slot;
  return slots;
}

// Half the distance between adjacent e4m3fn values around |y| (y in scale units, |y| <= 448).
inline double fp8_half_step(double y) {
  const double a = std::fabs(y);
  if (a < 0.015625) return std::ldexp(1.0, -10);  // subnormals: spacing 2^-9
  return std::ldexp(1.0, static_cast<int>(std::floor(std::log2(a))) - 4);
}

// Checks one quantized row against its float64 source: the scale is amax / 448 to float
// precision, the largest element lands on the top code, and each element is within half an FP8
// step (in scale units) of its source. Returns the number of violations.
inline std::size_t check_fp8_row(const std::vector<double>& x, const fp8_e4m3* code, float scale) {
  double amax = 0.0;
  for (double v : x) amax = std::max(amax, std::fabs(v));
  std::size_t bad = 0;
  if (!(std::fabs(scale - amax / 448.0) <= std::ldexp(amax / 448.0, -23))) ++bad;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double got = static_cast<double>(to_float(code[i])) * scale;
    const double tol = fp8_half_step(x[i] / scale) * scale * (1.0 + 1e-6);
    if (!(std::fabs(got - x[i]) <= tol)) ++bad;
    if (std::fabs(x[i]) == amax && (code[i].bits & 0x7f) != 0x7e) ++bad;
  }
  return bad;
}

// An FP8 cache of the given shape, every code NaN and every scale NaN.
struct Fp8Cache {
  index_t blocks, block_size, heads, dim;
  std::vector<fp8_e4m3> key, value;
  std::vector<float> key_scale, value_scale;
  Fp8Cache(index_t b, index_t bs, index_t h, index_t d)
      : blocks(b), block_size(bs), heads(h), dim(d) {
    const auto rows = static_cast<std::size_t>(b * bs * h);
    key.assign(rows * static_cast<std::size_t>(d), fp8_nan);
    value.assign(key.size(), fp8_nan);
    key_scale.assign(rows, std::nanf(""));
    value_scale.assign(rows, std::nanf(""));
  }
  ops::KvCacheFp8 view() {
    return {make_view(key.data(), blocks, block_size, heads, dim),
            make_view(value.data(), blocks, block_size, heads, dim),
            make_view(key_scale.data(), blocks, block_size, heads),
            make_view(value_scale.data(), blocks, block_size, heads)};
  }
};

}  // namespace atom::attn_test
