// Loading checkpoints straight into device memory. On the read path the file is read straight
// into a ring of pinned staging slots, copied to the device on a copy stream while the next
// chunk is read; a slot is reused only after the event recorded behind its copies has passed. On
// the mmap path each tensor's view of the mapping is cut into parts that copy lanes (threads with
// pinned buffers and streams of their own) copy to the device in the background, until the file
// ends. The ring and the lanes (GpuStaging) can outlive a load, so that repeated loads pay for
// pinning and thread start-up once; load_device() puts all tensors of a load in one device
// allocation.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "atom/gpu/device.hpp"
#include "atom/io/checkpoint.hpp"
#include "atom/io/format.hpp"
#include "atom/io/loader.hpp"

namespace atom::io {

// A tensor's bytes in device memory: a part of an allocation it shares with the other tensors of
// its load (freed with the last of them).
class DeviceBytes {
 public:
  DeviceBytes() = default;
  DeviceBytes(std::shared_ptr<gpu::Buffer<std::byte>> allocation, std::size_t offset,
              std::size_t size)
      : allocation_(std::move(allocation)), offset_(offset), size_(size) {}

  std::byte* data() const { return allocation_ ? allocation_->data() + offset_ : nullptr; }
  std::size_t size() const { return size_; }
  std::vector<std::byte> download() const;

 private:
  std::shared_ptr<gpu::Buffer<std::byte>> allocation_;
  std::size_t offset_ = 0;
  std::size_t size_ = 0;
};

struct DeviceTensor {
  TensorInfo info;
  std::filesystem::path file;
  DeviceBytes bytes;  // info.nbytes() bytes of device memory
};

using DeviceTensors = std::map<std::string, DeviceTensor, std::less<>>;

struct GpuSinkOptions {
  // Bytes per pinned staging slot of the read path's ring; also its read size (the mmap path
  // without lanes stages through the same ring).
  std::size_t staging_bytes = std::size_t{16} << 20;
  // Slots in the ring: 2 overlaps one read with one copy.
  std::size_t staging_slots = 2;
  // Copy lanes of the mmap path (threads that each copy parts of the mapping into pinned buffers
  // of their own and on to the device); 1: the calling thread copies through the ring instead.
  // The mmap path is bound by that host copy (page faults on the mapping): 16 lanes of 2 x 4 MiB
  // were the fastest measured on a 16-core H200 host (docs/bench-notes.md), 4 lanes reached 2/3.
  std::size_t copy_threads = default_copy_threads();
  // Bytes per lane buffer (each lane has two).
  std::size_t lane_bytes = std::size_t{4} << 20;

  // The host's hardware threads, at most 16.
  static std::size_t default_copy_threads() {
    return std::clamp<std::size_t>(std::thread::hardware_concurrency(), 1, 16);
  }
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

// What a sink needs besides its destination: the pinned staging ring of the read path (slots, their
// events, one copy stream) and the copy lanes of the mmap path. A lane is a thread with two pinned
// buffers and a stream of its own: queued copies are cut into lane-sized parts that the lanes take
// in turn, each copying its part from the mapping into a buffer and from there to the device, so
// no thread waits for another. Made once and handed to several sinks (one at a time), it keeps the
// pinned memory and the threads across loads.
class GpuStaging {
 public:
  explicit GpuStaging(const GpuSinkOptions& options = {});
  ~GpuStaging();
  GpuStaging(const GpuStaging&) = delete;
  GpuStaging& operator=(const GpuStaging&) = delete;

  std::size_t slot_bytes() const { return slot_bytes_; }
  std::size_t slots() const { return events_.size(); }
  std::byte* slot(std::size_t i) const { return pinned_.data() + i * slot_bytes_; }
  gpu::Event& drained(std::size_t i) { return *events_[i]; }
  gpu::Stream& stream() { return stream_; }

  // One lane per copy thread when options.copy_threads > 1; none otherwise.
  bool has_lanes() const { return !lanes_.empty(); }
  // Queues the copy of src (host memory that stays valid until wait_read()) to device_dst.
  void enqueue(std::byte* device_dst, std::span<const std::byte> src);
  // Waits until every queued source has been read; rethrows a lane's failure.
  void wait_read();
  // Waits until every queued copy has landed on the device.
  void synchronize();

 private:
  struct Lane;
  struct Job {
    std::byte* dst;
    const std::byte* src;
    std::size_t n;
  };
  void work(Lane& lane);

  std::size_t slot_bytes_;
  gpu::PinnedBuffer<std::byte> pinned_;
  std::vector<std::unique_ptr<gpu::Event>> events_;
  gpu::Stream stream_;
  std::size_t lane_bytes_;
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::mutex mutex_;
  std::condition_variable queued_, read_;
  std::deque<Job> jobs_;
  std::size_t unread_ = 0;  // jobs queued or being copied out of their source
  bool stop_ = false;
  std::exception_ptr failure_;
  std::vector<std::jthread> workers_;
};

// A TensorSink into device memory (and host memory for options.host_names). A name seen twice is
// a LoadError naming both files. Destroying the sink waits for its copies in flight and frees
// everything it allocated, so a load that throws leaves no device memory behind.
class GpuSink final : public TensorSink {
 public:
  // Uses `staging` (which must outlive the sink and its copies) or, when null, a ring of its own.
  explicit GpuSink(GpuSinkOptions options = {}, GpuStaging* staging = nullptr);
  ~GpuSink() override;
  GpuSink(const GpuSink&) = delete;
  GpuSink& operator=(const GpuSink&) = delete;

  void piece(const std::filesystem::path& file, const TensorInfo& info, std::uint64_t offset,
             std::span<const std::byte> bytes) override;
  std::span<std::byte> read_buffer(std::size_t bytes) override;
  void file_end(const std::filesystem::path& file) override;

  const GpuSinkOptions& options() const { return options_; }
  // One device allocation of `bytes` that the device tensors are carved from in arrival order
  // (each at a 256-byte boundary); without it, each tensor gets an allocation of its own.
  void reserve(std::uint64_t bytes);
  // Waits until every queued copy has landed and hands over the device tensors.
  DeviceTensors take_device();
  HostTensors& host_tensors() { return host_.tensors(); }

 private:
  std::byte* slot_begin(std::size_t slot) const;
  bool in_current_slot(std::span<const std::byte> bytes) const;
  // Leaves the current slot (recording its event) and waits until the next one is free.
  void next_slot();
  void stage(std::byte* device_dst, std::span<const std::byte> src);
  DeviceBytes allocate(std::size_t bytes);

  GpuSinkOptions options_;
  std::unique_ptr<GpuStaging> own_staging_;
  GpuStaging& staging_;
  std::vector<bool> in_flight_;  // per slot: copies read it since its event was last waited on
  std::shared_ptr<gpu::Buffer<std::byte>> reserved_;
  std::size_t reserved_used_ = 0;
  bool read_path_ = false;  // read_buffer() was called: pieces are valid only during piece()
  std::size_t current_ = 0;
  std::size_t used_ = 0;  // bytes of the current slot that queued copies read
  DeviceTensors device_;
  DeviceTensor* receiving_ = nullptr;  // the tensor whose pieces are arriving
  HostSink host_;
};

// Throws LoadError naming the checkpoint's first shard when the current device has less than
// `bytes` of free memory.
void require_device_memory(const Checkpoint& checkpoint, std::uint64_t bytes);

// Loads every tensor of the checkpoint into one device allocation, through `staging` when given
// (its slot size and count win over the options'). Throws LoadError before reading any data when
// the device lacks the free memory for it.
DeviceTensors load_device(const Checkpoint& checkpoint, LoadMode mode,
                          const GpuSinkOptions& options = {}, GpuStaging* staging = nullptr);

}  // namespace atom::io
