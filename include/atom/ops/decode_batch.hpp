// The decode batch's own step: what the metadata of the next decode step is, derived where the
// batch lives (the host or the device), so that a captured step needs nothing from the host.
#pragma once

#include <cstdint>
#include <string_view>
#include <type_traits>

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/backend.hpp"

namespace atom::ops {

// A decode batch in the per-sequence form (vLLM's and FlashMLA's): S sequences and T tokens.
// Sequence s owns the query tokens query_start[s] .. query_start[s + 1] - 1 (1 in plain decode,
// 2 or more for speculative decoding) and attends to context_lens[s] cache rows, which include its
// query tokens' own rows, through its row of the block table. Token t of sequence s is causal: it
// attends to the first context_lens[s] - (query_start[s + 1] - 1 - t) rows. A token whose slot is
// -1 is padding: it writes no cache row and attends to nothing (its attention output is zero);
// tokens past query_start[S] belong to no sequence and must be padding.
//
// Context position j of sequence s lives in cache block block_table[s, j / block_size] at offset
// j % block_size. query_start starts at 0 and never decreases; every token of a sequence has a
// context of at least 1 row inside its row of the table, every block id it reaches lies inside
// the cache. The host ops check all of it before writing anything; the device ops cannot read it
// without a sync and give a token whose batch data is bad NaN outputs instead (ops/gpu).
struct DecodeBatch {
  View1<const std::int32_t> query_start;   // [S + 1]
  View1<const std::int32_t> context_lens;  // [S]
  View2<const std::int32_t> block_table;   // [S, max_blocks]
  View1<const std::int64_t> positions;     // [T] position of each token (its RoPE angle)
  View1<const std::int64_t> slots;         // [T] cache slot it writes; -1: padding

  ATOM_HD index_t sequences() const { return context_lens.size(0); }
  ATOM_HD index_t tokens() const { return slots.size(0); }
};

// The metadata that the next decode step derives on its own (ops::advance_decode): each sequence
// decodes its next query tokens, so its context grows by its query count, each of its tokens'
// positions advances by that count, and each slot becomes the cache slot of the new position in
// the sequence's row of the table. The table must already hold the blocks of the new positions;
// a sequence any of whose new positions falls outside its row or on a negative block id stops:
// its tokens become padding (slot -1) and its context stays. Padding stays padding.
struct DecodeCursor {
  View1<const std::int32_t> query_start;  // [S + 1]
  View1<std::int32_t> context_lens;       // [S]
  View2<const std::int32_t> block_table;  // [S, max_blocks]
  View1<std::int64_t> positions;          // [T]
  View1<std::int64_t> slots;              // [T]

  DecodeBatch batch() const { return {query_start, context_lens, block_table, positions, slots}; }
};
void advance_decode(const Host&, const DecodeCursor& batch, index_t block_size);

// The batch's shapes for T tokens: query_start [S + 1], context_lens [S], block_table [S, *],
// positions and slots [T]. Both backends' ops check them.
void expect_batch_shape(std::string_view op, const DecodeBatch& b, index_t tokens);
// Everything the contract says of the batch's contents (host memory), against a cache of
// num_blocks blocks of block_size rows: each error names the entry. The host ops check it before
// writing anything.
void expect_batch_contents(std::string_view op, const DecodeBatch& b, index_t num_blocks,
                           index_t block_size);

// Where token t of a batch reads: its sequence, the number of context rows it attends to, and
// whether it is padding (nothing to read) or its batch data is bad (no sequence holds it as the
// starts say, or its context does not fit `max_context`). The one definition of the contract
// above for the host checks and the device kernels.
struct TokenContext {
  index_t sequence = 0;
  index_t length = 0;
  bool padding = false;
  bool bad = false;
};

ATOM_HD inline TokenContext token_context(const DecodeBatch& b, index_t t, index_t max_context) {
  TokenContext c;
  const index_t sequences = b.sequences();
  if (sequences == 0) {
    c.padding = true;
    return c;
  }
  // A guess first, t * S / T: it is token t's sequence whenever every sequence has the same
  // number of query tokens (plain decode, uniform speculative batches). Its loads and the slot's
  // are independent of each other, so a kernel pays one memory latency for all four. Otherwise a
  // binary search for the last sequence whose start is at most t (the starts never decrease).
  index_t s = t * sequences / b.tokens();
  const std::int64_t slot = b.slots(t);
  index_t begin = b.query_start(s);
  index_t end = b.query_start(s + 1);
  index_t lens = b.context_lens(s);
  if (slot < 0) {
    c.padding = true;
    return c;
  }
  if (begin > t || end <= t) {
    index_t lo = 0;
    index_t hi = sequences;
    while (lo < hi) {
      const index_t mid = (lo + hi + 1) / 2;
      if (b.query_start(mid) <= t)
        lo = mid;
      else
        hi = mid - 1;
    }
    if (lo == sequences) {  // past the last sequence's tokens: nothing to read
      c.padding = true;
      return c;
    }
    s = lo;
    begin = b.query_start(s);
    end = b.query_start(s + 1);
    lens = b.context_lens(s);
  }
  c.sequence = s;
  c.length = lens - (end - 1 - t);
  c.bad = begin > t || end <= t || c.length < 1 || c.length > max_context;
  return c;
}

// One sequence of advance_decode: the shared definition of both backends.
ATOM_HD inline void advance_sequence(const DecodeCursor& b, index_t s, index_t block_size) {
  const index_t begin = b.query_start(s);
  const index_t end = b.query_start(s + 1);
  const index_t count = end - begin;
  if (count <= 0) return;
  for (index_t t = begin; t < end; ++t)
    if (b.slots(t) < 0) return;
  const index_t max_blocks = b.block_table.size(1);
  bool stops = false;
  for (index_t t = begin; t < end; ++t) {
    const std::int64_t block = (b.positions(t) + count) / block_size;
    stops = stops || block >= max_blocks || b.block_table(s, block) < 0;
  }
  for (index_t t = begin; t < end; ++t) {
    if (stops) {
      b.slots(t) = -1;
      continue;
    }
    const std::int64_t next = b.positions(t) + count;
    b.positions(t) = next;
    b.slots(t) = static_cast<std::int64_t>(b.block_table(s, next / block_size)) * block_size +
                 next % block_size;
  }
  if (!stops) b.context_lens(s) += static_cast<std::int32_t>(count);
}

// Deterministic values for rows nobody computed (a prefilled context, the fed tokens' hidden
// states): element i of stream `seed` is lo + (hi - lo) * u with u uniform in [0, 1) from a hash
// of (seed, i), rounded to T (bf16, an FP8 e4m3 code, or float). The same on every backend.
ATOM_HD inline float hash_unit(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t z = seed * 0x9E3779B97F4A7C15ull + i + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
}

template <class T>
ATOM_HD inline T hash_value(std::uint64_t seed, std::uint64_t i, float lo, float hi) {
  const float v = lo + (hi - lo) * hash_unit(seed, i);
  if constexpr (std::is_same_v<T, float>)
    return v;
  else if constexpr (std::is_same_v<T, bf16>)
    return to_bf16(v);
  else
    return to_fp8<Fp8Kind::e4m3fn>(v);
}

template <class T>
void fill_uniform(const Host&, View1<T> out, std::uint64_t seed, float lo, float hi);

}  // namespace atom::ops
