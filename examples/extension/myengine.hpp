// An extension of atom, defined out of tree: two axes of its own, each fed by a variable of its
// own, one pipeline that extends atom's dense MLP and one pipeline of its own with an op on a
// backend of its own. atom_add_instances() in CMakeLists.txt generates the instances.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>

#include "atom/extend/extension.hpp"

namespace myengine {

using atom::bf16;
using atom::index_t;
using atom::View1;
using atom::View2;
using atom::policy::BackendId;

// A choice of atom's dense MLP: as atom runs it, or followed by a check that every output is
// finite (a NaN or an infinity is an error naming the layer's first bad value).
enum class MlpCheck : std::uint8_t { off, on };
inline constexpr atom::extend::Axis<MlpCheck, 2> mlp_check{
    .name = "mlp_check",
    .tag = "chk",
    .type_name = "myengine::MlpCheck",
    .enumerators = {"off", "on"},
    .labels = {"off", "on"},
    .variable = {.name = "MYENGINE_CHECK_MLP",
                 .type = atom::env::Type::boolean,
                 .default_text = "false",
                 .doc = "dense MLP: fail on a NaN or an infinity in the output"}};

// The residual add and RMSNorm of the engine's own pre-norm: two steps (the extension's add, then
// atom's norm) or atom's fused op. Both give the same bits (atom's norm contract).
enum class AddNormFusion : std::uint8_t { separate, fused };
inline constexpr atom::extend::Axis<AddNormFusion, 2> add_norm_fusion{
    .name = "add_norm_fusion",
    .tag = "an",
    .type_name = "myengine::AddNormFusion",
    .enumerators = {"separate", "fused"},
    .labels = {"separate", "fused"},
    .variable = {.name = "MYENGINE_FUSED_ADD_NORM",
                 .type = atom::env::Type::boolean,
                 .default_text = "true",
                 .doc = "add_norm: residual add and RMSNorm in one op"}};

// The extension's backend: atom's host backend plus the ops below (found by overload on it).
struct Host : atom::ops::Host {};

// residual = bf16(x + residual), row by row: the extension's own op.
inline void residual_add(const Host&, View2<const bf16> x, View2<bf16> residual) {
  for (index_t t = 0; t < x.size(0); ++t)
    for (index_t c = 0; c < x.size(1); ++c)
      residual(t, c) = atom::to_bf16(atom::to_float(x(t, c)) + atom::to_float(residual(t, c)));
}

// atom's dense MLP, then the check.
struct CheckedMlp : atom::extend::Extends<atom::policy::PipelineId::dense_mlp> {
  static constexpr std::string_view type = "myengine::CheckedMlp";
  using reads = std::tuple<MlpCheck>;
  static constexpr std::array backends{atom::extend::Backend{BackendId::host, "atom::ops::Host"}};

  template <atom::policy::Point P, class Backend, MlpCheck C>
  static void run(const args& a) {
    atom::pipeline::DenseMlp<P, Backend>::run(a);
    if constexpr (C == MlpCheck::on) {
      const View2<bf16> out = a.io.out;
      for (index_t t = 0; t < out.size(0); ++t)
        for (index_t c = 0; c < out.size(1); ++c)
          if (!std::isfinite(atom::to_float(out(t, c))))
            throw std::runtime_error("dense_mlp: output (" + std::to_string(t) + ", " +
                                     std::to_string(c) + ") is " +
                                     std::to_string(atom::to_float(out(t, c))));
    } else {
      static_assert(atom::policy::unhandled<C>);  // `off` is atom's own instance
    }
  }
};

// The engine's own pipeline: out = rms_norm(residual += x).
struct AddNormArgs {
  View2<const bf16> x;
  View2<bf16> residual;
  View1<const bf16> weight;
  float eps = 1e-6f;
  View2<bf16> out;
};
struct AddNorm : atom::extend::Own {
  static constexpr std::string_view name = "add_norm";
  static constexpr std::string_view type = "myengine::AddNorm";
  using args = AddNormArgs;
  using reads = std::tuple<AddNormFusion>;
  static constexpr std::array backends{atom::extend::Backend{BackendId::host, "myengine::Host"}};

  template <atom::policy::Point P, class Backend, AddNormFusion F>
  static void run(const args& a) {
    using atom::ops::Bf16Act;
    using atom::ops::epi::Bf16;
    const Backend b{};
    if constexpr (F == AddNormFusion::fused) {
      atom::ops::add_rms_norm<Bf16>(b, a.x, a.residual, a.weight, a.eps, Bf16Act{a.out});
    } else if constexpr (F == AddNormFusion::separate) {
      residual_add(b, a.x, a.residual);
      atom::ops::rms_norm<Bf16>(b, a.residual, a.weight, a.eps, Bf16Act{a.out});
    } else {
      static_assert(atom::policy::unhandled<F>);
    }
  }
};

struct Extension {
  static constexpr std::string_view name = "myengine";
  static constexpr std::tuple axes{mlp_check, add_norm_fusion};
  using pipelines = std::tuple<CheckedMlp, AddNorm>;
};

}  // namespace myengine
