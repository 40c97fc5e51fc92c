#include "atom/gpu/nccl.hpp"

#include <dlfcn.h>

#include <string_view>

namespace atom::gpu::nccl {

std::vector<std::string> default_library_names(std::string_view backend) {
  if (backend == "hip") return {"librccl.so.1", "librccl.so"};
  return {"libnccl.so.2", "libnccl.so"};
}

namespace {

template <class F>
F symbol(void* handle, const std::string& library, const char* name) {
  void* p = ::dlsym(handle, name);
  if (p == nullptr)
    throw NcclError("NCCL not found: " + library + " has no symbol " + name +
                    " (an NCCL / RCCL 2.x library is required)");
  return reinterpret_cast<F>(p);
}

}  // namespace

Library::Library(std::span<const std::string> names) {
  if (names.empty()) throw NcclError("NCCL not found: no library name to load");
  std::string tried;
  for (const std::string& name : names) {
    handle_ = ::dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle_ != nullptr) {
      name_ = name;
      break;
    }
    const char* why = ::dlerror();
    tried += "\n  " + name + ": " + (why ? why : "not loadable");
  }
  if (handle_ == nullptr)
    throw NcclError(
        "NCCL not found: none of these libraries could be loaded (add the folder of "
        "libnccl.so.2 / librccl.so to LD_LIBRARY_PATH):" +
        tried);
  try {
    get_unique_id_ = symbol<GetUniqueId>(handle_, name_, "ncclGetUniqueId");
    comm_init_rank_ = symbol<CommInitRank>(handle_, name_, "ncclCommInitRank");
    all_reduce_ = symbol<AllReduce>(handle_, name_, "ncclAllReduce");
    comm_destroy_ = symbol<CommDestroy>(handle_, name_, "ncclCommDestroy");
    comm_abort_ = symbol<CommAbort>(handle_, name_, "ncclCommAbort");
    get_error_string_ = symbol<GetErrorString>(handle_, name_, "ncclGetErrorString");
    comm_get_async_error_ = symbol<CommGetAsyncError>(handle_, name_, "ncclCommGetAsyncError");
  } catch (...) {
    ::dlclose(handle_);
    throw;
  }
}

Library::~Library() {
  // The library stays mapped: NCCL's proxy threads may outlive a communicator's destruction by a
  // moment, and unmapping code under a running thread crashes it.
}

std::string Library::error_text(Result r) const {
  const char* text = get_error_string_(static_cast<int>(r));
  return std::string(text ? text : "unknown error") + " (" + std::to_string(static_cast<int>(r)) +
         ")";
}

void Library::check(int result, const char* call) const {
  if (result != static_cast<int>(Result::success))
    throw NcclError(name_ + ": " + call + " failed: " + error_text(static_cast<Result>(result)));
}

UniqueId Library::unique_id() const {
  UniqueId id{};
  check(get_unique_id_(&id), "ncclGetUniqueId");
  return id;
}

Comm Library::init_rank(int nranks, const UniqueId& id, int rank) const {
  Comm comm = nullptr;
  check(comm_init_rank_(&comm, nranks, id, rank), "ncclCommInitRank");
  return comm;
}

void Library::all_reduce(const void* send, void* recv, std::size_t count, DataType type,
                         void* stream, Comm comm) const {
  check(all_reduce_(send, recv, count, static_cast<int>(type), static_cast<int>(RedOp::sum), comm,
                    stream),
        "ncclAllReduce");
}

Result Library::async_error(Comm comm) const {
  int state = 0;
  const int rc = comm_get_async_error_(comm, &state);
  if (rc != static_cast<int>(Result::success)) return static_cast<Result>(rc);
  return static_cast<Result>(state);
}

void Library::destroy(Comm comm) const noexcept {
  if (comm != nullptr) comm_destroy_(comm);
}

void Library::abort(Comm comm) const noexcept {
  if (comm != nullptr) comm_abort_(comm);
}

}  // namespace atom::gpu::nccl
