// Wiring a fused producer to its consumer. Each consumer states the activation format it reads;
// link<Epilogue, Format> names the producer's epilogue and fails to compile when the epilogue's
// output format is not that format, so a mismatched fusion is a compile error, never a wrong run.
#pragma once

#include "atom/ops/formats.hpp"

namespace atom::pipeline {

// The input formats of the consumers the pipelines feed.
inline constexpr ops::Format GemmInput = ops::Format::mxfp4;           // A4W4 GEMMs
inline constexpr ops::Format BmmFp8Input = ops::Format::fp8_group128;  // MLA FP8 BMMs

template <ops::Epilogue Epi, ops::Format Consumer>
struct Link {
  static_assert(Epi::format == Consumer,
                "fusion mismatch: the producer's output format is not its consumer's input format");
  using type = Epi;
};

template <ops::Epilogue Epi, ops::Format Consumer>
using link = typename Link<Epi, Consumer>::type;

}  // namespace atom::pipeline
