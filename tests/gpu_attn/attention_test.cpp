// GPU MLA and GQA decode attention against the host ops on the same inputs: ragged contexts over
// shuffled block tables, both block sizes, strided queries (q_pe a slice of a wider q, GQA q a
// slice of a packed qkv), the unaligned-cache path, GQA over each cache format (fp8_row,
// fp8_tensor, bf16), the NaN contract for bad lengths and block ids, and the shape checks.
//
// Bound (atom/ops/gpu/attention.hpp): the GPU reassociates the fp32 sums (partial dots, online
// softmax, split combine), so an element may land on the other side of a bf16 rounding boundary and
// carry float error relative to the values it averages: |gpu - host| <=
// ulp_bf16(max(|gpu|, |host|)) + e * max|v|, v over the cache's values. The tensor-core kernels
// also round each softmax weight before the weighted sum of values, while the normalizing sum stays
// in float: a weighted mean of values with relative weight errors <= r moves by at most r * max|v|.
// MLA rounds to bf16 (r = 2^-9): e = 2^-8 (2^-9 plus the float terms, with room). GQA rounds to f16
// (r = 2^-11; the weights are scaled so that the largest is 2^15, so that the f16 subnormals,
// absolute error <= 2^-25 each, add at most n * 2^-40 of the largest, below 2^-26 for n < 2^14);
// its queries and FP8 codes convert to f16 exactly: e = 2^-10 (2^-11 plus the float terms, with
// room); fp8_tensor takes the same kernels and bound (its one scale is read as a row's through
// strides 0). GQA over the bf16 cache on the tensor-core kernel rounds to bf16: its queries and
// values enter the mma as they are (each score a sum of exact bf16 x bf16 products in fp32,
// reassociated: the SIMT kernel's float terms below); its weights are 2^(t - m) <= 1 unscaled (bf16
// has float's exponent range; weights under 2^-126, in the subnormals, are under 2^-126 of the
// largest, 1, and add at most n * 2^-134), each rounded with relative error at most
// 2^-8 / (1 + 2^-8) < 2^-8 - 2^-16.01 (bf16's 8 significant bits), so the mean moves by less than
// that times max|v|: e = 2^-8 leaves 2^-16.01 * max|v| for the float terms, which the SIMT analysis
// below puts at about 2^-17 (the size of random roundings, taking the tensor cores' fp32 sums as
// accurate as float additions). The SIMT kernel (AMD, and shapes the tensor-core GQA kernel does
// not take) is float reassociation only and stays far inside all three.
//
// GQA over the bf16 cache on shapes the tensor-core kernel does not take (head_dim not 64 or 128,
// block size not a multiple of 16, rows not 16-byte aligned) runs the SIMT kernel, which stages
// exactly the floats the host reads, so the two differ by float reassociation only: each score is a
// sum of D products, exact in float (bf16 x bf16), added in another order (16 lane partials and a
// butterfly against one ordered sum). Its rounding errors, each within half an ulp of a partial sum
// (|partial| < 2^6 for these inputs: an ulp of 2^-18), add like a random walk, about sqrt(D / 12)
// ulps rms on either side; times the softmax scale (<= 2^-3) a score's error d is about 2^-19.5 rms
// for D = 128. It changes a softmax weight relatively by d and the weighted mean of the values by
// at most d / 2 * (max v - min v) <= d * max|v| (two rows of equal weight are the worst case); the
// sums over the context (per lane, per tile, per split and in the combine) and expf (2 ulp) add a
// few float ulps of max|v|. e = 2^-17 covers 5 rms of d (2^-17.2) times max|v| / 2 and those ulps
// with room. It is not a worst-case bound (that grows as D and n ulps) but the size of random
// roundings; an emulation of the kernel's operation order on such data (2.5M outputs) stays below
// 2^-20.5. NaN never passes.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "atom/gpu/device.hpp"
#include "atom/ops/attention.hpp"
#include "atom/ops/gpu/attention.hpp"

namespace {

namespace ops = atom::ops;
namespace gpu = atom::gpu;
using atom::bf16;
using atom::fp8_e4m3;
using atom::index_t;
using atom::make_view;

const ops::Host host;
const ops::Gpu device{};

// splitmix64, seeded from Catch's seed.
class Rng {
 public:
  explicit Rng(std::uint64_t salt) : state_(Catch::rngSeed() * 0x9e3779b97f4a7c15ull + salt) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform magnitude in [lo, hi), random sign: never zero.
  float nonzero(float lo, float hi) {
    const std::uint64_t r = next();
    const float m = lo + (hi - lo) * static_cast<float>(r >> 40) * 0x1p-24f;
    return (r & 1) ? -m : m;
  }
  std::vector<bf16> bf16s(index_t n) {
    std::vector<bf16> v(static_cast<std::size_t>(n));
    for (bf16& x : v) x = atom::to_bf16(nonzero(0.01f, 2.0f));
    return v;
  }

 private:
  std::uint64_t state_;
};

std::size_t sz(index_t n) {
  return static_cast<std::size_t>(n);
}

bool is_nan(bf16 x) {
  return (x.bits & 0x7fff) > 0x7f80;
}

void require_gpu() {
  INFO("these tests need a GPU of the built backend (" << gpu::backend_name() << ")");
  REQUIRE(gpu::device_count() > 0);
}

template <class T>
std::vector<T> poison(std::size_t n) {
  std::vector<T> v(n);
  std::memset(static_cast<void*>(v.data()), 0xff, n * sizeof(T));
  return v;
}

// A block table for the given context lengths: every token's blocks drawn from one shuffled pool
// (so neighbours in a context are far apart in the cache), unused entries -1 (never read).
struct Table {
  index_t num_blocks = 0;
  index_t cols = 0;
  std::vector<std::int32_t> ids;
};

Table make_table(Rng& rng, const std::vector<std::int32_t>& lens, index_t block_size,
                 index_t spare_cols) {
  Table t;
  index_t needed = 0;
  for (std::int32_t n : lens) {
    const index_t blocks = (n + block_size - 1) / block_size;
    needed += blocks;
    t.cols = std::max(t.cols, blocks);
  }
  t.cols += spare_cols;
  t.num_blocks = needed + 3;
  std::vector<std::int32_t> pool(sz(t.num_blocks));
  for (std::size_t i = 0; i < pool.size(); ++i) pool[i] = static_cast<std::int32_t>(i);
  for (std::size_t i = pool.size() - 1; i > 0; --i) std::swap(pool[i], pool[rng.next() % (i + 1)]);
  t.ids.assign(lens.size() * sz(t.cols), -1);
  std::size_t next = 0;
  for (std::size_t tok = 0; tok < lens.size(); ++tok)
    for (index_t b = 0; b < (lens[tok] + block_size - 1) / block_size; ++b)
      t.ids[tok * sz(t.cols) + sz(b)] = pool[next++];
  return t;
}

// Lengths cycling through the ones that matter (1, 17, 769, 4097) and random ones up to 2048; a
// single token gets 4097.
std::vector<std::int32_t> ragged_lengths(Rng& rng, index_t tokens) {
  const std::int32_t fixed[] = {1, 17, 769, 4097};
  if (tokens == 1) return {4097};
  std::vector<std::int32_t> lens(sz(tokens));
  for (std::size_t t = 0; t < lens.size(); ++t)
    lens[t] = t % 2 == 0 ? fixed[(t / 2) % 4] : static_cast<std::int32_t>(1 + rng.next() % 2048);
  return lens;
}

// A decode batch (ops/decode_batch.hpp) over a table with one row per sequence, and which tokens
// must come out NaN.
struct Batch {
  std::vector<std::int32_t> starts;            // [S + 1]
  std::vector<std::int32_t> lens;              // [S]
  Table table;                                 // [S, cols]
  std::vector<std::int64_t> positions, slots;  // [T]; slot -1: padding
  std::vector<bool> bad;                       // [T]

  index_t tokens() const { return static_cast<index_t>(slots.size()); }
  index_t sequences() const { return static_cast<index_t>(lens.size()); }
  ops::DecodeBatch view(const std::int32_t* starts_p, const std::int32_t* lens_p,
                        const std::int32_t* table_p, const std::int64_t* positions_p,
                        const std::int64_t* slots_p) const {
    return {make_view(starts_p, sequences() + 1), make_view(lens_p, sequences()),
            make_view(table_p, sequences(), table.cols), make_view(positions_p, tokens()),
            make_view(slots_p, tokens())};
  }
  // The sequence that holds token t and the rows it attends to (-1, 0: none).
  std::pair<index_t, index_t> context(index_t t) const {
    for (index_t s = 0; s < sequences(); ++s)
      if (starts[sz(s)] <= t && t < starts[sz(s) + 1])
        return {s, lens[sz(s)] - (starts[sz(s) + 1] - 1 - t)};
    return {-1, 0};
  }
};

// One query token per sequence (plain decode), the given bad tokens.
Batch one_token_each(const std::vector<std::int32_t>& lens, Table table,
                     std::vector<bool> bad = {}) {
  Batch b{{}, lens, std::move(table), {}, {}, std::move(bad)};
  for (std::size_t s = 0; s <= lens.size(); ++s) b.starts.push_back(static_cast<std::int32_t>(s));
  for (std::int32_t n : lens) {
    b.positions.push_back(n - 1);
    b.slots.push_back(0);  // any slot but -1: attention does not write
  }
  if (b.bad.empty()) b.bad.assign(lens.size(), false);
  return b;
}

// Sequence s with counts[s] query tokens (the last rows of its context); every 5th token of a
// sequence with several padded (slot -1); `padding` tokens past the last sequence.
Batch with_queries(const std::vector<std::int32_t>& lens, const std::vector<index_t>& counts,
                   Table table, index_t padding) {
  Batch b{{0}, lens, std::move(table), {}, {}, {}};
  for (std::size_t s = 0; s < lens.size(); ++s) {
    for (index_t j = 0; j < counts[s]; ++j) {
      b.positions.push_back(lens[s] - counts[s] + j);
      b.slots.push_back(counts[s] > 1 && b.slots.size() % 5 == 4 ? -1 : 0);
    }
    b.starts.push_back(static_cast<std::int32_t>(b.slots.size()));
  }
  for (index_t i = 0; i < padding; ++i) {
    b.positions.push_back(0);
    b.slots.push_back(-1);
  }
  b.bad.assign(b.slots.size(), false);
  return b;
}

// The host reference's batch: the good tokens `good`, each a sequence of its own with its causal
// context over its sequence's row (padding stays padding: its context is 1 over row 0).
struct HostBatch {
  std::vector<std::int32_t> starts, lens, ids;
  std::vector<std::int64_t> positions, slots;
  index_t cols;
  ops::DecodeBatch view() const {
    const auto n = static_cast<index_t>(lens.size());
    return {make_view(starts.data(), n + 1), make_view(lens.data(), n),
            make_view(ids.data(), n, cols), make_view(positions.data(), n),
            make_view(slots.data(), n)};
  }
};

HostBatch host_batch(const Batch& b, const std::vector<index_t>& good) {
  HostBatch h{{0}, {}, {}, {}, {}, b.table.cols};
  for (index_t t : good) {
    auto [s, n] = b.context(t);
    const bool pad = s < 0 || b.slots[sz(t)] < 0;
    h.lens.push_back(pad ? 1 : static_cast<std::int32_t>(n));
    const auto row = b.table.ids.begin() + (s < 0 ? 0 : s) * b.table.cols;
    h.ids.insert(h.ids.end(), row, row + b.table.cols);
    h.positions.push_back(0);
    h.slots.push_back(pad ? -1 : 0);
    h.starts.push_back(static_cast<std::int32_t>(h.lens.size()));
  }
  return h;
}

// The batch's arrays on the device.
struct DeviceBatch {
  gpu::Buffer<std::int32_t> starts, lens, ids;
  gpu::Buffer<std::int64_t> positions, slots;
  explicit DeviceBatch(const Batch& b)
      : starts(b.starts), lens(b.lens), ids(b.table.ids), positions(b.positions), slots(b.slots) {}
  ops::DecodeBatch view(const Batch& b) const {
    return b.view(starts.data(), lens.data(), ids.data(), positions.data(), slots.data());
  }
};

double bf16_ulp(double x) {
  const double a = std::fabs(x);
  return a < 0x1p-126 ? 0x1p-133 : std::ldexp(1.0, std::ilogb(a) - 7);
}

// The value term of the bound, e above, per op (GQA over the bf16 cache: the tensor-core
// kernel's, the SIMT kernel's).
constexpr double mla_value_error = 0x1p-8;
constexpr double gqa_value_error = 0x1p-10;
constexpr double gqa_bf16_mma_value_error = 0x1p-8;
constexpr double gqa_bf16_value_error = 0x1p-17;

// Compares every element; the batch's bad tokens must be NaN in all their rows, its padded tokens
// exactly zero (the host's are zero too).
void compare(const std::string& what, const std::vector<bf16>& got, const std::vector<bf16>& want,
             index_t row_elems, double vmax, double value_error, const Batch& b) {
  const std::vector<bool>& bad_tokens = b.bad;
  REQUIRE(got.size() == want.size());
  const double float_err = value_error * vmax;
  index_t exact = 0;
  double worst = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const std::size_t token = i / sz(row_elems);
    if (!bad_tokens.empty() && bad_tokens[token]) {
      if (!is_nan(got[i])) FAIL(what << "[" << i << "]: token " << token << " must be NaN");
      continue;
    }
    if (is_nan(got[i]) || is_nan(want[i]))
      FAIL(what << "[" << i << "]: got bits " << got[i].bits << ", want " << want[i].bits);
    const bool padded = b.slots[token] < 0 || b.context(static_cast<index_t>(token)).first < 0;
    if (padded && (got[i].bits != 0 || want[i].bits != 0))
      FAIL(what << "[" << i << "]: token " << token << " is padding, must be zero");
    const double g = atom::to_float(got[i]);
    const double w = atom::to_float(want[i]);
    const double diff = std::fabs(g - w);
    const double allowed = bf16_ulp(std::max(std::fabs(g), std::fabs(w))) + float_err;
    if (!(diff <= allowed))
      FAIL(what << "[" << i << "]: got " << g << ", want " << w << " (allowed " << allowed << ")");
    worst = std::max(worst, diff / allowed);
    if (got[i].bits == want[i].bits) ++exact;
  }
  INFO(what << ": " << exact << " of " << got.size() << " bit-identical, worst " << worst
            << " of the bound");
  SUCCEED();
}

struct MlaCase {
  index_t heads = 16;
  index_t kv_lora = 512;
  index_t rope = 64;
  index_t block_size = 16;
  bool aligned_cache = true;
  float scale = 0.0721f;
};

// Runs both backends on the same inputs; the batch as given (bad tokens allowed: the host then
// runs on the good tokens only, each as a sequence of its own, and bad tokens must be NaN).
void run_mla(Rng& rng, const MlaCase& c, const Batch& b) {
  const index_t tokens = b.tokens();
  const Table& table = b.table;
  const index_t width = c.kv_lora + c.rope;
  // q_pe is the rope slice of a per-head [nope | rope] q, as in the pipeline.
  const index_t nope = 128;
  const index_t q_width = nope + c.rope;
  const std::vector<bf16> q_latent = rng.bf16s(tokens * c.heads * c.kv_lora);
  const std::vector<bf16> q_full = rng.bf16s(tokens * c.heads * q_width);
  // The unaligned cache is a view into rows 4 elements wider, 1 element in (no 16-byte loads).
  const index_t row_stride = c.aligned_cache ? width : width + 4;
  const index_t offset = c.aligned_cache ? 0 : 1;
  const std::vector<bf16> cache_mem = rng.bf16s(table.num_blocks * c.block_size * row_stride + 4);
  double vmax = 0.0;
  for (bf16 x : cache_mem) vmax = std::max(vmax, static_cast<double>(std::fabs(atom::to_float(x))));

  const auto q_latent_view = [&](const bf16* p) {
    return make_view(p, tokens, c.heads, c.kv_lora);
  };
  const auto q_pe_view = [&](const bf16* p) {
    return atom::View3<const bf16>{
        p + nope, {tokens, c.heads, c.rope}, {c.heads * q_width, q_width, 1}};
  };
  const auto cache_view = [&](const bf16* p) {
    return atom::View3<const bf16>{p + offset,
                                   {table.num_blocks, c.block_size, width},
                                   {c.block_size * row_stride, row_stride, 1}};
  };

  // Host: on the good tokens only (bad ones would be rejected).
  std::vector<bf16> want(sz(tokens * c.heads * c.kv_lora));
  {
    std::vector<index_t> good;
    for (index_t t = 0; t < tokens; ++t)
      if (!b.bad[sz(t)]) good.push_back(t);
    const index_t g = static_cast<index_t>(good.size());
    std::vector<bf16> ql(sz(g * c.heads * c.kv_lora)), qf(sz(g * c.heads * q_width));
    for (index_t i = 0; i < g; ++i) {
      const index_t t = good[sz(i)];
      std::copy_n(&q_latent[sz(t * c.heads * c.kv_lora)], c.heads * c.kv_lora,
                  &ql[sz(i * c.heads * c.kv_lora)]);
      std::copy_n(&q_full[sz(t * c.heads * q_width)], c.heads * q_width,
                  &qf[sz(i * c.heads * q_width)]);
    }
    const HostBatch hb = host_batch(b, good);
    std::vector<bf16> out(sz(g * c.heads * c.kv_lora));
    ops::mla_decode(host, make_view(static_cast<const bf16*>(ql.data()), g, c.heads, c.kv_lora),
                    atom::View3<const bf16>{
                        qf.data() + nope, {g, c.heads, c.rope}, {c.heads * q_width, q_width, 1}},
                    cache_view(cache_mem.data()), hb.view(), c.scale,
                    make_view(out.data(), g, c.heads, c.kv_lora));
    for (index_t i = 0; i < g; ++i)
      std::copy_n(&out[sz(i * c.heads * c.kv_lora)], c.heads * c.kv_lora,
                  &want[sz(good[sz(i)] * c.heads * c.kv_lora)]);
  }

  const gpu::Buffer<bf16> d_ql(q_latent), d_qf(q_full), d_cache(cache_mem);
  const DeviceBatch d_batch(b);
  gpu::Buffer<bf16> d_out(poison<bf16>(want.size()));
  ops::mla_decode(device, q_latent_view(d_ql.data()), q_pe_view(d_qf.data()),
                  cache_view(d_cache.data()), d_batch.view(b), c.scale,
                  make_view(d_out.data(), tokens, c.heads, c.kv_lora));
  compare("mla_decode", d_out.download(), want, c.heads * c.kv_lora, vmax, mla_value_error, b);
}

struct GqaCase {
  index_t q_heads = 32;
  index_t kv_heads = 4;
  index_t dim = 128;
  index_t block_size = 16;
  float scale = 0.0884f;
  index_t head_pad = 0;      // codes between kv heads: 8 leaves rows 8-byte but not 16-byte aligned
  bool wide_scales = false;  // value scales from 2^-32 to 2^7, one in 64 zero
  index_t q_offset = 0;      // q starts this many elements into its qkv row (1: not aligned)
  float key_scale = 2.0f / 448.0f;  // fp8_tensor's scales
  float value_scale = 2.0f / 448.0f;
};

using ops::KvCacheFormat;
template <KvCacheFormat F>
using Format = std::integral_constant<KvCacheFormat, F>;

// A GQA case's cache in format F: random finite FP8 codes (never zero) or bf16 values, values up to
// about 2 (fp8_tensor: 448 times its scale). fp8_row: a scale per row (`wide`: value scales from
// 2^-32 to 2^7, one in 64 zero); fp8_tensor: the case's two scales; bf16: none. Rows of dim
// elements, `pad` more (also random: never read) between kv heads.
template <KvCacheFormat F>
struct RandomCache {
  using Code = typename ops::ConstKvCache<F>::Code;
  std::vector<Code> key, value;
  std::vector<float> key_scale, value_scale;
  double vmax = 0.0;

  RandomCache(Rng& rng, const GqaCase& c, index_t slots) {
    const std::size_t row = sz(c.dim + c.head_pad);
    const auto codes = [&](std::vector<Code>& v) {
      v.resize(sz(slots * c.kv_heads) * row);
      for (auto& x : v) {
        if constexpr (F == KvCacheFormat::bf16) {
          x = atom::to_bf16(rng.nonzero(0.01f, 2.0f));
        } else {
          auto b = static_cast<std::uint8_t>(rng.next());
          if ((b & 0x7f) == 0x7f || (b & 0x7f) == 0) b = static_cast<std::uint8_t>(b ^ 0x21);
          x = fp8_e4m3{b};
        }
      }
    };
    const auto row_scales = [&](std::vector<float>& v, bool spread) {
      v.resize(sz(slots * c.kv_heads));
      for (auto& x : v) {
        if (!spread) {
          x = std::fabs(rng.nonzero(0.002f, 0.0045f));
          continue;
        }
        const std::uint64_t r = rng.next();
        x = r % 64 == 0 ? 0.0f
                        : std::ldexp(std::fabs(rng.nonzero(0.5f, 1.0f)),
                                     static_cast<int>(r / 64 % 40) - 32);
      }
    };
    codes(key);
    codes(value);
    if constexpr (F == KvCacheFormat::fp8_row) {
      row_scales(key_scale, false);
      row_scales(value_scale, c.wide_scales);
    } else if constexpr (F == KvCacheFormat::fp8_tensor) {
      key_scale = {c.key_scale};
      value_scale = {c.value_scale};
    }
    for (std::size_t i = 0; i < value.size(); ++i) {
      if (i % row >= sz(c.dim)) continue;
      double x = atom::to_float(value[i]);
      if constexpr (F == KvCacheFormat::fp8_row) x *= value_scale[i / row];
      if constexpr (F == KvCacheFormat::fp8_tensor) x *= value_scale[0];
      vmax = std::max(vmax, std::fabs(x));
    }
  }
};

// The cache of a case over the given memory: rows head_stride apart, fp8_tensor's scales seen
// through strides 0 (as per_tensor_fp8_cache builds them), bf16's scale views empty.
template <KvCacheFormat F, class Code>
ops::ConstKvCache<F> gqa_cache_view(const GqaCase& c, index_t num_blocks, const Code* k,
                                    const Code* v, const float* ks, const float* vs) {
  const index_t head_stride = c.dim + c.head_pad;
  const auto codes = [&](const Code* p) {
    return atom::View4<const Code>{
        p,
        {num_blocks, c.block_size, c.kv_heads, c.dim},
        {c.block_size * c.kv_heads * head_stride, c.kv_heads * head_stride, head_stride, 1}};
  };
  if constexpr (F == KvCacheFormat::fp8_row) {
    return {codes(k), codes(v), make_view(ks, num_blocks, c.block_size, c.kv_heads),
            make_view(vs, num_blocks, c.block_size, c.kv_heads)};
  } else if constexpr (F == KvCacheFormat::fp8_tensor) {
    const auto one = [&](const float* p) {
      return atom::View3<const float>{p, {num_blocks, c.block_size, c.kv_heads}, {0, 0, 0}};
    };
    return {codes(k), codes(v), one(ks), one(vs)};
  } else {
    return {codes(k), codes(v), {}, {}};
  }
}

// Whether a GQA case over the bf16 cache takes the tensor-core kernel on NVIDIA: head_dim 64 or
// 128, block size a multiple of 16, rows (head_stride bf16 values apart; the buffers are 256-byte
// aligned) 16-byte aligned. Elsewhere (AMD) it takes the SIMT kernel, inside the looser bound.
bool bf16_takes_mma(const GqaCase& c) {
  return (c.dim == 64 || c.dim == 128) && c.block_size % 16 == 0 &&
         (c.dim + c.head_pad) * 2 % 16 == 0;
}

template <KvCacheFormat F = KvCacheFormat::fp8_row>
void run_gqa(Rng& rng, const GqaCase& c, const Batch& b) {
  const index_t tokens = b.tokens();
  const Table& table = b.table;
  // q is the q part of a packed [q | k | v] projection row.
  const index_t row = (c.q_heads + 2 * c.kv_heads) * c.dim;
  const std::vector<bf16> qkv = rng.bf16s(tokens * row);
  const RandomCache<F> cache(rng, c, table.num_blocks * c.block_size);
  const auto q_view = [&](const bf16* p, index_t n) {
    return atom::View3<const bf16>{p + c.q_offset, {n, c.q_heads, c.dim}, {row, c.dim, 1}};
  };

  std::vector<bf16> want(sz(tokens * c.q_heads * c.dim));
  {
    std::vector<index_t> good;
    for (index_t t = 0; t < tokens; ++t)
      if (!b.bad[sz(t)]) good.push_back(t);
    const index_t g = static_cast<index_t>(good.size());
    std::vector<bf16> q(sz(g * row));
    for (index_t i = 0; i < g; ++i) {
      const index_t t = good[sz(i)];
      std::copy_n(&qkv[sz(t * row)], row, &q[sz(i * row)]);
    }
    const HostBatch hb = host_batch(b, good);
    std::vector<bf16> out(sz(g * c.q_heads * c.dim));
    ops::gqa_decode(host, q_view(q.data(), g),
                    gqa_cache_view<F>(c, table.num_blocks, cache.key.data(), cache.value.data(),
                                      cache.key_scale.data(), cache.value_scale.data()),
                    hb.view(), c.scale, make_view(out.data(), g, c.q_heads, c.dim));
    for (index_t i = 0; i < g; ++i)
      std::copy_n(&out[sz(i * c.q_heads * c.dim)], c.q_heads * c.dim,
                  &want[sz(good[sz(i)] * c.q_heads * c.dim)]);
  }

  const gpu::Buffer<bf16> d_qkv(qkv);
  const gpu::Buffer<typename RandomCache<F>::Code> d_key(cache.key), d_value(cache.value);
  const gpu::Buffer<float> d_ks(cache.key_scale), d_vs(cache.value_scale);
  const DeviceBatch d_batch(b);
  gpu::Buffer<bf16> d_out(poison<bf16>(want.size()));
  ops::gqa_decode(device, q_view(d_qkv.data(), tokens),
                  gqa_cache_view<F>(c, table.num_blocks, d_key.data(), d_value.data(), d_ks.data(),
                                    d_vs.data()),
                  d_batch.view(b), c.scale, make_view(d_out.data(), tokens, c.q_heads, c.dim));
  compare(std::string("gqa_decode ") + std::string(ops::kv_cache_format_name(F)), d_out.download(),
          want, c.q_heads * c.dim, cache.vmax,
          F != KvCacheFormat::bf16
              ? gqa_value_error
              : (bf16_takes_mma(c) ? gqa_bf16_mma_value_error : gqa_bf16_value_error),
          b);
}

const index_t token_counts[] = {1, 3, 17, 64};

}  // namespace

TEST_CASE("gpu mla_decode matches the host (16 heads, ragged contexts, both block sizes)") {
  require_gpu();
  Rng rng(1);
  for (index_t block_size : {16, 64}) {
    for (index_t tokens : token_counts) {
      INFO("tokens " << tokens << ", block_size " << block_size);
      MlaCase c;
      c.block_size = block_size;
      const std::vector<std::int32_t> lens = ragged_lengths(rng, tokens);
      run_mla(rng, c, one_token_each(lens, make_table(rng, lens, block_size, 2)));
    }
  }
}

TEST_CASE("gpu mla_decode matches the host (128 heads, one long context over 8k)") {
  require_gpu();
  Rng rng(2);
  MlaCase c;
  c.heads = 128;
  c.block_size = 64;
  for (index_t tokens : {1, 3, 17}) {
    INFO("tokens " << tokens);
    const std::vector<std::int32_t> lens = ragged_lengths(rng, tokens);
    run_mla(rng, c, one_token_each(lens, make_table(rng, lens, c.block_size, 0)));
  }
  c.block_size = 16;
  const std::vector<std::int32_t> long_context{8209};
  run_mla(rng, c, one_token_each(long_context, make_table(rng, long_context, c.block_size, 1)));
}

TEST_CASE("gpu mla_decode: 128 heads of one token, splits the context leaves unused or uneven") {
  require_gpu();
  Rng rng(6);
  MlaCase c;
  c.heads = 128;
  // A short context in a long table row (most splits past it, the last used one partly), one
  // that ends one row into its second split, and one over many splits that the combine's lanes
  // share unevenly.
  for (const auto& [len, block_size, spare] :
       {std::tuple{70, 64, 40}, std::tuple{65, 16, 3}, std::tuple{3001, 16, 7}}) {
    INFO("context " << len << ", block_size " << block_size << ", spare blocks " << spare);
    c.block_size = block_size;
    const std::vector<std::int32_t> lens{len};
    run_mla(rng, c, one_token_each(lens, make_table(rng, lens, block_size, spare)));
  }
}

TEST_CASE("gpu mla_decode: other widths, 64, 32, 24 and 80 heads, unaligned cache rows") {
  require_gpu();
  Rng rng(3);
  MlaCase small;
  small.heads = 32;
  small.kv_lora = 128;
  small.rope = 32;
  small.aligned_cache = false;
  std::vector<std::int32_t> lens{1, 17, 769, 300};
  run_mla(rng, small, one_token_each(lens, make_table(rng, lens, 16, 1)));
  MlaCase tp;
  tp.heads = 64;
  tp.block_size = 64;
  tp.aligned_cache = false;
  lens = {4097, 33};
  run_mla(rng, tp, one_token_each(lens, make_table(rng, lens, 64, 0)));
  // Head counts that leave the last head group part empty; a key width (152) that is not a
  // multiple of 16 and values (136) that end inside a warp's columns.
  MlaCase odd;
  odd.heads = 24;
  odd.kv_lora = 136;
  odd.rope = 16;
  lens = {1, 2049, 95};
  run_mla(rng, odd, one_token_each(lens, make_table(rng, lens, 16, 1)));
  odd.heads = 80;
  odd.aligned_cache = false;
  lens = {3, 1000};
  run_mla(rng, odd, one_token_each(lens, make_table(rng, lens, 16, 0)));
  MlaCase wide;
  wide.heads = 80;
  wide.block_size = 64;
  lens = {2000, 5, 64};
  run_mla(rng, wide, one_token_each(lens, make_table(rng, lens, 64, 1)));
}

// On NVIDIA the first six shapes and the last take the tensor-core kernel (groups of 8, 1, 32 =
// four blocks of 8 heads, and 3; value scales over 40 binades, with zeros, and queries not
// 16-byte aligned); head_dim 96, block size 8 and rows not 16-byte aligned take the SIMT kernel.
TEST_CASE("gpu gqa_decode matches the host (Qwen3 32/4 heads and 8/8, head_dim 128 and 64)") {
  require_gpu();
  Rng rng(4);
  const GqaCase shapes[] = {{32, 4, 128, 16, 0.0884f},    {8, 8, 128, 64, 0.0884f},
                            {32, 4, 64, 64, 0.125f},      {8, 8, 64, 16, 0.125f},
                            {64, 2, 128, 32, 0.0884f},    {12, 4, 64, 16, 0.125f},
                            {16, 2, 96, 16, 0.102f},      {32, 4, 128, 8, 0.0884f},
                            {32, 4, 128, 16, 0.0884f, 8}, {32, 4, 128, 16, 0.0884f, 0, true, 1}};
  for (const GqaCase& c : shapes) {
    for (index_t tokens : token_counts) {
      INFO("q_heads " << c.q_heads << ", kv_heads " << c.kv_heads << ", dim " << c.dim
                      << ", block_size " << c.block_size << ", head_pad " << c.head_pad
                      << ", wide scales " << c.wide_scales << ", q offset " << c.q_offset
                      << ", tokens " << tokens);
      const std::vector<std::int32_t> lens = ragged_lengths(rng, tokens);
      run_gqa(rng, c, one_token_each(lens, make_table(rng, lens, c.block_size, 1)));
    }
  }
  const std::vector<std::int32_t> long_context{12289};
  run_gqa(rng, GqaCase{}, one_token_each(long_context, make_table(rng, long_context, 16, 0)));
}

// The same shapes over the other formats (wide_scales is fp8_row's). fp8_tensor takes the kernels
// fp8_row takes, its one scale read through strides 0, under the same bound; its scales are 2/448
// (values up to 2) and, in a second pass, 0.01 for the keys and 1.5 * 2^-36 for the values (the
// tensor-core kernel folds the value scale into the weights' exponent). bf16 takes the tensor-core
// kernel on the shapes fp8_tensor does and on head_pad 8 (its rows stay 16-byte aligned), under
// the bf16 tensor-core bound, and the SIMT kernel on head_dim 96, block size 8 and head_pad 4,
// under the SIMT bound. The last shape's rows (head_pad 4) take no 8-element loads in either
// format.
TEMPLATE_TEST_CASE("gpu gqa_decode over fp8_tensor and bf16 caches matches the host", "",
                   Format<KvCacheFormat::fp8_tensor>, Format<KvCacheFormat::bf16>) {
  require_gpu();
  constexpr KvCacheFormat F = TestType::value;
  Rng rng(8 + static_cast<int>(F));
  const GqaCase shapes[] = {{32, 4, 128, 16, 0.0884f},    {8, 8, 128, 64, 0.0884f},
                            {32, 4, 64, 64, 0.125f},      {8, 8, 64, 16, 0.125f},
                            {64, 2, 128, 32, 0.0884f},    {12, 4, 64, 16, 0.125f},
                            {16, 2, 96, 16, 0.102f},      {32, 4, 128, 8, 0.0884f},
                            {32, 4, 128, 16, 0.0884f, 8}, {32, 4, 128, 16, 0.0884f, 0, false, 1},
                            {32, 4, 128, 16, 0.0884f, 4}};
  std::vector<std::pair<float, float>> scales{{2.0f / 448.0f, 2.0f / 448.0f}};
  if (F == KvCacheFormat::fp8_tensor) scales.emplace_back(0.01f, 0x1.8p-36f);
  for (const auto& [key_scale, value_scale] : scales) {
    for (GqaCase c : shapes) {
      c.key_scale = key_scale;
      c.value_scale = value_scale;
      for (index_t tokens : token_counts) {
        INFO(ops::kv_cache_format_name(F)
             << ": q_heads " << c.q_heads << ", kv_heads " << c.kv_heads << ", dim " << c.dim
             << ", block_size " << c.block_size << ", head_pad " << c.head_pad << ", q offset "
             << c.q_offset << ", scales " << key_scale << " / " << value_scale << ", tokens "
             << tokens);
        const std::vector<std::int32_t> lens = ragged_lengths(rng, tokens);
        run_gqa<F>(rng, c, one_token_each(lens, make_table(rng, lens, c.block_size, 1)));
      }
    }
  }
  const std::vector<std::int32_t> long_context{12289};
  run_gqa<F>(rng, GqaCase{}, one_token_each(long_context, make_table(rng, long_context, 16, 0)));
}

namespace {

// Tokens 1..4 are bad: length 0, length past the table row, a block id past the cache in the
// first block, a negative block id in the last block of a long context. With `padding`, short
// good tokens follow so that the batch fills the GPU without splitting the context.
struct BadBatch {
  std::vector<std::int32_t> lens;
  Table table;
  std::vector<bool> bad;
};

BadBatch bad_batch(Rng& rng, index_t block_size, index_t padding) {
  BadBatch b;
  b.lens = {300, 5, 40, 100, 3000, 77};
  for (index_t i = 0; i < padding; ++i) b.lens.push_back(static_cast<std::int32_t>(1 + i % 23));
  b.table = make_table(rng, b.lens, block_size, 0);
  const std::size_t cols = sz(b.table.cols);
  b.lens[1] = 0;
  b.lens[2] = static_cast<std::int32_t>(b.table.cols * block_size + 1);
  b.table.ids[3 * cols] = static_cast<std::int32_t>(b.table.num_blocks);
  b.table.ids[4 * cols + sz((3000 - 1) / block_size)] = -5;
  b.bad.assign(b.lens.size(), false);
  for (std::size_t t = 1; t <= 4; ++t) b.bad[t] = true;
  return b;
}

}  // namespace

TEST_CASE("gpu decode attention: bad lengths and block ids give NaN rows, other tokens exact") {
  require_gpu();
  Rng rng(5);
  for (index_t padding : {0, 700}) {
    INFO("padding tokens " << padding);
    const BadBatch mla = bad_batch(rng, MlaCase{}.block_size, padding);
    run_mla(rng, MlaCase{}, one_token_each(mla.lens, mla.table, mla.bad));
    const BadBatch gqa = bad_batch(rng, GqaCase{}.block_size, padding);
    run_gqa(rng, GqaCase{}, one_token_each(gqa.lens, gqa.table, gqa.bad));
    run_gqa<KvCacheFormat::fp8_tensor>(rng, GqaCase{},
                                       one_token_each(gqa.lens, gqa.table, gqa.bad));
    run_gqa<KvCacheFormat::bf16>(rng, GqaCase{}, one_token_each(gqa.lens, gqa.table, gqa.bad));
  }
}

TEST_CASE("gpu decode attention: sequences of several query tokens, padding, bad query starts") {
  require_gpu();
  Rng rng(7);
  // Query counts 1, 2, 3, 0 and 2 cycling over the sequences (2 is speculative decoding's); every
  // 5th token of a multi-token sequence padded; 3 padding tokens at the end. Few sequences (the
  // context split) and many (one block per token and head group).
  const index_t counts_cycle[] = {1, 2, 3, 0, 2};
  for (index_t sequences : {5, 37}) {
    INFO("sequences " << sequences);
    std::vector<std::int32_t> lens = ragged_lengths(rng, sequences);
    std::vector<index_t> counts;
    for (index_t s = 0; s < sequences; ++s) {
      counts.push_back(counts_cycle[s % 5]);
      lens[sz(s)] = std::max<std::int32_t>(lens[sz(s)], 3);
    }
    MlaCase mla;
    run_mla(rng, mla, with_queries(lens, counts, make_table(rng, lens, mla.block_size, 1), 3));
    mla.heads = 128;
    mla.block_size = 64;
    run_mla(rng, mla, with_queries(lens, counts, make_table(rng, lens, mla.block_size, 0), 3));
    for (const GqaCase& c : {GqaCase{}, GqaCase{8, 8, 64, 16, 0.125f}, GqaCase{16, 2, 96, 16}}) {
      INFO("q_heads " << c.q_heads << ", dim " << c.dim);
      run_gqa(rng, c, with_queries(lens, counts, make_table(rng, lens, c.block_size, 1), 3));
    }
    run_gqa<KvCacheFormat::bf16>(
        rng, GqaCase{},
        with_queries(lens, counts, make_table(rng, lens, GqaCase{}.block_size, 1), 3));
  }
  // Starts that do not begin at 0: the tokens before the first start are in no sequence's range
  // but before the last start, so they are NaN; the others are exact.
  const std::vector<std::int32_t> lens{40, 50, 60};
  Batch b = with_queries(lens, {1, 1, 1}, make_table(rng, lens, 16, 0), 1);
  b.slots.assign(b.slots.size(), 0);
  b.starts = {1, 2, 3, 4};
  b.bad = {true, false, false, false};
  run_mla(rng, MlaCase{}, b);
  run_gqa(rng, GqaCase{}, b);
  run_gqa<KvCacheFormat::bf16>(rng, GqaCase{}, b);
}

TEST_CASE("gpu decode attention rejects bad shapes before launching") {
  require_gpu();
  const index_t tokens = 2, heads = 4, blocks = 3, block_size = 16;
  const gpu::Buffer<bf16> q(sz(tokens * heads * 512)), pe(sz(tokens * heads * 64));
  const gpu::Buffer<bf16> cache(sz(blocks * block_size * 576));
  const gpu::Buffer<std::int32_t> table(sz(tokens * 2)), lens(sz(tokens)), starts(sz(tokens + 1));
  const gpu::Buffer<std::int64_t> slots(sz(tokens));
  gpu::Buffer<bf16> out(sz(tokens * heads * 512));
  const auto cq = make_view(static_cast<const bf16*>(q.data()), tokens, heads, 512);
  const auto cpe = make_view(static_cast<const bf16*>(pe.data()), tokens, heads, 64);
  const auto cc = make_view(static_cast<const bf16*>(cache.data()), blocks, block_size, 576);
  const ops::DecodeBatch ct{make_view(static_cast<const std::int32_t*>(starts.data()), tokens + 1),
                            make_view(static_cast<const std::int32_t*>(lens.data()), tokens),
                            make_view(static_cast<const std::int32_t*>(table.data()), tokens, 2),
                            make_view(static_cast<const std::int64_t*>(slots.data()), tokens),
                            make_view(static_cast<const std::int64_t*>(slots.data()), tokens)};
  // Output with one head too few.
  CHECK_THROWS_AS(
      ops::mla_decode(device, cq, cpe, cc, ct, 0.1f, make_view(out.data(), tokens, heads - 1, 512)),
      atom::ShapeError);
  // Slots for a different token count.
  ops::DecodeBatch short_slots = ct;
  short_slots.slots.shape[0] = 1;
  CHECK_THROWS_AS(ops::mla_decode(device, cq, cpe, cc, short_slots, 0.1f,
                                  make_view(out.data(), tokens, heads, 512)),
                  atom::ShapeError);
  // A table with another sequence count than the context lengths.
  ops::DecodeBatch short_table = ct;
  short_table.block_table.shape[0] = 1;
  CHECK_THROWS_AS(ops::mla_decode(device, cq, cpe, cc, short_table, 0.1f,
                                  make_view(out.data(), tokens, heads, 512)),
                  atom::ShapeError);
  // Cache rows not kv_lora + rope wide.
  CHECK_THROWS_AS(
      ops::mla_decode(device, cq, cpe,
                      make_view(static_cast<const bf16*>(cache.data()), blocks, block_size, 512),
                      ct, 0.1f, make_view(out.data(), tokens, heads, 512)),
      atom::ShapeError);
  // A width the kernel does not take (kv_lora 500).
  CHECK_THROWS_AS(
      ops::mla_decode(device, make_view(static_cast<const bf16*>(q.data()), tokens, heads, 500),
                      cpe, make_view(static_cast<const bf16*>(cache.data()), blocks, 8, 564), ct,
                      0.1f, make_view(out.data(), tokens, heads, 500)),
      atom::ShapeError);
  // Non-finite scale.
  CHECK_THROWS_AS(ops::mla_decode(device, cq, cpe, cc, ct, std::nanf(""),
                                  make_view(out.data(), tokens, heads, 512)),
                  atom::ShapeError);

  const gpu::Buffer<fp8_e4m3> codes(sz(blocks * block_size * 3 * 128));
  const gpu::Buffer<float> scales(sz(blocks * block_size * 3));
  const ops::ConstKvCacheFp8 kv{
      make_view(static_cast<const fp8_e4m3*>(codes.data()), blocks, block_size, 3, 128),
      make_view(static_cast<const fp8_e4m3*>(codes.data()), blocks, block_size, 3, 128),
      make_view(static_cast<const float*>(scales.data()), blocks, block_size, 3),
      make_view(static_cast<const float*>(scales.data()), blocks, block_size, 3)};
  const gpu::Buffer<bf16> gq(sz(tokens * 4 * 128));
  gpu::Buffer<bf16> gout(sz(tokens * 4 * 128));
  // 4 query heads over 3 kv heads.
  CHECK_THROWS_AS(
      ops::gqa_decode(device, make_view(static_cast<const bf16*>(gq.data()), tokens, 4, 128), kv,
                      ct, 0.1f, make_view(gout.data(), tokens, 4, 128)),
      atom::ShapeError);
  // head_dim mismatch between q and the cache.
  CHECK_THROWS_AS(
      ops::gqa_decode(device, make_view(static_cast<const bf16*>(gq.data()), tokens, 3, 64), kv, ct,
                      0.1f, make_view(gout.data(), tokens, 3, 64)),
      atom::ShapeError);
  // Output aliasing the query.
  CHECK_THROWS_AS(
      ops::gqa_decode(device, make_view(static_cast<const bf16*>(gout.data()), tokens, 3, 128), kv,
                      ct, 0.1f, make_view(gout.data(), tokens, 3, 128)),
      atom::ShapeError);
  // An fp8_tensor cache whose scales are per row (strides not 0), a bf16 cache with scales.
  const gpu::Buffer<fp8_e4m3> values(sz(blocks * block_size * 3 * 128));
  const gpu::Buffer<float> value_scales(sz(blocks * block_size * 3));
  const ops::ConstKvCache<KvCacheFormat::fp8_tensor> per_row{
      kv.key, make_view(static_cast<const fp8_e4m3*>(values.data()), blocks, block_size, 3, 128),
      kv.key_scale,
      make_view(static_cast<const float*>(value_scales.data()), blocks, block_size, 3)};
  CHECK_THROWS_WITH(
      ops::gqa_decode(device, make_view(static_cast<const bf16*>(gq.data()), tokens, 3, 128),
                      per_row, ct, 0.1f, make_view(gout.data(), tokens, 3, 128)),
      Catch::Contains("one scale for the whole tensor"));
  const gpu::Buffer<bf16> bf16_keys(sz(blocks * block_size * 3 * 128)),
      bf16_values(sz(blocks * block_size * 3 * 128));
  const ops::ConstKvCache<KvCacheFormat::bf16> scaled_bf16{
      make_view(static_cast<const bf16*>(bf16_keys.data()), blocks, block_size, 3, 128),
      make_view(static_cast<const bf16*>(bf16_values.data()), blocks, block_size, 3, 128),
      kv.key_scale, per_row.value_scale};
  CHECK_THROWS_WITH(
      ops::gqa_decode(device, make_view(static_cast<const bf16*>(gq.data()), tokens, 3, 128),
                      scaled_bf16, ct, 0.1f, make_view(gout.data(), tokens, 3, 128)),
      Catch::Contains("a bf16 cache has no scales"));
}
