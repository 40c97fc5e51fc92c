// Reading safetensors files: mapped with zero-copy tensor views (the default), or read with large
// sequential aligned reads (ATOM_DISABLE_MMAP=true, for containers where mmap misbehaves and where
// sequential reads beat page faults). Both paths deliver identical bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "atom/env/config.hpp"
#include "atom/io/format.hpp"

namespace atom::io {

enum class LoadMode : std::uint8_t { mmap, read };

std::string_view load_mode_name(LoadMode mode);
// read when ATOM_DISABLE_MMAP is set, mmap otherwise.
LoadMode load_mode(const env::Config& config);

// Owned bytes at an alignment that is a power of two.
class AlignedBytes {
 public:
  AlignedBytes() = default;
  AlignedBytes(std::size_t size, std::size_t alignment);

  std::byte* data() { return data_.get(); }
  const std::byte* data() const { return data_.get(); }
  std::size_t size() const { return size_; }
  std::span<std::byte> span() { return {data_.get(), size_}; }
  std::span<const std::byte> span() const { return {data_.get(), size_}; }

 private:
  struct Free {
    void operator()(std::byte* p) const noexcept;
  };
  std::unique_ptr<std::byte[], Free> data_;
  std::size_t size_ = 0;
};

// Reads only the header of a file.
Header read_header(const std::filesystem::path& path);

// One open file. mmap: mapped read-only, tensor bytes are views of the mapping. read: the whole
// file is read into one page-aligned buffer, so tensor bytes keep the alignment they have in the
// file on both paths.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::filesystem::path& path, LoadMode mode);

  const std::filesystem::path& path() const { return path_; }
  LoadMode mode() const { return mode_; }
  const Header& header() const { return header_; }
  // Throws LoadError naming the file and the tensor when it is absent.
  const TensorInfo& info(std::string_view name) const;
  std::span<const std::byte> bytes(const TensorInfo& info) const;
  std::span<const std::byte> bytes(std::string_view name) const { return bytes(info(name)); }

 private:
  SafetensorsFile(std::filesystem::path path, LoadMode mode);

  struct Unmap {
    std::size_t size;
    void operator()(const std::byte* p) const noexcept;
  };

  std::filesystem::path path_;
  LoadMode mode_;
  Header header_;
  std::unique_ptr<const std::byte, Unmap> mapping_;
  AlignedBytes read_buffer_;
  const std::byte* file_bytes_ = nullptr;  // the whole file: mapping_ or read_buffer_
};

// A destination for streamed tensors (host memory, or device memory through io/gpu_sink.hpp).
// Each tensor arrives as one or more pieces in increasing `offset` (the position within the
// tensor), starting at 0 and covering it exactly; a tensor of zero bytes arrives as one empty
// piece. Pieces are valid only during the call. Tensors arrive in file order.
class TensorSink {
 public:
  virtual ~TensorSink() = default;
  virtual void piece(const std::filesystem::path& file, const TensorInfo& info,
                     std::uint64_t offset, std::span<const std::byte> bytes) = 0;
  // Read path only: the buffer the next chunk of `bytes` bytes is read into, so that a sink can
  // have the file read straight into memory of its own (pinned staging, say). Every piece cut
  // from that chunk is delivered before the next call. An empty span (the default), or one
  // shorter than `bytes`, leaves the read to the loader's own staging buffer.
  virtual std::span<std::byte> read_buffer(std::size_t bytes);
  // mmap path only: every piece of `file` has been delivered, and the mapping the pieces view is
  // about to go away. A sink may keep using a piece's bytes until this returns (a GPU sink's copy
  // threads read them in the background); on the read path pieces are valid only during piece().
  // A sink that hands pieces on to another sink hands this on too.
  virtual void file_end(const std::filesystem::path& file);
};

inline constexpr std::size_t default_chunk_bytes = std::size_t{16} << 20;

// Streams every tensor of a file into `sink`. mmap: one piece per tensor, a view of the mapping.
// read: sequential reads of `chunk_bytes` (rounded up to the page size) into the sink's
// read_buffer or else one page-aligned staging buffer, each cut into pieces at tensor boundaries.
void load_file(const std::filesystem::path& path, LoadMode mode, TensorSink& sink,
               std::size_t chunk_bytes = default_chunk_bytes);

struct HostTensor {
  TensorInfo info;
  std::filesystem::path file;
  AlignedBytes bytes;  // 64-byte aligned
};

using HostTensors = std::map<std::string, HostTensor, std::less<>>;

// Collects tensors into host memory; a name seen twice is a LoadError naming both files.
class HostSink final : public TensorSink {
 public:
  void piece(const std::filesystem::path& file, const TensorInfo& info, std::uint64_t offset,
             std::span<const std::byte> bytes) override;
  HostTensors& tensors() { return tensors_; }

 private:
  HostTensors tensors_;
};

}  // namespace atom::io
