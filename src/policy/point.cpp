#include "atom/policy/point.hpp"

namespace atom::policy {

std::string describe(PipelineId p, Point x) {
  const AxisSet s = axes_of(p);
  std::string out;
  for_each_axis([&](const auto& axis) {
    if (!uses(s, axis.id)) return;
    if (!out.empty()) out += ' ';
    using E = typename std::decay_t<decltype(axis)>::enum_type;
    out +=
        std::string(axis.name) + "=" + std::string(axis.value_name(static_cast<E>(x.get(axis.id))));
  });
  return out;
}

std::string instance_name(PipelineId p, BackendId b, Point x) {
  const AxisSet s = axes_of(p);
  std::string out(pipeline_name(p));
  out.append(".").append(backend_name(b));
  for_each_axis([&](const auto& axis) {
    if (!uses(s, axis.id)) return;
    using E = typename std::decay_t<decltype(axis)>::enum_type;
    out.append(".").append(axis.tag).append("-").append(
        axis.value_name(static_cast<E>(x.get(axis.id))));
  });
  return out;
}

env::Environment environment_for(PipelineId p, Point x) {
  using env::spec;
  using env::Var;
  const AxisSet s = axes_of(p);
  env::Environment e;
  auto set = [&e](Var v, const char* value) { e[std::string(spec(v).name)] = value; };
  auto flag = [&set](Var v, bool on) { set(v, on ? "1" : "0"); };
  if (uses(s, AxisId::gemm_backend)) flag(Var::use_triton_gemm, x.gemm == GemmBackend::portable);
  if (uses(s, AxisId::bmm_format)) flag(Var::use_triton_mxfp4_bmm, x.bmm == BmmFormat::mxfp4);
  if (uses(s, AxisId::allreduce_norm))
    flag(Var::enable_allreduce_rmsnorm_fusion, x.allreduce_norm == AllReduceNorm::fused);
  if (uses(s, AxisId::input_norm_quant))
    flag(Var::enable_ds_input_rmsnorm_quant_fusion, x.input_norm_quant == InputNormQuant::fused);
  if (uses(s, AxisId::qk_norm)) {
    flag(Var::enable_ds_qknorm_quant_fusion, x.qk_norm == QkNorm::fused_quant);
    // With the quant fusion on, the plain norm fusion is irrelevant and left unset.
    if (x.qk_norm != QkNorm::fused_quant)
      flag(Var::enable_ds_qknorm_fusion, x.qk_norm == QkNorm::fused);
  }
  if (uses(s, AxisId::moe_streams))
    set(Var::dual_stream_moe_token_threshold, x.moe_streams == MoeStreams::dual ? "1024" : "0");
  if (uses(s, AxisId::qk_norm_rope_cache))
    flag(Var::enable_qk_norm_rope_cache_quant_fusion,
         x.qk_norm_rope_cache == QkNormRopeCache::fused);
  return e;
}

std::string settings_for(PipelineId p, Point x) {
  std::string out;
  for (const auto& [name, value] : environment_for(p, x)) {
    if (!out.empty()) out += ' ';
    out.append(name).append("=").append(value);
  }
  return out;
}

}  // namespace atom::policy
