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
constexpr std::size_t parallel_copy_min_bytes = std::size_t{1} << 20;

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
}

GpuSink::GpuSink(GpuSinkOptions options) : options_((check_options(options), std::move(options))) {
  staging_ = gpu::PinnedBuffer<std::byte>(options_.staging_bytes * options_.staging_slots);
  slots_ = std::vector<Slot>(options_.staging_slots);
}

GpuSink::~GpuSink() {
  // Copies still queued read the staging slots and write the device buffers: both must outlive
  // them. A failing device is reported by the load that used it, not here.
  try {
    stream_.synchronize();
  } catch (const gpu::GpuError&) {
  }
}

std::byte* GpuSink::slot_begin(std::size_t slot) const {
  return staging_.data() + slot * options_.staging_bytes;
}

bool GpuSink::in_current_slot(std::span<const std::byte> bytes) const {
  const std::less_equal<const std::byte*> le;
  const std::byte* begin = slot_begin(current_);
  return le(begin, bytes.data()) && le(bytes.data() + bytes.size(), begin + options_.staging_bytes);
}

void GpuSink::next_slot() {
  Slot& leaving = slots_[current_];
  if (leaving.in_flight) leaving.drained.record(stream_);
  current_ = (current_ + 1) % slots_.size();
  Slot& entering = slots_[current_];
  if (entering.in_flight) {
    entering.drained.synchronize();
    entering.in_flight = false;
  }
  used_ = 0;
}

std::span<std::byte> GpuSink::read_buffer(std::size_t bytes) {
  if (bytes > options_.staging_bytes) return {};
  next_slot();
  used_ = options_.staging_bytes;  // the whole slot belongs to this chunk's pieces
  return {slot_begin(current_), bytes};
}

void GpuSink::copy_into_slot(std::byte* dst, std::span<const std::byte> src) const {
  const std::size_t threads = options_.copy_threads;
  if (threads == 1 || src.size() < parallel_copy_min_bytes) {
    std::memcpy(dst, src.data(), src.size());
    return;
  }
  // Page-sized parts, so that no two threads fault in the same page of a mapping.
  const std::size_t part = (src.size() / threads + page_bytes) / page_bytes * page_bytes;
  std::vector<std::jthread> workers;
  workers.reserve(threads - 1);
  for (std::size_t at = part; at < src.size(); at += part) {
    const std::size_t n = std::min(part, src.size() - at);
    workers.emplace_back([dst, at, n, from = src.data()] { std::memcpy(dst + at, from + at, n); });
  }
  std::memcpy(dst, src.data(), std::min(part, src.size()));
}

void GpuSink::stage(std::byte* device_dst, std::span<const std::byte> src) {
  while (!src.empty()) {
    if (used_ == options_.staging_bytes) next_slot();
    const std::size_t n = std::min(src.size(), options_.staging_bytes - used_);
    std::byte* slot = slot_begin(current_) + used_;
    copy_into_slot(slot, src.first(n));
    gpu::copy_to_device_async(device_dst, slot, n, stream_);
    slots_[current_].in_flight = true;
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
    gpu::Buffer<std::byte> buffer(static_cast<std::size_t>(info.nbytes()));
    receiving_ =
        &device_.emplace(info.name, DeviceTensor{info, file, std::move(buffer)}).first->second;
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
    gpu::copy_to_device_async(dst, bytes.data(), bytes.size(), stream_);
    slots_[current_].in_flight = true;
  } else if (options_.stage) {
    stage(dst, bytes);
  } else {
    gpu::copy_to_device(dst, bytes.data(), bytes.size());
  }
}

DeviceTensors GpuSink::take_device() {
  stream_.synchronize();
  for (Slot& s : slots_) s.in_flight = false;
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
                          const GpuSinkOptions& options) {
  std::uint64_t device_bytes = 0;
  for (const Shard& shard : checkpoint.shards())
    for (const TensorInfo& t : shard.header.tensors)
      if (!options.host_names.contains(t.name)) device_bytes += t.nbytes();
  require_device_memory(checkpoint, device_bytes);
  GpuSink sink(options);
  checkpoint.load(mode, sink, options.staging_bytes);
  return sink.take_device();
}

}  // namespace atom::io
