// atom-bench-norm: the GPU norm / quant / RoPE / cache kernels on DeepSeek-V3 and Qwen3 shapes.
//
// Per kernel and shape: the median time per launch with device events, (a) launched back to back
// from the host and (b) replayed from a graph of captured launches (the kernel time without host
// launch cost), the bytes it must move (each input read once, each output written once), the
// bandwidth from (b) and its fraction of the copy bandwidth measured in the same run. Then the
// policy comparison: the RMSNorm kernel specialised per epilogue against one kernel taking the
// epilogue as a run-time argument (registers, local memory, time).
//
// Usage: atom-bench-norm [results.csv]  (the CSV feeds tools/bench/norm_bench_torch.py --ours)
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "atom/gpu/device.hpp"
#include "atom/ops/gpu/norm.hpp"
#include "atom/ops/gpu/quant.hpp"
#include "atom/ops/gpu/qwen_qk.hpp"
#include "atom/ops/rope.hpp"
#include "norm_bench_gpu.hpp"

namespace {

namespace ops = atom::ops;
namespace gpu = atom::gpu;
namespace bench = atom::bench;
using atom::bf16;
using atom::index_t;
using atom::make_view;

constexpr float eps = 1e-6f;
const std::vector<index_t> token_sweep = {1, 16, 64, 256, 1024, 4096, 16384};

bench::Stream stream;
std::ofstream csv;
double copy_gbps = 0;

ops::Gpu on_stream() {
  return ops::Gpu{stream.get()};
}

struct Times {
  double stream_us;
  double graph_us;
};

Times time_launch(const std::function<void()>& launch) {
  return {bench::stream_us(stream.get(), launch, 20, 15),
          bench::graph_us(stream.get(), launch, 20, 15)};
}

void row(const std::string& name, const std::string& shape, double bytes, const Times& t) {
  const double gbps = bytes / t.graph_us * 1e-3;
  std::printf("%-24s %-14s %9.2f %9.2f %9.1f %6.1f%%\n", name.c_str(), shape.c_str(), t.stream_us,
              t.graph_us, gbps, copy_gbps > 0 ? 100.0 * gbps / copy_gbps : 0.0);
  std::fflush(stdout);
  if (csv)
    csv << name << ',' << shape << ',' << t.stream_us << ',' << t.graph_us << ',' << gbps << ','
        << (copy_gbps > 0 ? 100.0 * gbps / copy_gbps : 0.0) << '\n';
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
  return "[" + std::to_string(a) + "," + std::to_string(b) + "]";
}

void bench_copy() {
  const index_t rows = 32768, cols = 16384;  // 1 GiB each way
  gpu::Buffer<bf16> src(static_cast<std::size_t>(rows * cols));
  gpu::Buffer<bf16> dst(static_cast<std::size_t>(rows * cols));
  src.fill(0x3c);
  const auto launch = [&] {
    ops::copy(on_stream(), make_view(static_cast<const bf16*>(src.data()), rows, cols),
              make_view(dst.data(), rows, cols));
  };
  const Times t{bench::stream_us(stream.get(), launch, 5, 9),
                bench::graph_us(stream.get(), launch, 5, 9)};
  const double bytes = 2.0 * static_cast<double>(rows * cols) * 2.0;
  copy_gbps = bytes / t.graph_us * 1e-3;
  row("copy (reference)", shape_of(rows, cols), bytes, t);
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
template <class Act8, index_t (*ScaleCols)(index_t)>
struct Fp8Act {
  gpu::Buffer<atom::fp8_e4m3> q;
  gpu::Buffer<float> s;
  index_t r, c;
  Fp8Act(index_t rows, index_t cols)
      : q(static_cast<std::size_t>(rows * cols)),
        s(static_cast<std::size_t>(rows * ScaleCols(cols))),
        r(rows),
        c(cols) {}
  double bytes() const {
    return static_cast<double>(r * c) + 4.0 * static_cast<double>(r * ScaleCols(c));
  }
};
index_t one_scale(index_t) {
  return 1;
}
template <>
struct Act<ops::epi::Fp8PerToken> : Fp8Act<ops::Fp8TokenAct, one_scale> {
  using Fp8Act::Fp8Act;
  ops::Fp8TokenAct act() { return {make_view(q.data(), r, c), make_view(s.data(), r)}; }
};
template <>
struct Act<ops::epi::Fp8PerGroup128> : Fp8Act<ops::Fp8GroupAct, ops::fp8_group_cols> {
  using Fp8Act::Fp8Act;
  ops::Fp8GroupAct act() {
    return {make_view(q.data(), r, c), make_view(s.data(), r, ops::fp8_group_cols(c))};
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
  const Times t = time_launch([&] {
    if (add)
      ops::add_rms_norm<Epi>(on_stream(), xv, make_view(res.data(), rows, cols), wv, eps,
                             out.act());
    else
      ops::rms_norm<Epi>(on_stream(), xv, wv, eps, out.act());
  });
  row(name, shape_of(rows, cols), in_bytes + out.bytes(), t);
}

template <class Epi>
void bench_quant(const std::string& name, index_t rows, index_t cols) {
  auto x = filled<bf16>(static_cast<std::size_t>(rows * cols), 4);
  Act<Epi> out(rows, cols);
  const auto xv = make_view(static_cast<const bf16*>(x.data()), rows, cols);
  const Times t = time_launch([&] { ops::quantize<Epi>(on_stream(), xv, out.act()); });
  row(name, shape_of(rows, cols), 2.0 * static_cast<double>(rows * cols) + out.bytes(), t);
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
  const Times t = time_launch([&] {
    ops::qk_norm_fused<Epi>(on_stream(), make_view(static_cast<const bf16*>(x.data()), rows, cols),
                            make_view(static_cast<const bf16*>(qw.data()), q),
                            make_view(static_cast<const bf16*>(kw.data()), kv), eps, qo.act(),
                            make_view(kvo.data(), rows, kv), make_view(peo.data(), rows, pe));
  });
  row(name, shape_of(rows, cols),
      2.0 * static_cast<double>(rows * cols) + qo.bytes() +
          2.0 * static_cast<double>(rows * (kv + pe)),
      t);
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
    op(on_stream(), make_view(static_cast<const bf16*>(qkv.data()), tokens, width),
       make_view(static_cast<const bf16*>(qw.data()), dim),
       make_view(static_cast<const bf16*>(kw.data()), dim), eps,
       make_view(static_cast<const std::int64_t*>(dpos.data()), tokens),
       make_view(static_cast<const float*>(dtable.data()), max_pos, dim),
       make_view(static_cast<const std::int64_t*>(dslots.data()), tokens), cache,
       make_view(q.data(), tokens, qh, dim));
  };
  const Times t = time_launch([&] {
    if (fused)
      args([](auto&&... a) { ops::qk_norm_rope_cache_fused<ops::RopeStyle::neox>(a...); });
    else
      args([](auto&&... a) { ops::qk_norm_rope_cache_separate<ops::RopeStyle::neox>(a...); });
  });
  const double n = static_cast<double>(tokens);
  // qkv in, q out (bf16), k and v codes + scales, positions, slots and the cos/sin rows.
  const double bytes =
      n * (2.0 * static_cast<double>(width) + 2.0 * static_cast<double>(qh * dim) +
           2.0 * static_cast<double>(kvh * (dim + 4)) + 16.0 + 4.0 * static_cast<double>(dim));
  row(name, "T=" + std::to_string(tokens), bytes, t);
}

// The launch floor at decode sizes: an empty kernel with the grid of the norms at [T, 7168] (T
// blocks of 224 threads, the packed kernel's; 256 for the block-wide one), graph-replayed as the
// kernels are, so that their time splits into this floor and the kernel's own latency.
void bench_launch_floor() {
  for (int threads : {224, 256})
    for (int t : {1, 16, 64}) {
      const double us = bench::graph_us(
          stream.get(), [&] { bench::null_launch(stream.get(), t, threads); }, 20, 15);
      std::printf("%-24s %-14s %9s %9.2f\n", "null kernel (floor)",
                  ("T=" + std::to_string(t) + "x" + std::to_string(threads)).c_str(), "-", us);
      if (csv) csv << "null kernel " << threads << ',' << "T=" << t << ",0," << us << ",0,0\n";
    }
}

// The policy comparison at [rows, 7168]: the same kernel body, specialised per epilogue or
// switching on a run-time argument.
void bench_policies(index_t rows) {
  const index_t cols = 7168;
  auto x = filled<bf16>(static_cast<std::size_t>(rows * cols), 11);
  auto w = filled<bf16>(static_cast<std::size_t>(cols), 12);
  gpu::Buffer<bf16> out(static_cast<std::size_t>(rows * cols));
  gpu::Buffer<float> scale(static_cast<std::size_t>(rows * ops::fp8_group_cols(cols)));
  struct Named {
    bench::Epilogue e;
    const char* name;
    double out_bytes_per_value;
    double scales_per_row;
  };
  const Named epilogues[] = {{bench::Epilogue::bf16, "bf16", 2.0, 0},
                             {bench::Epilogue::fp8_token, "fp8/token", 1.0, 4.0},
                             {bench::Epilogue::fp8_group128, "fp8/1x128", 1.0, 4.0 * 56},
                             {bench::Epilogue::mxfp4, "mxfp4", 0.5, 224}};
  const bench::KernelInfo rt = bench::runtime_rms_norm_info();
  std::printf("\npolicy comparison, rms_norm [%lld, %lld]: registers / local bytes / graph us\n",
              static_cast<long long>(rows), static_cast<long long>(cols));
  std::printf("%-10s %22s %22s\n", "epilogue", "policy template", "run-time switch");
  for (const Named& n : epilogues) {
    const bench::KernelInfo pi = bench::policy_rms_norm_info(n.e);
    const auto run = [&](bool policy) {
      return bench::graph_us(
          stream.get(),
          [&] {
            (policy ? bench::policy_rms_norm : bench::runtime_rms_norm)(
                stream.get(), n.e, x.data(), w.data(), static_cast<int>(rows),
                static_cast<int>(cols), eps, out.data(), scale.data());
          },
          20, 15);
    };
    const double p_us = run(true);
    const double r_us = run(false);
    std::printf("%-10s %5d %6zu %9.2f %5d %6zu %9.2f\n", n.name, pi.registers, pi.local_bytes, p_us,
                rt.registers, rt.local_bytes, r_us);
    if (csv)
      csv << "policy " << n.name << ',' << shape_of(rows, cols) << ',' << pi.registers << ','
          << p_us << ',' << rt.registers << ',' << r_us << '\n';
  }
}

// The library's RMSNorm kernel on explicit shapes (chunks per thread x rows per block) against
// the shape the library picks, per epilogue, hidden size and token count: the data behind
// norm_shape (kernels/detail/rows.hpp).
void bench_shapes() {
  struct Variant {
    bench::Epilogue e;
    bool add;
    const char* name;
  };
  const Variant variants[] = {{bench::Epilogue::bf16, false, "rms_norm bf16"},
                              {bench::Epilogue::bf16, true, "add_rms_norm bf16"},
                              {bench::Epilogue::fp8_token, false, "rms_norm fp8/token"},
                              {bench::Epilogue::fp8_group128, false, "rms_norm fp8/1x128"},
                              {bench::Epilogue::mxfp4, true, "add_rms_norm mxfp4"}};
  struct Hidden {
    int cols;
    std::vector<bench::Shape> shapes;
  };
  // 7168 = 896 vectors of 8: 4 chunks make 224-thread rows exactly, 8 chunks 112 (128 with the
  // idle warp lanes). 2048 = 256 vectors: from 256 threads x 1 chunk down to one warp x 8 chunks.
  const Hidden hiddens[] = {
      {7168, {{1, 1}, {2, 1}, {4, 1}, {4, 2}, {8, 1}}},
      {2048, {{1, 1}, {2, 1}, {4, 1}, {4, 4}, {8, 2}, {8, 8}}},
  };
  const std::vector<int> tokens = {1, 16, 64, 1024, 4096, 16384};
  std::printf(
      "\nshapes: chunks x rows per block (threads per row), registers, graph us; "
      "* = the library's pick\n");
  for (const Hidden& h : hiddens) {
    const std::size_t max_n = static_cast<std::size_t>(tokens.back()) * h.cols;
    auto x = filled<bf16>(max_n, 13);
    auto res = filled<bf16>(max_n, 14);
    auto w = filled<bf16>(static_cast<std::size_t>(h.cols), 15);
    gpu::Buffer<bf16> out(max_n);
    gpu::Buffer<float> scale(static_cast<std::size_t>(tokens.back()) *
                             static_cast<std::size_t>(ops::fp8_group_cols(h.cols)));
    for (const Variant& v : variants) {
      for (int t : tokens) {
        const bench::Shape lib = bench::library_shape(v.e, v.add, h.cols, t);
        std::printf("%-20s [%5d,%4d]", v.name, t, h.cols);
        double best = 1e30;
        std::string best_name;
        for (const bench::Shape& sh : h.shapes) {
          const bench::KernelInfo info = bench::shaped_rms_norm_info(v.e, v.add, sh.chunks);
          const double us = bench::graph_us(
              stream.get(),
              [&] {
                bench::shaped_rms_norm(stream.get(), v.e, v.add, x.data(), res.data(), w.data(), t,
                                       h.cols, eps, out.data(), scale.data(), sh);
              },
              20, 15);
          const std::string name = std::to_string(sh.chunks) + "x" +
                                   std::to_string(sh.rows_per_block) + "(" +
                                   std::to_string(bench::shaped_group(h.cols, sh)) + ")";
          const bool picked = sh.chunks == lib.chunks && sh.rows_per_block == lib.rows_per_block;
          std::printf(" | %s%s r%d %.2f", name.c_str(), picked ? "*" : "", info.registers, us);
          if (us < best) {
            best = us;
            best_name = name;
          }
        }
        std::printf(" | best %s\n", best_name.c_str());
        std::fflush(stdout);
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (gpu::device_count() == 0) {
    std::fprintf(stderr, "atom-bench-norm: no GPU (%s backend)\n", gpu::backend_name());
    return 1;
  }
  if (argc > 1) csv.open(argv[1]);
  std::printf("device: %s\n", gpu::device_name(0).c_str());
  std::printf("%-24s %-14s %9s %9s %9s %7s\n", "kernel", "shape", "stream us", "graph us", "GB/s",
              "% copy");
  bench_copy();
  bench_launch_floor();
  namespace epi = ops::epi;
  for (index_t t : token_sweep) bench_norm<epi::Bf16>("rms_norm bf16", t, 7168, false);
  for (index_t t : token_sweep) bench_norm<epi::Bf16>("add_rms_norm bf16", t, 7168, true);
  for (index_t t : token_sweep) bench_norm<epi::Fp8PerToken>("rms_norm fp8/token", t, 7168, false);
  for (index_t t : token_sweep)
    bench_norm<epi::Fp8PerGroup128>("rms_norm fp8/1x128", t, 7168, false);
  for (index_t t : token_sweep) bench_norm<epi::Mxfp4>("add_rms_norm mxfp4", t, 7168, true);
  for (index_t t : token_sweep) bench_qwen("qwen qk fused", t, true);
  for (index_t t : {1, 4096}) bench_quant<epi::Fp8PerToken>("quantize fp8/token", t, 7168);
  for (index_t t : {1, 4096}) bench_quant<epi::Fp8PerGroup128>("quantize fp8/1x128", t, 7168);
  for (index_t t : {1, 4096}) bench_quant<epi::Mxfp4>("quantize mxfp4", t, 7168);
  for (index_t t : {1, 4096}) bench_qk_norm<epi::Bf16>("ds qk_norm bf16", t);
  for (index_t t : {1, 4096}) bench_qk_norm<epi::Mxfp4>("ds qk_norm mxfp4", t);
  for (index_t t : {1, 64, 4096}) bench_qwen("qwen qk separate", t, false);
  bench_policies(4096);
  bench_policies(1);
  bench_shapes();
  return 0;
}
