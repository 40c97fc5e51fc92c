// The host-side GPU API in a build without a GPU backend: no device, and a clear error for any
// operation that needs one.
#include "atom/gpu/device.hpp"
#include "atom/gpu/graph.hpp"

namespace atom::gpu {

namespace {
[[noreturn]] void no_gpu(const char* what) {
  throw GpuError(std::string(what) +
                 ": this build has no GPU backend (configure with ATOM_GPU=cuda or hip)");
}
}  // namespace

const char* backend_name() {
  return "none";
}
int device_count() {
  return 0;
}
std::string device_name(int) {
  no_gpu("device_name");
}
void* malloc_bytes(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  no_gpu("malloc_bytes");
}
void free_bytes(void*) noexcept {}
void copy_to_device(void*, const void*, std::size_t bytes) {
  if (bytes > 0) no_gpu("copy_to_device");
}
void copy_to_host(void*, const void*, std::size_t bytes) {
  if (bytes > 0) no_gpu("copy_to_host");
}
void fill_bytes(void*, int, std::size_t bytes) {
  if (bytes > 0) no_gpu("fill_bytes");
}
void synchronize() {}
MemoryInfo memory_info() {
  no_gpu("memory_info");
}
void* malloc_pinned(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  no_gpu("malloc_pinned");
}
void free_pinned(void*) noexcept {}
LiveAllocations live_allocations() {
  return {};
}
Stream::Stream() {
  no_gpu("Stream");
}
Stream::~Stream() = default;
void Stream::synchronize() {}
Event::Event() {
  no_gpu("Event");
}
Event::~Event() = default;
void Event::record(Stream&) {}
void Event::synchronize() {}
StreamMarks::~StreamMarks() = default;
void StreamMarks::mark() {
  no_gpu("StreamMarks");
}
std::vector<double> StreamMarks::intervals_ms() {
  return {};
}
void stream_wait(void*, void*) {
  no_gpu("stream_wait");
}
void copy_to_device_async(void*, const void*, std::size_t bytes, Stream&) {
  if (bytes > 0) no_gpu("copy_to_device_async");
}
void Graph::begin_capture(void*) {
  no_gpu("Graph::capture");
}
void Graph::abandon_capture(void*) noexcept {}
Graph Graph::end_capture(void*) {
  no_gpu("Graph::capture");
}
Graph::~Graph() = default;
void Graph::replay(void*) const {
  no_gpu("Graph::replay");
}
Timer::Timer() {
  no_gpu("Timer");
}
Timer::~Timer() = default;
void Timer::start() {}
float Timer::stop_ms() {
  return 0;
}

}  // namespace atom::gpu
