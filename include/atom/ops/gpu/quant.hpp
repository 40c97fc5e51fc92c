// The standalone activation quantizers of the separate path on the GPU (atom/ops/quant.hpp's
// quantize with `const Gpu&` first). Bit-identical to the host: the amax is order-independent and
// every element is quantized on its own.
#pragma once

#include "atom/core/tensor.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/formats.hpp"
#include "atom/ops/gpu.hpp"

namespace atom::ops {

template <class Epi>
requires Epilogue<Epi> &&
    (Epi::format != Format::bf16) void quantize(const Gpu&, View2<const bf16> x,
                                                typename Epi::Output out);

}  // namespace atom::ops
