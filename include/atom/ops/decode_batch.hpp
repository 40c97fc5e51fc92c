// The decode batch's own step: what the metadata of the next decode step is, derived where the
// batch lives (the host or the device), so that a captured step needs nothing from the host.
#pragma once

#include <cstdint>
#include <type_traits>

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/backend.hpp"

namespace atom::ops {

// The batch metadata of a decode step that the next step derives on its own: each token's context
// grows by one, its position advances by one, and its slot becomes the cache slot of the new
// position in its row of the block table (a token whose slot is -1 is padding and stays so). The
// block table must already hold the block of the new position; a token whose new position falls
// outside its row, or on a negative block id, gets slot -1 (no cache write) and keeps its
// context, so that its attention reads nothing new.
struct DecodeCursor {
  View1<std::int64_t> positions;          // [T]
  View1<std::int64_t> slots;              // [T]
  View2<const std::int32_t> block_table;  // [T, max_blocks]
  View1<std::int32_t> context_lens;       // [T]
};
void advance_decode(const Host&, const DecodeCursor& batch, index_t block_size);

// One token of advance_decode: the shared definition of both backends.
ATOM_HD inline void advance_token(std::int64_t& position, std::int64_t& slot,
                                  const std::int32_t* table_row, index_t max_blocks,
                                  std::int32_t& context_len, index_t block_size) {
  if (slot < 0) return;
  const std::int64_t next = position + 1;
  const std::int64_t block = next / block_size;
  const std::int32_t id = block < max_blocks ? table_row[block] : -1;
  if (id < 0) {
    slot = -1;
    return;
  }
  position = next;
  slot = static_cast<std::int64_t>(id) * block_size + next % block_size;
  context_len += 1;
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
