// ATOM_HD marks functions compiled for both the host and the device (nvcc or hipcc).
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ATOM_HD __host__ __device__
#define ATOM_DEVICE_COMPILER 1
#else
#define ATOM_HD
#define ATOM_DEVICE_COMPILER 0
#endif
