// atom-bench-allreduce-norm: the TP all-reduce + residual add + RMSNorm (bf16 out) at hidden 7168
// on N GPUs, fused kernel against NCCL all-reduce + the separate add_rms_norm kernel, T = 1 to
// 8192. Forks one process per GPU (ranks 1..N-1 are children); rank 0 prints.
//
// Method, per path and T: median over 25 samples of the time per call, where a sample is 20
// back-to-back calls, either launched from the host one by one (eager) or replayed as one
// captured graph (graph), timed with device events. Alongside: the NCCL all-reduce alone
// (graph), the copy bandwidth of one GPU (1 GiB device-to-device copy) and, for the fused path,
// the rate at which it moves the peer's rows (T * 7168 * 2 bytes per call).
//
// Usage: atom-bench-allreduce-norm [--size N] [--port P]   (N defaults to 2)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "atom/dist/tp.hpp"
#include "atom/gpu/device.hpp"
#include "atom/ops/gpu/norm.hpp"

namespace {

namespace ops = atom::ops;
namespace gpu = atom::gpu;
using atom::bf16;
using atom::index_t;
using atom::make_view;
using atom::dist::TpGroup;
using atom::dist::TpPath;

constexpr index_t hidden = 7168;
constexpr index_t max_tokens = 8192;
constexpr float eps = 1e-6f;
constexpr int batch = 20;
constexpr int samples = 25;

std::uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Per call, in microseconds: `launch` enqueues one call on the group's stream.
double eager_us(TpGroup& tp, const std::function<void()>& launch) {
  for (int i = 0; i < 10; ++i) launch();
  tp.synchronize();
  gpu::Timer timer;
  std::vector<double> s;
  for (int b = 0; b < samples; ++b) {
    timer.start();
    for (int i = 0; i < batch; ++i) launch();
    s.push_back(static_cast<double>(timer.stop_ms()) * 1000.0 / batch);
  }
  tp.synchronize();
  return median(s);
}

double graph_us(TpGroup& tp, const std::function<void()>& launch) {
  auto graph = tp.capture([&] {
    for (int i = 0; i < batch; ++i) launch();
  });
  for (int i = 0; i < 3; ++i) graph.replay();
  tp.synchronize();
  gpu::Timer timer;
  std::vector<double> s;
  for (int b = 0; b < samples; ++b) {
    timer.start();
    graph.replay();
    s.push_back(static_cast<double>(timer.stop_ms()) * 1000.0 / batch);
  }
  tp.synchronize();
  return median(s);
}

std::vector<bf16> random_bf16(std::size_t n, std::uint32_t seed) {
  std::vector<bf16> v(n);
  std::uint32_t s = seed * 2654435761u + 1;
  for (bf16& x : v) {
    s = s * 1664525u + 1013904223u;
    const float u = static_cast<float>(s >> 8) * 0x1p-24f;
    x = atom::to_bf16((s & 1) ? 0.05f + u : -0.05f - u);
  }
  return v;
}

int run_rank(int rank, int size, std::uint16_t port) {
  atom::dist::TpOptions o;
  o.rank = rank;
  o.size = size;
  o.device = rank;
  o.port = port;
  o.fused_max_bytes = static_cast<std::size_t>(max_tokens * hidden) * sizeof(bf16);
  o.max_elements = max_tokens * hidden;
  TpGroup tp(o);
  const auto n = static_cast<std::size_t>(max_tokens * hidden);
  gpu::Buffer<bf16> x(random_bf16(n, static_cast<std::uint32_t>(rank) + 1));
  gpu::Buffer<bf16> residual(random_bf16(n, 7));
  gpu::Buffer<bf16> weight(random_bf16(static_cast<std::size_t>(hidden), 9));
  gpu::Buffer<bf16> out(n);
  gpu::Buffer<bf16> reduced(n);

  double copy_gbps = 0;
  {
    // 1 GiB device-to-device copy on one GPU: bytes read + written over time.
    const index_t rows = 16384;
    const index_t cols = 32768;
    gpu::Buffer<bf16> a(static_cast<std::size_t>(rows * cols));
    gpu::Buffer<bf16> b(static_cast<std::size_t>(rows * cols));
    a.fill(0x3c);
    const auto copy = [&] {
      ops::copy(tp.gpu(), make_view(a.data(), rows, cols), make_view(b.data(), rows, cols));
    };
    const double us = eager_us(tp, copy);
    copy_gbps = 2.0 * static_cast<double>(rows * cols) * 2.0 / us * 1e-3;
  }
  if (rank == 0) {
    std::printf("device: %s x%d; copy bandwidth %.0f GB/s (1 GiB, one GPU)\n",
                gpu::device_name(0).c_str(), size, copy_gbps);
    std::printf(
        "all-reduce + residual add + RMSNorm (bf16 out), hidden %lld, %d ranks; us per call\n",
        static_cast<long long>(hidden), size);
    std::printf("%6s | %9s %9s | %9s %9s %9s | %7s %8s | %s\n", "T", "fused", "separate", "fused",
                "separate", "nccl-ar", "speedup", "peer GB/s", "automatic (default limit)");
    std::printf("%6s | %9s %9s | %9s %9s %9s | %7s %8s |\n", "", "eager", "eager", "graph", "graph",
                "graph", "(graph)", "(fused)");
  }
  for (index_t t = 1; t <= max_tokens; t *= 2) {
    const auto xv = make_view(static_cast<const bf16*>(x.data()), t, hidden);
    const auto rv = make_view(residual.data(), t, hidden);
    const auto wv = make_view(static_cast<const bf16*>(weight.data()), hidden);
    const ops::Bf16Act ov{make_view(out.data(), t, hidden)};
    const auto call = [&](TpPath path) {
      return [&tp, xv, rv, wv, ov, path] {
        tp.all_reduce_add_rms_norm<ops::epi::Bf16>(xv, rv, wv, eps, ov, path);
      };
    };
    const auto ar = [&] { tp.all_reduce(xv, make_view(reduced.data(), t, hidden)); };
    const double fused_eager = eager_us(tp, call(TpPath::fused));
    const double separate_eager = eager_us(tp, call(TpPath::separate));
    const double fused_graph = graph_us(tp, call(TpPath::fused));
    const double separate_graph = graph_us(tp, call(TpPath::separate));
    const double ar_graph = graph_us(tp, ar);
    if (rank == 0) {
      const double peer_bytes = static_cast<double>(t * hidden) * 2.0;
      // What an automatic call takes under the default size limit.
      const bool automatic_fused =
          static_cast<std::size_t>(peer_bytes) <= atom::dist::tp_default_fused_max_bytes(size);
      std::printf("%6lld | %9.2f %9.2f | %9.2f %9.2f %9.2f | %6.2fx %8.0f | %s\n",
                  static_cast<long long>(t), fused_eager, separate_eager, fused_graph,
                  separate_graph, ar_graph, separate_graph / fused_graph,
                  peer_bytes / fused_graph * 1e-3, automatic_fused ? "fused" : "separate");
    }
  }
  tp.shutdown();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint16_t port = 0;
  int size = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--port") == 0)
      port = static_cast<std::uint16_t>(std::atoi(argv[i + 1]));
    else if (std::strcmp(argv[i], "--size") == 0)
      size = std::atoi(argv[i + 1]);
  }
  if (size < 2 || size > 8) {
    std::fprintf(stderr, "--size %d: the benchmark runs 2 to 8 ranks\n", size);
    return 2;
  }
  if (port == 0) port = free_port();
  std::fflush(stdout);
  // No GPU call before the forks: each process initializes its own device.
  std::vector<pid_t> children;
  int rank = 0;
  for (int r = 1; r < size; ++r) {
    const pid_t child = ::fork();
    if (child < 0) {
      std::perror("fork");
      return 1;
    }
    if (child == 0) {
      rank = r;
      children.clear();
      break;
    }
    children.push_back(child);
  }
  try {
    int rc = run_rank(rank, size, port);
    if (rank != 0) std::_Exit(rc);
    for (const pid_t child : children) {
      int status = 0;
      ::waitpid(child, &status, 0);
      if (rc == 0) rc = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    }
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    if (rank != 0) std::_Exit(1);
    return 1;
  }
}
