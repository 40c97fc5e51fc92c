// The host-side GPU API: device discovery, device memory, copies, streams and event timing.
// Plain C++ (no vendor headers), implemented in kernels/runtime.hip for the built backend; in a
// build without a GPU backend every call reports that no GPU is available.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace atom::gpu {

class GpuError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Whether this build has a GPU backend ("cuda", "hip") and how many devices the runtime sees (0
// without a backend, a driver or a device).
const char* backend_name();
int device_count();
std::string device_name(int device);

void* malloc_bytes(std::size_t bytes);
void free_bytes(void* p) noexcept;
void copy_to_device(void* dst, const void* src, std::size_t bytes);
void copy_to_host(void* dst, const void* src, std::size_t bytes);
void fill_bytes(void* dst, int value, std::size_t bytes);
void synchronize();

// Free and total memory of the current device, in bytes.
struct MemoryInfo {
  std::size_t free_bytes = 0;
  std::size_t total_bytes = 0;
};
MemoryInfo memory_info();

// Page-locked host memory: the source that lets host-to-device copies run asynchronously, at the
// full link rate.
void* malloc_pinned(std::size_t bytes);
void free_pinned(void* p) noexcept;

// Allocations made through malloc_bytes and malloc_pinned and not yet freed, so that callers can
// check that a failed operation released what it took.
struct LiveAllocations {
  std::size_t device = 0;
  std::size_t pinned = 0;
};
LiveAllocations live_allocations();

// A stream that does not synchronize with the default stream: copies queued on it overlap host
// work and kernels elsewhere.
class Stream {
 public:
  Stream();
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  void* handle() const { return stream_; }
  void synchronize();

 private:
  void* stream_ = nullptr;
};

// A point in a stream's queue that the host can wait for (no timing).
class Event {
 public:
  Event();
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(Stream& stream);
  void synchronize();

 private:
  void* event_ = nullptr;
};

// Work enqueued on `waiting` after this call starts only after all work enqueued on `signalling`
// before it (an event recorded on one and waited for by the other). Streams are hipStream_t /
// cudaStream_t handles; null is the default stream.
void stream_wait(void* waiting, void* signalling);

// Queues a host-to-device copy on `stream`. `src` must stay valid and unchanged until the stream
// has passed the copy; from pinned memory the call returns at once.
void copy_to_device_async(void* dst, const void* src, std::size_t bytes, Stream& stream);

// Elapsed device time between two points on the default stream, in milliseconds.
class Timer {
 public:
  Timer();
  ~Timer();
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
  void start();
  float stop_ms();

 private:
  void* start_ = nullptr;
  void* stop_ = nullptr;
};

// Timing points on one stream (a hipStream_t / cudaStream_t): mark() records one where the stream
// stands; intervals_ms() waits for the last and gives the device time between consecutive marks.
// Marks may not be recorded while the stream is being captured.
class StreamMarks {
 public:
  explicit StreamMarks(void* stream) : stream_(stream) {}
  ~StreamMarks();
  StreamMarks(const StreamMarks&) = delete;
  StreamMarks& operator=(const StreamMarks&) = delete;
  void mark();
  std::vector<double> intervals_ms();

 private:
  void* stream_;
  std::vector<void*> events_;
};

// Device memory for n values of T.
template <class T>
class Buffer {
 public:
  explicit Buffer(std::size_t n) : n_(n), p_(static_cast<T*>(malloc_bytes(n * sizeof(T)))) {}
  explicit Buffer(const std::vector<T>& host) : Buffer(host.size()) { upload(host); }
  ~Buffer() { free_bytes(p_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& other) noexcept
      : n_(std::exchange(other.n_, 0)), p_(std::exchange(other.p_, nullptr)) {}
  Buffer& operator=(Buffer&& other) noexcept {
    if (this != &other) {
      free_bytes(p_);
      n_ = std::exchange(other.n_, 0);
      p_ = std::exchange(other.p_, nullptr);
    }
    return *this;
  }

  T* data() const { return p_; }
  std::size_t size() const { return n_; }
  void upload(const std::vector<T>& host) {
    if (host.size() != n_) throw GpuError("Buffer::upload: size mismatch");
    copy_to_device(p_, host.data(), n_ * sizeof(T));
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    copy_to_host(host.data(), p_, n_ * sizeof(T));
    return host;
  }
  // Fills every byte, e.g. 0xFF to poison an output before a kernel writes it.
  void fill(int byte) { fill_bytes(p_, byte, n_ * sizeof(T)); }

 private:
  std::size_t n_;
  T* p_;
};

// Pinned host memory for n values of T. Move-only.
template <class T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(std::size_t n) : n_(n), p_(static_cast<T*>(malloc_pinned(n * sizeof(T)))) {}
  ~PinnedBuffer() { free_pinned(p_); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  PinnedBuffer(PinnedBuffer&& other) noexcept
      : n_(std::exchange(other.n_, 0)), p_(std::exchange(other.p_, nullptr)) {}
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept {
    if (this != &other) {
      free_pinned(p_);
      n_ = std::exchange(other.n_, 0);
      p_ = std::exchange(other.p_, nullptr);
    }
    return *this;
  }

  T* data() const { return p_; }
  std::size_t size() const { return n_; }

 private:
  std::size_t n_ = 0;
  T* p_ = nullptr;
};

}  // namespace atom::gpu
