// The instantiations this build compiled, from instances.hpp (every one, or those of the build
// profile), for the policy tests.
#pragma once

#include <set>
#include <tuple>

#include "instances.hpp"

namespace atom::test {

// Keys of the compiled instances of pipeline p on backend b.
inline std::set<policy::Key> built_keys(policy::PipelineId p, policy::BackendId b) {
  std::set<policy::Key> keys;
  const auto add = [&]<class... I>(std::tuple<I...>*) {
    ((I::pipeline == p && I::backend == b ? (void)keys.insert(I::key) : void()), ...);
  };
  add(static_cast<instances::host*>(nullptr));
  add(static_cast<instances::gpu*>(nullptr));
  return keys;
}

inline bool built(policy::Key k) {
  return built_keys(policy::key_pipeline(k), policy::key_backend(k)).count(k) == 1;
}

}  // namespace atom::test
