// The host-side GPU API of atom/gpu/device.hpp on the built backend's runtime.
#include "atom/gpu/graph.hpp"
#include "atom/gpu/runtime.hpp"

#include <atomic>

namespace atom::gpu {

namespace {
std::atomic<std::size_t> live_device{0};
std::atomic<std::size_t> live_pinned{0};

// Compiled with every kernel of the library: the code loaded for a device is the same for all.
__global__ void loaded_code_probe() {}
}  // namespace

bool programmatic_launches() {
  if constexpr (!nvidia_ptx) return false;
  return once_per_device(current_device(), [] {
    return compiled_arch(reinterpret_cast<const void*>(loaded_code_probe)) >= 90;
  });
}

const char* backend_name() {
#if defined(__HIPCC__)
  return "hip";
#else
  return "cuda";
#endif
}

int device_count() {
  int n = 0;
  if (hipGetDeviceCount(&n) != hipSuccess) {
    (void)hipGetLastError();  // no driver or no device: not an error, just none
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  hipDeviceProp_t p;
  ATOM_GPU_CHECK(hipGetDeviceProperties(&p, device));
  return p.name;
}

void* malloc_bytes(std::size_t bytes) {
  void* p = nullptr;
  if (bytes > 0) {
    ATOM_GPU_CHECK(hipMalloc(&p, bytes));
    ++live_device;
  }
  return p;
}

void free_bytes(void* p) noexcept {
  if (p != nullptr && hipFree(p) == hipSuccess) --live_device;
}

MemoryInfo memory_info() {
  MemoryInfo m;
  ATOM_GPU_CHECK(hipMemGetInfo(&m.free_bytes, &m.total_bytes));
  return m;
}

void* malloc_pinned(std::size_t bytes) {
  void* p = nullptr;
  if (bytes > 0) {
    ATOM_GPU_CHECK(hipHostMalloc(&p, bytes, hipHostMallocDefault));
    ++live_pinned;
  }
  return p;
}

void free_pinned(void* p) noexcept {
  if (p != nullptr && hipHostFree(p) == hipSuccess) --live_pinned;
}

LiveAllocations live_allocations() {
  return {live_device.load(), live_pinned.load()};
}

Stream::Stream() {
  hipStream_t s = nullptr;
  ATOM_GPU_CHECK(hipStreamCreateWithFlags(&s, hipStreamNonBlocking));
  stream_ = s;
}

Stream::~Stream() {
  (void)hipStreamDestroy(static_cast<hipStream_t>(stream_));
}

void Stream::synchronize() {
  ATOM_GPU_CHECK(hipStreamSynchronize(static_cast<hipStream_t>(stream_)));
}

Event::Event() {
  hipEvent_t e = nullptr;
  ATOM_GPU_CHECK(hipEventCreateWithFlags(&e, hipEventDisableTiming));
  event_ = e;
}

Event::~Event() {
  (void)hipEventDestroy(static_cast<hipEvent_t>(event_));
}

void Event::record(Stream& stream) {
  ATOM_GPU_CHECK(
      hipEventRecord(static_cast<hipEvent_t>(event_), static_cast<hipStream_t>(stream.handle())));
}

void Event::synchronize() {
  ATOM_GPU_CHECK(hipEventSynchronize(static_cast<hipEvent_t>(event_)));
}

StreamMarks::~StreamMarks() {
  for (void* e : events_) (void)hipEventDestroy(static_cast<hipEvent_t>(e));
}

void StreamMarks::mark() {
  hipEvent_t e = nullptr;
  ATOM_GPU_CHECK(hipEventCreate(&e));
  events_.push_back(e);
  ATOM_GPU_CHECK(hipEventRecord(e, static_cast<hipStream_t>(stream_)));
}

std::vector<double> StreamMarks::intervals_ms() {
  std::vector<double> out;
  if (events_.empty()) return out;
  ATOM_GPU_CHECK(hipEventSynchronize(static_cast<hipEvent_t>(events_.back())));
  for (std::size_t i = 1; i < events_.size(); ++i) {
    float ms = 0;
    ATOM_GPU_CHECK(hipEventElapsedTime(&ms, static_cast<hipEvent_t>(events_[i - 1]),
                                       static_cast<hipEvent_t>(events_[i])));
    out.push_back(ms);
  }
  return out;
}

void stream_wait(void* waiting, void* signalling) {
  if (waiting == signalling) return;
  hipEvent_t e = nullptr;
  ATOM_GPU_CHECK(hipEventCreateWithFlags(&e, hipEventDisableTiming));
  // The event is destroyed once the wait is enqueued; the runtime keeps it until it completes.
  const hipError_t recorded = hipEventRecord(e, static_cast<hipStream_t>(signalling));
  const hipError_t waited = recorded == hipSuccess
                                ? hipStreamWaitEvent(static_cast<hipStream_t>(waiting), e, 0)
                                : recorded;
  (void)hipEventDestroy(e);
  ATOM_GPU_CHECK(waited);
}

void copy_to_device_async(void* dst, const void* src, std::size_t bytes, Stream& stream) {
  if (bytes > 0)
    ATOM_GPU_CHECK(hipMemcpyAsync(dst, src, bytes, hipMemcpyHostToDevice,
                                  static_cast<hipStream_t>(stream.handle())));
}

void copy_to_device(void* dst, const void* src, std::size_t bytes) {
  if (bytes > 0) ATOM_GPU_CHECK(hipMemcpy(dst, src, bytes, hipMemcpyHostToDevice));
}

void copy_to_host(void* dst, const void* src, std::size_t bytes) {
  if (bytes > 0) ATOM_GPU_CHECK(hipMemcpy(dst, src, bytes, hipMemcpyDeviceToHost));
}

void fill_bytes(void* dst, int value, std::size_t bytes) {
  if (bytes > 0) ATOM_GPU_CHECK(hipMemsetAsync(dst, value, bytes, nullptr));
}

void synchronize() {
  ATOM_GPU_CHECK(hipDeviceSynchronize());
}

void Graph::begin_capture(void* stream) {
  if (stream == nullptr)
    throw GpuError("Graph::capture: the default stream cannot be captured; pass a gpu::Stream");
  ATOM_GPU_CHECK(
      hipStreamBeginCapture(static_cast<hipStream_t>(stream), hipStreamCaptureModeThreadLocal));
}

void Graph::abandon_capture(void* stream) noexcept {
  hipGraph_t graph = nullptr;
  if (hipStreamEndCapture(static_cast<hipStream_t>(stream), &graph) == hipSuccess &&
      graph != nullptr)
    static_cast<void>(hipGraphDestroy(graph));
  static_cast<void>(hipGetLastError());  // the capture's error, reported by the caller's throw
}

Graph Graph::end_capture(void* stream) {
  hipGraph_t graph = nullptr;
  ATOM_GPU_CHECK(hipStreamEndCapture(static_cast<hipStream_t>(stream), &graph));
  hipGraphExec_t exec = nullptr;
  const hipError_t status = hipGraphInstantiate(&exec, graph, nullptr, nullptr, 0);
  if (status != hipSuccess) {
    static_cast<void>(hipGraphDestroy(graph));
    ATOM_GPU_CHECK(status);
  }
  Graph g;
  g.graph_ = graph;
  g.exec_ = exec;
  return g;
}

Graph::~Graph() {
  if (exec_ != nullptr) static_cast<void>(hipGraphExecDestroy(static_cast<hipGraphExec_t>(exec_)));
  if (graph_ != nullptr) static_cast<void>(hipGraphDestroy(static_cast<hipGraph_t>(graph_)));
}

void Graph::replay(void* stream) const {
  if (exec_ == nullptr) throw GpuError("Graph::replay: nothing was captured");
  ATOM_GPU_CHECK(
      hipGraphLaunch(static_cast<hipGraphExec_t>(exec_), static_cast<hipStream_t>(stream)));
}

Timer::Timer() {
  hipEvent_t a = nullptr;
  hipEvent_t b = nullptr;
  ATOM_GPU_CHECK(hipEventCreate(&a));
  ATOM_GPU_CHECK(hipEventCreate(&b));
  start_ = a;
  stop_ = b;
}

Timer::~Timer() {
  (void)hipEventDestroy(static_cast<hipEvent_t>(start_));
  (void)hipEventDestroy(static_cast<hipEvent_t>(stop_));
}

void Timer::start() {
  ATOM_GPU_CHECK(hipEventRecord(static_cast<hipEvent_t>(start_), nullptr));
}

float Timer::stop_ms() {
  ATOM_GPU_CHECK(hipEventRecord(static_cast<hipEvent_t>(stop_), nullptr));
  ATOM_GPU_CHECK(hipEventSynchronize(static_cast<hipEvent_t>(stop_)));
  float ms = 0;
  ATOM_GPU_CHECK(
      hipEventElapsedTime(&ms, static_cast<hipEvent_t>(start_), static_cast<hipEvent_t>(stop_)));
  return ms;
}

}  // namespace atom::gpu
