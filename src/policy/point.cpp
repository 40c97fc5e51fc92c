#include "atom/policy/point.hpp"

namespace atom::policy {

std::string describe(const AxisSet& reads, Point x) {
  std::string out;
  for_each_axis([&](const auto& axis, std::size_t i) {
    if (!reads[i]) return;
    if (!out.empty()) out += ' ';
    out.append(axis.name).append("=").append(axis.label(x[i]));
  });
  return out;
}

std::string describe(PipelineId p, Point x) {
  return describe(reads(p), x);
}

std::string instance_name(std::string_view pipeline, const AxisSet& reads, BackendId b, Point x) {
  std::string out(pipeline);
  out.append(".").append(backend_name(b));
  for_each_axis([&](const auto& axis, std::size_t i) {
    if (!reads[i]) return;
    out.append(".").append(axis.tag).append("-").append(axis.label(x[i]));
  });
  return out;
}

std::string instance_name(PipelineId p, BackendId b, Point x) {
  return instance_name(pipeline_name(p), reads(p), b, x);
}

env::Environment environment_for(PipelineId p, Point x) {
  const AxisSet s = reads(p);
  env::Environment e;
  for_each_axis([&](const auto& axis, std::size_t i) {
    if (s[i]) select_value(axis, x[i], e);
  });
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
