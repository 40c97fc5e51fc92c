#include "atom/io/gpu_sink.hpp"

#include <algorithm>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <thread>
#include <utility>

namespace atom::io {

namespace {

constexpr std::size_t page_bytes = 4096;

}  // namespace

void check_options(const GpuSinkOptions& options) {
  if (options.staging_slots == 0)
    throw std::invalid_argument("GpuSinkOptions::staging_slots must be at least 1");
  if (options.staging_bytes < page_bytes || options.staging_bytes % page_bytes != 0)
    throw std::invalid_argument("GpuSinkOptions::staging_bytes must be a positive multiple of " +
                                std::to_string(page_bytes) + ", got " +
                                std::to_string(options.staging_bytes));
  if (options.copy_threads == 0)
    throw std::invalid_argument("GpuSinkOptions::copy_threads must be at least 1");
  if (options.lane_bytes < page_bytes || options.lane_bytes % page_bytes != 0)
    throw std::invalid_argument("GpuSinkOptions::lane_bytes must be a positive multiple of " +
                                std::to_string(page_bytes) + ", got " +
                                std::to_string(options.lane_bytes));
}

std::vector<std::byte> DeviceBytes::download() const {
  std::vector<std::byte> host(size_);
  if (size_ > 0) gpu::copy_to_host(host.data(), data(), size_);
  return host;
}

struct GpuStaging::Lane {
  explicit Lane(std::size_t bytes) : buffers(2 * bytes) {}
  gpu::PinnedBuffer<std::byte> buffers;
  gpu::Event events[2];
  bool used[2] = {false, false};
  gpu::Stream stream;
  int next = 0;
};

GpuStaging::GpuStaging(const GpuSinkOptions& options)
    : slot_bytes_((check_options(options), options.staging_bytes)),
      pinned_(options.staging_bytes * options.staging_slots),
      lane_bytes_(options.lane_bytes) {
  for (std::size_t i = 0; i < options.staging_slots; ++i)
    events_.push_back(std::make_unique<gpu::Event>());
  if (options.copy_threads > 1) {
    for (std::size_t i = 0; i < options.copy_threads; ++i)
      lanes_.push_back(std::make_unique<Lane>(lane_bytes_));
    for (auto& lane : lanes_) workers_.emplace_back([this, l = lane.get()] { work(*l); });
  }
}

GpuStaging::~GpuStaging() {
  {
    const std::lock_guard lock(mutex_);
    stop_ = true;
  }
  queued_.notify_all();
  workers_.clear();  // joins
  try {
    synchronize();
    stream_.synchronize();
  } catch (const gpu::GpuError&) {
  }
}

void GpuStaging::work(Lane& lane) {
  for (;;) {
    Job job;
    {
      std::unique_lock lock(mutex_);
      queued_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stopping
      job = jobs_.front();
      jobs_.pop_front();
    }
    try {
      const int b = lane.next;
      lane.next = 1 - b;
      if (lane.used[b]) lane.events[b].synchronize();  // its previous copy has left the buffer
      std::byte* buffer = lane.buffers.data() + static_cast<std::size_t>(b) * lane_bytes_;
      std::memcpy(buffer, job.src, job.n);
      gpu::copy_to_device_async(job.dst, buffer, job.n, lane.stream);
      lane.events[b].record(lane.stream);
      lane.used[b] = true;
    } catch (...) {
      const std::lock_guard lock(mutex_);
      if (!failure_) failure_ = std::current_exception();
    }
    const std::lock_guard lock(mutex_);
    if (--unread_ == 0) read_.notify_all();
  }
}

void GpuStaging::enqueue(std::byte* device_dst, std::span<const std::byte> src) {
  {
    const std::lock_guard lock(mutex_);
    for (std::size_t at = 0; at < src.size(); at += lane_bytes_) {
      jobs_.push_back({device_dst + at, src.data() + at, std::min(lane_bytes_, src.size() - at)});
      ++unread_;
    }
  }
  queued_.notify_all();
}

void GpuStaging::wait_read() {
  std::unique_lock lock(mutex_);
  read_.wait(lock, [&] { return unread_ == 0; });
  if (failure_) std::rethrow_exception(std::exchange(failure_, nullptr));
}

void GpuStaging::synchronize() {
  for (auto& lane : lanes_) lane->stream.synchronize();
}

GpuSink::GpuSink(GpuSinkOptions options, GpuStaging* staging)
    : options_((check_options(options), std::move(options))),
      own_staging_(staging == nullptr ? std::make_unique<GpuStaging>(options_) : nullptr),
      staging_(staging != nullptr ? *staging : *own_staging_),
      in_flight_(staging_.slots(), false) {
  options_.staging_bytes = staging_.slot_bytes();
  options_.staging_slots = staging_.slots();
}

GpuSink::~GpuSink() {
  // Copies still queued read the staging memory (and the mapping) and write the device buffers:
  // all must outlive them. A failure is reported by the load that met it, not here.
  try {
    staging_.wait_read();
    staging_.synchronize();
    staging_.stream().synchronize();
  } catch (const std::exception&) {
  }
}

void GpuSink::file_end(const std::filesystem::path&) {
  if (staging_.has_lanes()) staging_.wait_read();
}

void GpuSink::reserve(std::uint64_t bytes) {
  reserved_ = std::make_shared<gpu::Buffer<std::byte>>(static_cast<std::size_t>(bytes));
  reserved_used_ = 0;
}

DeviceBytes GpuSink::allocate(std::size_t bytes) {
  constexpr std::size_t alignment = 256;
  if (reserved_ && reserved_used_ + bytes <= reserved_->size()) {
    DeviceBytes b(reserved_, reserved_used_, bytes);
    reserved_used_ = std::min(reserved_->size(),
                              (reserved_used_ + bytes + alignment - 1) / alignment * alignment);
    return b;
  }
  return {std::make_shared<gpu::Buffer<std::byte>>(bytes), 0, bytes};
}

std::byte* GpuSink::slot_begin(std::size_t slot) const {
  return staging_.slot(slot);
}

bool GpuSink::in_current_slot(std::span<const std::byte> bytes) const {
  const std::less_equal<const std::byte*> le;
  const std::byte* begin = slot_begin(current_);
  return le(begin, bytes.data()) && le(bytes.data() + bytes.size(), begin + options_.staging_bytes);
}

void GpuSink::next_slot() {
  if (in_flight_[current_]) staging_.drained(current_).record(staging_.stream());
  current_ = (current_ + 1) % in_flight_.size();
  if (in_flight_[current_]) {
    staging_.drained(current_).synchronize();
    in_flight_[current_] = false;
  }
  used_ = 0;
}

std::span<std::byte> GpuSink::read_buffer(std::size_t bytes) {
  read_path_ = true;
  if (bytes > options_.staging_bytes) return {};
  next_slot();
  used_ = options_.staging_bytes;  // the whole slot belongs to this chunk's pieces
  return {slot_begin(current_), bytes};
}

void GpuSink::stage(std::byte* device_dst, std::span<const std::byte> src) {
  if (staging_.has_lanes()) {
    staging_.enqueue(device_dst, src);
    // The read path's pieces live only during piece(); the mapping's until file_end().
    if (read_path_) staging_.wait_read();
    return;
  }
  while (!src.empty()) {
    if (used_ == options_.staging_bytes) next_slot();
    const std::size_t n = std::min(src.size(), options_.staging_bytes - used_);
    std::byte* slot = slot_begin(current_) + used_;
    std::memcpy(slot, src.data(), n);
    gpu::copy_to_device_async(device_dst, slot, n, staging_.stream());
    in_flight_[current_] = true;
    used_ += n;
    device_dst += n;
    src = src.subspan(n);
  }
}

void GpuSink::piece(const std::filesystem::path& file, const TensorInfo& info, std::uint64_t offset,
                    std::span<const std::byte> bytes) {
  if (options_.host_names.contains(info.name)) {
    if (offset == 0 && device_.contains(info.name))
      throw LoadError(file.string(), info.name,
                      "already loaded from " + device_.at(info.name).file.string());
    host_.piece(file, info, offset, bytes);
    return;
  }
  if (offset == 0) {
    receiving_ = nullptr;
    if (const auto it = device_.find(info.name); it != device_.end())
      throw LoadError(file.string(), info.name, "already loaded from " + it->second.file.string());
    if (const auto it = host_.tensors().find(info.name); it != host_.tensors().end())
      throw LoadError(file.string(), info.name, "already loaded from " + it->second.file.string());
    receiving_ =
        &device_
             .emplace(info.name,
                      DeviceTensor{info, file, allocate(static_cast<std::size_t>(info.nbytes()))})
             .first->second;
  } else if (receiving_ == nullptr || receiving_->info.name != info.name) {
    throw LoadError(file.string(), info.name,
                    "piece at offset " + std::to_string(offset) + " before the tensor's start");
  }
  DeviceTensor& t = *receiving_;
  if (offset > t.bytes.size() || bytes.size() > t.bytes.size() - offset)
    throw LoadError(file.string(), info.name,
                    "piece at offset " + std::to_string(offset) + " of " +
                        std::to_string(bytes.size()) + " bytes overruns the tensor");
  if (bytes.empty()) return;
  std::byte* dst = t.bytes.data() + offset;
  if (in_current_slot(bytes)) {
    gpu::copy_to_device_async(dst, bytes.data(), bytes.size(), staging_.stream());
    in_flight_[current_] = true;
  } else if (options_.stage) {
    stage(dst, bytes);
  } else {
    gpu::copy_to_device(dst, bytes.data(), bytes.size());
  }
}

DeviceTensors GpuSink::take_device() {
  staging_.wait_read();
  staging_.synchronize();
  staging_.stream().synchronize();
  std::fill(in_flight_.begin(), in_flight_.end(), false);
  used_ = 0;
  receiving_ = nullptr;
  return std::exchange(device_, {});
}

void require_device_memory(const Checkpoint& checkpoint, std::uint64_t bytes) {
  const gpu::MemoryInfo memory = gpu::memory_info();
  if (bytes > memory.free_bytes)
    throw LoadError(checkpoint.shards().front().path.string(), "",
                    "the checkpoint needs " + std::to_string(bytes) + " bytes of device memory; " +
                        std::to_string(memory.free_bytes) + " are free");
}

DeviceTensors load_device(const Checkpoint& checkpoint, LoadMode mode,
                          const GpuSinkOptions& options, GpuStaging* staging) {
  std::uint64_t device_bytes = 0;
  for (const Shard& shard : checkpoint.shards())
    for (const TensorInfo& t : shard.header.tensors)
      if (!options.host_names.contains(t.name)) device_bytes += t.nbytes();
  require_device_memory(checkpoint, device_bytes);
  GpuSink sink(options, staging);
  // Room for each tensor's 256-byte alignment as well.
  sink.reserve(device_bytes + 256 * checkpoint.size());
  checkpoint.load(mode, sink, sink.options().staging_bytes);
  return sink.take_device();
}

}  // namespace atom::io
