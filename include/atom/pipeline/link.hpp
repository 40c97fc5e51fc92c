// Wiring a fused producer to its consumer. Each consumer states the activation format it reads;
// link<Epilogue, Format> names the producer's epilogue and fails to compile when the epilogue's
// output format is not that format, so a mismatched fusion is a compile error, never a wrong run.
#pragma once

#include "atom/ops/formats.hpp"
#include "atom/policy/axes.hpp"

namespace atom::pipeline {

// The activations the GEMMs of each weight format read, as the epilogue that writes them: MXFP4
// for MXFP4 weights (A4W4), FP8 per token and group of 128 for FP8 block weights (W8A8, the
// groups lining up with the weights' 128-wide K blocks), bf16 for bf16 weights.
template <policy::WeightFormat F>
struct GemmOperand;
template <>
struct GemmOperand<policy::WeightFormat::mxfp4> {
  using epi = ops::epi::Mxfp4;
};
template <>
struct GemmOperand<policy::WeightFormat::fp8_block> {
  using epi = ops::epi::Fp8PerGroup128;
};
template <>
struct GemmOperand<policy::WeightFormat::bf16> {
  using epi = ops::epi::Bf16;
};
template <policy::WeightFormat F>
using gemm_epi = typename GemmOperand<F>::epi;
template <policy::WeightFormat F>
using GemmAct = typename gemm_epi<F>::Output;

// The input formats of the consumers the pipelines feed.
template <policy::WeightFormat F>
inline constexpr ops::Format gemm_input = gemm_epi<F>::format;         // the GEMMs of format F
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
