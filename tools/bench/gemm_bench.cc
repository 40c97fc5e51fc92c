// The decode GEMMs on the GPU over every real shape of both models, in every weight format the
// pipelines read: MXFP4 (backends "asm" and "triton"), bf16 and FP8 with 128 x 128 block scales;
// dense (M = 1 .. 256 rows) and grouped by expert (T = 4, 64, 256 tokens, each routed to top_k
// distinct random experts, another routing per call), and the MLA absorbed BMMs. Every call is
// timed in graph replay, as the pipelines run: 20 calls captured as one graph after an eager round
// on the same stream (which sizes the ops' scratch), the graph replayed 10 times between device
// events, the median per call. Dense weights rotate over enough copies to exceed the L2 cache.
// Prints one CSV line per measurement:
//   kind (gemm, experts, bmm), format, model, weight, M (tokens for experts), N, K, us,
//   weight_bytes (the bytes the call must read: for experts the distinct chosen experts', the
//   mean over the routings),
// after the device-to-device copy rate measured in the same run. For M <= 16 the MXFP4 rows are
// followed by each decode kernel (format "mxfp4-asm:<kernel>", GemmDecodeKernel) so that one run
// compares them. gemm_bench_torch.py times the PyTorch peers on the same rows and prints the
// joint table.
// Usage: atom-bench-gemm [OUT_CSV] [--decode | --experts] (--decode: M = 1 and 16, T = 4, no
// BMMs; --experts: only the grouped expert GEMMs, T = 4, 64, 256) |
// atom-bench-gemm --profile (one launch of each decode kernel at M = 1 on 7168 -> 2112 and
// 2048 -> 7168, for a profiler).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "atom/gpu/device.hpp"
#include "atom/ops/gpu/bmm.hpp"
#include "atom/ops/gpu/decode_batch.hpp"
#include "atom/ops/gpu/gemm.hpp"
#include "atom/ops/gpu/moe.hpp"
#include "atom/ops/gpu/norm.hpp"
#include "graph_timing.hpp"

namespace {

using atom::bf16;
using atom::e8m0;
using atom::fp8_e4m3;
using atom::index_t;
using atom::make_view;
using atom::policy::GemmBackend;
namespace gpu = atom::gpu;
namespace ops = atom::ops;

using atom::bench::graph_calls;
using atom::bench::graph_us;
constexpr std::size_t rotate_bytes = std::size_t{256} << 20;

std::mt19937_64 engine(2026);

std::size_t sz(index_t n) {
  return static_cast<std::size_t>(n);
}

// Random bytes (lo..255), eight at a time from one draw: weights of gigabytes in seconds.
std::vector<std::uint8_t> random_bytes(index_t n, int lo = 1) {
  std::vector<std::uint8_t> v(sz(n));
  for (std::size_t i = 0; i < v.size(); i += 8) {
    std::uint64_t r = engine();
    for (std::size_t j = i; j < std::min(v.size(), i + 8); ++j, r >>= 8)
      v[j] = static_cast<std::uint8_t>(lo + (r & 0xff) % static_cast<std::uint64_t>(256 - lo));
  }
  return v;
}

// e8m0 scales 2^-4 .. 2^4.
std::vector<e8m0> random_scales(index_t n) {
  std::vector<e8m0> v(sz(n));
  for (auto& s : v) s = e8m0{static_cast<std::uint8_t>(123 + engine() % 9)};
  return v;
}

int copies_for(std::size_t bytes) {
  return static_cast<int>(
      std::clamp<std::size_t>(rotate_bytes / std::max<std::size_t>(bytes, 1) + 1, 2, 16));
}

struct Report {
  std::ofstream file;
  void line(const char* kind, const std::string& format, const char* model, const char* weight,
            index_t m, index_t n, index_t k, double us, double bytes) {
    char text[320];
    std::snprintf(text, sizeof text, "%s,%s,%s,%s,%lld,%lld,%lld,%.3f,%.0f\n", kind, format.c_str(),
                  model, weight, static_cast<long long>(m), static_cast<long long>(n),
                  static_cast<long long>(k), us, bytes);
    std::fputs(text, stdout);
    std::fflush(stdout);
    if (file) file << text;
  }
};

// A weight of the real models: [N, K], or E experts of [N, K].
struct Shape {
  const char* model;
  const char* weight;
  index_t n, k;
  index_t experts = 0;  // 0: dense
  index_t top_k = 0;
};

using ops::GemmDecodeKernel;
struct Variant {
  GemmDecodeKernel kernel;
  const char* name;
};
constexpr Variant decode_variants[] = {{GemmDecodeKernel::split_k, "split_k"},
                                       {GemmDecodeKernel::stream_u1, "stream_u1"},
                                       {GemmDecodeKernel::stream_u2, "stream_u2"},
                                       {GemmDecodeKernel::stream_u4, "stream_u4"},
                                       {GemmDecodeKernel::stream_u8, "stream_u8"}};

// Device activations of `rows` rows of K in every format, random.
struct Activations {
  gpu::Buffer<bf16> x;
  gpu::Buffer<fp8_e4m3> q;
  gpu::Buffer<float> q_scale;
  gpu::Buffer<std::uint8_t> packed;
  gpu::Buffer<e8m0> scale;
  index_t rows, k;

  Activations(gpu::Stream& s, index_t r, index_t cols)
      : x(sz(r * cols)),
        q(sz(r * cols)),
        q_scale(sz(r * ops::fp8_group_cols(cols))),
        packed(random_bytes(r * ops::mxfp4_packed_cols(cols))),
        scale(random_scales(r * ops::mxfp4_scale_cols(cols))),
        rows(r),
        k(cols) {
    const ops::Gpu g{s.handle()};
    ops::fill_uniform(g, make_view(x.data(), r * cols), 1, -1.0f, 1.0f);
    ops::fill_uniform(g, make_view(q.data(), r * cols), 2, -448.0f, 448.0f);
    ops::fill_uniform(g, make_view(q_scale.data(), r * ops::fp8_group_cols(cols)), 3, 1e-3f, 4e-3f);
    s.synchronize();
  }
  ops::Bf16Act bf16_act() { return {make_view(x.data(), rows, k)}; }
  ops::Fp8GroupAct fp8_act() {
    return {make_view(q.data(), rows, k), make_view(q_scale.data(), rows, ops::fp8_group_cols(k))};
  }
  ops::Mxfp4Act mxfp4_act() {
    return {make_view(packed.data(), rows, ops::mxfp4_packed_cols(k)),
            make_view(scale.data(), rows, ops::mxfp4_scale_cols(k)), k};
  }
};

// bf16 and FP8 block weights of E x [N, K] (E = 1: dense), random on the device.
struct DeviceWeights {
  gpu::Buffer<bf16> bf16_w;
  gpu::Buffer<fp8_e4m3> fp8_w;
  gpu::Buffer<float> fp8_scale;
  index_t e, n, k;

  DeviceWeights(gpu::Stream& s, index_t experts, index_t rows, index_t cols)
      : bf16_w(sz(experts * rows * cols)),
        fp8_w(sz(experts * rows * cols)),
        fp8_scale(sz(experts * ops::ceil_div(rows, 128) * ops::fp8_group_cols(cols))),
        e(experts),
        n(rows),
        k(cols) {
    const ops::Gpu g{s.handle()};
    ops::fill_uniform(g, make_view(bf16_w.data(), experts * rows * cols), 4, -0.05f, 0.05f);
    ops::fill_uniform(g, make_view(fp8_w.data(), experts * rows * cols), 5, -448.0f, 448.0f);
    ops::fill_uniform(g, make_view(fp8_scale.data(), static_cast<index_t>(fp8_scale.size())), 6,
                      1e-4f, 4e-4f);
    s.synchronize();
  }
  ops::Bf16Weight bf16_weight() const { return {make_view(bf16_w.data(), n, k)}; }
  ops::Fp8BlockWeight fp8_weight() const {
    return {make_view(fp8_w.data(), n, k),
            make_view(fp8_scale.data(), ops::ceil_div(n, 128), ops::fp8_group_cols(k)), 128};
  }
  ops::Bf16Experts bf16_experts() const { return {make_view(bf16_w.data(), e, n, k)}; }
  ops::Fp8BlockExperts fp8_experts() const {
    return {make_view(fp8_w.data(), e, n, k),
            make_view(fp8_scale.data(), e, ops::ceil_div(n, 128), ops::fp8_group_cols(k)), 128};
  }
  double bf16_bytes_each() const { return 2.0 * static_cast<double>(n * k); }
  double fp8_bytes_each() const {
    return static_cast<double>(n * k) +
           4.0 * static_cast<double>(ops::ceil_div(n, 128) * ops::fp8_group_cols(k));
  }
};

struct HostMxfp4 {
  std::vector<std::uint8_t> packed;
  std::vector<e8m0> scale;
  HostMxfp4(index_t e, index_t n, index_t k)
      : packed(random_bytes(e * n * ops::mxfp4_packed_cols(k))),
        scale(random_scales(e * n * ops::mxfp4_scale_cols(k))) {}
};

void bench_dense(Report& report, gpu::Stream& s, const Shape& shape,
                 const std::vector<index_t>& ms) {
  const index_t n = shape.n, k = shape.k;
  const ops::Gpu g{s.handle()};
  const double bf16_bytes = 2.0 * static_cast<double>(n * k);
  const int copies = copies_for(static_cast<std::size_t>(bf16_bytes / 4));
  HostMxfp4 host(1, n, k);
  const ops::Mxfp4Weight host_w{make_view(host.packed.data(), n, ops::mxfp4_packed_cols(k)),
                                make_view(host.scale.data(), n, ops::mxfp4_scale_cols(k)), k};
  std::vector<std::unique_ptr<ops::PreparedMxfp4Weight<GemmBackend::matrix_core>>> asm_w;
  std::vector<std::unique_ptr<ops::PreparedMxfp4Weight<GemmBackend::portable>>> triton_w;
  for (int c = 0; c < copies; ++c) {
    asm_w.push_back(std::make_unique<ops::PreparedMxfp4Weight<GemmBackend::matrix_core>>(
        ops::prepare_weight<GemmBackend::matrix_core>(host_w)));
    triton_w.push_back(std::make_unique<ops::PreparedMxfp4Weight<GemmBackend::portable>>(
        ops::prepare_weight<GemmBackend::portable>(host_w)));
  }
  const int wide_copies = copies_for(static_cast<std::size_t>(bf16_bytes));
  std::vector<std::unique_ptr<DeviceWeights>> wide;
  for (int c = 0; c < wide_copies; ++c) wide.push_back(std::make_unique<DeviceWeights>(s, 1, n, k));
  const auto pick = [](auto& v, int i) -> auto& {
    return *v[sz(i) % v.size()];
  };
  for (const index_t m : ms) {
    Activations a(s, m, k);
    gpu::Buffer<bf16> out(sz(m * n));
    const auto o = make_view(out.data(), m, n);
    const auto row = [&](const std::string& format, double us, double bytes) {
      report.line("gemm", format, shape.model, shape.weight, m, n, k, us, bytes);
    };
    row("mxfp4-asm",
        graph_us(s, [&](int i) { ops::gemm_a4w4(g, a.mxfp4_act(), pick(asm_w, i), o); }),
        static_cast<double>(asm_w[0]->bytes()));
    if (m <= 16)
      for (const Variant& v : decode_variants)
        row(std::string("mxfp4-asm:") + v.name,
            graph_us(s,
                     [&](int i) { ops::gemm_a4w4(g, a.mxfp4_act(), pick(asm_w, i), o, v.kernel); }),
            static_cast<double>(asm_w[0]->bytes()));
    row("mxfp4-triton",
        graph_us(s, [&](int i) { ops::gemm_a4w4(g, a.mxfp4_act(), pick(triton_w, i), o); }),
        static_cast<double>(triton_w[0]->bytes()));
    row("bf16",
        graph_us(s,
                 [&](int i) { ops::gemm_a16w16(g, a.bf16_act(), pick(wide, i).bf16_weight(), o); }),
        wide[0]->bf16_bytes_each());
    row("fp8",
        graph_us(
            s, [&](int i) { ops::gemm_a8w8_block(g, a.fp8_act(), pick(wide, i).fp8_weight(), o); }),
        wide[0]->fp8_bytes_each());
  }
}

// `graph_calls` routings of `tokens` tokens to top_k distinct experts each, on the device, and
// the mean count of distinct experts a routing reads.
struct Routes {
  std::vector<gpu::Buffer<std::int32_t>> ids;
  double distinct = 0;
  Routes(index_t tokens, index_t experts, index_t top_k) {
    std::vector<std::int32_t> all(sz(experts));
    for (std::size_t e = 0; e < all.size(); ++e) all[e] = static_cast<std::int32_t>(e);
    for (int c = 0; c < graph_calls; ++c) {
      std::vector<std::int32_t> r;
      std::set<std::int32_t> used;
      for (index_t t = 0; t < tokens; ++t) {
        std::shuffle(all.begin(), all.end(), engine);
        r.insert(r.end(), all.begin(), all.begin() + top_k);
        used.insert(all.begin(), all.begin() + top_k);
      }
      distinct += static_cast<double>(used.size()) / graph_calls;
      ids.emplace_back(r);
    }
  }
  atom::View2<const std::int32_t> at(int i, index_t tokens, index_t top_k) const {
    return make_view(static_cast<const std::int32_t*>(ids[sz(i) % ids.size()].data()), tokens,
                     top_k);
  }
};

void bench_experts(Report& report, gpu::Stream& s, const Shape& shape,
                   const std::vector<index_t>& token_counts) {
  const index_t e = shape.experts, n = shape.n, k = shape.k, top_k = shape.top_k;
  const ops::Gpu g{s.handle()};
  HostMxfp4 host(e, n, k);
  const ops::Mxfp4Experts host_w{make_view(host.packed.data(), e, n, ops::mxfp4_packed_cols(k)),
                                 make_view(host.scale.data(), e, n, ops::mxfp4_scale_cols(k)), k};
  const auto asm_w = ops::prepare_experts<GemmBackend::matrix_core>(host_w);
  const auto triton_w = ops::prepare_experts<GemmBackend::portable>(host_w);
  const DeviceWeights wide(s, e, n, k);
  // The gate_up GEMM reads each token's row, the down GEMM each route's (a [T * top_k] input).
  const bool per_route = std::string(shape.weight).find("down") != std::string::npos;
  for (const index_t tokens : token_counts) {
    const Routes routes(tokens, e, top_k);
    Activations a(s, per_route ? tokens * top_k : tokens, k);
    gpu::Buffer<bf16> out(sz(tokens * top_k * n));
    const auto o = make_view(out.data(), tokens * top_k, n);
    const auto ids = [&](int i) { return routes.at(i, tokens, top_k); };
    const auto row = [&](const char* format, double us, double bytes_each) {
      report.line("experts", format, shape.model, shape.weight, tokens, n, k, us,
                  routes.distinct * bytes_each);
    };
    const double mx_each = static_cast<double>(asm_w.bytes()) / static_cast<double>(e);
    row("mxfp4-asm",
        graph_us(s, [&](int i) { ops::moe_gemm_a4w4(g, a.mxfp4_act(), ids(i), asm_w, o); }),
        mx_each);
    row("mxfp4-triton",
        graph_us(s, [&](int i) { ops::moe_gemm_a4w4(g, a.mxfp4_act(), ids(i), triton_w, o); }),
        static_cast<double>(triton_w.bytes()) / static_cast<double>(e));
    row("bf16",
        graph_us(
            s,
            [&](int i) { ops::moe_gemm_a16w16(g, a.bf16_act(), ids(i), wide.bf16_experts(), o); }),
        wide.bf16_bytes_each());
    row("fp8",
        graph_us(s,
                 [&](int i) {
                   ops::moe_gemm_a8w8_block(g, a.fp8_act(), ids(i), wide.fp8_experts(), o);
                 }),
        wide.fp8_bytes_each());
  }
}

// MLA's absorbed BMMs (128 heads): W_UK [heads, 512, 128] and W_UV [heads, 128, 512] as N x K.
void bench_bmm(Report& report, gpu::Stream& s, index_t tokens, index_t heads, index_t n,
               index_t k) {
  const ops::Gpu g{s.handle()};
  const int copies = copies_for(sz(heads * n * k));
  std::vector<std::unique_ptr<gpu::Buffer<fp8_e4m3>>> w8;
  for (int c = 0; c < copies; ++c) {
    w8.push_back(std::make_unique<gpu::Buffer<fp8_e4m3>>(sz(heads * n * k)));
    ops::fill_uniform(g, make_view(w8.back()->data(), heads * n * k), 7 + c, -448.0f, 448.0f);
  }
  gpu::Buffer<float> w8_scale(std::vector<float>(sz(heads), 0.01f));
  const index_t groups = ops::fp8_group_cols(k);
  gpu::Buffer<fp8_e4m3> a8(sz(tokens * heads * k));
  ops::fill_uniform(g, make_view(a8.data(), tokens * heads * k), 8, -448.0f, 448.0f);
  gpu::Buffer<float> a8_scale(std::vector<float>(sz(tokens * heads * groups), 0.02f));
  gpu::Buffer<bf16> out(sz(tokens * heads * n));
  s.synchronize();
  report.line("bmm", "fp8", "deepseek-v3", n == 512 ? "w_uk" : "w_uv", tokens, heads * n, k,
              graph_us(s,
                       [&](int i) {
                         ops::bmm_fp8(g,
                                      {make_view(a8.data(), tokens * heads, k),
                                       make_view(a8_scale.data(), tokens * heads, groups)},
                                      {make_view(w8[sz(i % copies)]->data(), heads, n, k),
                                       make_view(w8_scale.data(), heads)},
                                      make_view(out.data(), tokens, heads, n));
                       }),
              static_cast<double>(heads * n * k));
  std::vector<std::unique_ptr<gpu::Buffer<std::uint8_t>>> w4;
  for (int c = 0; c < copies; ++c)
    w4.push_back(std::make_unique<gpu::Buffer<std::uint8_t>>(random_bytes(heads * n * k / 2)));
  gpu::Buffer<e8m0> w4_scale(random_scales(heads * n * k / 32));
  gpu::Buffer<bf16> a16(sz(tokens * heads * k));
  ops::fill_uniform(g, make_view(a16.data(), tokens * heads * k), 9, -1.0f, 1.0f);
  s.synchronize();
  report.line("bmm", "mxfp4", "deepseek-v3", n == 512 ? "w_uk" : "w_uv", tokens, heads * n, k,
              graph_us(s,
                       [&](int i) {
                         ops::bmm_mxfp4(
                             g, make_view(static_cast<const bf16*>(a16.data()), tokens, heads, k),
                             {make_view(w4[sz(i % copies)]->data(), heads, n, k / 2),
                              make_view(w4_scale.data(), heads, n, k / 32), k},
                             make_view(out.data(), tokens, heads, n));
                       }),
              static_cast<double>(heads * n * (k / 2 + k / 32)));
}

// One launch of each decode kernel at M = 1 on the DeepSeek qkv_a (7168 -> 2112) and a
// down-projection-like shape (2048 -> 7168), for a profiler to read the kernels' own durations
// and counters.
void profile_decode() {
  gpu::Stream s;
  for (const auto& [n, k] : {std::pair<index_t, index_t>{2112, 7168}, {7168, 2048}}) {
    HostMxfp4 host(1, n, k);
    const ops::Mxfp4Weight host_w{make_view(host.packed.data(), n, ops::mxfp4_packed_cols(k)),
                                  make_view(host.scale.data(), n, ops::mxfp4_scale_cols(k)), k};
    const auto mc = ops::prepare_weight<GemmBackend::matrix_core>(host_w);
    const auto pt = ops::prepare_weight<GemmBackend::portable>(host_w);
    Activations a(s, 1, k);
    gpu::Buffer<bf16> out(sz(n));
    for (const Variant& v : decode_variants) {
      ops::gemm_a4w4(ops::Gpu{s.handle()}, a.mxfp4_act(), mc, make_view(out.data(), 1, n),
                     v.kernel);
      ops::gemm_a4w4(ops::Gpu{s.handle()}, a.mxfp4_act(), pt, make_view(out.data(), 1, n),
                     v.kernel);
    }
    s.synchronize();
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (gpu::device_count() == 0) {
    std::fputs("atom-bench-gemm: no GPU\n", stderr);
    return 1;
  }
  if (argc > 1 && std::string(argv[1]) == "--profile") {
    profile_decode();
    return 0;
  }
  Report report;
  const std::string mode = argc > 2 ? argv[2] : "";
  const bool decode_only = mode == "--decode";
  const bool experts_only = mode == "--experts";
  if (argc > 3 || (argc > 2 && !decode_only && !experts_only)) {
    std::fputs(
        "usage: atom-bench-gemm [OUT_CSV] [--decode | --experts] | atom-bench-gemm --profile\n",
        stderr);
    return 2;
  }
  constexpr const char* header = "kind,format,model,weight,M,N,K,us,weight_bytes\n";
  if (argc > 1) {
    report.file.open(argv[1]);
    if (!report.file) {
      std::fprintf(stderr, "atom-bench-gemm: cannot write %s\n", argv[1]);
      return 1;
    }
    report.file << header;
  }
  gpu::Stream stream;
  const double copy = ops::copy_gbs(ops::Gpu{stream.handle()});
  std::printf("# %s, copy %.0f GB/s (512 MiB device-to-device, read + written)\n%s",
              gpu::device_name(0).c_str(), copy, header);
  // Every linear weight of the two models' decoder layers (DeepSeek-V3: hidden 7168, MLA with
  // q_lora 1536 and 128 heads, dense MLP 18432 in its first three layers, 256 experts of 2048 and
  // one shared; Qwen3-30B-A3B: hidden 2048, 32 / 4 heads of 128, 128 experts of 768).
  const Shape dense[] = {
      {"deepseek-v3", "qkv_a", 2112, 7168},       {"deepseek-v3", "q_b", 24576, 1536},
      {"deepseek-v3", "o_proj", 7168, 16384},     {"deepseek-v3", "shared_gate_up", 4096, 7168},
      {"deepseek-v3", "shared_down", 7168, 2048}, {"deepseek-v3", "dense_gate_up", 36864, 7168},
      {"deepseek-v3", "dense_down", 7168, 18432}, {"qwen3-30b-a3b", "qkv", 5120, 2048},
      {"qwen3-30b-a3b", "o_proj", 2048, 4096}};
  const Shape experts[] = {{"deepseek-v3", "experts_gate_up", 4096, 7168, 256, 8},
                           {"deepseek-v3", "experts_down", 7168, 2048, 256, 8},
                           {"qwen3-30b-a3b", "experts_gate_up", 1536, 2048, 128, 8},
                           {"qwen3-30b-a3b", "experts_down", 2048, 768, 128, 8}};
  const std::vector<index_t> ms =
      decode_only ? std::vector<index_t>{1, 16} : std::vector<index_t>{1, 4, 16, 64, 128, 256};
  const std::vector<index_t> ts =
      decode_only ? std::vector<index_t>{4} : std::vector<index_t>{4, 64, 256};
  if (!experts_only)
    for (const Shape& s : dense) bench_dense(report, stream, s, ms);
  for (const Shape& s : experts) bench_experts(report, stream, s, ts);
  if (decode_only || experts_only) return 0;
  for (const index_t tokens : {1, 16, 128}) {
    bench_bmm(report, stream, tokens, 128, 512, 128);
    bench_bmm(report, stream, tokens, 128, 128, 512);
  }
  return 0;
}
