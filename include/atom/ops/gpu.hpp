// The GPU backend tag. GPU ops are overloads of the host ops with `const Gpu&` first and views
// of device memory; they are declared in atom/ops/gpu/*.hpp (plain C++, includable from host
// code) and defined in kernels/*.hip.
#pragma once

namespace atom::ops {

struct Gpu {
  void* stream = nullptr;  // hipStream_t / cudaStream_t; null is the default stream
};

}  // namespace atom::ops
