#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "atom/ops/cache.hpp"
#include "attn_test_support.hpp"

using namespace atom;
using namespace atom::ops;
using namespace atom::attn_test;

TEST_CASE("mla_cache_write copies latent and rope parts to their slots, skipping -1", "[cache]") {
  for (const index_t block_size : {1, 16})
    for (const index_t tokens : {1, 3, 17})
      for (const auto& [kv_lora, rope_dim] : {std::pair<index_t, index_t>{512, 64}, {33, 6}}) {
        INFO("block_size " << block_size << ", tokens " << tokens << ", kv_lora " << kv_lora);
        Rng g = rng(static_cast<std::uint64_t>(block_size * 100 + tokens + kv_lora));
        const index_t blocks = (tokens + 2) / block_size + 2;
        const index_t width = kv_lora + rope_dim;
        // kv_c and k_pe are column slices of one [T, kv_lora + rope + 3] projection output.
        const std::vector<bf16> kv_a = random_bf16(g, tokens * (width + 3));
        const auto kv_a_view = make_view(kv_a.data(), tokens, width + 3);
        const View2<const bf16> kv_c = kv_a_view.slice(1, 0, kv_lora);
        const View2<const bf16> k_pe = kv_a_view.slice(1, kv_lora, rope_dim);
        std::vector<bf16> cache(static_cast<std::size_t>(blocks * block_size * width), bf16_nan);
        const std::vector<std::int64_t> slots = random_slots(g, tokens, blocks * block_size);
        mla_cache_write(Host{}, kv_c, k_pe, make_view(slots.data(), tokens),
                        make_view(cache.data(), blocks, block_size, width));
        std::vector<index_t> owner(static_cast<std::size_t>(blocks * block_size), -1);
        for (index_t t = 0; t < tokens; ++t)
          if (slots[static_cast<std::size_t>(t)] >= 0)
            owner[static_cast<std::size_t>(slots[static_cast<std::size_t>(t)])] = t;
        std::size_t wrong = 0;
        for (index_t s = 0; s < blocks * block_size; ++s) {
          const index_t t = owner[static_cast<std::size_t>(s)];
          for (index_t i = 0; i < width; ++i) {
            const bf16 got = cache[static_cast<std::size_t>(s * width + i)];
            const std::uint16_t want =
                t < 0 ? bf16_nan.bits : kv_a[static_cast<std::size_t>(t * (width + 3) + i)].bits;
            wrong += got.bits != want;
          }
        }
        CHECK(wrong == 0);
      }
}

TEST_CASE("kv_cache_write in fp8_row quantizes each token and head to amax / 448", "[cache]") {
  for (const index_t block_size : {1, 16})
    for (const index_t tokens : {1, 3, 17})
      for (const auto& [heads, dim] : {std::pair<index_t, index_t>{4, 128}, {1, 17}, {3, 64}}) {
        INFO("block_size " << block_size << ", tokens " << tokens << ", heads " << heads << ", dim "
                           << dim);
        Rng g = rng(static_cast<std::uint64_t>(block_size * 1000 + tokens * 10 + heads + dim));
        const index_t blocks = (tokens + 2) / block_size + 2;
        // k and v are head slices of one qkv row [T, (1 + 2 heads) * dim]; wide dynamic range.
        const index_t row = (1 + 2 * heads) * dim;
        const std::vector<bf16> qkv = random_bf16(g, tokens * row, 1e-4f, 30.0f);
        const auto qkv_view = make_view(qkv.data(), tokens, 1 + 2 * heads, dim);
        const View3<const bf16> k = qkv_view.slice(1, 1, heads);
        const View3<const bf16> v = qkv_view.slice(1, 1 + heads, heads);
        Fp8Cache cache(blocks, block_size, heads, dim);
        const std::vector<std::int64_t> slots = random_slots(g, tokens, blocks * block_size);
        kv_cache_write(Host{}, k, v, make_view(slots.data(), tokens), cache.view());

        std::vector<bool> written(static_cast<std::size_t>(blocks * block_size), false);
        std::size_t bad = 0;
        for (index_t t = 0; t < tokens; ++t) {
          const std::int64_t s = slots[static_cast<std::size_t>(t)];
          if (s < 0) continue;
          written[static_cast<std::size_t>(s)] = true;
          for (index_t h = 0; h < heads; ++h) {
            std::vector<double> kx(static_cast<std::size_t>(dim)), vx(kx.size());
            for (index_t d = 0; d < dim; ++d) {
              kx[static_cast<std::size_t>(d)] = value(k(t, h, d));
              vx[static_cast<std::size_t>(d)] = value(v(t, h, d));
            }
            const std::size_t at = static_cast<std::size_t>((s * heads + h) * dim);
            bad += check_fp8_row(kx, &cache.key[at],
                                 cache.key_scale[at / static_cast<std::size_t>(dim)]);
            bad += check_fp8_row(vx, &cache.value[at],
                                 cache.value_scale[at / static_cast<std::size_t>(dim)]);
          }
        }
        CHECK(bad == 0);
        // Slots nobody wrote keep their poison.
        std::size_t touched = 0;
        for (index_t s = 0; s < blocks * block_size; ++s) {
          if (written[static_cast<std::size_t>(s)]) continue;
          for (index_t i = 0; i < heads * dim; ++i)
            touched += cache.key[static_cast<std::size_t>(s * heads * dim + i)].bits != 0xff ||
                       cache.value[static_cast<std::size_t>(s * heads * dim + i)].bits != 0xff;
          for (index_t h = 0; h < heads; ++h)
            touched += !std::isnan(cache.key_scale[static_cast<std::size_t>(s * heads + h)]);
        }
        CHECK(touched == 0);
      }
}

TEST_CASE("kv_cache_write in fp8_row gives an all-zero head scale 1 and zero codes", "[cache]") {
  // The one deliberate zero input: the amax == 0 rule.
  std::vector<bf16> k(8, bf16{0}), v(8, to_bf16(-2.0f));
  Fp8Cache cache(1, 2, 1, 8);
  const std::vector<std::int64_t> slots = {1};
  kv_cache_write(Host{}, make_view(k.data(), 1, 1, 8), make_view(v.data(), 1, 1, 8),
                 make_view(slots.data(), 1), cache.view());
  CHECK(cache.key_scale[1] == 1.0f);
  for (std::size_t i = 8; i < 16; ++i) CHECK(cache.key[i].bits == 0);
  CHECK(cache.value_scale[1] == 2.0f / 448.0f);
  for (std::size_t i = 8; i < 16; ++i) CHECK(cache.value[i].bits == 0xfe);  // -448
}

TEST_CASE("kv_cache_write in fp8_tensor and bf16 stores each element by the format's rule",
          "[cache]") {
  for (const index_t block_size : {1, 16})
    for (const index_t tokens : {1, 3, 17})
      for (const auto& [heads, dim] : {std::pair<index_t, index_t>{4, 128}, {1, 17}, {3, 64}}) {
        INFO("block_size " << block_size << ", tokens " << tokens << ", heads " << heads << ", dim "
                           << dim);
        Rng g = rng(static_cast<std::uint64_t>(block_size * 1000 + tokens * 10 + heads + dim + 5));
        const index_t blocks = (tokens + 2) / block_size + 2;
        const index_t row = (1 + 2 * heads) * dim;
        // Up to 30 in magnitude against tensor scales of 0.05 and 0.03 (448 x scale = 22.4 and
        // 13.4): some elements saturate.
        const std::vector<bf16> qkv = random_bf16(g, tokens * row, 1e-4f, 30.0f);
        const auto qkv_view = make_view(qkv.data(), tokens, 1 + 2 * heads, dim);
        const View3<const bf16> k = qkv_view.slice(1, 1, heads);
        const View3<const bf16> v = qkv_view.slice(1, 1 + heads, heads);
        const std::vector<std::int64_t> slots = random_slots(g, tokens, blocks * block_size);
        const auto n = static_cast<std::size_t>(blocks * block_size * heads * dim);
        const auto rows = [&](auto* data) {
          return make_view(data, blocks, block_size, heads, dim);
        };

        std::vector<fp8_e4m3> key8(n, fp8_nan), value8(n, fp8_nan);
        float scales[2] = {0.05f, 0.03f};
        kv_cache_write(
            Host{}, k, v, make_view(slots.data(), tokens),
            per_tensor_fp8_cache(rows(key8.data()), rows(value8.data()), &scales[0], &scales[1]));
        std::vector<bf16> key16(n, bf16_nan), value16(n, bf16_nan);
        kv_cache_write(Host{}, k, v, make_view(slots.data(), tokens),
                       bf16_cache(rows(key16.data()), rows(value16.data())));
        CHECK(scales[0] == 0.05f);  // the writer reads the scales, never writes them
        CHECK(scales[1] == 0.03f);

        std::vector<bool> written(static_cast<std::size_t>(blocks * block_size), false);
        std::size_t bad = 0, saturated = 0;
        for (index_t t = 0; t < tokens; ++t) {
          const std::int64_t s = slots[static_cast<std::size_t>(t)];
          if (s < 0) continue;
          written[static_cast<std::size_t>(s)] = true;
          for (index_t h = 0; h < heads; ++h)
            for (index_t d = 0; d < dim; ++d) {
              const std::size_t at = static_cast<std::size_t>((s * heads + h) * dim + d);
              for (const bool is_value : {false, true}) {
                const bf16 x = is_value ? v(t, h, d) : k(t, h, d);
                const double scale = is_value ? 0.03f : 0.05f;
                const double want = value(x) / scale;
                const fp8_e4m3 code = (is_value ? value8 : key8)[at];
                // Round to nearest within half a step, or saturate at 448 beyond it.
                const double got = to_float(code);
                if (std::fabs(want) > 448.0) {
                  ++saturated;
                  bad += got != std::copysign(448.0, want);
                } else {
                  bad += !(std::fabs(got - want) <= fp8_half_step(want) * (1.0 + 1e-6));
                }
                bad += (is_value ? value16 : key16)[at].bits != x.bits;
              }
            }
        }
        CHECK(bad == 0);
        if (tokens == 17 && heads == 4) CHECK(saturated > 0);
        std::size_t touched = 0;
        for (index_t s = 0; s < blocks * block_size; ++s) {
          if (written[static_cast<std::size_t>(s)]) continue;
          for (index_t i = 0; i < heads * dim; ++i) {
            const auto at = static_cast<std::size_t>(s * heads * dim + i);
            touched += key8[at].bits != 0xff || value8[at].bits != 0xff ||
                       key16[at].bits != bf16_nan.bits || value16[at].bits != bf16_nan.bits;
          }
        }
        CHECK(touched == 0);
      }
}

TEST_CASE("a cache's scales must fit its format", "[cache]") {
  std::vector<bf16> k(2 * 2 * 8, to_bf16(0.25f));
  const auto kv = make_view(k.data(), 2, 2, 8);
  const std::vector<std::int64_t> slots = {0, 3};
  Fp8Cache fp8(2, 4, 2, 8);
  // fp8_tensor with a scale per row: refused, naming the scale.
  KvCache<KvCacheFormat::fp8_tensor> per_row{
      make_view(fp8.key.data(), 2, 4, 2, 8), make_view(fp8.value.data(), 2, 4, 2, 8),
      make_view(fp8.key_scale.data(), 2, 4, 2), make_view(fp8.value_scale.data(), 2, 4, 2)};
  CHECK_THROWS_WITH(kv_cache_write(Host{}, kv, kv, make_view(slots.data(), 2), per_row),
                    Catch::Contains("cache.key_scale") && Catch::Contains("one scale"));
  // Both scales the same float: the views overlap.
  float one = 0.5f;
  CHECK_THROWS_WITH(
      kv_cache_write(Host{}, kv, kv, make_view(slots.data(), 2),
                     per_tensor_fp8_cache(make_view(fp8.key.data(), 2, 4, 2, 8),
                                          make_view(fp8.value.data(), 2, 4, 2, 8), &one, &one)),
      Catch::Contains("overlap"));
  for (const fp8_e4m3 c : fp8.key) REQUIRE(c.bits == 0xff);
  // bf16 with scales: refused.
  std::vector<bf16> key16(2 * 4 * 2 * 8, bf16_nan), value16(key16.size(), bf16_nan);
  KvCache<KvCacheFormat::bf16> scaled{
      make_view(key16.data(), 2, 4, 2, 8), make_view(value16.data(), 2, 4, 2, 8),
      make_view(fp8.key_scale.data(), 2, 4, 2), make_view(fp8.value_scale.data(), 2, 4, 2)};
  CHECK_THROWS_WITH(kv_cache_write(Host{}, kv, kv, make_view(slots.data(), 2), scaled),
                    Catch::Contains("cache.key_scale") && Catch::Contains("bf16"));
  for (const bf16 c : key16) REQUIRE(c.bits == bf16_nan.bits);
  // The pipeline's view of a cache of another format names both.
  const AnyKvCache any =
      bf16_cache(make_view(key16.data(), 2, 4, 2, 8), make_view(value16.data(), 2, 4, 2, 8));
  CHECK(format_of(any) == KvCacheFormat::bf16);
  CHECK_THROWS_WITH(
      kv_cache_of<KvCacheFormat::fp8_row>("qwen3_attention", any),
      Catch::Contains("qwen3_attention") && Catch::Contains("bf16") && Catch::Contains("fp8_row"));
}

TEST_CASE("cache writers reject bad slots and shapes before writing", "[cache]") {
  std::vector<bf16> k(3 * 2 * 8, to_bf16(0.25f));
  Fp8Cache cache(2, 4, 2, 8);
  const auto kv = make_view(k.data(), 3, 2, 8);
  std::vector<std::int64_t> slots = {0, 8, 1};
  CHECK_THROWS_WITH(
      kv_cache_write(Host{}, kv, kv, make_view(slots.data(), 3), cache.view()),
      Catch::Contains("kv_cache_write") && Catch::Contains("'slots'") && Catch::Contains("8"));
  slots = {5, -1, 5};
  CHECK_THROWS_WITH(kv_cache_write(Host{}, kv, kv, make_view(slots.data(), 3), cache.view()),
                    Catch::Contains("kv_cache_write") && Catch::Contains("more than one"));
  slots = {-2, 0, 1};
  CHECK_THROWS_AS(kv_cache_write(Host{}, kv, kv, make_view(slots.data(), 3), cache.view()),
                  ShapeError);
  for (const fp8_e4m3 c : cache.key) REQUIRE(c.bits == 0xff);
  slots = {0, 1, 2};
  CHECK_THROWS_WITH(
      kv_cache_write(Host{}, make_view(k.data(), 3, 1, 16), kv, make_view(slots.data(), 3),
                     cache.view()),
      Catch::Contains("kv_cache_write") && Catch::Contains("'k'") && Catch::Contains("[3, 2, 8]"));
  KvCacheFp8 bad_scale = cache.view();
  bad_scale.value_scale = make_view(cache.value_scale.data(), 2, 2, 2);
  CHECK_THROWS_WITH(kv_cache_write(Host{}, kv, kv, make_view(slots.data(), 3), bad_scale),
                    Catch::Contains("cache.value_scale"));
  // An input that is part of the cache.
  const View3<const bf16> k_in_cache{
      reinterpret_cast<const bf16*>(cache.key.data()), {3, 2, 8}, {16, 8, 1}};
  CHECK_THROWS_WITH(
      kv_cache_write(Host{}, k_in_cache, kv, make_view(slots.data(), 3), cache.view()),
      Catch::Contains("overlaps"));

  std::vector<bf16> latent(3 * 10, to_bf16(0.5f)), mla(2 * 4 * 12, bf16_nan);
  const auto lat = make_view(latent.data(), 3, 10);
  slots = {0, 1, 2};
  CHECK_THROWS_WITH(mla_cache_write(Host{}, lat.slice(1, 0, 8), lat.slice(1, 8, 2),
                                    make_view(slots.data(), 3), make_view(mla.data(), 2, 4, 11)),
                    Catch::Contains("mla_cache_write") && Catch::Contains("'cache'") &&
                        Catch::Contains("[*, *, 10]"));
  slots = {0, 1, 9};
  CHECK_THROWS_WITH(mla_cache_write(Host{}, lat.slice(1, 0, 8), lat.slice(1, 8, 2),
                                    make_view(slots.data(), 3), make_view(mla.data(), 2, 4, 10)),
                    Catch::Contains("mla_cache_write") && Catch::Contains("'slots'"));
  for (const bf16 x : mla) REQUIRE(x.bits == bf16_nan.bits);
}
