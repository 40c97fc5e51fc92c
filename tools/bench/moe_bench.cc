// The MoE block's small ops on the GPU at both models' shapes: the router GEMM (gemm_bf16, float
// logits), the routing (DeepSeek-V3's grouped top-8 of 256, Qwen3's softmax top-8 of 128,
// renormalized), SiLU * mul with the MXFP4 epilogue the pipelines use, and the combine (with
// DeepSeek-V3's shared expert output added; Qwen3 has none), at T = 1, 4, 16, 64, 256 tokens.
// Each op is timed in graph replay (graph_timing.hpp). The routed expert GEMMs are in
// atom-bench-gemm. Prints one CSV line per measurement: op, model, T, us;
// moe_bench_torch.py times the PyTorch peers on the same rows and prints the joint table.
// Usage: atom-bench-moe [OUT_CSV]
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "atom/gpu/device.hpp"
#include "atom/ops/gpu/moe.hpp"
#include "graph_timing.hpp"

using atom::bf16;
using atom::e8m0;
using atom::index_t;
using atom::make_view;
using atom::bench::graph_us;
using atom::ops::Gpu;
namespace gpu = atom::gpu;
namespace ops = atom::ops;

namespace {

constexpr index_t top_k = 8;

std::mt19937 engine(7);

std::size_t at(index_t i) {
  return static_cast<std::size_t>(i);
}

std::vector<float> floats(index_t n, float scale) {
  std::uniform_real_distribution<float> value(-scale, scale);
  std::vector<float> v(at(n));
  for (auto& x : v) x = value(engine);
  return v;
}

std::vector<bf16> bf16s(index_t n, float scale) {
  std::vector<bf16> v(at(n));
  const std::vector<float> f = floats(n, scale);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = atom::to_bf16(f[i]);
  return v;
}

struct Model {
  const char* name;
  index_t hidden;
  index_t experts;
  index_t inter;  // one expert's intermediate size
  bool grouped;   // DeepSeek-V3's routing (8 groups, 4 kept, scaling 2.5) and a shared expert
};

void bench(const Model& md, index_t tokens, std::FILE* csv) {
  gpu::Stream stream;
  const Gpu g{stream.handle()};
  const index_t rows = tokens * top_k;
  gpu::Buffer<bf16> x(bf16s(tokens * md.hidden, 2.0f));
  gpu::Buffer<bf16> router(bf16s(md.experts * md.hidden, 0.05f));
  gpu::Buffer<float> bias(floats(md.experts, 0.1f));
  gpu::Buffer<float> logits(floats(tokens * md.experts, 4.0f));
  gpu::Buffer<std::int32_t> ids(at(rows));
  gpu::Buffer<float> weights(floats(rows, 1.0f));
  gpu::Buffer<bf16> gate_up(bf16s(rows * 2 * md.inter, 4.0f));
  gpu::Buffer<std::uint8_t> packed(at(rows * md.inter / 2));
  gpu::Buffer<e8m0> scale(at(rows * md.inter / 32));
  gpu::Buffer<bf16> expert_out(bf16s(rows * md.hidden, 1.0f));
  gpu::Buffer<bf16> combined(at(tokens * md.hidden));
  const auto xv = make_view(static_cast<const bf16*>(x.data()), tokens, md.hidden);
  const auto lv = make_view(static_cast<const float*>(logits.data()), tokens, md.experts);
  const auto ids_v = make_view(ids.data(), tokens, top_k);
  const auto weights_v = make_view(weights.data(), tokens, top_k);
  const auto line = [&](const char* op, double us) {
    std::fprintf(csv, "%s,%s,%lld,%.3f\n", op, md.name, static_cast<long long>(tokens), us);
    std::printf("%-8s %-14s T=%-4lld %8.2f us\n", op, md.name, static_cast<long long>(tokens), us);
  };
  // The router GEMM writes a logits buffer of its own, so that the routing reads fixed logits.
  gpu::Buffer<float> router_out(at(tokens * md.experts));
  line("router", graph_us(stream, [&](int) {
         ops::gemm_bf16(g, xv,
                        make_view(static_cast<const bf16*>(router.data()), md.experts, md.hidden),
                        make_view(router_out.data(), tokens, md.experts));
       }));
  if (md.grouped)
    line("route", graph_us(stream, [&](int) {
           ops::route_grouped_topk(g, lv,
                                   make_view(static_cast<const float*>(bias.data()), md.experts), 8,
                                   4, true, 2.5f, ids_v, weights_v);
         }));
  else
    line("route",
         graph_us(stream, [&](int) { ops::route_softmax_topk(g, lv, true, ids_v, weights_v); }));
  line("silu", graph_us(stream, [&](int) {
         ops::silu_mul<ops::epi::Mxfp4>(
             g, make_view(static_cast<const bf16*>(gate_up.data()), rows, 2 * md.inter),
             ops::Mxfp4Act{make_view(packed.data(), rows, md.inter / 2),
                           make_view(scale.data(), rows, md.inter / 32), md.inter});
       }));
  const auto shared = md.grouped ? xv : make_view(static_cast<const bf16*>(nullptr), 0, 0);
  line("combine", graph_us(stream, [&](int) {
         ops::moe_combine(g,
                          make_view(static_cast<const bf16*>(expert_out.data()), rows, md.hidden),
                          make_view(static_cast<const float*>(weights.data()), tokens, top_k),
                          shared, make_view(combined.data(), tokens, md.hidden));
       }));
}

}  // namespace

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "moe_bench.csv";
  std::FILE* csv = std::fopen(path.c_str(), "w");
  if (csv == nullptr) {
    std::fprintf(stderr, "atom-bench-moe: cannot write %s\n", path.c_str());
    return 1;
  }
  std::printf("device: %s\n", gpu::device_name(0).c_str());
  std::fprintf(csv, "op,model,T,us\n");
  const Model models[] = {{"deepseek-v3", 7168, 256, 2048, true},
                          {"qwen3-30b-a3b", 2048, 128, 768, false}};
  for (const Model& md : models)
    for (const index_t t : {1, 4, 16, 64, 256}) bench(md, t, csv);
  std::fclose(csv);
  return 0;
}
