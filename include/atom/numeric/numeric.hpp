// The numeric formats: bf16, FP8 e4m3 (fn and fnuz) and MXFP4 (e2m1 elements, e8m0 scales).
#pragma once

#include "atom/numeric/bf16.hpp"
#include "atom/numeric/float_bits.hpp"
#include "atom/numeric/fp8.hpp"
#include "atom/numeric/host_device.hpp"
#include "atom/numeric/mxfp4.hpp"
