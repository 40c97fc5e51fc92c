// The tensor-parallel group (atom/dist/tp.hpp): bootstrap through the rendezvous store, NCCL /
// RCCL through the run-time loader, peer memory through IPC handles, and the fused all-reduce +
// residual add + RMSNorm kernel (detail/allreduce_norm.hpp) with its separate-path fallback.

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <utility>

#include "atom/dist/rendezvous.hpp"
#include "atom/dist/tp.hpp"
#include "atom/gpu/nccl.hpp"
#include "atom/gpu/runtime.hpp"
#include "atom/ops/gpu/norm.hpp"
#include "detail/allreduce_norm.hpp"

namespace atom::kernels {
namespace {

Bf16Rows fused_rows(const ops::Bf16Act& a) {
  return {a.x.data, RowMap{1, a.x.stride(0), 0}};
}
Fp8TokenRows fused_rows(const ops::Fp8TokenAct& a) {
  return {a.q.data, a.q.stride(0), a.scale.data, a.scale.stride(0)};
}
Fp8GroupRows fused_rows(const ops::Fp8GroupAct& a) {
  return {a.q.data, a.q.stride(0), a.scale.data, a.scale.stride(0)};
}
Mxfp4Rows fused_rows(const ops::Mxfp4Act& a) {
  return {a.packed.data, a.packed.stride(0), a.scale.data, a.scale.stride(0)};
}

bool vec_ok(const void* p, index_t stride_bytes, int align) {
  return reinterpret_cast<std::uintptr_t>(p) % static_cast<std::uintptr_t>(align) == 0 &&
         stride_bytes % align == 0;
}
// 16-byte bf16 rows, 8-byte FP8 rows, 4-byte MXFP4 rows (as the norm kernels store them).
bool fused_vec_out(const ops::Bf16Act& a) {
  return vec_ok(a.x.data, a.x.stride(0) * 2, 16);
}
bool fused_vec_out(const ops::Fp8TokenAct& a) {
  return vec_ok(a.q.data, a.q.stride(0), 8);
}
bool fused_vec_out(const ops::Fp8GroupAct& a) {
  return vec_ok(a.q.data, a.q.stride(0), 8);
}
bool fused_vec_out(const ops::Mxfp4Act& a) {
  return vec_ok(a.packed.data, a.packed.stride(0), 4);
}

// Blocks of one instantiation that fit on the device at once: the fused kernel's blocks wait for
// each other across ranks, so every block of a launch must be resident together.
template <class Out, int Chunks, bool Vec>
int resident_blocks(int threads, int multiprocessors) {
  static const int per_multiprocessor = [threads] {
    int blocks = 0;
    ATOM_GPU_CHECK(hipOccupancyMaxActiveBlocksPerMultiprocessor(
        &blocks, allreduce_add_rms_norm_kernel<Out, Chunks, Vec>, threads, 0));
    return std::max(blocks, 1);
  }();
  return std::min(per_multiprocessor * multiprocessors, fused_max_blocks);
}

template <class Out>
void launch_fused(const FusedArgs& args, const Out& out, bool vec, int multiprocessors,
                  hipStream_t stream) {
  const RowShape shape = row_shape(args.cols);
  const auto go = [&]<int Chunks, bool Vec>() {
    const int resident = resident_blocks<Out, Chunks, Vec>(shape.threads, multiprocessors);
    const auto grid = static_cast<unsigned>(std::min<index_t>(args.rows, resident));
    gpu::launch(allreduce_add_rms_norm_kernel<Out, Chunks, Vec>, grid,
                static_cast<unsigned>(shape.threads), 0, stream, args, out);
  };
  const auto pick = [&]<int Chunks>() {
    if (vec)
      go.template operator()<Chunks, true>();
    else
      go.template operator()<Chunks, false>();
  };
  switch (shape.chunks) {
    case 1:
      pick.template operator()<1>();
      break;
    case 2:
      pick.template operator()<2>();
      break;
    case 4:
      pick.template operator()<4>();
      break;
    default:
      pick.template operator()<8>();
      break;
  }
}

__global__ void fill_words_kernel(std::uint32_t* p, std::size_t words, std::uint32_t value) {
  gpu::start_after_prior_grid();
  const std::size_t step = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < words;
       i += step)
    p[i] = value;
}

std::string to_hex(const void* p, std::size_t n) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s;
  const auto* b = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i) {
    s += digits[b[i] >> 4];
    s += digits[b[i] & 15];
  }
  return s;
}

bool from_hex(const std::string& s, void* p, std::size_t n) {
  if (s.size() != 2 * n) return false;
  auto* b = static_cast<unsigned char*>(p);
  const auto nibble = [](char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
  };
  for (std::size_t i = 0; i < n; ++i) {
    const int hi = nibble(s[2 * i]);
    const int lo = nibble(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    b[i] = static_cast<unsigned char>(hi * 16 + lo);
  }
  return true;
}

}  // namespace
}  // namespace atom::kernels

namespace atom::dist {

using Clock = std::chrono::steady_clock;

struct TpGroup::Impl {
  TpOptions options;
  hipStream_t stream = nullptr;
  int multiprocessors = 0;
  std::unique_ptr<RendezvousServer> server;
  std::unique_ptr<RendezvousClient> client;
  std::unique_ptr<gpu::nccl::Library> nccl;
  gpu::nccl::Comm comm = nullptr;
  // Fused path: this rank's registered region and every rank's mapping of theirs.
  void* region = nullptr;
  std::array<void*, tp_max_ranks> peer_region{};
  std::size_t slot_bytes = 0;
  std::uint32_t* state = nullptr;  // calls, blocks_done, failed
  std::uint32_t* missing_host = nullptr;
  std::uint32_t* missing_device = nullptr;
  bf16* scratch = nullptr;
  std::string broken;  // the first failure; every later call repeats it
  bool closed = false;

  std::int64_t rank() const { return options.rank; }
  std::int64_t size() const { return options.size; }

  [[noreturn]] void fail(const std::string& operation, const std::string& cause) {
    if (broken.empty()) broken = operation + " failed: " + cause;
    if (comm != nullptr) {
      nccl->abort(comm);
      comm = nullptr;
    }
    throw TpError(rank(), operation, cause);
  }
  void expect_usable(const char* operation) {
    if (closed) throw TpError(rank(), operation, "the group is shut down");
    if (!broken.empty()) throw TpError(rank(), operation, "the group failed earlier: " + broken);
  }
  bool fused_fits(index_t rows, index_t cols) const {
    return region != nullptr && cols <= ops::gpu_norm_max_cols &&
           static_cast<std::size_t>(rows * cols) * sizeof(bf16) <= slot_bytes;
  }
  void join();
  void map_peers();
  void wait_all(const std::string& prefix, const char* operation);
  bool drain(std::chrono::milliseconds limit);
  void release() noexcept;
};

void TpGroup::Impl::wait_all(const std::string& prefix, const char* operation) {
  std::vector<std::string> keys;
  for (std::int64_t r = 0; r < size(); ++r) keys.push_back(prefix + std::to_string(r));
  const auto missing = client->wait(keys, options.timeout);
  if (!missing.empty())
    fail(operation, "no word from " + missing.front() + " within " +
                        std::to_string(options.timeout.count()) + " ms");
}

void TpGroup::Impl::join() {
  const auto r = rank();
  if (r == 0) server = std::make_unique<RendezvousServer>(options.host, options.port, size());
  client =
      std::make_unique<RendezvousClient>(options.host, options.port, r, size(), options.timeout);
  nccl = std::make_unique<gpu::nccl::Library>(
      options.nccl_libraries.empty() ? gpu::nccl::default_library_names(gpu::backend_name())
                                     : options.nccl_libraries);
  gpu::nccl::UniqueId id{};
  if (r == 0) {
    id = nccl->unique_id();
    client->set("tp/nccl-id", kernels::to_hex(&id, sizeof id));
  } else if (!kernels::from_hex(client->get("tp/nccl-id"), &id, sizeof id)) {
    fail("joining the group", "the store holds a malformed NCCL unique id");
  }
  comm = nccl->init_rank(static_cast<int>(size()), id, static_cast<int>(r));
  scratch = static_cast<bf16*>(gpu::malloc_bytes(
      static_cast<std::size_t>(std::max<index_t>(options.max_elements, 1)) * sizeof(bf16)));
  if (options.fusion) map_peers();
  client->set("tp/ready/" + std::to_string(r), "1");
  wait_all("tp/ready/", "joining the group");
}

void TpGroup::Impl::map_peers() {
  const auto r = rank();
  const std::size_t limit = options.fused_max_bytes != 0
                                ? options.fused_max_bytes
                                : dist::tp_default_fused_max_bytes(options.size);
  slot_bytes = (limit + 255) / 256 * 256;
  const std::size_t bytes = 2 * static_cast<std::size_t>(size()) * slot_bytes;
  ATOM_GPU_CHECK(hipMalloc(&region, bytes));
  const std::size_t words = bytes / sizeof(std::uint32_t);
  gpu::launch(kernels::fill_words_kernel,
              static_cast<unsigned>(std::min<std::size_t>(1024, (words + 255) / 256)), 256, 0,
              stream, static_cast<std::uint32_t*>(region), words, kernels::empty_mark_pair);
  hipIpcMemHandle_t handle;
  ATOM_GPU_CHECK(hipIpcGetMemHandle(&handle, region));
  client->set("tp/ipc/" + std::to_string(r), kernels::to_hex(&handle, sizeof handle));
  client->set("tp/sms/" + std::to_string(r), std::to_string(multiprocessors));
  for (std::int64_t p = 0; p < size(); ++p) {
    const auto i = static_cast<std::size_t>(p);
    if (p == r) {
      peer_region[i] = region;
      continue;
    }
    hipIpcMemHandle_t peer;
    if (!kernels::from_hex(client->get("tp/ipc/" + std::to_string(p)), &peer, sizeof peer))
      fail("joining the group",
           "the store holds a malformed IPC handle of rank " + std::to_string(p));
    ATOM_GPU_CHECK(hipIpcOpenMemHandle(&peer_region[i], peer, hipIpcMemLazyEnablePeerAccess));
    // Every rank must launch the same grid for the same rows: size it for the smallest device.
    multiprocessors =
        std::min(multiprocessors, std::stoi(client->get("tp/sms/" + std::to_string(p))));
  }
  ATOM_GPU_CHECK(hipMalloc(reinterpret_cast<void**>(&state), 4 * sizeof(std::uint32_t)));
  ATOM_GPU_CHECK(hipMemset(state, 0, 4 * sizeof(std::uint32_t)));
  ATOM_GPU_CHECK(hipHostMalloc(reinterpret_cast<void**>(&missing_host), sizeof(std::uint32_t),
                               hipHostMallocMapped));
  *missing_host = 0;
  ATOM_GPU_CHECK(
      hipHostGetDevicePointer(reinterpret_cast<void**>(&missing_device), missing_host, 0));
  ATOM_GPU_CHECK(hipDeviceSynchronize());
}

// Waits up to `limit` for the stream; false if it is still busy then.
bool TpGroup::Impl::drain(std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (hipStreamQuery(stream) == hipErrorNotReady) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  return true;
}

void TpGroup::Impl::release() noexcept {
  // Memory a kernel may still be using stays allocated: a leak beats a fault.
  if (stream != nullptr && !drain(options.timeout)) return;
  if (comm != nullptr) {
    if (broken.empty())
      nccl->destroy(comm);
    else
      nccl->abort(comm);
    comm = nullptr;
  }
  for (std::size_t i = 0; i < peer_region.size(); ++i)
    if (peer_region[i] != nullptr && peer_region[i] != region)
      static_cast<void>(hipIpcCloseMemHandle(peer_region[i]));
  peer_region = {};
  if (region != nullptr) static_cast<void>(hipFree(region));
  if (state != nullptr) static_cast<void>(hipFree(state));
  if (missing_host != nullptr) static_cast<void>(hipHostFree(missing_host));
  if (scratch != nullptr) gpu::free_bytes(scratch);
  if (stream != nullptr) static_cast<void>(hipStreamDestroy(stream));
  region = nullptr;
  state = nullptr;
  missing_host = nullptr;
  scratch = nullptr;
  stream = nullptr;
}

TpGroup::TpGroup(const TpOptions& options) : impl_(std::make_unique<Impl>()) {
  auto& g = *impl_;
  g.options = options;
  check_tp_options(options);
  int devices = 0;
  if (hipGetDeviceCount(&devices) != hipSuccess) devices = 0;
  if (options.device >= devices)
    throw TpError(options.rank, "joining the group",
                  "device " + std::to_string(options.device) + " does not exist (" +
                      std::to_string(devices) + " visible)");
  try {
    ATOM_GPU_CHECK(hipSetDevice(options.device));
    ATOM_GPU_CHECK(hipStreamCreate(&g.stream));
    hipDeviceProp_t props;
    ATOM_GPU_CHECK(hipGetDeviceProperties(&props, options.device));
    g.multiprocessors = props.multiProcessorCount;
    if (options.size > 1) g.join();
  } catch (const TpError&) {
    if (g.client) g.client->abort("TP rank " + std::to_string(options.rank) + " failed to join");
    g.release();
    throw;
  } catch (const std::exception& e) {
    if (g.client) g.client->abort("TP rank " + std::to_string(options.rank) + " failed to join");
    g.release();
    throw TpError(options.rank, "joining the group", e.what());
  }
}

TpGroup::~TpGroup() {
  try {
    shutdown();
  } catch (const std::exception&) {
    // A peer that is gone cannot be waited for; the buffers are released below regardless.
  }
  impl_->release();
}

std::int64_t TpGroup::rank() const noexcept {
  return impl_->rank();
}
std::int64_t TpGroup::size() const noexcept {
  return impl_->size();
}
ops::Gpu TpGroup::gpu() const noexcept {
  return ops::Gpu{impl_->stream};
}

TpPath TpGroup::path_for(index_t rows, index_t cols) const noexcept {
  const auto& g = *impl_;
  if (g.size() == 1) return TpPath::plain;
  return g.options.fusion && g.fused_fits(rows, cols) ? TpPath::fused : TpPath::separate;
}

void TpGroup::all_reduce(View2<const bf16> x, View2<bf16> out) {
  auto& g = *impl_;
  constexpr const char* op = "all_reduce";
  g.expect_usable(op);
  ops::expect_view(op, "x", x, {-1, -1});
  ops::expect_view(op, "out", out, {x.shape[0], x.shape[1]});
  const index_t rows = x.shape[0];
  const index_t cols = x.shape[1];
  if (rows * cols == 0) return;
  if (rows > 1 && out.stride(0) != cols)
    throw TpError(g.rank(), op,
                  "argument 'out' must have dense rows (stride " + std::to_string(cols) +
                      "), got stride " + std::to_string(out.stride(0)));
  const bool in_place = x.data == out.data && x.stride(0) == out.stride(0);
  if (!in_place && ops::overlaps(out, x))
    throw TpError(g.rank(), op, "argument 'out' partly overlaps 'x'");
  if (g.size() == 1) {
    if (!in_place) ops::copy(gpu(), x, out);
    return;
  }
  const void* send = x.data;
  if (!in_place && rows > 1 && x.stride(0) != cols) {
    ops::copy(gpu(), x, out);
    send = out.data;
  }
  try {
    g.nccl->all_reduce(send, out.data, static_cast<std::size_t>(rows * cols),
                       gpu::nccl::DataType::bfloat16, g.stream, g.comm);
  } catch (const gpu::nccl::NcclError& e) {
    g.fail(op, e.what());
  }
}

template <class Epi>
requires ops::Epilogue<Epi>
void TpGroup::all_reduce_add_rms_norm(View2<const bf16> x, View2<bf16> residual,
                                      View1<const bf16> weight, float eps, typename Epi::Output out,
                                      TpPath path) {
  auto& g = *impl_;
  constexpr const char* op = "all_reduce_add_rms_norm";
  g.expect_usable(op);
  ops::expect_view(op, "x", x, {-1, -1});
  expect(x.shape[1] > 0, op, "argument 'x' has no columns");
  expect(x.shape[1] <= ops::gpu_norm_max_cols, op,
         "rows of " + std::to_string(x.shape[1]) + " columns exceed the GPU norm's limit of " +
             std::to_string(ops::gpu_norm_max_cols));
  ops::expect_view(op, "residual", residual, {x.shape[0], x.shape[1]});
  ops::expect_view(op, "weight", weight, {x.shape[1]});
  ops::expect_format(op, "out", out, x.shape[0], x.shape[1]);
  ops::expect_disjoint(op, "residual", residual, "x", x);
  ops::expect_disjoint(op, "residual", residual, "weight", weight);
  ops::expect_disjoint(op, "out", out, "x", x);
  ops::expect_disjoint(op, "out", out, "residual", residual);
  ops::expect_disjoint(op, "out", out, "weight", weight);
  const index_t rows = x.shape[0];
  const index_t cols = x.shape[1];
  if (g.size() == 1) {
    if (path != TpPath::automatic && path != TpPath::plain)
      throw TpError(g.rank(), op, "a group of one rank has only the plain path");
    ops::add_rms_norm<Epi>(gpu(), x, residual, weight, eps, out);
    return;
  }
  if (path == TpPath::plain)
    throw TpError(g.rank(), op, "the plain path needs a group of one rank");
  if (path == TpPath::automatic) path = path_for(rows, cols);
  if (rows == 0) return;
  if (path == TpPath::fused) {
    if (!g.fused_fits(rows, cols))
      throw TpError(g.rank(), op,
                    "[" + std::to_string(rows) + ", " + std::to_string(cols) +
                        "] exceeds the fused path's limit of " + std::to_string(g.slot_bytes) +
                        " bytes" +
                        (g.region == nullptr ? " (fusion is disabled in this group)" : ""));
    kernels::FusedArgs a{};
    a.x = x.data;
    a.x_stride = x.stride(0);
    a.residual = residual.data;
    a.residual_stride = residual.stride(0);
    a.weight = weight.data;
    a.rows = rows;
    a.cols = static_cast<int>(cols);
    a.eps = eps;
    a.rank = static_cast<int>(g.rank());
    a.world = static_cast<int>(g.size());
    for (std::int64_t p = 0; p < g.size(); ++p) {
      auto* base = static_cast<std::uint8_t*>(g.peer_region[static_cast<std::size_t>(p)]);
      a.data[p] = base;
    }
    a.slot_bytes = g.slot_bytes;
    a.calls = g.state;
    a.blocks_done = g.state + 1;
    a.failed = g.state + 2;
    a.missing_host = g.missing_device;
    a.timeout_ns = static_cast<std::uint64_t>(g.options.timeout.count()) * 1000000u;
    const bool vec = cols % kernels::vec_width == 0 &&
                     kernels::vec_ok(x.data, x.stride(0) * 2, 16) &&
                     kernels::vec_ok(residual.data, residual.stride(0) * 2, 16) &&
                     kernels::vec_ok(weight.data, 0, 16) && kernels::fused_vec_out(out);
    kernels::launch_fused(a, kernels::fused_rows(out), vec, g.multiprocessors, g.stream);
    return;
  }
  if (rows * cols > g.options.max_elements)
    throw TpError(g.rank(), op,
                  "[" + std::to_string(rows) + ", " + std::to_string(cols) +
                      "] exceeds max_elements " + std::to_string(g.options.max_elements));
  const View2<bf16> reduced = make_view(g.scratch, rows, cols);
  all_reduce(x, reduced);
  ops::add_rms_norm<Epi>(gpu(), reduced, residual, weight, eps, out);
}

void TpGroup::synchronize() {
  auto& g = *impl_;
  constexpr const char* op = "synchronize";
  g.expect_usable(op);
  // The fused kernel's own waits end within the timeout; the host allows that much again for the
  // work queued ahead of them before it gives up.
  const auto deadline = Clock::now() + 2 * g.options.timeout;
  for (;;) {
    if (g.missing_host != nullptr && *static_cast<volatile std::uint32_t*>(g.missing_host) != 0)
      g.fail("fused all-reduce",
             "rank " + std::to_string(*g.missing_host - 1) + " did not arrive within " +
                 std::to_string(g.options.timeout.count()) + " ms (it died or stalled)");
    const hipError_t status = hipStreamQuery(g.stream);
    if (status == hipSuccess) return;
    if (status != hipErrorNotReady)
      g.fail(op, std::string("device error: ") + hipGetErrorString(status));
    if (g.comm != nullptr) {
      const auto result = g.nccl->async_error(g.comm);
      if (result != gpu::nccl::Result::success && result != gpu::nccl::Result::in_progress)
        g.fail("NCCL all-reduce", g.nccl->error_text(result));
    }
    if (Clock::now() > deadline)
      g.fail(op, "the enqueued calls did not complete within " +
                     std::to_string(2 * g.options.timeout.count()) +
                     " ms (a peer rank died or stalled)");
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

TpGraph TpGroup::capture(const std::function<void()>& enqueue) {
  auto& g = *impl_;
  g.expect_usable("capture");
  return TpGraph(gpu::Graph::capture(g.stream, enqueue), g.stream);
}

void TpGroup::shutdown() {
  auto& g = *impl_;
  if (g.closed) return;
  if (g.size() == 1 || !g.broken.empty()) {
    g.closed = true;
    if (g.client) g.client->abort("TP rank " + std::to_string(g.rank()) + ": " + g.broken);
    return;
  }
  synchronize();
  g.closed = true;
  // Nobody frees its buffers while a peer may still write into them; rank 0 keeps the store up
  // until every other rank has said it is leaving.
  try {
    const auto r = std::to_string(g.rank());
    g.client->set("tp/done/" + r, "1");
    g.wait_all("tp/done/", "shutdown");
    if (g.rank() != 0) {
      g.client->set("tp/left/" + r, "1");
      g.client->leave();
      return;
    }
    std::vector<std::string> left;
    for (std::int64_t p = 1; p < g.size(); ++p) left.push_back("tp/left/" + std::to_string(p));
    static_cast<void>(g.client->wait(left, g.options.timeout));
    g.client->leave();
  } catch (const DistError& e) {
    if (g.broken.empty()) g.broken = std::string("shutdown failed: ") + e.what();
    throw TpError(g.rank(), "shutdown", e.what());
  }
}

#define ATOM_INSTANTIATE_TP_NORM(Epi)                       \
  template void TpGroup::all_reduce_add_rms_norm<ops::Epi>( \
      View2<const bf16>, View2<bf16>, View1<const bf16>, float, ops::Epi::Output, TpPath);

ATOM_INSTANTIATE_TP_NORM(epi::Bf16)
ATOM_INSTANTIATE_TP_NORM(epi::Fp8PerToken)
ATOM_INSTANTIATE_TP_NORM(epi::Fp8PerGroup128)
ATOM_INSTANTIATE_TP_NORM(epi::Mxfp4)

}  // namespace atom::dist
