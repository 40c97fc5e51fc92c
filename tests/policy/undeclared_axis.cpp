// Compiled twice by the tests: a pipeline template that branches on an axis it declares (must
// compile) and, under ATOM_TEST_UNDECLARED_AXIS, on one it does not declare (must not): forgetting
// a declaration is a compile error, not an axis silently ignored.
#include "atom/policy/point.hpp"

namespace {

using namespace atom::policy;

constexpr AxisSet reads = axes_read<GemmBackend, MoeStreams>;

template <PointFor<reads> P>
int run() {
#if ATOM_TEST_UNDECLARED_AXIS
  if constexpr (P.get<QkNorm>() == QkNorm::fused) return 2;
#endif
  if constexpr (P.get<GemmBackend>() == GemmBackend::portable) return 1;
  return 0;
}

// Unread axes fold: the point converts to its canonical representative.
static_assert(PointFor<reads>(make_point({QkNorm::fused, MoeStreams::dual})).point ==
              make_point({MoeStreams::dual}));

}  // namespace

int main() {
  return run<make_point({GemmBackend::portable})>() == 1 ? 0 : 1;
}
