// Timing of the MoE ops on the GPU: the routed expert GEMM at decode sizes against the dense
// decode GEMM on one expert's weight (per weight byte), and the small ops of the block.
// Usage: atom-bench-gpu-moe [repeats]. Median of device-event timings after warm-up.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "atom/gpu/device.hpp"
#include "atom/ops/gpu/gemm.hpp"
#include "atom/ops/gpu/moe.hpp"

using atom::bf16;
using atom::e8m0;
using atom::index_t;
using atom::make_view;
using atom::ops::Gpu;
using atom::policy::GemmBackend;
namespace gpu = atom::gpu;
namespace ops = atom::ops;

namespace {

int repeats = 50;
std::mt19937 engine(7);

std::size_t at(index_t i) {
  return static_cast<std::size_t>(i);
}

float median_us(const std::function<void()>& call) {
  for (int i = 0; i < 5; ++i) call();
  gpu::Timer timer;
  std::vector<float> times;
  for (int i = 0; i < repeats; ++i) {
    timer.start();
    call();
    times.push_back(timer.stop_ms() * 1000.0f);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

std::vector<std::uint8_t> codes(index_t n) {
  std::uniform_int_distribution<int> byte(1, 255);
  std::vector<std::uint8_t> v(at(n));
  for (auto& b : v) b = static_cast<std::uint8_t>(byte(engine));
  return v;
}

std::vector<e8m0> scales(index_t n) {
  std::uniform_int_distribution<int> code(123, 131);
  std::vector<e8m0> v(at(n));
  for (auto& s : v) s = e8m0{static_cast<std::uint8_t>(code(engine))};
  return v;
}

template <GemmBackend G>
void bench_expert_gemm(const char* name, const char* backend, index_t experts, index_t n, index_t k,
                       index_t topk, const std::vector<index_t>& token_counts) {
  const index_t pc = ops::mxfp4_packed_cols(k);
  const index_t sc = ops::mxfp4_scale_cols(k);
  std::vector<std::uint8_t> w_packed = codes(experts * n * pc);
  std::vector<e8m0> w_scale = scales(experts * n * sc);
  const ops::Mxfp4Experts host_w{make_view(w_packed.data(), experts, n, pc),
                                 make_view(w_scale.data(), experts, n, sc), k};
  const auto w = ops::prepare_experts<G>(host_w);
  const auto dense = ops::prepare_weight<G>(ops::Mxfp4Weight{host_w.packed[0], host_w.scale[0], k});
  const index_t max_tokens = *std::max_element(token_counts.begin(), token_counts.end());
  gpu::Buffer<std::uint8_t> a_packed(codes(max_tokens * pc));
  gpu::Buffer<e8m0> a_scale(scales(max_tokens * sc));
  gpu::Buffer<bf16> out(at(max_tokens * topk * n));
  for (const index_t tokens : token_counts) {
    std::vector<std::int32_t> ids;
    std::vector<std::int32_t> order(at(experts));
    for (index_t t = 0; t < tokens; ++t) {
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), engine);
      ids.insert(ids.end(), order.begin(), order.begin() + topk);
    }
    const std::set<std::int32_t> distinct(ids.begin(), ids.end());
    gpu::Buffer<std::int32_t> ids_dev(ids);
    const ops::Mxfp4Act a{make_view(a_packed.data(), tokens, pc),
                          make_view(a_scale.data(), tokens, sc), k};
    const float moe_us = median_us([&] {
      ops::moe_gemm_a4w4(Gpu{}, a,
                         make_view(static_cast<const std::int32_t*>(ids_dev.data()), tokens, topk),
                         w, make_view(out.data(), tokens * topk, n));
    });
    const ops::Mxfp4Act a1{make_view(a_packed.data(), 1, pc), make_view(a_scale.data(), 1, sc), k};
    const float dense_us =
        median_us([&] { ops::gemm_a4w4(Gpu{}, a1, dense, make_view(out.data(), 1, n)); });
    const double expert_bytes = static_cast<double>(w.bytes()) / static_cast<double>(experts);
    const double moe_gbs = expert_bytes * static_cast<double>(distinct.size()) / moe_us * 1e-3;
    const double dense_gbs = static_cast<double>(dense.bytes()) / dense_us * 1e-3;
    std::printf(
        "%-22s %-7s T=%-3lld rows=%-4lld experts=%-3zu moe %8.2f us %7.0f GB/s | dense M=1 "
        "one expert %7.2f us %7.0f GB/s | moe/dense per byte %.2f\n",
        name, backend, static_cast<long long>(tokens), static_cast<long long>(tokens * topk),
        distinct.size(), moe_us, moe_gbs, dense_us, dense_gbs, dense_gbs / moe_gbs);
  }
}

void bench_small_ops(index_t tokens) {
  constexpr index_t experts = 256;
  constexpr index_t hidden = 7168;
  constexpr index_t k = 8;
  std::uniform_real_distribution<float> value(-2.0f, 2.0f);
  std::vector<bf16> x(at(tokens * hidden));
  for (auto& v : x) v = atom::to_bf16(value(engine));
  std::vector<bf16> wr(at(experts * hidden));
  for (auto& v : wr) v = atom::to_bf16(value(engine) * 0.05f);
  std::vector<float> bias(at(experts));
  for (auto& v : bias) v = value(engine) * 0.1f;
  gpu::Buffer<bf16> x_dev(x);
  gpu::Buffer<bf16> w_dev(wr);
  gpu::Buffer<float> bias_dev(bias);
  gpu::Buffer<float> logits(at(tokens * experts));
  gpu::Buffer<std::int32_t> ids(at(tokens * k));
  gpu::Buffer<float> weights(at(tokens * k));
  const auto xv = make_view(static_cast<const bf16*>(x_dev.data()), tokens, hidden);
  const float router_us = median_us([&] {
    ops::gemm_bf16(Gpu{}, xv, make_view(static_cast<const bf16*>(w_dev.data()), experts, hidden),
                   make_view(logits.data(), tokens, experts));
  });
  const auto lv = make_view(static_cast<const float*>(logits.data()), tokens, experts);
  const float grouped_us = median_us([&] {
    ops::route_grouped_topk(
        Gpu{}, lv, make_view(static_cast<const float*>(bias_dev.data()), experts), 8, 4, 2.5f,
        make_view(ids.data(), tokens, k), make_view(weights.data(), tokens, k));
  });
  const float softmax_us = median_us([&] {
    ops::route_softmax_topk(Gpu{}, make_view(static_cast<const float*>(logits.data()), tokens, 128),
                            true, make_view(ids.data(), tokens, k),
                            make_view(weights.data(), tokens, k));
  });
  constexpr index_t inter = 2048;
  gpu::Buffer<bf16> gate_up(at(tokens * k * 2 * inter));
  gate_up.fill(0x3F);
  gpu::Buffer<std::uint8_t> packed(at(tokens * k * inter / 2));
  gpu::Buffer<e8m0> scale(at(tokens * k * inter / 32));
  const float silu_us = median_us([&] {
    ops::silu_mul<ops::epi::Mxfp4>(
        Gpu{}, make_view(static_cast<const bf16*>(gate_up.data()), tokens * k, 2 * inter),
        ops::Mxfp4Act{make_view(packed.data(), tokens * k, inter / 2),
                      make_view(scale.data(), tokens * k, inter / 32), inter});
  });
  gpu::Buffer<bf16> expert_out(at(tokens * k * hidden));
  expert_out.fill(0x3F);
  gpu::Buffer<bf16> combined(at(tokens * hidden));
  const float combine_us = median_us([&] {
    ops::moe_combine(Gpu{},
                     make_view(static_cast<const bf16*>(expert_out.data()), tokens * k, hidden),
                     make_view(static_cast<const float*>(weights.data()), tokens, k), xv,
                     make_view(combined.data(), tokens, hidden));
  });
  std::printf(
      "T=%-4lld router gemm_bf16 [T,7168]x[256,7168] %7.2f us | grouped top-8 %6.2f us | "
      "softmax top-8 (128) %6.2f us | silu_mul mxfp4 [T*8,2048] %6.2f us | combine "
      "[T*8,7168] %6.2f us\n",
      static_cast<long long>(tokens), router_us, grouped_us, softmax_us, silu_us, combine_us);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) repeats = std::max(5, std::stoi(argv[1]));
  std::printf("device: %s\n", gpu::device_name(0).c_str());
  const std::vector<index_t> ts = {1, 4, 8};
  bench_expert_gemm<GemmBackend::matrix_core>("ds gate_up 7168->4096", "asm", 32, 4096, 7168, 8,
                                              ts);
  bench_expert_gemm<GemmBackend::portable>("ds gate_up 7168->4096", "triton", 32, 4096, 7168, 8,
                                           ts);
  bench_expert_gemm<GemmBackend::matrix_core>("ds down 2048->7168", "asm", 32, 7168, 2048, 8, ts);
  bench_expert_gemm<GemmBackend::portable>("ds down 2048->7168", "triton", 32, 7168, 2048, 8, ts);
  bench_expert_gemm<GemmBackend::matrix_core>("qwen gate_up 2048->1536", "asm", 128, 1536, 2048, 8,
                                              ts);
  bench_expert_gemm<GemmBackend::portable>("qwen gate_up 2048->1536", "triton", 128, 1536, 2048, 8,
                                           ts);
  bench_expert_gemm<GemmBackend::matrix_core>("qwen down 768->2048", "asm", 128, 2048, 768, 8, ts);
  bench_expert_gemm<GemmBackend::portable>("qwen down 768->2048", "triton", 128, 2048, 768, 8, ts);
  for (const index_t t : {1, 8, 64, 769}) bench_small_ops(t);
  return 0;
}
