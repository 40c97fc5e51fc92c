// The TP group on real GPUs. TP size 1 runs in this process; the multi-rank cases spawn one
// tp_worker per GPU (see tp_worker.cpp for what each mode checks) and need that many GPUs and NCCL
// on the library path. TP 2 is required; TP 4 and TP 8 run where the machine has the GPUs.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "../dist/spawn.hpp"
#include "atom/dist/tp.hpp"
#include "atom/gpu/device.hpp"
#include "atom/ops/gpu/norm.hpp"

extern char** environ;

namespace {

namespace ops = atom::ops;
namespace gpu = atom::gpu;
namespace testing = atom::dist::testing;
using atom::bf16;
using atom::index_t;
using atom::make_view;

std::string worker_path() {
  return (std::filesystem::read_symlink("/proc/self/exe").parent_path() / "tp_worker").string();
}

// This process's environment (NCCL settings, library path) for the workers.
std::map<std::string, std::string> inherited_environment() {
  std::map<std::string, std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    const auto eq = entry.find('=');
    if (eq != std::string::npos) env[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  return env;
}

// A TP size runs only where its GPUs exist; a machine with fewer skips it with a warning (a
// one-GPU machine runs only the size-1 case).
bool have_gpus(int size) {
  if (gpu::device_count() >= size) return true;
  WARN("TP " << size << " not run: " << gpu::device_count() << " GPUs");
  return false;
}

std::vector<testing::Outcome> run_group(int size, const std::string& mode,
                                        const std::vector<std::string>& extra,
                                        std::chrono::milliseconds limit, int timeout_ms) {
  INFO("TP " << size << " tests need " << size << " GPUs of the built backend ("
             << gpu::backend_name() << ")");
  REQUIRE(gpu::device_count() >= size);
  const auto port = testing::free_port();
  std::vector<testing::Worker> workers;
  for (int rank = 0; rank < size; ++rank) {
    testing::Worker w;
    w.env = inherited_environment();
    w.args = {mode,
              "--rank",
              std::to_string(rank),
              "--size",
              std::to_string(size),
              "--port",
              std::to_string(port),
              "--seed",
              std::to_string(Catch::rngSeed()),
              "--timeout-ms",
              std::to_string(timeout_ms)};
    w.args.insert(w.args.end(), extra.begin(), extra.end());
    workers.push_back(w);
  }
  auto out = testing::run_workers(worker_path(), workers, limit);
  for (std::size_t r = 0; r < out.size(); ++r)
    UNSCOPED_INFO("rank " << r << " exit " << out[r].exit_code << " signal " << out[r].signal
                          << " after " << out[r].seconds << " s"
                          << (out[r].killed ? " (killed)" : "") << ":\n"
                          << out[r].output);
  return out;
}

std::vector<std::string> digests(const std::string& output) {
  std::vector<std::string> lines;
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);)
    if (line.rfind("digest ", 0) == 0) lines.push_back(line);
  return lines;
}

}  // namespace

TEST_CASE("TP size 1 is plain add+RMSNorm") {
  REQUIRE(gpu::device_count() >= 1);
  atom::dist::TpGroup tp(atom::dist::TpOptions{});
  CHECK(tp.path_for(64, 7168) == atom::dist::TpPath::plain);
  for (index_t rows : {index_t{1}, index_t{17}}) {
    const index_t cols = 769;
    std::vector<bf16> x(static_cast<std::size_t>(rows * cols)), r(x.size()), w(cols);
    for (std::size_t i = 0; i < x.size(); ++i) {
      x[i] = atom::to_bf16(0.01f + static_cast<float>((i * 7919) % 1000) * 1e-3f);
      r[i] = atom::to_bf16(-0.5f + static_cast<float>((i * 104729) % 997) * 1e-3f);
    }
    for (std::size_t i = 0; i < w.size(); ++i)
      w[i] = atom::to_bf16(0.5f + static_cast<float>(i % 13) * 0.05f);
    gpu::Buffer<bf16> dx(x), dr1(r), dr2(r), dw(w), out1(x.size()), out2(x.size());
    out1.fill(0xff);
    out2.fill(0x00);
    tp.all_reduce_add_rms_norm<ops::epi::Bf16>(
        make_view(dx.data(), rows, cols), make_view(dr1.data(), rows, cols),
        make_view(dw.data(), cols), 1e-6f, ops::Bf16Act{make_view(out1.data(), rows, cols)});
    tp.synchronize();
    ops::add_rms_norm<ops::epi::Bf16>(ops::Gpu{}, make_view(dx.data(), rows, cols),
                                      make_view(dr2.data(), rows, cols), make_view(dw.data(), cols),
                                      1e-6f, ops::Bf16Act{make_view(out2.data(), rows, cols)});
    gpu::synchronize();
    const auto a = out1.download();
    const auto b = out2.download();
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); ++i) REQUIRE(a[i].bits == b[i].bits);
    const auto ra = dr1.download();
    const auto rb = dr2.download();
    for (std::size_t i = 0; i < ra.size(); ++i) REQUIRE(ra[i].bits == rb[i].bits);
  }
  CHECK_THROWS_AS(tp.all_reduce_add_rms_norm<ops::epi::Bf16>({}, {}, {}, 1e-6f, ops::Bf16Act{},
                                                             atom::dist::TpPath::fused),
                  std::exception);
}

TEST_CASE("TP N: fused and separate paths match NCCL + the host norm on every epilogue") {
  const int size = GENERATE(2, 4, 8);
  if (!have_gpus(size)) return;
  INFO("TP " << size);
  const auto out = run_group(size, "check", {}, std::chrono::milliseconds(120000), 20000);
  for (const auto& rank : out) REQUIRE(rank.exit_code == 0);
  const auto d0 = digests(out[0].output);
  CHECK(d0.size() == 2 * 5 * 4);
  // Every rank computes identical bits.
  for (std::size_t r = 1; r < out.size(); ++r) CHECK(d0 == digests(out[r].output));
}

TEST_CASE("TP N: 1000 repeated fused calls and graph replays stay correct") {
  const int size = GENERATE(2, 4, 8);
  if (!have_gpus(size)) return;
  INFO("TP " << size);
  const auto out =
      run_group(size, "repeat", {"--calls", "1000"}, std::chrono::milliseconds(90000), 20000);
  for (const auto& rank : out) CHECK(rank.exit_code == 0);
}

TEST_CASE("TP N: a rank that dies makes the others fail within the timeout") {
  const int size = GENERATE(2, 4);
  if (!have_gpus(size)) return;
  const auto path = GENERATE(as<std::string>{}, "fused", "separate");
  INFO("TP " << size << ", path " << path);
  constexpr int timeout_ms = 3000;
  const auto out = run_group(size, "die", {"--victim", "1", "--die-at", "50", "--path", path},
                             std::chrono::milliseconds(40000), timeout_ms);
  CHECK(out[1].signal == SIGKILL);
  for (std::size_t r = 0; r < out.size(); ++r) {
    if (r == 1) continue;
    INFO("rank " << r);
    REQUIRE(out[r].exit_code == 3);
    CHECK_FALSE(out[r].killed);
    CHECK_THAT(out[r].output, Catch::Contains("TP rank " + std::to_string(r)));
    // The failing call waits at most twice the timeout (kernel wait, then the host's); joining
    // and the 50 calls before take well under the rest.
    CHECK(out[r].seconds < 2.0 * timeout_ms / 1000.0 + 20.0);
  }
  WARN("TP " << size << " survivor rank 0 (" << path << "), " << out[0].seconds
             << " s in all: " << out[0].output);
}
