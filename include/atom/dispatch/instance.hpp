// An instantiation as a type: which pipeline, backend and policy point it is.
#pragma once

#include "atom/policy/point.hpp"

namespace atom::dispatch {

template <policy::PipelineId Pipeline, policy::BackendId Backend, policy::Point P>
struct Instance {
  static constexpr policy::PipelineId pipeline = Pipeline;
  static constexpr policy::BackendId backend = Backend;
  static constexpr policy::Point point = P;
  static constexpr policy::Key key = policy::key(Pipeline, Backend, P);
};

}  // namespace atom::dispatch
