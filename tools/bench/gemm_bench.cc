// MXFP4 GEMM (both backends) and MLA BMM (both formats) timings on the GPU. Prints one CSV line per
// measurement (kind, backend, M, N, K, microseconds per call, weight bytes streamed per call);
// gemm_bench_torch.py times the PyTorch peers on the same shapes and prints the joint table.
// Backend "asm" / "triton" is the default path; "asm:<kernel>" names one of the decode kernels
// (GemmDecodeKernel) at M <= 16, so one run compares them. Weights rotate over enough copies to
// exceed the L2 cache; each time is the median of batches.
// Usage: atom-bench-gemm [OUT_CSV] [--decode] (--decode: M = 1 and 16 only, no BMMs) |
// atom-bench-gemm --profile (one launch of each decode kernel at M = 1 on 7168 -> 2112 and
// 2048 -> 7168, for a profiler).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "atom/gpu/device.hpp"
#include "atom/ops/gpu/bmm.hpp"
#include "atom/ops/gpu/gemm.hpp"

namespace {

using atom::bf16;
using atom::e8m0;
using atom::index_t;
using atom::policy::GemmBackend;

constexpr int batch_calls = 20;
constexpr int batches = 10;
constexpr std::size_t rotate_bytes = std::size_t{256} << 20;

std::mt19937 engine(2026);

std::vector<std::uint8_t> random_bytes(index_t n, int lo = 1) {
  std::uniform_int_distribution<int> byte(lo, 255);
  std::vector<std::uint8_t> v(static_cast<std::size_t>(n));
  for (auto& b : v) b = static_cast<std::uint8_t>(byte(engine));
  return v;
}

std::vector<e8m0> random_scales(index_t n) {
  std::uniform_int_distribution<int> code(123, 131);
  std::vector<e8m0> v(static_cast<std::size_t>(n));
  for (auto& s : v) s = e8m0{static_cast<std::uint8_t>(code(engine))};
  return v;
}

int copies_for(std::size_t bytes) {
  return static_cast<int>(
      std::clamp<std::size_t>(rotate_bytes / std::max<std::size_t>(bytes, 1) + 1, 2, 16));
}

// Median microseconds per call of call(i) over batches of batch_calls calls (i counts calls).
// Slow calls (above 2 ms) run in batches of one.
template <class Call>
double time_us(Call call) {
  for (int i = 0; i < 5; ++i) call(i);
  atom::gpu::synchronize();
  std::vector<double> per_call;
  atom::gpu::Timer timer;
  timer.start();
  call(5);
  const bool slow = timer.stop_ms() > 2.0f;
  const int calls = slow ? 1 : batch_calls;
  int i = 6;
  for (int b = 0; b < batches; ++b) {
    timer.start();
    for (int c = 0; c < calls; ++c) call(i++);
    per_call.push_back(static_cast<double>(timer.stop_ms()) * 1000.0 / calls);
  }
  std::sort(per_call.begin(), per_call.end());
  return per_call[per_call.size() / 2];
}

struct Report {
  std::ofstream file;
  void line(const char* kind, const char* backend, index_t m, index_t n, index_t k, double us,
            std::size_t bytes) {
    char text[256];
    std::snprintf(text, sizeof text, "%s,%s,%lld,%lld,%lld,%.3f,%zu\n", kind, backend,
                  static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k),
                  us, bytes);
    std::fputs(text, stdout);
    if (file) file << text;
  }
};

using atom::ops::GemmDecodeKernel;

struct Variant {
  GemmDecodeKernel kernel;
  const char* name;
};
constexpr Variant decode_variants[] = {{GemmDecodeKernel::split_k, "split_k"},
                                       {GemmDecodeKernel::stream_u1, "stream_u1"},
                                       {GemmDecodeKernel::stream_u2, "stream_u2"},
                                       {GemmDecodeKernel::stream_u4, "stream_u4"},
                                       {GemmDecodeKernel::stream_u8, "stream_u8"}};

// One backend's weight for [N, K], prepared once and copied enough times to exceed the L2 cache.
template <GemmBackend G>
struct Weights {
  std::vector<std::unique_ptr<atom::ops::PreparedMxfp4Weight<G>>> copies;
  Weights(const atom::ops::Mxfp4Weight& host_w, index_t n, index_t k) {
    const int count = copies_for(static_cast<std::size_t>(n * k / 2));
    for (int c = 0; c < count; ++c)
      copies.push_back(std::make_unique<atom::ops::PreparedMxfp4Weight<G>>(
          atom::ops::prepare_weight<G>(host_w)));
  }
  const atom::ops::PreparedMxfp4Weight<G>& at(int i) const {
    return *copies[static_cast<std::size_t>(i) % copies.size()];
  }
};

struct Activation {
  atom::gpu::Buffer<std::uint8_t> packed;
  atom::gpu::Buffer<e8m0> scale;
  atom::gpu::Buffer<bf16> out;
  atom::ops::Mxfp4Act act;
  atom::View2<bf16> out_view;
  Activation(index_t m, index_t n, index_t k)
      : packed(random_bytes(m * k / 2)),
        scale(random_scales(m * k / 32)),
        out(static_cast<std::size_t>(m * n)),
        act{atom::make_view(packed.data(), m, k / 2), atom::make_view(scale.data(), m, k / 32), k},
        out_view(atom::make_view(out.data(), m, n)) {}
};

// Times the default path for every M and, for M <= 16, each decode kernel ("asm:stream_u4").
template <GemmBackend G>
void bench_backend(Report& report, const char* name, const Weights<G>& w, index_t n, index_t k,
                   const std::vector<index_t>& ms, bool variants) {
  for (const index_t m : ms) {
    Activation a(m, n, k);
    const double us =
        time_us([&](int i) { atom::ops::gemm_a4w4(atom::ops::Gpu{}, a.act, w.at(i), a.out_view); });
    report.line("gemm", name, m, n, k, us, w.at(0).bytes());
    if (!variants || m > 16) continue;
    for (const Variant& v : decode_variants) {
      const double vus = time_us([&](int i) {
        atom::ops::gemm_a4w4(atom::ops::Gpu{}, a.act, w.at(i), a.out_view, v.kernel);
      });
      const std::string label = std::string(name) + ":" + v.name;
      report.line("gemm", label.c_str(), m, n, k, vus, w.at(0).bytes());
    }
  }
}

void bench_shape(Report& report, index_t n, index_t k, const std::vector<index_t>& ms,
                 bool variants) {
  std::vector<std::uint8_t> w_packed = random_bytes(n * k / 2);
  std::vector<e8m0> w_scale = random_scales(n * k / 32);
  const atom::ops::Mxfp4Weight host_w{atom::make_view(w_packed.data(), n, k / 2),
                                      atom::make_view(w_scale.data(), n, k / 32), k};
  {
    const Weights<GemmBackend::matrix_core> w(host_w, n, k);
    bench_backend(report, "asm", w, n, k, ms, variants);
  }
  const Weights<GemmBackend::portable> w(host_w, n, k);
  bench_backend(report, "triton", w, n, k, ms, variants);
}

// One launch of each decode kernel at M = 1 on the DeepSeek qkv_a (7168 -> 2112) and a
// down-projection-like shape (2048 -> 7168), for a profiler to read the kernels' own durations
// and counters.
void profile_decode() {
  for (const auto& [n, k] : {std::pair<index_t, index_t>{2112, 7168}, {7168, 2048}}) {
    std::vector<std::uint8_t> w_packed = random_bytes(n * k / 2);
    std::vector<e8m0> w_scale = random_scales(n * k / 32);
    const atom::ops::Mxfp4Weight host_w{atom::make_view(w_packed.data(), n, k / 2),
                                        atom::make_view(w_scale.data(), n, k / 32), k};
    const auto mc = atom::ops::prepare_weight<GemmBackend::matrix_core>(host_w);
    const auto pt = atom::ops::prepare_weight<GemmBackend::portable>(host_w);
    Activation a(1, n, k);
    for (const Variant& v : decode_variants) {
      atom::ops::gemm_a4w4(atom::ops::Gpu{}, a.act, mc, a.out_view, v.kernel);
      atom::ops::gemm_a4w4(atom::ops::Gpu{}, a.act, pt, a.out_view, v.kernel);
    }
    atom::gpu::synchronize();
  }
}

void bench_bmm(Report& report, index_t tokens, index_t heads, index_t n, index_t k) {
  const int copies = copies_for(static_cast<std::size_t>(heads * n * k));
  {
    std::vector<std::unique_ptr<atom::gpu::Buffer<atom::fp8_e4m3>>> w;
    std::vector<atom::fp8_e4m3> host_w(static_cast<std::size_t>(heads * n * k));
    const auto bytes = random_bytes(heads * n * k);
    for (std::size_t i = 0; i < host_w.size(); ++i)
      host_w[i] = atom::fp8_e4m3{static_cast<std::uint8_t>(bytes[i] & 0x77)};
    for (int c = 0; c < copies; ++c)
      w.push_back(std::make_unique<atom::gpu::Buffer<atom::fp8_e4m3>>(host_w));
    atom::gpu::Buffer<float> w_scale(std::vector<float>(static_cast<std::size_t>(heads), 0.01f));
    std::vector<atom::fp8_e4m3> host_a(static_cast<std::size_t>(tokens * heads * k));
    for (std::size_t i = 0; i < host_a.size(); ++i)
      host_a[i] = atom::fp8_e4m3{static_cast<std::uint8_t>(bytes[i % bytes.size()] & 0x6f)};
    atom::gpu::Buffer<atom::fp8_e4m3> a(host_a);
    const index_t groups = atom::ops::fp8_group_cols(k);
    atom::gpu::Buffer<float> a_scale(
        std::vector<float>(static_cast<std::size_t>(tokens * heads * groups), 0.02f));
    atom::gpu::Buffer<bf16> out(static_cast<std::size_t>(tokens * heads * n));
    const double us = time_us([&](int i) {
      atom::ops::bmm_fp8(
          atom::ops::Gpu{},
          {atom::make_view(a.data(), tokens * heads, k),
           atom::make_view(a_scale.data(), tokens * heads, groups)},
          {atom::make_view(w[static_cast<std::size_t>(i % copies)]->data(), heads, n, k),
           atom::make_view(w_scale.data(), heads)},
          atom::make_view(out.data(), tokens, heads, n));
    });
    report.line("bmm", "fp8", tokens, heads * n, k, us, static_cast<std::size_t>(heads * n * k));
  }
  {
    std::vector<std::unique_ptr<atom::gpu::Buffer<std::uint8_t>>> w;
    for (int c = 0; c < copies; ++c)
      w.push_back(
          std::make_unique<atom::gpu::Buffer<std::uint8_t>>(random_bytes(heads * n * k / 2)));
    atom::gpu::Buffer<e8m0> w_scale(random_scales(heads * n * k / 32));
    std::vector<bf16> host_a(static_cast<std::size_t>(tokens * heads * k));
    for (auto& x : host_a) x = atom::to_bf16(0.5f);
    atom::gpu::Buffer<bf16> a(host_a);
    atom::gpu::Buffer<bf16> out(static_cast<std::size_t>(tokens * heads * n));
    const double us = time_us([&](int i) {
      atom::ops::bmm_mxfp4(
          atom::ops::Gpu{}, atom::make_view(static_cast<const bf16*>(a.data()), tokens, heads, k),
          {atom::make_view(w[static_cast<std::size_t>(i % copies)]->data(), heads, n, k / 2),
           atom::make_view(w_scale.data(), heads, n, k / 32), k},
          atom::make_view(out.data(), tokens, heads, n));
    });
    report.line("bmm", "mxfp4", tokens, heads * n, k, us,
                static_cast<std::size_t>(heads * n * (k / 2 + k / 32)));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (atom::gpu::device_count() == 0) {
    std::fputs("atom-bench-gemm: no GPU\n", stderr);
    return 1;
  }
  if (argc > 1 && std::string(argv[1]) == "--profile") {
    profile_decode();
    return 0;
  }
  Report report;
  const bool decode_only = argc > 2 && std::string(argv[2]) == "--decode";
  if (argc > 3 || (argc > 2 && !decode_only)) {
    std::fputs("usage: atom-bench-gemm [OUT_CSV] [--decode] | atom-bench-gemm --profile\n", stderr);
    return 2;
  }
  if (argc > 1) {
    report.file.open(argv[1]);
    report.file << "kind,backend,M,N,K,us,weight_bytes\n";
  }
  std::printf("# %s\nkind,backend,M,N,K,us,weight_bytes\n", atom::gpu::device_name(0).c_str());
  struct Shape {
    index_t n;
    index_t k;
  };
  const Shape shapes[] = {{2112, 7168}, {24576, 1536}, {7168, 16384}, {4096, 7168}, {7168, 2048},
                          {5120, 2048}, {2048, 4096},  {1536, 2048},  {2048, 768}};
  const std::vector<index_t> ms =
      decode_only ? std::vector<index_t>{1, 16} : std::vector<index_t>{1, 16, 64, 4096};
  for (const Shape& s : shapes) bench_shape(report, s.n, s.k, ms, true);
  if (decode_only) return 0;
  for (const index_t tokens : {1, 16, 128}) {
    bench_bmm(report, tokens, 128, 512, 128);
    bench_bmm(report, tokens, 128, 128, 512);
  }
  return 0;
}
