// The part of the HIP API that atom's device code uses, mapped onto CUDA for nvcc. Kernels are
// written in HIP; on NVIDIA this header stands in for <hip/hip_runtime.h> (the distribution's
// HIP-on-NVIDIA headers predate CUDA 13).
#pragma once

#include <cuda_runtime.h>

using hipError_t = cudaError_t;
using hipStream_t = cudaStream_t;
using hipEvent_t = cudaEvent_t;
using hipDeviceProp_t = cudaDeviceProp;
using hipMemcpyKind = cudaMemcpyKind;

inline constexpr hipError_t hipSuccess = cudaSuccess;
inline constexpr hipMemcpyKind hipMemcpyHostToDevice = cudaMemcpyHostToDevice;
inline constexpr hipMemcpyKind hipMemcpyDeviceToHost = cudaMemcpyDeviceToHost;
inline constexpr hipMemcpyKind hipMemcpyDeviceToDevice = cudaMemcpyDeviceToDevice;

inline hipError_t hipGetDeviceCount(int* n) {
  return cudaGetDeviceCount(n);
}
inline hipError_t hipSetDevice(int d) {
  return cudaSetDevice(d);
}
inline hipError_t hipGetDevice(int* d) {
  return cudaGetDevice(d);
}
inline hipError_t hipGetDeviceProperties(hipDeviceProp_t* p, int d) {
  return cudaGetDeviceProperties(p, d);
}
inline hipError_t hipMalloc(void** p, size_t n) {
  return cudaMalloc(p, n);
}
inline hipError_t hipFree(void* p) {
  return cudaFree(p);
}
inline hipError_t hipMemcpy(void* d, const void* s, size_t n, hipMemcpyKind k) {
  return cudaMemcpy(d, s, n, k);
}
inline hipError_t hipMemcpyAsync(void* d, const void* s, size_t n, hipMemcpyKind k,
                                 hipStream_t st) {
  return cudaMemcpyAsync(d, s, n, k, st);
}
inline hipError_t hipMemsetAsync(void* d, int v, size_t n, hipStream_t st) {
  return cudaMemsetAsync(d, v, n, st);
}
inline hipError_t hipDeviceSynchronize() {
  return cudaDeviceSynchronize();
}
inline hipError_t hipStreamCreate(hipStream_t* s) {
  return cudaStreamCreate(s);
}
inline hipError_t hipStreamDestroy(hipStream_t s) {
  return cudaStreamDestroy(s);
}
inline hipError_t hipStreamSynchronize(hipStream_t s) {
  return cudaStreamSynchronize(s);
}
inline hipError_t hipEventCreate(hipEvent_t* e) {
  return cudaEventCreate(e);
}
inline hipError_t hipEventDestroy(hipEvent_t e) {
  return cudaEventDestroy(e);
}
inline hipError_t hipEventRecord(hipEvent_t e, hipStream_t s) {
  return cudaEventRecord(e, s);
}
using hipFuncAttribute = cudaFuncAttribute;
inline constexpr hipFuncAttribute hipFuncAttributeMaxDynamicSharedMemorySize =
    cudaFuncAttributeMaxDynamicSharedMemorySize;
inline constexpr hipFuncAttribute hipFuncAttributePreferredSharedMemoryCarveout =
    cudaFuncAttributePreferredSharedMemoryCarveout;
inline hipError_t hipFuncSetAttribute(const void* f, hipFuncAttribute a, int v) {
  return cudaFuncSetAttribute(f, a, v);
}
inline hipError_t hipStreamWaitEvent(hipStream_t s, hipEvent_t e, unsigned flags) {
  return cudaStreamWaitEvent(s, e, flags);
}
inline hipError_t hipEventSynchronize(hipEvent_t e) {
  return cudaEventSynchronize(e);
}
inline hipError_t hipEventElapsedTime(float* ms, hipEvent_t a, hipEvent_t b) {
  return cudaEventElapsedTime(ms, a, b);
}
inline hipError_t hipMemGetInfo(size_t* free, size_t* total) {
  return cudaMemGetInfo(free, total);
}
inline constexpr unsigned hipHostMallocDefault = cudaHostAllocDefault;
inline constexpr unsigned hipStreamNonBlocking = cudaStreamNonBlocking;
inline hipError_t hipStreamCreateWithFlags(hipStream_t* s, unsigned flags) {
  return cudaStreamCreateWithFlags(s, flags);
}
inline constexpr unsigned hipEventDisableTiming = cudaEventDisableTiming;
inline hipError_t hipEventCreateWithFlags(hipEvent_t* e, unsigned flags) {
  return cudaEventCreateWithFlags(e, flags);
}
inline hipError_t hipGetLastError() {
  return cudaGetLastError();
}
inline const char* hipGetErrorString(hipError_t e) {
  return cudaGetErrorString(e);
}

// Warp shuffles: HIP's forms take no mask; CUDA's need the full-warp mask.
#define __shfl_xor(v, m) __shfl_xor_sync(0xffffffffu, (v), (m))
#define __shfl_down(v, d) __shfl_down_sync(0xffffffffu, (v), (d))
#define __shfl(v, l) __shfl_sync(0xffffffffu, (v), (l))

// Peer memory between processes (the tensor-parallel group's registered buffers), pinned host
// memory the device writes, occupancy and graphs.
using hipIpcMemHandle_t = cudaIpcMemHandle_t;
using hipGraph_t = cudaGraph_t;
using hipGraphExec_t = cudaGraphExec_t;
using hipGraphNode_t = cudaGraphNode_t;
using hipStreamCaptureMode = cudaStreamCaptureMode;
inline constexpr unsigned hipIpcMemLazyEnablePeerAccess = cudaIpcMemLazyEnablePeerAccess;
inline constexpr unsigned hipHostMallocMapped = cudaHostAllocMapped;
inline constexpr hipError_t hipErrorNotReady = cudaErrorNotReady;
inline constexpr hipStreamCaptureMode hipStreamCaptureModeThreadLocal =
    cudaStreamCaptureModeThreadLocal;

inline hipError_t hipIpcGetMemHandle(hipIpcMemHandle_t* h, void* p) {
  return cudaIpcGetMemHandle(h, p);
}
inline hipError_t hipIpcOpenMemHandle(void** p, hipIpcMemHandle_t h, unsigned flags) {
  return cudaIpcOpenMemHandle(p, h, flags);
}
inline hipError_t hipIpcCloseMemHandle(void* p) {
  return cudaIpcCloseMemHandle(p);
}
inline hipError_t hipHostMalloc(void** p, size_t n, unsigned flags) {
  return cudaHostAlloc(p, n, flags);
}
inline hipError_t hipHostFree(void* p) {
  return cudaFreeHost(p);
}
inline hipError_t hipHostGetDevicePointer(void** d, void* h, unsigned flags) {
  return cudaHostGetDevicePointer(d, h, flags);
}
inline hipError_t hipMemset(void* d, int v, size_t n) {
  return cudaMemset(d, v, n);
}
inline hipError_t hipStreamQuery(hipStream_t s) {
  return cudaStreamQuery(s);
}
template <class Kernel>
hipError_t hipOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel kernel, int threads,
                                                        size_t shared_bytes) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, kernel, threads, shared_bytes);
}
inline hipError_t hipStreamBeginCapture(hipStream_t s, hipStreamCaptureMode mode) {
  return cudaStreamBeginCapture(s, mode);
}
inline hipError_t hipStreamEndCapture(hipStream_t s, hipGraph_t* g) {
  return cudaStreamEndCapture(s, g);
}
// HIP keeps the CUDA 11 signature (error node and log buffer); CUDA 12 reports through the error.
inline hipError_t hipGraphInstantiate(hipGraphExec_t* e, hipGraph_t g, hipGraphNode_t*, char*,
                                      size_t) {
  return cudaGraphInstantiate(e, g, 0);
}
inline hipError_t hipGraphLaunch(hipGraphExec_t e, hipStream_t s) {
  return cudaGraphLaunch(e, s);
}
inline hipError_t hipGraphExecDestroy(hipGraphExec_t e) {
  return cudaGraphExecDestroy(e);
}
inline hipError_t hipGraphDestroy(hipGraph_t g) {
  return cudaGraphDestroy(g);
}

// Kernel attributes (registers, local memory) as the compiler left them.
using hipFuncAttributes = cudaFuncAttributes;
inline hipError_t hipFuncGetAttributes(hipFuncAttributes* a, const void* f) {
  return cudaFuncGetAttributes(a, f);
}
