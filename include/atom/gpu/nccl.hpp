// The collective engine of the tensor-parallel group: NCCL on NVIDIA, RCCL on AMD (same C API),
// loaded at run time with dlopen so that no build depends on either. The subset of the API we
// call is declared here with our own types, laid out as nccl.h / rccl.h lay them out (NCCL 2.x
// ABI); plain C++, no vendor headers.
#pragma once

#include <cstddef>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace atom::gpu::nccl {

// ncclUniqueId: 128 opaque bytes that rank 0 creates and every rank passes to init.
struct UniqueId {
  char internal[128];
};

struct CommHandle;
using Comm = CommHandle*;  // ncclComm_t

// ncclResult_t.
enum class Result : int {
  success = 0,
  unhandled_cuda_error = 1,
  system_error = 2,
  internal_error = 3,
  invalid_argument = 4,
  invalid_usage = 5,
  remote_error = 6,
  in_progress = 7,
};

// ncclDataType_t (the values we use).
enum class DataType : int { float32 = 7, bfloat16 = 9 };

// ncclRedOp_t (the one we use).
enum class RedOp : int { sum = 0 };

// A missing library or symbol, or a call that returned an error.
class NcclError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The library names tried in order for a backend ("cuda": NCCL, "hip": RCCL).
std::vector<std::string> default_library_names(std::string_view backend);

// One loaded library and its entry points. Loading fails with NcclError("NCCL not found: ...")
// naming every file tried and the loader's reason, or naming the first missing symbol.
class Library {
 public:
  explicit Library(std::span<const std::string> names);
  ~Library();
  Library(const Library&) = delete;
  Library& operator=(const Library&) = delete;

  // The name that loaded.
  const std::string& name() const noexcept { return name_; }

  UniqueId unique_id() const;
  Comm init_rank(int nranks, const UniqueId& id, int rank) const;
  // Sum of `count` values over the group, on `stream` (hipStream_t / cudaStream_t).
  void all_reduce(const void* send, void* recv, std::size_t count, DataType type, void* stream,
                  Comm comm) const;
  // The communicator's asynchronous error (success while none; in_progress while initializing).
  Result async_error(Comm comm) const;
  void destroy(Comm comm) const noexcept;
  // Ends every operation in flight on the communicator and frees it.
  void abort(Comm comm) const noexcept;
  std::string error_text(Result r) const;

 private:
  using GetUniqueId = int (*)(UniqueId*);
  using CommInitRank = int (*)(Comm*, int, UniqueId, int);
  using AllReduce = int (*)(const void*, void*, std::size_t, int, int, Comm, void*);
  using CommDestroy = int (*)(Comm);
  using CommAbort = int (*)(Comm);
  using GetErrorString = const char* (*)(int);
  using CommGetAsyncError = int (*)(Comm, int*);

  void check(int result, const char* call) const;

  void* handle_ = nullptr;
  std::string name_;
  GetUniqueId get_unique_id_ = nullptr;
  CommInitRank comm_init_rank_ = nullptr;
  AllReduce all_reduce_ = nullptr;
  CommDestroy comm_destroy_ = nullptr;
  CommAbort comm_abort_ = nullptr;
  GetErrorString get_error_string_ = nullptr;
  CommGetAsyncError comm_get_async_error_ = nullptr;
};

}  // namespace atom::gpu::nccl
