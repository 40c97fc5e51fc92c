// Checkpoint -> GPU load rate from the page cache: the mmap and read paths through GpuSink's pinned
// staging ring (slot sizes, slot counts, copy threads) and the mmap path without staging, next to
// the host-only load (HostSink) and the raw pinned and pageable host-to-device copy rates, all
// measured in the same run. Rates are data bytes over wall time, medians after a warm-up load.
//
//   atom-bench-io-gpu [--shards 4] [--shard-mb 512] [--runs 5] [--dir /tmp] [--keep]
//
// The shards go to <dir>/atom-bench-io-gpu; --keep leaves them there for the PyTorch peer
// (io_gpu_bench_torch.py <dir>/atom-bench-io-gpu).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "atom/gpu/device.hpp"
#include "atom/io/checkpoint.hpp"
#include "atom/io/gpu_sink.hpp"
#include "atom/io/loader.hpp"
#include "atom/io/writer.hpp"

namespace {

using namespace atom;
using namespace atom::io;

struct Options {
  int shards = 4;
  std::uint64_t shard_mb = 512;
  int runs = 5;
  std::filesystem::path dir = std::filesystem::temp_directory_path();
  bool keep = false;
};

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: atom-bench-io-gpu [--shards N] [--shard-mb MB] [--runs R] [--dir DIR] "
               "[--keep]\n");
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    const auto number = [&] {
      if (i + 1 >= argc) usage();
      char* end = nullptr;
      const long long n = std::strtoll(argv[++i], &end, 10);
      if (end == argv[i] || *end != '\0' || n < 1) {
        std::fprintf(stderr, "atom-bench-io-gpu: %s wants an integer >= 1, got \"%s\"\n",
                     std::string(a).c_str(), argv[i]);
        std::exit(2);
      }
      return n;
    };
    if (a == "--shards")
      o.shards = static_cast<int>(number());
    else if (a == "--shard-mb")
      o.shard_mb = static_cast<std::uint64_t>(number());
    else if (a == "--runs")
      o.runs = static_cast<int>(number());
    else if (a == "--dir" && i + 1 < argc)
      o.dir = argv[++i];
    else if (a == "--keep")
      o.keep = true;
    else
      usage();
  }
  return o;
}

// `o.shards` shards of 64 BF16 tensors each, with non-constant contents.
std::filesystem::path write_checkpoint(const Options& o) {
  const auto dir = o.dir / "atom-bench-io-gpu";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::uint64_t tensor_bytes = o.shard_mb * (std::uint64_t{1} << 20) / 64 / 2 * 2;
  std::vector<std::byte> data(tensor_bytes);
  std::uint64_t x = 0x9e3779b97f4a7c15ull;
  for (auto& b : data) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<std::byte>(x & 0xff);
  }
  std::vector<TensorData> tensors;
  for (int t = 0; t < 64 * o.shards; ++t)
    tensors.push_back(
        {"layers." + std::to_string(t) + ".weight", Dtype::BF16, {tensor_bytes / 2}, data});
  write_sharded(dir, tensors, tensor_bytes * 64);
  return dir;
}

struct Stats {
  double median, min, max;
};

// `release` runs after each timed `once`, untimed (freeing what the load allocated).
Stats rates(
    int runs, double gb, const std::function<void()>& once,
    const std::function<void()>& release = [] {}) {
  std::vector<double> r;
  for (int i = 0; i < runs; ++i) {
    const auto start = std::chrono::steady_clock::now();
    once();
    const std::chrono::duration<double> t = std::chrono::steady_clock::now() - start;
    release();
    r.push_back(gb / t.count());
  }
  std::sort(r.begin(), r.end());
  return {r[r.size() / 2], r.front(), r.back()};
}

void print(const std::string& what, const Stats& s) {
  std::printf("%-52s %7.2f GB/s %7.2f %7.2f\n", what.c_str(), s.median, s.min, s.max);
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  if (gpu::device_count() == 0) {
    std::fprintf(stderr, "atom-bench-io-gpu: no GPU\n");
    return 1;
  }
  const auto dir = write_checkpoint(o);
  const Checkpoint c = Checkpoint::open(dir);
  const double gb = static_cast<double>(c.data_bytes()) / 1e9;
  std::printf("atom-bench-io-gpu: %s, %zu shards, %.2f GB of tensor data in %s, %d runs\n",
              gpu::device_name(0).c_str(), c.shards().size(), gb, dir.c_str(), o.runs);
  std::printf("%-52s %12s %7s %7s\n", "what", "median", "min", "max");

  // Raw link rates: 256 MiB host -> device, from pinned memory on a copy stream and from
  // pageable memory.
  {
    const std::size_t n = std::size_t{256} << 20;
    gpu::Buffer<std::byte> device(n);
    gpu::PinnedBuffer<std::byte> pinned(n);
    std::memset(pinned.data(), 0x5a, n);
    std::vector<std::byte> pageable(n, std::byte{0x5a});
    gpu::Stream stream;
    const double copy_gb = static_cast<double>(n) / 1e9;
    gpu::copy_to_device(device.data(), pageable.data(), n);
    print("raw H2D copy, pinned (256 MiB)", rates(o.runs + 2, copy_gb, [&] {
            gpu::copy_to_device_async(device.data(), pinned.data(), n, stream);
            stream.synchronize();
          }));
    print("raw H2D copy, pageable (256 MiB)", rates(o.runs + 2, copy_gb, [&] {
            gpu::copy_to_device(device.data(), pageable.data(), n);
          }));
  }

  // Warm-up: every shard in the page cache, the device allocator and the context warm.
  (void)c.load_host(LoadMode::mmap);
  (void)load_device(c, LoadMode::read);

  HostTensors host;
  for (const LoadMode mode : {LoadMode::mmap, LoadMode::read})
    print("host only: " + std::string(load_mode_name(mode)) + " -> host buffers",
          rates(
              o.runs, gb,
              [&] {
                host = c.load_host(mode);
                if (host.size() != c.size()) std::exit(1);
              },
              [&] { host.clear(); }));

  DeviceTensors device;

  struct Variant {
    LoadMode mode;
    std::size_t slot_mb;
    std::size_t slots;
    std::size_t threads;
    bool stage;
  };
  const std::vector<Variant> variants = {
      {LoadMode::mmap, 16, 3, 4, true},  {LoadMode::mmap, 16, 3, 1, true},
      {LoadMode::mmap, 16, 3, 2, true},  {LoadMode::mmap, 16, 3, 8, true},
      {LoadMode::mmap, 4, 3, 4, true},   {LoadMode::mmap, 64, 3, 4, true},
      {LoadMode::mmap, 16, 2, 4, true},  {LoadMode::mmap, 64, 2, 8, true},
      {LoadMode::mmap, 16, 3, 1, false}, {LoadMode::read, 16, 3, 1, true},
      {LoadMode::read, 4, 3, 1, true},   {LoadMode::read, 64, 3, 1, true},
      {LoadMode::read, 16, 2, 1, true},  {LoadMode::read, 4, 4, 1, true},
  };
  for (const Variant& v : variants) {
    GpuSinkOptions options;
    options.staging_bytes = v.slot_mb << 20;
    options.staging_slots = v.slots;
    options.copy_threads = v.threads;
    options.stage = v.stage;
    char what[128];
    if (v.stage)
      std::snprintf(what, sizeof what, "GPU: %s, %zu x %zu MiB pinned slots, %zu thread%s",
                    std::string(load_mode_name(v.mode)).c_str(), v.slots, v.slot_mb, v.threads,
                    v.threads == 1 ? "" : "s");
    else
      std::snprintf(what, sizeof what, "GPU: %s, unstaged (pageable copies)",
                    std::string(load_mode_name(v.mode)).c_str());
    print(what, rates(
                    o.runs, gb,
                    [&] {
                      device = load_device(c, v.mode, options);
                      if (device.size() != c.size()) std::exit(1);
                    },
                    [&] { device.clear(); }));
  }
  // The staging kept across loads (made once, outside the timing), as a loader that loads more
  // than once keeps it: copy lanes of `threads` threads with two buffers of `lane_mb` each.
  const std::size_t cores = std::max(1u, std::thread::hardware_concurrency());
  struct Kept {
    LoadMode mode;
    std::size_t lane_mb;
    std::size_t threads;
  };
  const std::vector<Kept> kept = {
      {LoadMode::mmap, 2, 4},     {LoadMode::mmap, 2, 8},     {LoadMode::mmap, 2, cores},
      {LoadMode::mmap, 1, cores}, {LoadMode::mmap, 4, cores}, {LoadMode::mmap, 1, 2 * cores},
      {LoadMode::read, 2, 1},
  };
  for (const Kept& v : kept) {
    GpuSinkOptions options;
    options.lane_bytes = v.lane_mb << 20;
    options.copy_threads = v.threads;
    GpuStaging staging(options);
    device = load_device(c, v.mode, options, &staging);  // warm: first touch of the buffers
    device.clear();
    char what[128];
    std::snprintf(what, sizeof what, "GPU: %s, kept, %zu lanes x 2 x %zu MiB",
                  std::string(load_mode_name(v.mode)).c_str(), v.threads, v.lane_mb);
    print(what, rates(
                    o.runs, gb,
                    [&] {
                      device = load_device(c, v.mode, options, &staging);
                      if (device.size() != c.size()) std::exit(1);
                    },
                    [&] { device.clear(); }));
  }
  if (!o.keep) std::filesystem::remove_all(dir);
  return 0;
}
