// Loading checkpoints straight into device memory. The loader's pieces go through a ring of
// pinned staging slots and are copied to per-tensor device buffers by asynchronous copies on a
// copy stream, so reading the file (the read() calls, or the first touch of the mapping) runs while
// the previous slots cross the link. On the read path the file is read straight into the slots;
// on the mmap path each tensor's view of the mapping is copied into them in slot-sized parts. A
// slot is reused only after the event recorded behind its copies has passed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "atom/gpu/device.hpp"
#include "atom/io/checkpoint.hpp"
#include "atom/io/format.hpp"
#include "atom/io/loader.hpp"

namespace atom::io {

struct DeviceTensor {
  TensorInfo info;
  std::filesystem::path file;
  gpu::Buffer<std::byte> bytes;  // info.nbytes() bytes of device memory
};

using DeviceTensors = std::map<std::string, DeviceTensor, std::less<>>;

struct GpuSinkOptions {
  // Bytes per pinned staging slot; also the read size of the read path. Two 16 MiB slots and 4
  // copy threads were the fastest mmap setting measured on an H100 host (docs/bench-notes.md):
  // larger rings cost more in pinning than they gain in overlap.
  std::size_t staging_bytes = std::size_t{16} << 20;
  // Slots in the ring: 2 overlaps one read with one copy.
  std::size_t staging_slots = 2;
  // Host threads that copy a piece into a slot; the mmap path is bound by that copy (page faults
  // on the mapping), which scaled from 1 to 2 threads and little beyond 4. Pieces under 1 MiB are
  // copied by the calling thread.
  std::size_t copy_threads = 4;
  // false: pieces that were not read into a slot (the mmap path's views) are copied with
  // synchronous copies from pageable memory, through the runtime's own staging, instead.
  bool stage = true;
  // Tensors collected in host memory instead (weights that are transformed on the host before
  // upload).
  std::set<std::string, std::less<>> host_names;
};

// Throws std::invalid_argument naming the option when a value is unusable (zero slots, slots
// smaller than a page, zero threads).
void check_options(const GpuSinkOptions& options);

// A TensorSink into device memory (and host memory for options.host_names). A name seen twice is
// a LoadError naming both files. Destroying the sink waits for its copies in flight and frees
// everything it allocated, so a load that throws leaves no device memory behind.
class GpuSink final : public TensorSink {
 public:
  explicit GpuSink(GpuSinkOptions options = {});
  ~GpuSink() override;
  GpuSink(const GpuSink&) = delete;
  GpuSink& operator=(const GpuSink&) = delete;

  void piece(const std::filesystem::path& file, const TensorInfo& info, std::uint64_t offset,
             std::span<const std::byte> bytes) override;
  std::span<std::byte> read_buffer(std::size_t bytes) override;

  const GpuSinkOptions& options() const { return options_; }
  // Waits until every queued copy has landed and hands over the device tensors.
  DeviceTensors take_device();
  HostTensors& host_tensors() { return host_.tensors(); }

 private:
  struct Slot {
    gpu::Event drained;  // recorded behind the slot's copies when the ring moves past it
    bool in_flight = false;
  };

  std::byte* slot_begin(std::size_t slot) const;
  bool in_current_slot(std::span<const std::byte> bytes) const;
  // Leaves the current slot (recording its event) and waits until the next one is free.
  void next_slot();
  void stage(std::byte* device_dst, std::span<const std::byte> src);
  void copy_into_slot(std::byte* dst, std::span<const std::byte> src) const;

  GpuSinkOptions options_;
  gpu::Stream stream_;
  gpu::PinnedBuffer<std::byte> staging_;
  std::vector<Slot> slots_;
  std::size_t current_ = 0;
  std::size_t used_ = 0;  // bytes of the current slot that queued copies read
  DeviceTensors device_;
  DeviceTensor* receiving_ = nullptr;  // the tensor whose pieces are arriving
  HostSink host_;
};

// Throws LoadError naming the checkpoint's first shard when the current device has less than
// `bytes` of free memory.
void require_device_memory(const Checkpoint& checkpoint, std::uint64_t bytes);

// Loads every tensor of the checkpoint into device memory. Throws LoadError before reading any
// data when the device lacks the free memory for it.
DeviceTensors load_device(const Checkpoint& checkpoint, LoadMode mode,
                          const GpuSinkOptions& options = {});

}  // namespace atom::io
