// An instantiation as a type, from its key: which pipeline, backend and policy point it is.
#pragma once

#include "atom/policy/point.hpp"

namespace atom::dispatch {

template <policy::Key K>
struct Instance {
  static constexpr policy::Key key = K;
  static constexpr policy::PipelineId pipeline = policy::key_pipeline(K);
  static constexpr policy::BackendId backend = policy::key_backend(K);
  static constexpr policy::Point point = policy::key_point(K);
};

}  // namespace atom::dispatch
