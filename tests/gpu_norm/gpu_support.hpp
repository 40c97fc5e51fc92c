// Support for the GPU kernel tests: fast seeded random inputs, device copies, and comparisons of
// GPU outputs with the host op's outputs that say how many elements differ and by how much.
#pragma once

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "atom/gpu/device.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/formats.hpp"

namespace gpu_test {

using atom::bf16;
using atom::e8m0;
using atom::fp8_e4m3;
using atom::index_t;
namespace gpu = atom::gpu;

// splitmix64: millions of values per test must be cheap to draw.
class Rng {
 public:
  explicit Rng(std::uint64_t salt) : state_(Catch::rngSeed() * 0x9e3779b97f4a7c15ull + salt) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in +-[lo, hi): never zero.
  float nonzero(float lo, float hi) {
    const std::uint64_t r = next();
    const float u = static_cast<float>(r >> 40) * 0x1p-24f;
    const float m = lo + (hi - lo) * u;
    return (r & 1) ? -m : m;
  }
  std::vector<bf16> bf16s(index_t n, float lo = 0.01f, float hi = 2.0f) {
    std::vector<bf16> v(static_cast<std::size_t>(n));
    for (bf16& x : v) x = atom::to_bf16(nonzero(lo, hi));
    return v;
  }

 private:
  std::uint64_t state_;
};

inline void require_gpu() {
  INFO("these tests need a GPU of the built backend (" << gpu::backend_name() << ")");
  REQUIRE(gpu::device_count() > 0);
}

template <class T>
std::vector<T> poisoned(std::size_t n) {
  std::vector<T> v(n);
  std::memset(static_cast<void*>(v.data()), 0xff, n * sizeof(T));
  return v;
}

// A device buffer poisoned with 0xFF bytes.
template <class T>
struct Poisoned : gpu::Buffer<T> {
  explicit Poisoned(std::size_t n) : gpu::Buffer<T>(n) { this->fill(0xff); }
};

// Sign-magnitude codes as integers that step by one between neighbouring values.
inline int ordered(std::uint32_t bits, int magnitude_bits) {
  const auto magnitude = static_cast<int>(bits & ((1u << magnitude_bits) - 1u));
  return (bits >> magnitude_bits) & 1u ? -magnitude : magnitude;
}

inline bool is_nan(bf16 x) {
  return (x.bits & 0x7fff) > 0x7f80;
}
inline bool is_nan(fp8_e4m3 x) {
  return (x.bits & 0x7f) == 0x7f;
}

// Differences found by a comparison; `steps` counts elements off by one rounding step.
struct Diff {
  index_t compared = 0;
  index_t steps = 0;
  double fraction() const {
    return compared ? static_cast<double>(steps) / static_cast<double>(compared) : 0.0;
  }
};

// bf16 values equal, or (max_steps 1) neighbours; NaN must meet NaN.
inline Diff compare_bf16(const std::string& what, const std::vector<bf16>& got,
                         const std::vector<bf16>& want, int max_steps) {
  REQUIRE(got.size() == want.size());
  Diff d;
  for (std::size_t i = 0; i < got.size(); ++i) {
    ++d.compared;
    if (is_nan(want[i]) || is_nan(got[i])) {
      if (is_nan(want[i]) && is_nan(got[i])) continue;
      FAIL(what << "[" << i << "]: got bits " << got[i].bits << ", want " << want[i].bits);
    }
    const int delta = std::abs(ordered(got[i].bits, 15) - ordered(want[i].bits, 15));
    if (delta == 0) continue;
    if (delta > max_steps)
      FAIL(what << "[" << i << "]: got bits " << got[i].bits << ", want " << want[i].bits);
    ++d.steps;
  }
  return d;
}

inline Diff compare_fp8(const std::string& what, const std::vector<fp8_e4m3>& got,
                        const std::vector<fp8_e4m3>& want, int max_steps) {
  REQUIRE(got.size() == want.size());
  Diff d;
  for (std::size_t i = 0; i < got.size(); ++i) {
    ++d.compared;
    if (is_nan(want[i]) || is_nan(got[i])) {
      if (is_nan(want[i]) && is_nan(got[i])) continue;
      FAIL(what << "[" << i << "]: got code " << int{got[i].bits} << ", want "
                << int{want[i].bits});
    }
    const int delta = std::abs(ordered(got[i].bits, 7) - ordered(want[i].bits, 7));
    if (delta == 0) continue;
    if (delta > max_steps)
      FAIL(what << "[" << i << "]: got code " << int{got[i].bits} << ", want "
                << int{want[i].bits});
    ++d.steps;
  }
  return d;
}

// Float scales within a relative tolerance; NaN must meet NaN (payloads may differ).
inline Diff compare_scales(const std::string& what, const std::vector<float>& got,
                           const std::vector<float>& want, double rel_tol) {
  REQUIRE(got.size() == want.size());
  Diff d;
  for (std::size_t i = 0; i < got.size(); ++i) {
    ++d.compared;
    if (std::isnan(want[i]) || std::isnan(got[i])) {
      if (std::isnan(want[i]) && std::isnan(got[i])) continue;
      FAIL(what << "[" << i << "]: got " << got[i] << ", want " << want[i]);
    }
    if (got[i] == want[i]) continue;
    if (!(std::fabs(static_cast<double>(got[i]) - want[i]) <= rel_tol * std::fabs(want[i])))
      FAIL(what << "[" << i << "]: got " << got[i] << ", want " << want[i]
                << " (relative tolerance " << rel_tol << ")");
    ++d.steps;
  }
  return d;
}

// MXFP4 rows: scales equal or (tolerant) one apart; where equal, each e2m1 code within max_steps;
// where a scale moved (the block's amax sat on a power of two), each value within one e2m1 step
// of the larger scale. `steps` counts differing codes and moved scales.
inline Diff compare_mxfp4(const std::string& what, const std::vector<std::uint8_t>& got_packed,
                          const std::vector<std::uint8_t>& want_packed,
                          const std::vector<e8m0>& got_scale, const std::vector<e8m0>& want_scale,
                          index_t rows, index_t cols, int max_steps) {
  const index_t packed_cols = atom::ops::mxfp4_packed_cols(cols);
  const index_t scale_cols = atom::ops::mxfp4_scale_cols(cols);
  Diff d;
  for (index_t r = 0; r < rows; ++r) {
    for (index_t b = 0; b < scale_cols; ++b) {
      const e8m0 gs = got_scale[static_cast<std::size_t>(r * scale_cols + b)];
      const e8m0 ws = want_scale[static_cast<std::size_t>(r * scale_cols + b)];
      const int scale_delta = std::abs(int{gs.bits} - int{ws.bits});
      const bool nan_scale = ws.bits == atom::e8m0_nan_code || gs.bits == atom::e8m0_nan_code;
      if (scale_delta > (max_steps > 0 && !nan_scale ? 1 : 0))
        FAIL(what << " scale [" << r << ", " << b << "]: got " << int{gs.bits} << ", want "
                  << int{ws.bits});
      if (scale_delta != 0) ++d.steps;
      for (index_t i = b * atom::mx_block; i < std::min(cols, (b + 1) * atom::mx_block); ++i) {
        ++d.compared;
        const std::uint8_t* gp = &got_packed[static_cast<std::size_t>(r * packed_cols)];
        const std::uint8_t* wp = &want_packed[static_cast<std::size_t>(r * packed_cols)];
        const auto gc = static_cast<std::uint8_t>((i & 1) ? gp[i / 2] >> 4 : gp[i / 2] & 0xf);
        const auto wc = static_cast<std::uint8_t>((i & 1) ? wp[i / 2] >> 4 : wp[i / 2] & 0xf);
        if (scale_delta == 0) {
          const int delta = std::abs(ordered(gc, 3) - ordered(wc, 3));
          if (delta > max_steps)
            FAIL(what << " [" << r << ", " << i << "]: got code " << int{gc} << ", want "
                      << int{wc});
          if (delta != 0) ++d.steps;
        } else {
          const double gv = atom::mxfp4_value(gp, i, gs);
          const double wv = atom::mxfp4_value(wp, i, ws);
          const double larger = std::max(atom::to_float(gs), atom::to_float(ws));
          if (!(std::fabs(gv - wv) <= 2.0 * larger))
            FAIL(what << " [" << r << ", " << i << "]: got " << gv << ", want " << wv);
        }
      }
      // The padding nibble of an odd last block is 0 on both sides.
      if (cols % 2 == 1 && b == scale_cols - 1) {
        const auto gb = got_packed[static_cast<std::size_t>(r * packed_cols + packed_cols - 1)];
        const auto wb = want_packed[static_cast<std::size_t>(r * packed_cols + packed_cols - 1)];
        REQUIRE((gb >> 4) == (wb >> 4));
      }
    }
  }
  return d;
}

}  // namespace gpu_test
