#include "atom/ops/decode_batch.hpp"

#include <string_view>

namespace atom::ops {

void advance_decode(const Host&, const DecodeCursor& b, index_t block_size) {
  constexpr std::string_view op = "advance_decode";
  const index_t tokens = b.positions.size(0);
  expect_shape(op, "slots", b.slots, {tokens});
  expect_shape(op, "context_lens", b.context_lens, {tokens});
  expect(b.block_table.size(0) == tokens, op, "block_table has another token count");
  expect(block_size >= 1, op, "block_size must be at least 1");
  for (index_t t = 0; t < tokens; ++t)
    advance_token(b.positions(t), b.slots(t), &b.block_table(t, 0), b.block_table.size(1),
                  b.context_lens(t), block_size);
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
