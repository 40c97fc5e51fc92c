#include "atom/dispatch/dispatch.hpp"

namespace atom::dispatch {

std::string miss_message(policy::PipelineId p, policy::BackendId b, policy::Point x,
                         const std::vector<std::pair<policy::Key, std::string_view>>& available) {
  std::string msg = "no instantiation of " + std::string(policy::pipeline_name(p)) + " on the " +
                    std::string(policy::backend_name(b)) + " backend for " +
                    policy::describe(p, x) + ": ";
  std::vector<policy::Point> points;
  for (const auto& [k, name] : available)
    if (policy::key_backend(k) == b) points.push_back(policy::key_point(k));
  std::string axis_note;
  if (points.empty()) {
    axis_note = "this build has no " + std::string(policy::backend_name(b)) +
                " instantiation of it (see the ATOM_PROFILE build option)";
  } else {
    const policy::AxisSet used = policy::reads(p);
    policy::for_each_axis([&](const auto& axis, std::size_t i) {
      if (!axis_note.empty() || !used[i]) return;
      const bool any = std::any_of(points.begin(), points.end(),
                                   [&](const policy::Point& q) { return q[i] == x[i]; });
      if (any) return;
      axis_note =
          "no instantiation has " + std::string(axis.name) + "=" + std::string(axis.label(x[i]));
    });
    if (axis_note.empty())
      axis_note = "every axis value exists, but not this combination (build profile)";
  }
  msg += axis_note + "; available:";
  if (available.empty()) msg += " none";
  for (const auto& [k, name] : available) msg += "\n  " + std::string(name);
  return msg;
}

}  // namespace atom::dispatch
