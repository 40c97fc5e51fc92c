#include "atom/io/loader.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace atom::io {

namespace {

constexpr std::size_t page_bytes = 4096;

std::string system_message(int error) {
  return std::strerror(error);
}

class Fd {
 public:
  explicit Fd(const std::filesystem::path& path) : path_(path.string()) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw LoadError(path_, "", "cannot open: " + system_message(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      const int error = errno;
      ::close(fd_);
      throw LoadError(path_, "", "cannot stat: " + system_message(error));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd_);
      throw LoadError(path_, "", "is not a regular file");
    }
    size_ = static_cast<std::uint64_t>(st.st_size);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { ::close(fd_); }

  int get() const { return fd_; }
  std::uint64_t size() const { return size_; }
  const std::string& name() const { return path_; }

  // Reads exactly out.size() bytes at `offset`; a file that ends early is an error.
  void read_exact(std::uint64_t offset, std::span<std::byte> out) const {
    std::size_t done = 0;
    while (done < out.size()) {
      const ssize_t got =
          ::pread(fd_, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0)
        throw LoadError(
            path_, "",
            "read failed at byte " + std::to_string(offset + done) + ": " + system_message(errno));
      if (got == 0)
        throw LoadError(path_, "",
                        "file ended at byte " + std::to_string(offset + done) + " of " +
                            std::to_string(size_) + " (was it changed while loading?)");
      done += static_cast<std::size_t>(got);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

Header read_header(const Fd& fd) {
  std::array<std::byte, 8> prefix{};
  if (fd.size() >= 8) fd.read_exact(0, prefix);
  const std::uint64_t n = header_length(prefix, fd.size(), fd.name());
  std::string json(n, '\0');
  fd.read_exact(8, std::as_writable_bytes(std::span(json)));
  return parse_header(json, fd.size() - 8 - n, fd.name());
}

class Mapping {
 public:
  explicit Mapping(const Fd& fd) : size_(fd.size()) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (p == MAP_FAILED) throw LoadError(fd.name(), "", "cannot map: " + system_message(errno));
    data_ = static_cast<const std::byte*>(p);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { ::munmap(const_cast<std::byte*>(data_), size_); }

  const std::byte* data() const { return data_; }
  void advise_sequential() const {
    // Advice only: a kernel that refuses it still maps the file correctly.
    ::madvise(const_cast<std::byte*>(data_), size_, MADV_SEQUENTIAL);
  }

 private:
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace

std::string_view load_mode_name(LoadMode mode) {
  return mode == LoadMode::mmap ? "mmap" : "read";
}

LoadMode load_mode(const env::Config& config) {
  return config.get<env::Var::disable_mmap>() ? LoadMode::read : LoadMode::mmap;
}

AlignedBytes::AlignedBytes(std::size_t size, std::size_t alignment) : size_(size) {
  if (size == 0) return;
  const std::size_t rounded = (size + alignment - 1) / alignment * alignment;
  data_.reset(static_cast<std::byte*>(std::aligned_alloc(alignment, rounded)));
  if (!data_) throw std::bad_alloc();
}

void AlignedBytes::Free::operator()(std::byte* p) const noexcept {
  std::free(p);
}

Header read_header(const std::filesystem::path& path) {
  return read_header(Fd(path));
}

SafetensorsFile::SafetensorsFile(std::filesystem::path path, LoadMode mode)
    : path_(std::move(path)), mode_(mode) {}

void SafetensorsFile::Unmap::operator()(const std::byte* p) const noexcept {
  ::munmap(const_cast<std::byte*>(p), size);
}

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path, LoadMode mode) {
  SafetensorsFile f(path, mode);
  const Fd fd(path);
  f.header_ = read_header(fd);
  const std::size_t size = fd.size();
  if (mode == LoadMode::mmap) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (p == MAP_FAILED) throw LoadError(fd.name(), "", "cannot map: " + system_message(errno));
    f.mapping_ = {static_cast<const std::byte*>(p), Unmap{size}};
    f.file_bytes_ = f.mapping_.get();
  } else {
    f.read_buffer_ = AlignedBytes(size, page_bytes);
    for (std::size_t at = 0; at < size; at += default_chunk_bytes) {
      const std::size_t n = std::min(default_chunk_bytes, size - at);
      fd.read_exact(at, f.read_buffer_.span().subspan(at, n));
    }
    f.file_bytes_ = f.read_buffer_.data();
  }
  return f;
}

const TensorInfo& SafetensorsFile::info(std::string_view name) const {
  const TensorInfo* t = header_.find(name);
  if (t == nullptr)
    throw LoadError(path_.string(), std::string(name), "no such tensor in the file");
  return *t;
}

std::span<const std::byte> SafetensorsFile::bytes(const TensorInfo& info) const {
  return {file_bytes_ + header_.data_start() + info.begin, info.nbytes()};
}

void load_file(const std::filesystem::path& path, LoadMode mode, TensorSink& sink,
               std::size_t chunk_bytes) {
  const Fd fd(path);
  const Header header = read_header(fd);
  if (mode == LoadMode::mmap) {
    const Mapping map(fd);
    map.advise_sequential();
    for (const auto& t : header.tensors)
      sink.piece(path, t, 0, {map.data() + header.data_start() + t.begin, t.nbytes()});
    sink.file_end(path);
    return;
  }

  // Chunks start at page-aligned file offsets, so the kernel copies whole pages into a
  // page-aligned buffer; the part of the first page before the data section is skipped.
  chunk_bytes =
      std::max<std::size_t>(page_bytes, (chunk_bytes + page_bytes - 1) / page_bytes * page_bytes);
  const std::uint64_t data_start = header.data_start();
  const std::uint64_t file_end = fd.size();
  AlignedBytes own_staging;  // allocated on first use: a sink may supply every read buffer
  auto tensor = header.tensors.begin();
  std::uint64_t tensor_done = 0;  // bytes of *tensor already delivered
  // Tensors of zero bytes take no room in the data section; deliver them as soon as they come up.
  const auto flush_empty = [&] {
    while (tensor != header.tensors.end() && tensor->nbytes() == 0) {
      sink.piece(path, *tensor, 0, {});
      ++tensor;
    }
  };
  flush_empty();
  for (std::uint64_t at = data_start / page_bytes * page_bytes;
       at < file_end && tensor != header.tensors.end(); at += chunk_bytes) {
    const std::size_t n =
        static_cast<std::size_t>(std::min<std::uint64_t>(chunk_bytes, file_end - at));
    std::span<std::byte> staging = sink.read_buffer(n);
    if (staging.size() < n) {
      if (own_staging.size() == 0)
        own_staging = AlignedBytes(
            static_cast<std::size_t>(std::min<std::uint64_t>(chunk_bytes, file_end)), page_bytes);
      staging = own_staging.span();
    }
    fd.read_exact(at, staging.first(n));
    std::uint64_t pos = std::max(at, data_start);  // file offset of the next undelivered byte
    while (pos < at + n && tensor != header.tensors.end()) {
      const std::uint64_t tensor_end = data_start + tensor->end;
      const std::uint64_t take = std::min(at + n, tensor_end) - pos;
      sink.piece(path, *tensor, tensor_done, staging.subspan(pos - at, take));
      pos += take;
      tensor_done += take;
      if (pos == tensor_end) {
        ++tensor;
        tensor_done = 0;
        flush_empty();
      }
    }
  }
}

void TensorSink::file_end(const std::filesystem::path&) {}

std::span<std::byte> TensorSink::read_buffer(std::size_t) {
  return {};
}

void HostSink::piece(const std::filesystem::path& file, const TensorInfo& info,
                     std::uint64_t offset, std::span<const std::byte> bytes) {
  if (offset == 0) {
    const auto existing = tensors_.find(info.name);
    if (existing != tensors_.end())
      throw LoadError(file.string(), info.name,
                      "already loaded from " + existing->second.file.string());
    tensors_.emplace(
        info.name,
        HostTensor{info, file, AlignedBytes(static_cast<std::size_t>(info.nbytes()), 64)});
  }
  HostTensor& t = tensors_.at(info.name);
  if (offset > t.bytes.size() || bytes.size() > t.bytes.size() - offset)
    throw LoadError(file.string(), info.name,
                    "piece at offset " + std::to_string(offset) + " of " +
                        std::to_string(bytes.size()) + " bytes overruns the tensor");
  if (!bytes.empty()) std::memcpy(t.bytes.data() + offset, bytes.data(), bytes.size());
}

}  // namespace atom::io
