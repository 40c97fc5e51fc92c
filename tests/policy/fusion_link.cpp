// Compiled twice by the tests: with the matching producer (must compile) and, under
// ATOM_TEST_MISMATCHED_FUSION, with an FP8 producer wired to the MXFP4 GEMM (must not).
#include <type_traits>

#include "atom/pipeline/link.hpp"

#if ATOM_TEST_MISMATCHED_FUSION
using Producer = atom::ops::epi::Fp8PerToken;
#else
using Producer = atom::ops::epi::Mxfp4;
#endif

using Wired =
    atom::pipeline::link<Producer, atom::pipeline::gemm_input<atom::policy::WeightFormat::mxfp4>>;

int main() {
  return std::is_same_v<Wired, Producer> ? 0 : 1;
}
