// The generated dispatch table: per pipeline, the compiled instantiations sorted by key.
#pragma once

#include <span>
#include <stdexcept>
#include <string_view>

#include "atom/pipeline/args.hpp"
#include "atom/policy/point.hpp"

namespace atom::dispatch {

// A point that has no instance: the message names it and what is available.
class DispatchError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <policy::PipelineId P>
using RunFn = void (*)(const pipeline::RunArgs<P>&);

template <policy::PipelineId P>
struct Entry {
  policy::Key key;
  std::string_view name;
  RunFn<P> run;
};

// The rows, sorted by key. Defined in the generated instantiations/table.cpp (or the table the
// build writes for a smaller profile).
template <policy::PipelineId P>
std::span<const Entry<P>> table();

}  // namespace atom::dispatch
