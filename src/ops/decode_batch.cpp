#include "atom/ops/decode_batch.hpp"

#include <string>
#include <string_view>

namespace atom::ops {

void expect_batch_shape(std::string_view op, const DecodeBatch& b, index_t tokens) {
  const index_t sequences = b.context_lens.size(0);
  expect_shape(op, "query_start", b.query_start, {sequences + 1});
  expect_shape(op, "block_table", b.block_table, {sequences, -1});
  expect_shape(op, "positions", b.positions, {tokens});
  expect_shape(op, "slots", b.slots, {tokens});
}

void expect_batch_contents(std::string_view op, const DecodeBatch& b, index_t num_blocks,
                           index_t block_size) {
  const index_t sequences = b.sequences();
  const index_t tokens = b.tokens();
  const index_t max_context = b.block_table.size(1) * block_size;
  expect(b.query_start(0) == 0, op,
         "argument 'query_start' must start at 0, got " + std::to_string(b.query_start(0)));
  for (index_t s = 0; s < sequences; ++s) {
    const index_t begin = b.query_start(s);
    const index_t end = b.query_start(s + 1);
    expect(begin <= end && end <= tokens, op,
           "argument 'query_start' holds " + std::to_string(end) + " at [" + std::to_string(s + 1) +
               "]" + " after " + std::to_string(begin) + ", expected a value from " +
               std::to_string(begin) + " to the " + std::to_string(tokens) + " tokens");
    if (begin == end) continue;
    const index_t n = b.context_lens(s);
    if (n < end - begin || n > max_context)
      expect(false, op,
             "argument 'context_lens' holds " + std::to_string(n) + " at sequence " +
                 std::to_string(s) + ", expected " + std::to_string(end - begin) + " (its query " +
                 "tokens) to " + std::to_string(max_context) + " (block_table has " +
                 std::to_string(b.block_table.size(1)) + " blocks of " +
                 std::to_string(block_size) + " per sequence)");
    for (index_t k = 0; k < (n + block_size - 1) / block_size; ++k) {
      const index_t id = b.block_table(s, k);
      if (id < 0 || id >= num_blocks)
        expect(false, op,
               "argument 'block_table' holds block " + std::to_string(id) + " at [" +
                   std::to_string(s) + ", " + std::to_string(k) + "], outside the cache's " +
                   std::to_string(num_blocks) + " blocks");
    }
  }
  for (index_t t = b.query_start(sequences); t < tokens; ++t)
    expect(b.slots(t) < 0, op,
           "token " + std::to_string(t) + " belongs to no sequence (query_start ends at " +
               std::to_string(b.query_start(sequences)) + ") but has slot " +
               std::to_string(b.slots(t)) + "; such tokens must be padding (slot -1)");
}

void advance_decode(const Host&, const DecodeCursor& b, index_t block_size) {
  constexpr std::string_view op = "advance_decode";
  expect_batch_shape(op, b.batch(), b.slots.size(0));
  expect(block_size >= 1, op, "block_size must be at least 1");
  for (index_t s = 0; s < b.context_lens.size(0); ++s) advance_sequence(b, s, block_size);
}

template <class T>
void fill_uniform(const Host&, View1<T> out, std::uint64_t seed, float lo, float hi) {
  for (index_t i = 0; i < out.size(0); ++i)
    out(i) = hash_value<T>(seed, static_cast<std::uint64_t>(i), lo, hi);
}

template void fill_uniform(const Host&, View1<bf16>, std::uint64_t, float, float);
template void fill_uniform(const Host&, View1<fp8_e4m3>, std::uint64_t, float, float);
template void fill_uniform(const Host&, View1<float>, std::uint64_t, float, float);

}  // namespace atom::ops
