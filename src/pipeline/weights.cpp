// The format of a block's weights, and the sizes of the weight forms.
#include <string>

#include "atom/pipeline/args.hpp"

namespace atom::pipeline {

namespace {

using policy::WeightFormat;

std::string label(WeightFormat f) {
  return std::string(policy::weight_format.label(static_cast<std::uint8_t>(f)));
}

// The common format of a block's weights; `present` skips the absent ones (no shared expert).
class CommonFormat {
 public:
  explicit CommonFormat(std::string_view block) : block_(block) {}

  template <class Weight>
  CommonFormat& with(std::string_view name, const Weight& w) {
    if (!found_) {
      format_ = w.format;
      first_ = name;
      found_ = true;
    } else if (w.format != format_) {
      throw ShapeError(std::string(block_) + ": weight '" + std::string(name) + "' is " +
                       label(w.format) + " but '" + first_ + "' is " + label(format_) +
                       "; the linear weights of one block must share one format");
    }
    return *this;
  }
  WeightFormat format() const { return format_; }

 private:
  std::string_view block_;
  std::string first_;
  WeightFormat format_ = WeightFormat::mxfp4;
  bool found_ = false;
};

}  // namespace

index_t LinearWeight::n() const {
  switch (format) {
    case WeightFormat::bf16:
      return bf16.w.shape[0];
    case WeightFormat::fp8_block:
      return fp8.q.shape[0];
    case WeightFormat::mxfp4:
      return matrix_core ? matrix_core->n() : portable ? portable->n() : mxfp4.packed.shape[0];
  }
  return 0;
}

bool LinearWeight::present() const {
  return bf16.w.data != nullptr || fp8.q.data != nullptr || mxfp4.packed.data != nullptr ||
         matrix_core != nullptr || portable != nullptr;
}

WeightFormat weight_format(const MlaWeights& w) {
  return CommonFormat("mla_attention")
      .with("qkv_a", w.qkv_a)
      .with("q_b", w.q_b)
      .with("o_proj", w.o_proj)
      .format();
}

WeightFormat weight_format(const Qwen3AttentionWeights& w) {
  return CommonFormat("qwen3_attention").with("qkv", w.qkv).with("o_proj", w.o_proj).format();
}

WeightFormat weight_format(const MoeWeights& w) {
  CommonFormat f("moe_block");
  f.with("experts.gate_up", w.gate_up).with("experts.down", w.down);
  if (w.shared_gate_up.present())
    f.with("shared_experts.gate_up", w.shared_gate_up).with("shared_experts.down", w.shared_down);
  return f.format();
}

WeightFormat weight_format(const DenseMlpWeights& w) {
  return CommonFormat("dense_mlp").with("gate_up", w.gate_up).with("down", w.down).format();
}

}  // namespace atom::pipeline
