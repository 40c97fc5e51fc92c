// Decode attention on the GPU: MLA (DeepSeek, latent cache of 576 bf16 per row, values its first
// 512, block size 64) and GQA (Qwen3-30B-A3B, 32 q / 4 kv heads, head_dim 128, block size 16,
// each cache format: "gqa-<format>"; "-simt": the same cache bytes in rows the tensor-core kernel
// does not take).
// First the shape users deploy: DeepSeek-V3 at TP 8, 16 heads per rank (memory-bound); then
// FlashMLA's own benchmark shapes (b = 128 sequences, s_k 4096 / 8192, h_q 16 / 32 / 64 / 128,
// s_q 1 / 2 query tokens per sequence, causal within a sequence); then the GQA shapes. Prints
// microseconds per call (median of batches after warm-up, device events), and with FlashMLA's
// formulas (its tests/test_flash_mla.py) the bytes and FLOPs per second:
//   bytes = (sum(s_k) * 576 + b * s_q * h_q * (576 + 512)) * 2,
//   FLOPs = 2 * s_q * sum(s_k) * h_q * (576 + 512)
// (GQA: the cache bytes of its format, and 4 * T * ctx * 32 * 128 FLOPs), next to the
// device-to-device copy bandwidth measured in the same run. Caches rotate over copies that exceed
// the L2 cache. attention_bench_torch.py times the PyTorch peers on the same shapes. Usage:
// atom-bench-attention
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "atom/gpu/device.hpp"
#include "atom/ops/cache.hpp"
#include "atom/ops/gpu/attention.hpp"
#include "atom/ops/gpu/norm.hpp"

namespace {

namespace ops = atom::ops;
namespace gpu = atom::gpu;
using atom::bf16;
using atom::fp8_e4m3;
using atom::index_t;
using atom::make_view;

constexpr int batch_calls = 20;
constexpr int batches = 10;
constexpr std::size_t rotate_bytes = std::size_t{256} << 20;

std::mt19937 engine(2026);

std::size_t sz(index_t n) {
  return static_cast<std::size_t>(n);
}

std::vector<bf16> random_bf16(index_t n) {
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<bf16> v(sz(n));
  for (auto& x : v) x = atom::to_bf16(u(engine));
  return v;
}

std::vector<fp8_e4m3> random_fp8(index_t n) {
  std::uniform_int_distribution<int> code(0, 255);
  std::vector<fp8_e4m3> v(sz(n));
  for (auto& x : v) {
    auto b = static_cast<std::uint8_t>(code(engine));
    if ((b & 0x7f) == 0x7f) b = 0x3f;
    x = fp8_e4m3{b};
  }
  return v;
}

int copies_for(std::size_t bytes) {
  return static_cast<int>(
      std::clamp<std::size_t>(rotate_bytes / std::max<std::size_t>(bytes, 1) + 1, 2, 16));
}

template <class Call>
double time_us(Call call) {
  for (int i = 0; i < 5; ++i) call(i);
  gpu::synchronize();
  std::vector<double> per_call;
  gpu::Timer timer;
  int i = 5;
  for (int b = 0; b < batches; ++b) {
    timer.start();
    for (int c = 0; c < batch_calls; ++c) call(i++);
    per_call.push_back(static_cast<double>(timer.stop_ms()) * 1000.0 / batch_calls);
  }
  std::sort(per_call.begin(), per_call.end());
  return per_call[per_call.size() / 2];
}

// A decode batch of `sequences` sequences of `per` query tokens and `ctx` context rows each
// (query token j of a sequence attends to its first ctx - per + 1 + j rows), whose block-table
// rows of `cols` blocks draw on `blocks` blocks (a shuffled pool), on the device.
struct Batch {
  gpu::Buffer<std::int32_t> query_start, context_lens, table;
  gpu::Buffer<std::int64_t> positions, slots;
  index_t sequences = 0, tokens = 0, cols = 0;

  ops::DecodeBatch view() const {
    const auto c32 = [](const gpu::Buffer<std::int32_t>& b) {
      return static_cast<const std::int32_t*>(b.data());
    };
    const auto c64 = [](const gpu::Buffer<std::int64_t>& b) {
      return static_cast<const std::int64_t*>(b.data());
    };
    return {make_view(c32(query_start), sequences + 1), make_view(c32(context_lens), sequences),
            make_view(c32(table), sequences, cols), make_view(c64(positions), tokens),
            make_view(c64(slots), tokens)};
  }
};

Batch batch_for(index_t sequences, index_t per, index_t ctx, index_t block_size, index_t blocks) {
  const index_t cols = (ctx + block_size - 1) / block_size;
  const index_t tokens = sequences * per;
  std::vector<std::int32_t> ids(sz(sequences * cols));
  std::vector<std::int32_t> pool(sz(blocks));
  for (std::size_t i = 0; i < pool.size(); ++i) pool[i] = static_cast<std::int32_t>(i);
  std::shuffle(pool.begin(), pool.end(), engine);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = pool[i % pool.size()];
  std::vector<std::int32_t> starts(sz(sequences + 1));
  for (std::size_t i = 0; i < starts.size(); ++i)
    starts[i] = static_cast<std::int32_t>(i * sz(per));
  std::vector<std::int64_t> positions(sz(tokens)), slots(sz(tokens));
  for (index_t s = 0; s < sequences; ++s)
    for (index_t j = 0; j < per; ++j) {
      const index_t t = s * per + j;
      const index_t pos = ctx - per + j;
      positions[sz(t)] = pos;
      slots[sz(t)] =
          std::int64_t{ids[sz(s * cols + pos / block_size)]} * block_size + pos % block_size;
    }
  return {gpu::Buffer<std::int32_t>(starts),
          gpu::Buffer<std::int32_t>(
              std::vector<std::int32_t>(sz(sequences), static_cast<std::int32_t>(ctx))),
          gpu::Buffer<std::int32_t>(ids),
          gpu::Buffer<std::int64_t>(positions),
          gpu::Buffer<std::int64_t>(slots),
          sequences,
          tokens,
          cols};
}

void report(const char* kind, index_t heads, index_t sequences, index_t per, index_t ctx, double us,
            double bytes, double flops, double copy_gbps) {
  const double gbps = bytes / (us * 1e-6) / 1e9;
  std::printf("%s,%lld,%lld,%lld,%lld,%.2f,%.0f,%.0f%%,%.1f\n", kind, static_cast<long long>(heads),
              static_cast<long long>(sequences), static_cast<long long>(per),
              static_cast<long long>(ctx), us, gbps, 100.0 * gbps / copy_gbps,
              flops / (us * 1e-6) / 1e12);
}

// MLA decode over `sequences` sequences of `per` query tokens at context ctx.
void bench_mla(index_t heads, index_t sequences, index_t per, index_t ctx, double copy_gbps) {
  const index_t bs = 64, cols = (ctx + bs - 1) / bs, blocks = sequences * cols;
  const index_t tokens = sequences * per;
  const std::size_t cache_bytes = sz(blocks * bs * 576) * sizeof(bf16);
  const int copies = copies_for(cache_bytes);
  std::vector<gpu::Buffer<bf16>> caches;
  const std::vector<bf16> host_cache = random_bf16(blocks * bs * 576);
  for (int c = 0; c < copies; ++c) caches.emplace_back(host_cache);
  const gpu::Buffer<bf16> q(random_bf16(tokens * heads * 512)),
      pe(random_bf16(tokens * heads * 64));
  const Batch batch = batch_for(sequences, per, ctx, bs, blocks);
  gpu::Buffer<bf16> out(sz(tokens * heads * 512));
  const double us = time_us([&](int i) {
    ops::mla_decode(
        ops::Gpu{}, make_view(static_cast<const bf16*>(q.data()), tokens, heads, 512),
        make_view(static_cast<const bf16*>(pe.data()), tokens, heads, 64),
        make_view(static_cast<const bf16*>(caches[sz(i % copies)].data()), blocks, bs, 576),
        batch.view(), 0.0721f, make_view(out.data(), tokens, heads, 512));
  });
  const auto f = [](index_t v) { return static_cast<double>(v); };
  const double rows = f(sequences) * f(ctx);  // FlashMLA's sum of the cache lengths
  report("mla", heads, sequences, per, ctx, us,
         (rows * 576 + f(tokens) * f(heads) * (576 + 512)) * 2,
         2 * f(per) * rows * f(heads) * (576 + 512), copy_gbps);
}

// GQA over a cache of format F. `pad` elements between kv heads: 8 leaves FP8 rows 8-byte aligned
// only (bf16 rows: 4), which the tensor-core kernel does not take (the SIMT kernel's figure, on
// the same cache bytes).
template <ops::KvCacheFormat F>
void bench_gqa(index_t tokens, index_t ctx, double copy_gbps, index_t pad = 0) {
  using Code = typename ops::KvCache<F>::Code;
  constexpr bool bf16_rows = F == ops::KvCacheFormat::bf16;
  constexpr bool row_scales = F == ops::KvCacheFormat::fp8_row;
  if (bf16_rows) pad /= 2;
  const index_t q_heads = 32, kv_heads = 4, dim = 128, bs = 16, stride = dim + pad;
  const index_t cols = (ctx + bs - 1) / bs, blocks = tokens * cols, slots = blocks * bs;
  // Bytes of a cache slot of one kv head: its key and value rows and, in fp8_row, their scales.
  const double row_bytes =
      2.0 * static_cast<double>(dim * index_t{sizeof(Code)}) + (row_scales ? 8 : 0);
  const std::size_t cache_bytes = sz(slots * kv_heads) * static_cast<std::size_t>(row_bytes);
  const int copies = copies_for(cache_bytes);
  std::vector<Code> host_codes;
  if constexpr (bf16_rows)
    host_codes = random_bf16(slots * kv_heads * stride);
  else
    host_codes = random_fp8(slots * kv_heads * stride);
  const std::vector<float> host_scales(sz(row_scales ? slots * kv_heads : 2), 0.004f);
  struct Copy {
    gpu::Buffer<Code> key, value;
    gpu::Buffer<float> scales;  // fp8_row: the keys', then the values'; fp8_tensor: one each
  };
  std::vector<Copy> caches;
  for (int c = 0; c < copies; ++c)
    caches.push_back(
        {gpu::Buffer<Code>(host_codes), gpu::Buffer<Code>(host_codes),
         gpu::Buffer<float>(row_scales ? std::vector<float>(2 * host_scales.size(), 0.004f)
                                       : host_scales)});
  const gpu::Buffer<bf16> q(random_bf16(tokens * q_heads * dim));
  const Batch batch = batch_for(tokens, 1, ctx, bs, blocks);
  gpu::Buffer<bf16> out(sz(tokens * q_heads * dim));
  const double us = time_us([&](int i) {
    Copy& c = caches[sz(i % copies)];
    const auto codes = [&](gpu::Buffer<Code>& b) {
      return atom::View4<Code>{b.data(),
                               {blocks, bs, kv_heads, dim},
                               {bs * kv_heads * stride, kv_heads * stride, stride, 1}};
    };
    float* const scales = c.scales.data();
    ops::KvCache<F> cache;
    if constexpr (row_scales)
      cache = {codes(c.key), codes(c.value), make_view(scales, blocks, bs, kv_heads),
               make_view(scales + slots * kv_heads, blocks, bs, kv_heads)};
    else if constexpr (bf16_rows)
      cache = ops::bf16_cache(codes(c.key), codes(c.value));
    else
      cache = ops::per_tensor_fp8_cache(codes(c.key), codes(c.value), scales, scales + 1);
    ops::gqa_decode(ops::Gpu{}, make_view(static_cast<const bf16*>(q.data()), tokens, q_heads, dim),
                    cache, batch.view(), 0.0884f, make_view(out.data(), tokens, q_heads, dim));
  });
  const std::string kind =
      "gqa-" + std::string(ops::kv_cache_format_name(F)) + (pad == 0 ? "" : "-simt");
  report(kind.c_str(), q_heads, tokens, 1, ctx, us,
         static_cast<double>(tokens * ctx * kv_heads) * row_bytes,
         4.0 * static_cast<double>(tokens * ctx * q_heads * dim), copy_gbps);
}

template <ops::KvCacheFormat F>
void bench_gqa_shapes(double copy_gbps) {
  for (index_t ctx : {4096, 16384}) bench_gqa<F>(1, ctx, copy_gbps);
  for (index_t tokens : {4, 16, 64}) bench_gqa<F>(tokens, 4096, copy_gbps);
  for (index_t tokens : {1, 64}) bench_gqa<F>(tokens, 4096, copy_gbps, 8);
}

}  // namespace

int main() {
  std::printf("device: %s\n", gpu::device_name(0).c_str());
  const double copy_gbps = ops::copy_gbs(ops::Gpu{});
  std::printf("copy bandwidth %.0f GB/s (512 MiB device-to-device, read + written)\n", copy_gbps);
  std::printf("kind,heads,b,s_q,ctx,us,GB/s,of_copy,TFLOP/s\n");
  // The deployed shape: DeepSeek-V3 at TP 8 (16 heads per rank), one query token.
  for (index_t b : {1, 16, 64, 128})
    for (index_t ctx : {4096, 16384}) bench_mla(16, b, 1, ctx, copy_gbps);
  bench_mla(128, 1, 1, 4096, copy_gbps);  // the latency goal: 128 heads, T = 1
  // FlashMLA's benchmark shapes.
  for (index_t ctx : {4096, 8192})
    for (index_t heads : {16, 32, 64, 128})
      for (index_t per : {1, 2}) bench_mla(heads, 128, per, ctx, copy_gbps);
  // GQA over each cache format.
  bench_gqa_shapes<ops::KvCacheFormat::fp8_row>(copy_gbps);
  bench_gqa_shapes<ops::KvCacheFormat::fp8_tensor>(copy_gbps);
  bench_gqa_shapes<ops::KvCacheFormat::bf16>(copy_gbps);
  return 0;
}
