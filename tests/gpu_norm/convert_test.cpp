// The quantizers' fast conversions against the reference conversions over every float bit
// pattern (on the device, where the reference is bit-exact with the host), and the one-step
// corrected quotient over every dividend for scales across the fast range.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "convert_probe.hpp"
#include "gpu_support.hpp"

using namespace gpu_test;

namespace {

void require_none(const char* what, const Mismatches& m) {
  INFO(what << ": " << m.count << " mismatches, e.g. input bits 0x" << std::hex << m.example
            << " with scale bits 0x" << m.example_scale);
  REQUIRE(m.count == 0);
}

}  // namespace

TEST_CASE("fast FP8 e4m3fn codes equal to_fp8 for every float") {
  require_gpu();
  require_none("fp8x2", fp8_code_mismatches());
}

TEST_CASE("fast e2m1 codes equal to_e2m1 for every float") {
  require_gpu();
  require_none("e2m1_code", e2m1_code_mismatches());
}

TEST_CASE("corrected quotients give the FP8 codes of the IEEE quotient") {
  require_gpu();
  // The ends of the fast range, significands of all ones and of a single low bit, 1 / 448, and
  // amax / 448 for random amax across the range.
  std::vector<float> scales = {0x1p-64f,        0x1p64f,       1.0f,
                               0x1.fffffep-1f,  0x1.000002p0f, 0x1.fffffep63f,
                               0x1.000002p-64f, 1.0f / 448.0f, 3.0f / 448.0f};
  Rng rng(40);
  for (int i = 0; i < 23; ++i) {
    const float amax =
        std::ldexp(std::fabs(rng.nonzero(1.0f, 2.0f)), static_cast<int>(rng.next() % 120) - 55);
    scales.push_back(amax / 448.0f);
  }
  require_none("Fp8Divisor::quotient", fp8_quotient_mismatches(scales));
}
