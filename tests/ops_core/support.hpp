// Test support: seeded random inputs, owning buffers for the op formats, poisoned outputs,
// float64 reference quantizers written independently of the library's numeric code, and
// tolerance checks that never let NaN pass.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "atom/ops/formats.hpp"

namespace ops_test {

using atom::bf16;
using atom::e8m0;
using atom::fp8_e4m3;
using atom::index_t;

inline std::mt19937& rng() {
  static std::mt19937 engine(Catch::rngSeed() + 20261126u);
  return engine;
}

// Uniform in +-[lo, hi): never zero.
inline float random_nonzero(float lo, float hi) {
  std::uniform_real_distribution<float> magnitude(lo, hi);
  std::bernoulli_distribution negative(0.5);
  const float m = magnitude(rng());
  return negative(rng()) ? -m : m;
}

inline std::vector<bf16> random_bf16(index_t n, float lo = 0.01f, float hi = 2.0f) {
  std::vector<bf16> v(static_cast<std::size_t>(n));
  for (bf16& x : v) x = atom::to_bf16(random_nonzero(lo, hi));
  return v;
}

inline std::vector<float> random_floats(index_t n, float lo = 0.01f, float hi = 2.0f) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = random_nonzero(lo, hi);
  return v;
}

inline double value(bf16 x) {
  return static_cast<double>(atom::to_float(x));
}

inline constexpr bf16 bf16_poison{0x7fc0};
inline const float float_poison = std::nanf("");

// ---- float64 references for the formats (independent of atom/numeric) ----

inline double e2m1_magnitude(int code) {
  static const double table[8] = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0};
  return table[code & 7];
}
inline double e2m1_value(int code) {
  return (code & 8) ? -e2m1_magnitude(code) : e2m1_magnitude(code);
}

// Nearest e2m1 code to v (already divided by the block scale), ties to the even code, saturating.
inline int ref_e2m1(double v) {
  const double a = std::fabs(v);
  int best = 0;
  for (int c = 1; c < 8; ++c) {
    const double d = std::fabs(e2m1_magnitude(c) - a);
    const double db = std::fabs(e2m1_magnitude(best) - a);
    if (d < db || (d == db && c % 2 == 0)) best = c;
  }
  return best | (std::signbit(v) ? 8 : 0);
}

// The e8m0 code of a block whose largest magnitude is amax > 0: floor(log2(amax)) - 2 + 127.
inline int ref_mx_scale_code(double amax) {
  int exponent = 0;
  std::frexp(amax, &exponent);  // amax = f * 2^exponent, f in [0.5, 1)
  return std::max(exponent - 1 - 2, -127) + 127;
}
inline double e8m0_value(int code) {
  return std::ldexp(1.0, code - 127);
}

inline double fp8_magnitude(int code) {
  const int e = (code >> 3) & 15;
  const int m = code & 7;
  return e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, e - 10);
}
inline double fp8_value(fp8_e4m3 q) {
  return (q.bits & 0x80) ? -fp8_magnitude(q.bits & 0x7f) : fp8_magnitude(q.bits & 0x7f);
}
// Nearest e4m3fn code, ties to the even code, saturating at 448 (code 0x7e).
inline int ref_fp8(double v) {
  const double a = std::fabs(v);
  int best = 0;
  for (int c = 1; c <= 0x7e; ++c) {
    const double d = std::fabs(fp8_magnitude(c) - a);
    const double db = std::fabs(fp8_magnitude(best) - a);
    if (d < db || (d == db && c % 2 == 0)) best = c;
  }
  return best | (std::signbit(v) ? 0x80 : 0);
}

// ---- owning buffers ----

struct Bf16Buffer {
  index_t rows, cols;
  std::vector<bf16> data;
  Bf16Buffer(index_t r, index_t c)
      : rows(r), cols(c), data(static_cast<std::size_t>(r * c), bf16_poison) {}
  atom::View2<bf16> view() { return atom::make_view(data.data(), rows, cols); }
  atom::ops::Bf16Act act() { return {view()}; }
  double at(index_t r, index_t c) const {
    return value(data[static_cast<std::size_t>(r * cols + c)]);
  }
};

struct Mxfp4Buffer {
  index_t rows, cols;
  std::vector<std::uint8_t> packed;
  std::vector<e8m0> scale;
  Mxfp4Buffer(index_t r, index_t c)
      : rows(r),
        cols(c),
        packed(static_cast<std::size_t>(r * atom::ops::mxfp4_packed_cols(c)), 0xff),
        scale(static_cast<std::size_t>(r * atom::ops::mxfp4_scale_cols(c)), e8m0{0xff}) {}
  atom::ops::Mxfp4Act act() {
    return {atom::make_view(packed.data(), rows, atom::ops::mxfp4_packed_cols(cols)),
            atom::make_view(scale.data(), rows, atom::ops::mxfp4_scale_cols(cols)), cols};
  }
  int code(index_t r, index_t c) const {
    const std::uint8_t byte =
        packed[static_cast<std::size_t>(r * atom::ops::mxfp4_packed_cols(cols) + c / 2)];
    return (c % 2) ? byte >> 4 : byte & 0xf;
  }
  int scale_code(index_t r, index_t c) const {
    return scale[static_cast<std::size_t>(r * atom::ops::mxfp4_scale_cols(cols) + c / 32)].bits;
  }
  double at(index_t r, index_t c) const {
    return e2m1_value(code(r, c)) * e8m0_value(scale_code(r, c));
  }
  // Random codes and scales (codes 120..131: values around 1).
  void randomize() {
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_int_distribution<int> exponent(120, 131);
    for (auto& b : packed) b = static_cast<std::uint8_t>(byte(rng()));
    for (auto& s : scale) s = e8m0{static_cast<std::uint8_t>(exponent(rng()))};
  }
};

struct Fp8TokenBuffer {
  index_t rows, cols;
  std::vector<fp8_e4m3> q;
  std::vector<float> scale;
  Fp8TokenBuffer(index_t r, index_t c)
      : rows(r),
        cols(c),
        q(static_cast<std::size_t>(r * c), fp8_e4m3{0xff}),
        scale(static_cast<std::size_t>(r), float_poison) {}
  atom::ops::Fp8TokenAct act() {
    return {atom::make_view(q.data(), rows, cols), atom::make_view(scale.data(), rows)};
  }
  double at(index_t r, index_t c) const {
    return fp8_value(q[static_cast<std::size_t>(r * cols + c)]) *
           scale[static_cast<std::size_t>(r)];
  }
};

struct Fp8GroupBuffer {
  index_t rows, cols, groups;
  std::vector<fp8_e4m3> q;
  std::vector<float> scale;
  Fp8GroupBuffer(index_t r, index_t c)
      : rows(r),
        cols(c),
        groups(atom::ops::fp8_group_cols(c)),
        q(static_cast<std::size_t>(r * c), fp8_e4m3{0xff}),
        scale(static_cast<std::size_t>(r * groups), float_poison) {}
  atom::ops::Fp8GroupAct act() {
    return {atom::make_view(q.data(), rows, cols), atom::make_view(scale.data(), rows, groups)};
  }
  float group_scale(index_t r, index_t c) const {
    return scale[static_cast<std::size_t>(r * groups + c / 128)];
  }
  double at(index_t r, index_t c) const {
    return fp8_value(q[static_cast<std::size_t>(r * cols + c)]) * group_scale(r, c);
  }
  // Random finite codes (no NaN) and scales.
  void randomize() {
    std::uniform_int_distribution<int> byte(0, 255);
    for (auto& x : q) {
      int b = byte(rng());
      while ((b & 0x7f) == 0x7f) b = byte(rng());
      x = fp8_e4m3{static_cast<std::uint8_t>(b)};
    }
    for (auto& s : scale) s = random_nonzero(0.001f, 0.01f);
  }
};

// ---- checks ----

// Counts elements with |got - want| > tol(i) (NaN always counts) and reports the first.
inline void check_close(const std::string& what, index_t n,
                        const std::function<double(index_t)>& got,
                        const std::function<double(index_t)>& want,
                        const std::function<double(index_t)>& tol) {
  index_t bad = 0;
  std::string first;
  for (index_t i = 0; i < n; ++i) {
    const double g = got(i), w = want(i), t = tol(i);
    if (!(std::fabs(g - w) <= t)) {
      if (bad++ == 0)
        first = "element " + std::to_string(i) + ": got " + std::to_string(g) + ", want " +
                std::to_string(w) + ", tolerance " + std::to_string(t);
    }
  }
  INFO(what << ": " << bad << " of " << n << " out of tolerance; first " << first);
  CHECK(bad == 0);
}

// bf16 output tolerance: the output rounding (half an ulp, 2^-9 relative) with margin, plus
// `slack` for float accumulation.
inline double bf16_tol(double want, double slack) {
  return std::fabs(want) * 0x1p-8 + slack;
}

// Runs fn, requiring a ShapeError whose message holds every fragment.
inline void require_shape_error(const std::function<void()>& fn,
                                const std::vector<std::string>& fragments) {
  try {
    fn();
  } catch (const atom::ShapeError& e) {
    const std::string message = e.what();
    INFO("message: " << message);
    for (const auto& f : fragments) CHECK(message.find(f) != std::string::npos);
    return;
  }
  FAIL("no ShapeError thrown; expected one naming " << fragments.front());
}

}  // namespace ops_test

namespace ops_test {

// Fused producer + MXFP4 epilogue (quantizes the float result) against the separate chain
// (rounds to bf16, then quantizes). The bf16 rounding moves a value by at most 2^-9 of itself,
// so (a) a block's scale differs only where its amax crossed a power of two, and (b) with equal
// scales an element's code differs only where the value sat within 2^-9 of a rounding midpoint of
// the e2m1 grid, and then by exactly one grid step. For values spread over the grid those windows
// cover about 1% of the range (2 * 2^-9 * the sum of the 7 midpoints / 6), so we bound the
// fraction of differing elements by 3% and of differing scales by 3% (plus one, for tiny sizes).
inline void check_fused_mxfp4(const Mxfp4Buffer& fused, const Mxfp4Buffer& separate) {
  const auto step = [](double m) { return m <= 2.0 ? 0.5 : (m <= 4.0 ? 1.0 : 2.0); };
  index_t blocks = 0, scale_diff = 0, elements = 0, code_diff = 0, far = 0;
  for (index_t r = 0; r < fused.rows; ++r)
    for (index_t b = 0; b * 32 < fused.cols; ++b) {
      ++blocks;
      const index_t end = std::min(fused.cols, (b + 1) * 32);
      if (fused.scale_code(r, b * 32) != separate.scale_code(r, b * 32)) {
        ++scale_diff;
        continue;
      }
      for (index_t c = b * 32; c < end; ++c) {
        ++elements;
        const int a = fused.code(r, c), s = separate.code(r, c);
        if (a == s) continue;
        ++code_diff;
        const double va = e2m1_value(a), vs = e2m1_value(s);
        if (!(std::fabs(va - vs) <= step(std::max(std::fabs(va), std::fabs(vs))))) ++far;
      }
    }
  INFO("blocks " << blocks << ", scales differing " << scale_diff << "; elements " << elements
                 << ", codes differing " << code_diff << ", by more than one step " << far);
  CHECK(far == 0);
  CHECK(static_cast<double>(scale_diff) <= 1.0 + 0.03 * static_cast<double>(blocks));
  CHECK(static_cast<double>(code_diff) <= 1.0 + 0.03 * static_cast<double>(elements));
}

}  // namespace ops_test
