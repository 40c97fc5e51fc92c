// Device memory for an op's intermediates between its launches: one buffer per host thread,
// device, stream and owner (an op's own tag), grown on demand. Work on two streams never shares a
// buffer, even from one thread; growing frees the old buffer, which synchronizes the device
// first, so no launch still reads it. A graph capture must not grow it: an eager call of the same
// shape before the capture sizes it.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "atom/gpu/runtime.hpp"
#include "atom/ops/gpu.hpp"

namespace atom::kernels {

class ScratchBuffer {
 public:
  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer() { gpu::free_bytes(p_); }
  void* get(std::size_t bytes) {
    if (bytes > n_) {
      gpu::free_bytes(p_);
      p_ = nullptr;
      n_ = 0;
      p_ = gpu::malloc_bytes(bytes);
      n_ = bytes;
    }
    return p_;
  }

 private:
  void* p_ = nullptr;
  std::size_t n_ = 0;
};

// `owner` names the op (the address of a string literal or a static of its own); at least `bytes`.
inline void* stream_scratch(const void* owner, const ops::Gpu& gpu, std::size_t bytes) {
  struct Slot {
    const void* owner;
    int device;
    void* stream;
    std::unique_ptr<ScratchBuffer> buffer;
  };
  thread_local std::vector<Slot> slots;
  int device = 0;
  ATOM_GPU_CHECK(hipGetDevice(&device));
  for (Slot& s : slots)
    if (s.owner == owner && s.device == device && s.stream == gpu.stream)
      return s.buffer->get(bytes);
  slots.push_back({owner, device, gpu.stream, std::make_unique<ScratchBuffer>()});
  return slots.back().buffer->get(bytes);
}

}  // namespace atom::kernels
