// Included first by every kernel file that takes atom::View arguments. nvcc warns (#554) that
// View<const T>'s conversion to View<const T> is never used (it is the identity for const views,
// a valid but unused member); the warning is about the header, not about the kernels.
#pragma once

#if defined(__CUDACC__) && !defined(__HIPCC__)
#pragma nv_diag_suppress 554
#endif
