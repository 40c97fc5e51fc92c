// The axes each pipeline reads, at run time, from the declarations next to the pipeline templates.
#include "atom/pipeline/pipelines.hpp"

namespace atom::policy {

AxisSet reads(PipelineId p) {
  AxisSet s{};
  pipeline::for_each_pipeline([&](auto id) {
    if (id.value == p) s = pipeline::Declared<decltype(id)::value>::reads;
  });
  return s;
}

}  // namespace atom::policy
