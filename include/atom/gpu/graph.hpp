// Captured stream work replayed as one launch: CUDA / HIP graphs behind plain C++ (implemented in
// kernels/runtime.hip; without a GPU backend every call reports that no GPU is available).
#pragma once

#include <utility>

namespace atom::gpu {

// Work captured from a stream once and replayed as one launch (a CUDA / HIP graph). capture()
// runs `enqueue` with `stream` in capture mode: what it enqueues on the stream (and on streams it
// forks from it with stream_wait, joined back before it returns) is recorded, not run. The work
// must not synchronize, allocate device memory or read device results on the host. replay()
// launches the recorded work on a stream; each replay reads the memory the recorded launches
// name as it is at that time.
class Graph {
 public:
  Graph() = default;
  ~Graph();
  Graph(Graph&& other) noexcept
      : graph_(std::exchange(other.graph_, nullptr)), exec_(std::exchange(other.exec_, nullptr)) {}
  Graph& operator=(Graph&& other) noexcept {
    std::swap(graph_, other.graph_);
    std::swap(exec_, other.exec_);
    return *this;
  }
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  template <class F>
  static Graph capture(void* stream, F&& enqueue) {
    begin_capture(stream);
    try {
      enqueue();
    } catch (...) {
      abandon_capture(stream);
      throw;
    }
    return end_capture(stream);
  }
  void replay(void* stream) const;
  explicit operator bool() const { return exec_ != nullptr; }

 private:
  static void begin_capture(void* stream);
  static void abandon_capture(void* stream) noexcept;
  static Graph end_capture(void* stream);

  void* graph_ = nullptr;
  void* exec_ = nullptr;
};

}  // namespace atom::gpu
