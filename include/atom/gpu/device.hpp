// The host-side GPU API: device discovery, device memory, copies, streams and event timing.
// Plain C++ (no vendor headers), implemented in kernels/runtime.hip for the built backend; in a
// build without a GPU backend every call reports that no GPU is available.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
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

// Device memory for n values of T.
template <class T>
class Buffer {
 public:
  explicit Buffer(std::size_t n) : n_(n), p_(static_cast<T*>(malloc_bytes(n * sizeof(T)))) {}
  explicit Buffer(const std::vector<T>& host) : Buffer(host.size()) { upload(host); }
  ~Buffer() { free_bytes(p_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

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

}  // namespace atom::gpu
