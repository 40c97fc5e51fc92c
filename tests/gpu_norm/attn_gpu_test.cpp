// GPU RoPE, MLA latent cache write, paged KV cache write (each format: fp8_row, fp8_tensor, bf16)
// and Qwen3's fused / separate QK step against the host ops on the same inputs.
//
// Bounds: rope and both cache writes are bit-identical (fp8_tensor at a calibrated scale and at
// one where most values saturate). The Qwen3 step normalizes each head with the warp's sum order
// (gpu/norm.hpp): with delta = 4 (head_dim + 64) 2^-24 (the norm's relative bound, grown by at
// most 1 + sqrt(2) through the rotation), q elements stay within (2^-7 + delta) of their rotation
// pair's norm, fp8_row's k scales within delta relative, k within one rounding step of the format
// (FP8: 1/8 of the value or the subnormal step; bf16: one ulp) plus delta of the row's amax (plus
// 2^-6 of it for the separate chain, whose bf16 rounding before the rotation the GPU may land on
// the other side of); v is bit-identical. NaN never passes.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "atom/ops/cache.hpp"
#include "atom/ops/gpu/cache.hpp"
#include "atom/ops/gpu/qwen_qk.hpp"
#include "atom/ops/gpu/rope.hpp"
#include "atom/ops/qwen_qk.hpp"
#include "atom/ops/rope.hpp"
#include "gpu_support.hpp"

using namespace gpu_test;
namespace ops = atom::ops;
using atom::make_view;
using ops::RopeStyle;

namespace {

const ops::Host host;
const ops::Gpu device{};
constexpr float eps = 1e-6f;
const index_t token_counts[] = {1, 3, 17, 64, 4097};
constexpr index_t max_positions = 8192;

std::vector<std::int64_t> random_positions(Rng& rng, index_t n) {
  std::vector<std::int64_t> p(static_cast<std::size_t>(n));
  for (auto& v : p) v = static_cast<std::int64_t>(rng.next() % max_positions);
  return p;
}

// A random permutation of the cache's slots for the tokens, tokens 4, 9, 14, ... skipped (so that
// a single token is written).
std::vector<std::int64_t> random_slots(Rng& rng, index_t tokens, index_t capacity) {
  std::vector<std::int64_t> all(static_cast<std::size_t>(capacity));
  std::iota(all.begin(), all.end(), 0);
  for (std::size_t i = all.size() - 1; i > 0; --i) std::swap(all[i], all[rng.next() % (i + 1)]);
  all.resize(static_cast<std::size_t>(tokens));
  for (std::size_t t = 4; t < all.size(); t += 5) all[t] = ops::skip_slot;
  return all;
}

template <RopeStyle S>
void check_rope(index_t heads, index_t dim) {
  Rng rng(10 + static_cast<int>(S));
  const std::vector<float> table = ops::make_cos_sin_cache(max_positions, dim, 10000.0);
  const gpu::Buffer<float> dtable(table);
  for (index_t tokens : token_counts) {
    INFO("tokens " << tokens << ", heads " << heads << ", dim " << dim);
    // x is the rope slice of wider rows (q_pe inside q), so rows are strided.
    const index_t head_stride = dim + 32;
    const index_t token_stride = heads * head_stride;
    std::vector<bf16> x = rng.bf16s(tokens * token_stride);
    gpu::Buffer<bf16> dx(x);
    const std::vector<std::int64_t> pos = random_positions(rng, tokens);
    const gpu::Buffer<std::int64_t> dpos(pos);
    ops::rope<S>(host, make_view(static_cast<const std::int64_t*>(pos.data()), tokens),
                 make_view(static_cast<const float*>(table.data()), max_positions, dim),
                 atom::View3<bf16>{x.data(), {tokens, heads, dim}, {token_stride, head_stride, 1}});
    ops::rope<S>(
        device, make_view(static_cast<const std::int64_t*>(dpos.data()), tokens),
        make_view(static_cast<const float*>(dtable.data()), max_positions, dim),
        atom::View3<bf16>{dx.data(), {tokens, heads, dim}, {token_stride, head_stride, 1}});
    // Exact everywhere, the untouched columns between heads included.
    compare_bf16("rope", dx.download(), x, 0);
  }
}

}  // namespace

TEST_CASE("gpu rope (interleaved, DeepSeek q_pe/k_pe) is bit-exact") {
  require_gpu();
  check_rope<RopeStyle::interleaved>(16, 64);
  check_rope<RopeStyle::interleaved>(1, 64);
}

TEST_CASE("gpu rope (neox, Qwen3) is bit-exact") {
  require_gpu();
  check_rope<RopeStyle::neox>(32, 128);
  check_rope<RopeStyle::neox>(3, 10);
}

TEST_CASE("gpu rope gives NaN for a position outside the cache") {
  require_gpu();
  const index_t dim = 8;
  const std::vector<float> table = ops::make_cos_sin_cache(4, dim, 10000.0);
  const gpu::Buffer<float> dtable(table);
  Rng rng(12);
  const std::vector<bf16> x = rng.bf16s(2 * dim);
  gpu::Buffer<bf16> dx(x);
  const gpu::Buffer<std::int64_t> dpos(std::vector<std::int64_t>{1, 4});
  ops::rope<RopeStyle::neox>(device, make_view(static_cast<const std::int64_t*>(dpos.data()), 2),
                             make_view(static_cast<const float*>(dtable.data()), 4, dim),
                             make_view(dx.data(), 2, 1, dim));
  const std::vector<bf16> got = dx.download();
  for (index_t d = 0; d < dim; ++d) {
    CHECK_FALSE(is_nan(got[static_cast<std::size_t>(d)]));
    CHECK(is_nan(got[static_cast<std::size_t>(dim + d)]));
  }
}

TEST_CASE("gpu mla_cache_write is exact and skips slot -1") {
  require_gpu();
  Rng rng(13);
  const index_t kv_lora = 512, rope = 64, block_size = 16;
  for (index_t tokens : token_counts) {
    INFO("tokens " << tokens);
    const index_t blocks = (tokens + 8) / block_size + 2;
    const index_t width = kv_lora + rope;
    const std::vector<bf16> kv = rng.bf16s(tokens * kv_lora);
    const std::vector<bf16> pe = rng.bf16s(tokens * rope);
    const std::vector<std::int64_t> slots = random_slots(rng, tokens, blocks * block_size);
    const gpu::Buffer<bf16> dkv(kv), dpe(pe);
    const gpu::Buffer<std::int64_t> dslots(slots);
    std::vector<bf16> cache = poisoned<bf16>(static_cast<std::size_t>(blocks * block_size * width));
    Poisoned<bf16> dcache(cache.size());
    ops::mla_cache_write(host, make_view(kv.data(), tokens, kv_lora),
                         make_view(pe.data(), tokens, rope), make_view(slots.data(), tokens),
                         make_view(cache.data(), blocks, block_size, width));
    ops::mla_cache_write(device, make_view(static_cast<const bf16*>(dkv.data()), tokens, kv_lora),
                         make_view(static_cast<const bf16*>(dpe.data()), tokens, rope),
                         make_view(static_cast<const std::int64_t*>(dslots.data()), tokens),
                         make_view(dcache.data(), blocks, block_size, width));
    compare_bf16("mla cache", dcache.download(), cache, 0);
  }
}

namespace {

using ops::KvCacheFormat;
template <KvCacheFormat F>
using Format = std::integral_constant<KvCacheFormat, F>;

std::uint32_t bits(fp8_e4m3 x) {
  return x.bits;
}
std::uint32_t bits(bf16 x) {
  return x.bits;
}
std::uint32_t bits(float x) {
  return atom::bits_of(x);
}

// Every element's bits equal, NaN signs and payloads included.
template <class T>
void require_same_bits(const std::string& what, const std::vector<T>& got,
                       const std::vector<T>& want) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i)
    if (bits(got[i]) != bits(want[i]))
      FAIL(what << "[" << i << "]: got bits " << bits(got[i]) << ", want " << bits(want[i]));
}

double bf16_ulp(double x) {
  const double a = std::fabs(x);
  return a < 0x1p-126 ? 0x1p-133 : std::ldexp(1.0, std::ilogb(a) - 7);
}

float amax_of(const std::vector<bf16>& x) {
  float m = 0.0f;
  for (bf16 v : x) m = std::max(m, std::fabs(atom::to_float(v)));
  return m;
}

// Host and device caches of format F: codes (and fp8_row's scales) poisoned; fp8_tensor's two
// scales set on both sides, the device's in device memory, where only the kernels read them.
template <KvCacheFormat F>
struct Caches {
  using Code = typename ops::KvCache<F>::Code;
  index_t blocks, block_size, heads, dim;
  std::vector<Code> hk, hv;
  std::vector<float> hks, hvs;
  Poisoned<Code> dk, dv;
  gpu::Buffer<float> dks, dvs;
  Caches(index_t b, index_t bs, index_t h, index_t d, float key_scale = 0.0f,
         float value_scale = 0.0f)
      : blocks(b),
        block_size(bs),
        heads(h),
        dim(d),
        hk(poisoned<Code>(static_cast<std::size_t>(b * bs * h * d))),
        hv(poisoned<Code>(hk.size())),
        hks(scales(static_cast<std::size_t>(b * bs * h), key_scale)),
        hvs(scales(static_cast<std::size_t>(b * bs * h), value_scale)),
        dk(hk.size()),
        dv(hk.size()),
        dks(hks),
        dvs(hvs) {}
  static std::vector<float> scales(std::size_t rows, float tensor_scale) {
    if constexpr (F == KvCacheFormat::fp8_row)
      return poisoned<float>(rows);
    else if constexpr (F == KvCacheFormat::fp8_tensor)
      return {tensor_scale};
    else
      return {};
  }
  ops::KvCache<F> view(Code* k, Code* v, float* ks, float* vs) const {
    const auto codes = [&](Code* p) { return make_view(p, blocks, block_size, heads, dim); };
    if constexpr (F == KvCacheFormat::fp8_row)
      return {codes(k), codes(v), make_view(ks, blocks, block_size, heads),
              make_view(vs, blocks, block_size, heads)};
    else if constexpr (F == KvCacheFormat::fp8_tensor)
      return ops::per_tensor_fp8_cache(codes(k), codes(v), ks, vs);
    else
      return ops::bf16_cache(codes(k), codes(v));
  }
  ops::KvCache<F> host_cache() { return view(hk.data(), hv.data(), hks.data(), hvs.data()); }
  ops::KvCache<F> dev_cache() { return view(dk.data(), dv.data(), dks.data(), dvs.data()); }
};

// fp8_tensor runs at the scales amax / 448 of its data (a calibrated cache) and at 0.07 of those,
// where most values saturate; the other formats once.
template <KvCacheFormat F>
std::vector<float> scale_factors() {
  if constexpr (F == KvCacheFormat::fp8_tensor)
    return {1.0f, 0.07f};
  else
    return {1.0f};
}

// How many codes of an FP8 cache are saturated (+-448).
index_t saturated(const std::vector<fp8_e4m3>& codes) {
  return std::count_if(codes.begin(), codes.end(),
                       [](fp8_e4m3 c) { return (c.bits & 0x7f) == 0x7e; });
}

template <KvCacheFormat F>
void check_kv_cache_write(index_t heads, index_t dim) {
  Rng rng(14 + 3 * static_cast<int>(F));
  const index_t block_size = 16;
  for (index_t tokens : token_counts) {
    INFO("format " << ops::kv_cache_format_name(F) << ", tokens " << tokens);
    const index_t blocks = (tokens + 8) / block_size + 2;
    std::vector<bf16> k = rng.bf16s(tokens * heads * dim);
    std::vector<bf16> v = rng.bf16s(tokens * heads * dim);
    const float k_amax = amax_of(k), v_amax = amax_of(v);
    // A zero row, a NaN element of either sign and a huge outlier in some heads.
    for (index_t t = 0; t < tokens; t += 3) {
      std::fill_n(&k[static_cast<std::size_t>(t * heads * dim)], dim, bf16{0});
      v[static_cast<std::size_t>(t * heads * dim + dim + 5)] = bf16{0x7fc0};
      v[static_cast<std::size_t>(t * heads * dim + 2 * dim + 7)] = atom::to_bf16(3e38f);
      k[static_cast<std::size_t>(t * heads * dim + dim + 3)] = bf16{0xffc1};
    }
    const std::vector<std::int64_t> slots = random_slots(rng, tokens, blocks * block_size);
    const gpu::Buffer<bf16> dkin(k), dvin(v);
    const gpu::Buffer<std::int64_t> dslots(slots);
    for (float factor : scale_factors<F>()) {
      INFO("scale factor " << factor);
      Caches<F> c(blocks, block_size, heads, dim, factor * k_amax / 448.0f,
                  factor * v_amax / 448.0f);
      ops::kv_cache_write(host, make_view(static_cast<const bf16*>(k.data()), tokens, heads, dim),
                          make_view(static_cast<const bf16*>(v.data()), tokens, heads, dim),
                          make_view(static_cast<const std::int64_t*>(slots.data()), tokens),
                          c.host_cache());
      ops::kv_cache_write(
          device, make_view(static_cast<const bf16*>(dkin.data()), tokens, heads, dim),
          make_view(static_cast<const bf16*>(dvin.data()), tokens, heads, dim),
          make_view(static_cast<const std::int64_t*>(dslots.data()), tokens), c.dev_cache());
      require_same_bits("key", c.dk.download(), c.hk);
      require_same_bits("value", c.dv.download(), c.hv);
      // fp8_row: the rows' scales; fp8_tensor: the two scales, read and never written.
      require_same_bits("key scale", c.dks.download(), c.hks);
      require_same_bits("value scale", c.dvs.download(), c.hvs);
      if constexpr (F == KvCacheFormat::fp8_tensor)
        if (factor < 1.0f) CHECK(saturated(c.hk) > tokens);
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("gpu kv_cache_write is bit-identical, zero, NaN and saturating rows included",
                   "", Format<KvCacheFormat::fp8_row>, Format<KvCacheFormat::fp8_tensor>,
                   Format<KvCacheFormat::bf16>) {
  require_gpu();
  check_kv_cache_write<TestType::value>(4, 128);
  check_kv_cache_write<TestType::value>(3, 40);
}

namespace {

enum class Variant { fused, separate };

template <RopeStyle S, KvCacheFormat F>
void check_qwen(Variant variant, index_t q_heads, index_t kv_heads, index_t dim) {
  require_gpu();
  Rng rng(20 + static_cast<int>(S) + 2 * static_cast<int>(variant) + 4 * static_cast<int>(F));
  const std::vector<float> table = ops::make_cos_sin_cache(max_positions, dim, 1000000.0);
  const gpu::Buffer<float> dtable(table);
  const std::vector<bf16> qw = rng.bf16s(dim, 0.5f, 1.5f);
  const std::vector<bf16> kw = rng.bf16s(dim, 0.5f, 1.5f);
  const gpu::Buffer<bf16> dqw(qw), dkw(kw);
  const index_t block_size = 16;
  const double delta = 4.0 * static_cast<double>(dim + 64) * 0x1p-24;
  // The separate chain rounds the normed k to bf16 before the rotation: a one-ulp move there
  // reaches the rotated value as up to 2^-8 sqrt(2) of the pair's norm (<= the head's amax), which
  // where the rotation cancels is many FP8 steps of the value itself.
  const double rounded = variant == Variant::separate ? 0x1p-6 : 0.0;
  for (index_t tokens : token_counts) {
    INFO("format " << ops::kv_cache_format_name(F) << ", tokens " << tokens << ", heads " << q_heads
                   << "/" << kv_heads << ", dim " << dim);
    const index_t width = (q_heads + 2 * kv_heads) * dim;
    const std::vector<bf16> qkv = rng.bf16s(tokens * width);
    const std::vector<std::int64_t> pos = random_positions(rng, tokens);
    const index_t blocks = (tokens + 8) / block_size + 2;
    const std::vector<std::int64_t> slots = random_slots(rng, tokens, blocks * block_size);
    const gpu::Buffer<bf16> dqkv(qkv);
    const gpu::Buffer<std::int64_t> dpos(pos), dslots(slots);
    const auto run = [&](const auto& backend, const bf16* x, const bf16* w_q, const bf16* w_k,
                         const std::int64_t* p, const float* t, const std::int64_t* s,
                         const auto& cache, bf16* out) {
      const auto xv = make_view(x, tokens, width);
      const auto qv = make_view(w_q, dim);
      const auto kv = make_view(w_k, dim);
      const auto pv = make_view(p, tokens);
      const auto tv = make_view(t, max_positions, dim);
      const auto sv = make_view(s, tokens);
      const auto ov = make_view(out, tokens, q_heads, dim);
      if (variant == Variant::fused)
        ops::qk_norm_rope_cache_fused<S>(backend, xv, qv, kv, eps, pv, tv, sv, cache, ov);
      else
        ops::qk_norm_rope_cache_separate<S>(backend, xv, qv, kv, eps, pv, tv, sv, cache, ov);
    };
    const auto run_host = [&](const auto& cache, bf16* out) {
      run(host, qkv.data(), qw.data(), kw.data(), pos.data(), table.data(), slots.data(), cache,
          out);
    };
    // The host's step into an fp8_row cache gives every written row's amax (its scale * 448):
    // the k bound's reference and fp8_tensor's scales. Unwritten rows keep a NaN scale.
    Caches<KvCacheFormat::fp8_row> amax_rows(blocks, block_size, kv_heads, dim);
    {
      std::vector<bf16> q = poisoned<bf16>(static_cast<std::size_t>(tokens * q_heads * dim));
      run_host(amax_rows.host_cache(), q.data());
    }
    const auto largest = [](const std::vector<float>& scales) {
      float m = 0.0f;
      for (float s : scales)
        if (!std::isnan(s)) m = std::max(m, s);
      return m;
    };
    const float k_scale = largest(amax_rows.hks);  // amax / 448 over the whole tensor
    const float v_scale = largest(amax_rows.hvs);

    for (float factor : scale_factors<F>()) {
      INFO("scale factor " << factor);
      const float key_scale = factor * k_scale;
      Caches<F> c(blocks, block_size, kv_heads, dim, key_scale, factor * v_scale);
      std::vector<bf16> q = poisoned<bf16>(static_cast<std::size_t>(tokens * q_heads * dim));
      Poisoned<bf16> dq(q.size());
      run_host(c.host_cache(), q.data());
      run(device, dqkv.data(), dqw.data(), dkw.data(), dpos.data(), dtable.data(), dslots.data(),
          c.dev_cache(), dq.data());

      // q: each element against its rotation pair's norm.
      const std::vector<bf16> gq = dq.download();
      index_t q_diff = 0;
      const index_t half = dim / 2;
      for (index_t row = 0; row < tokens * q_heads; ++row) {
        for (index_t i = 0; i < half; ++i) {
          const index_t a = row * dim + ops::rope_first<S>(i);
          const index_t b = row * dim + ops::rope_second<S>(i, half);
          const double ha = atom::to_float(q[static_cast<std::size_t>(a)]);
          const double hb = atom::to_float(q[static_cast<std::size_t>(b)]);
          const double tol = (0x1p-7 + delta) * std::hypot(ha, hb);
          for (index_t e : {a, b}) {
            const double want = atom::to_float(q[static_cast<std::size_t>(e)]);
            const double got = atom::to_float(gq[static_cast<std::size_t>(e)]);
            if (!(std::fabs(got - want) <= tol))
              FAIL("q[" << e << "]: got " << got << ", want " << want << " (tolerance " << tol
                        << ")");
            if (got != want) ++q_diff;
          }
        }
      }
      CHECK(q_diff <= tokens * q_heads * dim / 100 + 1);

      // v: bit-identical (fp8_row's scales too); fp8_tensor's scales are never written.
      require_same_bits("value", c.dv.download(), c.hv);
      require_same_bits("value scale", c.dvs.download(), c.hvs);
      const std::vector<float> gks = c.dks.download();
      if constexpr (F == KvCacheFormat::fp8_row)
        compare_scales("key scale", gks, c.hks, delta);  // within delta relative
      else
        require_same_bits("key scale", gks, c.hks);
      if constexpr (F == KvCacheFormat::fp8_tensor)
        if (factor < 1.0f) CHECK(saturated(c.hk) > tokens);
      // k: within one rounding step of the format (FP8: 1/8 of the value, or the subnormal step;
      // bf16: one ulp) plus (delta + rounded) of the row's amax.
      const auto gk = c.dk.download();
      for (std::size_t i = 0; i < gk.size(); ++i) {
        const std::size_t r = i / static_cast<std::size_t>(dim);
        const float row_scale = amax_rows.hks[r];
        if (std::isnan(row_scale)) {
          REQUIRE(bits(gk[i]) == bits(c.hk[i]));  // untouched slots keep the poison on both sides
          continue;
        }
        const double amax = static_cast<double>(row_scale) * 448.0;
        double want = 0.0, got = 0.0, step = 0.0;
        if constexpr (F == KvCacheFormat::fp8_row) {
          want = atom::to_float(c.hk[i]) * static_cast<double>(c.hks[r]);
          got = atom::to_float(gk[i]) * static_cast<double>(gks[r]);
          step = 0.125 * std::fabs(want) + c.hks[r] * 0x1p-8;
        } else if constexpr (F == KvCacheFormat::fp8_tensor) {
          want = atom::to_float(c.hk[i]) * static_cast<double>(key_scale);
          got = atom::to_float(gk[i]) * static_cast<double>(key_scale);
          step = 0.125 * std::fabs(want) + key_scale * 0x1p-8;
        } else {
          want = atom::to_float(c.hk[i]);
          got = atom::to_float(gk[i]);
          step = bf16_ulp(std::max(std::fabs(got), std::fabs(want)));
        }
        const double tol = step + (delta + rounded) * amax;
        if (!(std::fabs(got - want) <= tol))
          FAIL("key[" << i << "]: got " << got << ", want " << want << " (tolerance " << tol
                      << ")");
      }
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("gpu qk_norm_rope_cache_fused (neox) matches the host", "",
                   Format<KvCacheFormat::fp8_row>, Format<KvCacheFormat::fp8_tensor>,
                   Format<KvCacheFormat::bf16>) {
  constexpr KvCacheFormat F = TestType::value;
  check_qwen<RopeStyle::neox, F>(Variant::fused, 32, 4, 128);
  check_qwen<RopeStyle::neox, F>(Variant::fused, 5, 1, 18);
  // The vector kernel's other lane counts: 32 lanes a head, and 10 of 16 lanes holding values.
  check_qwen<RopeStyle::neox, F>(Variant::fused, 8, 2, 256);
  check_qwen<RopeStyle::neox, F>(Variant::fused, 5, 1, 80);
}

TEMPLATE_TEST_CASE("gpu qk_norm_rope_cache_fused (interleaved) matches the host", "",
                   Format<KvCacheFormat::fp8_row>, Format<KvCacheFormat::fp8_tensor>,
                   Format<KvCacheFormat::bf16>) {
  constexpr KvCacheFormat F = TestType::value;
  check_qwen<RopeStyle::interleaved, F>(Variant::fused, 16, 2, 64);
  check_qwen<RopeStyle::interleaved, F>(Variant::fused, 3, 1, 18);
}

TEMPLATE_TEST_CASE("gpu qk_norm_rope_cache_separate matches the host", "",
                   Format<KvCacheFormat::fp8_row>, Format<KvCacheFormat::fp8_tensor>,
                   Format<KvCacheFormat::bf16>) {
  constexpr KvCacheFormat F = TestType::value;
  check_qwen<RopeStyle::neox, F>(Variant::separate, 32, 4, 128);
  check_qwen<RopeStyle::interleaved, F>(Variant::separate, 5, 1, 18);
}
