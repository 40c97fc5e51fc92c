// atom-bench-norm: the GPU norm / quant / RoPE / cache kernels on DeepSeek-V3 and Qwen3 shapes.
// Prints, per kernel and shape, the median time per launch (batches of back-to-back launches
// timed with device events), the bytes it must move (each input read once, each output written
// once), the bandwidth that gives, and its fraction of the copy bandwidth measured in the same
// run. tools/bench/norm_bench_torch.py times the PyTorch versions of the same shapes.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "atom/gpu/device.hpp"
#include "atom/ops/gpu/cache.hpp"
#include "atom/ops/gpu/norm.hpp"
#include "atom/ops/gpu/quant.hpp"
#include "atom/ops/gpu/qwen_qk.hpp"
#include "atom/ops/gpu/rope.hpp"
#include "atom/ops/rope.hpp"

namespace {

namespace ops = atom::ops;
namespace gpu = atom::gpu;
using atom::bf16;
using atom::index_t;
using atom::make_view;

const ops::Gpu device{};
constexpr float eps = 1e-6f;

// Median over 25 batches of 20 launches, per launch, in microseconds.
double time_us(const std::function<void()>& launch) {
  for (int i = 0; i < 10; ++i) launch();
  gpu::synchronize();
  constexpr int batch = 20;
  std::vector<double> samples;
  gpu::Timer timer;
  for (int b = 0; b < 25; ++b) {
    timer.start();
    for (int i = 0; i < batch; ++i) launch();
    samples.push_back(static_cast<double>(timer.stop_ms()) * 1000.0 / batch);
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

double copy_gbps = 0;

void row(const std::string& name, const std::string& shape, double bytes, double us) {
  const double gbps = bytes / us * 1e-3;
  std::printf("%-30s %-16s %9.2f us %8.1f GB/s %6.1f%% of copy\n", name.c_str(), shape.c_str(), us,
              gbps, copy_gbps > 0 ? 100.0 * gbps / copy_gbps : 0.0);
}

template <class T>
gpu::Buffer<T> filled(std::size_t n, std::uint32_t seed) {
  // Random bf16 in +-[0.01, 2); other element types get bytes from the same generator.
  std::vector<T> host(n);
  std::uint32_t s = seed * 2654435761u + 1;
  for (T& v : host) {
    s = s * 1664525u + 1013904223u;
    if constexpr (std::is_same_v<T, bf16>) {
      const float m = 0.01f + 1.99f * static_cast<float>(s >> 8) * 0x1p-24f;
      v = atom::to_bf16((s & 1) ? -m : m);
    } else {
      std::memcpy(&v, &s, sizeof(T));
    }
  }
  return gpu::Buffer<T>(host);
}

std::string shape_of(index_t a, index_t b) {
  return "[" + std::to_string(a) + ", " + std::to_string(b) + "]";
}

void bench_copy() {
  const index_t rows = 32768, cols = 16384;  // 1 GiB
  gpu::Buffer<bf16> src(static_cast<std::size_t>(rows * cols));
  gpu::Buffer<bf16> dst(static_cast<std::size_t>(rows * cols));
  src.fill(0x3c);
  const double us = time_us([&] {
    ops::copy(device, make_view(static_cast<const bf16*>(src.data()), rows, cols),
              make_view(dst.data(), rows, cols));
  });
  const double bytes = 2.0 * static_cast<double>(rows * cols) * 2.0;
  copy_gbps = bytes / us * 1e-3;
  row("copy (reference)", shape_of(rows, cols), bytes, us);
}

template <class Epi>
struct Act;
template <>
struct Act<ops::epi::Bf16> {
  gpu::Buffer<bf16> x;
  index_t r, c;
  Act(index_t rows, index_t cols) : x(static_cast<std::size_t>(rows * cols)), r(rows), c(cols) {}
  ops::Bf16Act act() { return {make_view(x.data(), r, c)}; }
  double bytes() const { return 2.0 * static_cast<double>(r * c); }
};
template <>
struct Act<ops::epi::Fp8PerToken> {
  gpu::Buffer<atom::fp8_e4m3> q;
  gpu::Buffer<float> s;
  index_t r, c;
  Act(index_t rows, index_t cols)
      : q(static_cast<std::size_t>(rows * cols)),
        s(static_cast<std::size_t>(rows)),
        r(rows),
        c(cols) {}
  ops::Fp8TokenAct act() { return {make_view(q.data(), r, c), make_view(s.data(), r)}; }
  double bytes() const { return static_cast<double>(r * c) + 4.0 * static_cast<double>(r); }
};
template <>
struct Act<ops::epi::Fp8PerGroup128> {
  gpu::Buffer<atom::fp8_e4m3> q;
  gpu::Buffer<float> s;
  index_t r, c;
  Act(index_t rows, index_t cols)
      : q(static_cast<std::size_t>(rows * cols)),
        s(static_cast<std::size_t>(rows * ops::fp8_group_cols(cols))),
        r(rows),
        c(cols) {}
  ops::Fp8GroupAct act() {
    return {make_view(q.data(), r, c), make_view(s.data(), r, ops::fp8_group_cols(c))};
  }
  double bytes() const {
    return static_cast<double>(r * c) + 4.0 * static_cast<double>(r * ops::fp8_group_cols(c));
  }
};
template <>
struct Act<ops::epi::Mxfp4> {
  gpu::Buffer<std::uint8_t> p;
  gpu::Buffer<atom::e8m0> s;
  index_t r, c;
  Act(index_t rows, index_t cols)
      : p(static_cast<std::size_t>(rows * ops::mxfp4_packed_cols(cols))),
        s(static_cast<std::size_t>(rows * ops::mxfp4_scale_cols(cols))),
        r(rows),
        c(cols) {}
  ops::Mxfp4Act act() {
    return {make_view(p.data(), r, ops::mxfp4_packed_cols(c)),
            make_view(s.data(), r, ops::mxfp4_scale_cols(c)), c};
  }
  double bytes() const {
    return static_cast<double>(r * ops::mxfp4_packed_cols(c) + r * ops::mxfp4_scale_cols(c));
  }
};

template <class Epi>
void bench_norm(const std::string& name, index_t rows, index_t cols, bool add) {
  auto x = filled<bf16>(static_cast<std::size_t>(rows * cols), 1);
  auto res = filled<bf16>(static_cast<std::size_t>(rows * cols), 2);
  auto w = filled<bf16>(static_cast<std::size_t>(cols), 3);
  Act<Epi> out(rows, cols);
  const auto xv = make_view(static_cast<const bf16*>(x.data()), rows, cols);
  const auto wv = make_view(static_cast<const bf16*>(w.data()), cols);
  const double in_bytes = 2.0 * static_cast<double>(rows * cols) * (add ? 3.0 : 1.0);
  const double us = time_us([&] {
    if (add)
      ops::add_rms_norm<Epi>(device, xv, make_view(res.data(), rows, cols), wv, eps, out.act());
    else
      ops::rms_norm<Epi>(device, xv, wv, eps, out.act());
  });
  row(name, shape_of(rows, cols), in_bytes + out.bytes(), us);
}

template <class Epi>
void bench_quant(const std::string& name, index_t rows, index_t cols) {
  auto x = filled<bf16>(static_cast<std::size_t>(rows * cols), 4);
  Act<Epi> out(rows, cols);
  const auto xv = make_view(static_cast<const bf16*>(x.data()), rows, cols);
  const double us = time_us([&] { ops::quantize<Epi>(device, xv, out.act()); });
  row(name, shape_of(rows, cols), 2.0 * static_cast<double>(rows * cols) + out.bytes(), us);
}

template <class Epi>
void bench_qk_norm(const std::string& name, index_t rows) {
  const index_t q = 1536, kv = 512, pe = 64, cols = q + kv + pe;
  auto x = filled<bf16>(static_cast<std::size_t>(rows * cols), 5);
  auto qw = filled<bf16>(static_cast<std::size_t>(q), 6);
  auto kw = filled<bf16>(static_cast<std::size_t>(kv), 7);
  Act<Epi> qo(rows, q);
  gpu::Buffer<bf16> kvo(static_cast<std::size_t>(rows * kv)),
      peo(static_cast<std::size_t>(rows * pe));
  const double us = time_us([&] {
    ops::qk_norm_fused<Epi>(device, make_view(static_cast<const bf16*>(x.data()), rows, cols),
                            make_view(static_cast<const bf16*>(qw.data()), q),
                            make_view(static_cast<const bf16*>(kw.data()), kv), eps, qo.act(),
                            make_view(kvo.data(), rows, kv), make_view(peo.data(), rows, pe));
  });
  row(name, shape_of(rows, cols),
      2.0 * static_cast<double>(rows * cols) + qo.bytes() +
          2.0 * static_cast<double>(rows * (kv + pe)),
      us);
}

void bench_qwen(const std::string& name, index_t tokens, bool fused) {
  const index_t qh = 32, kvh = 4, dim = 128, width = (qh + 2 * kvh) * dim, max_pos = 32768;
  const index_t block_size = 16, blocks = tokens / block_size + 1;
  auto qkv = filled<bf16>(static_cast<std::size_t>(tokens * width), 8);
  auto qw = filled<bf16>(static_cast<std::size_t>(dim), 9);
  auto kw = filled<bf16>(static_cast<std::size_t>(dim), 10);
  const std::vector<float> table = ops::make_cos_sin_cache(max_pos, dim, 1000000.0);
  gpu::Buffer<float> dtable(table);
  std::vector<std::int64_t> pos(static_cast<std::size_t>(tokens));
  std::vector<std::int64_t> slots(static_cast<std::size_t>(tokens));
  std::iota(slots.begin(), slots.end(), 0);
  for (std::size_t t = 0; t < pos.size(); ++t)
    pos[t] = static_cast<std::int64_t>((t * 7919) % max_pos);
  gpu::Buffer<std::int64_t> dpos(pos), dslots(slots);
  gpu::Buffer<atom::fp8_e4m3> k(static_cast<std::size_t>(blocks * block_size * kvh * dim));
  gpu::Buffer<atom::fp8_e4m3> v(k.size());
  gpu::Buffer<float> ks(static_cast<std::size_t>(blocks * block_size * kvh)), vs(ks.size());
  const ops::KvCacheFp8 cache{make_view(k.data(), blocks, block_size, kvh, dim),
                              make_view(v.data(), blocks, block_size, kvh, dim),
                              make_view(ks.data(), blocks, block_size, kvh),
                              make_view(vs.data(), blocks, block_size, kvh)};
  gpu::Buffer<bf16> q(static_cast<std::size_t>(tokens * qh * dim));
  const auto args = [&](auto&& op) {
    op(device, make_view(static_cast<const bf16*>(qkv.data()), tokens, width),
       make_view(static_cast<const bf16*>(qw.data()), dim),
       make_view(static_cast<const bf16*>(kw.data()), dim), eps,
       make_view(static_cast<const std::int64_t*>(dpos.data()), tokens),
       make_view(static_cast<const float*>(dtable.data()), max_pos, dim),
       make_view(static_cast<const std::int64_t*>(dslots.data()), tokens), cache,
       make_view(q.data(), tokens, qh, dim));
  };
  const double us = time_us([&] {
    if (fused)
      args([](auto&&... a) { ops::qk_norm_rope_cache_fused<ops::RopeStyle::neox>(a...); });
    else
      args([](auto&&... a) { ops::qk_norm_rope_cache_separate<ops::RopeStyle::neox>(a...); });
  });
  const double t = static_cast<double>(tokens);
  // qkv in, q out (bf16), k and v codes + scales, positions, slots and the cos/sin rows.
  const double bytes =
      t * (2.0 * static_cast<double>(width) + 2.0 * static_cast<double>(qh * dim) +
           2.0 * static_cast<double>(kvh * (dim + 4)) + 16.0 + 4.0 * static_cast<double>(dim));
  row(name, "T=" + std::to_string(tokens), bytes, us);
}

}  // namespace

int main() {
  if (gpu::device_count() == 0) {
    std::fprintf(stderr, "atom-bench-norm: no GPU (%s backend)\n", gpu::backend_name());
    return 1;
  }
  std::printf("device: %s\n", gpu::device_name(0).c_str());
  bench_copy();
  namespace epi = ops::epi;
  for (index_t t : {1, 64, 4096}) bench_norm<epi::Bf16>("rms_norm bf16", t, 7168, false);
  for (index_t t : {1, 4096}) bench_norm<epi::Bf16>("rms_norm bf16", t, 2048, false);
  for (index_t t : {1, 4096}) bench_norm<epi::Bf16>("add_rms_norm bf16", t, 7168, true);
  for (index_t t : {1, 4096}) bench_norm<epi::Fp8PerToken>("rms_norm fp8/token", t, 7168, false);
  for (index_t t : {1, 4096}) bench_norm<epi::Fp8PerGroup128>("rms_norm fp8/1x128", t, 7168, false);
  for (index_t t : {1, 4096}) bench_norm<epi::Mxfp4>("add_rms_norm mxfp4", t, 7168, true);
  for (index_t t : {1, 4096}) bench_quant<epi::Fp8PerToken>("quantize fp8/token", t, 7168);
  for (index_t t : {1, 4096}) bench_quant<epi::Fp8PerGroup128>("quantize fp8/1x128", t, 7168);
  for (index_t t : {1, 4096}) bench_quant<epi::Mxfp4>("quantize mxfp4", t, 7168);
  for (index_t t : {1, 4096}) bench_qk_norm<epi::Bf16>("ds qk_norm_fused bf16", t);
  for (index_t t : {1, 4096}) bench_qk_norm<epi::Mxfp4>("ds qk_norm_fused mxfp4", t);
  for (index_t t : {1, 64, 4096}) bench_qwen("qwen qk fused", t, true);
  for (index_t t : {1, 64, 4096}) bench_qwen("qwen qk separate", t, false);
  return 0;
}
