// Test support for the GPU GEMM and BMM tests: seeded random operands (never zero), device
// copies, and the backends as types.
#pragma once

#include <catch2/catch.hpp>

#include <cstdint>
#include <random>
#include <vector>

#include "atom/gpu/device.hpp"
#include "atom/numeric/numeric.hpp"
#include "atom/ops/formats.hpp"

namespace gpu_gemm_test {

using atom::bf16;
using atom::e8m0;
using atom::index_t;

inline std::mt19937& rng() {
  static std::mt19937 engine(Catch::rngSeed() + 6u);
  return engine;
}

// Random e2m1 code bytes, at least one nonzero code in every byte.
inline std::vector<std::uint8_t> random_codes(index_t n) {
  std::uniform_int_distribution<int> byte(1, 255);
  std::vector<std::uint8_t> v(static_cast<std::size_t>(n));
  for (auto& b : v) b = static_cast<std::uint8_t>(byte(rng()));
  return v;
}

// e8m0 scales 2^-4 .. 2^4.
inline std::vector<e8m0> random_scales(index_t n) {
  std::uniform_int_distribution<int> code(123, 131);
  std::vector<e8m0> v(static_cast<std::size_t>(n));
  for (auto& s : v) s = e8m0{static_cast<std::uint8_t>(code(rng()))};
  return v;
}

// An MXFP4 matrix [rows, cols] in host memory.
struct Mxfp4Host {
  index_t rows = 0;
  index_t cols = 0;
  std::vector<std::uint8_t> packed;
  std::vector<e8m0> scale;

  static Mxfp4Host random(index_t rows, index_t cols) {
    Mxfp4Host m{rows, cols, random_codes(rows * atom::ops::mxfp4_packed_cols(cols)),
                random_scales(rows * atom::ops::mxfp4_scale_cols(cols))};
    return m;
  }
  index_t packed_cols() const { return atom::ops::mxfp4_packed_cols(cols); }
  index_t scale_cols() const { return atom::ops::mxfp4_scale_cols(cols); }
  atom::ops::Mxfp4Act act() {
    return {atom::make_view(packed.data(), rows, packed_cols()),
            atom::make_view(scale.data(), rows, scale_cols()), cols};
  }
  atom::ops::Mxfp4Weight weight() {
    return {atom::make_view(packed.data(), rows, packed_cols()),
            atom::make_view(scale.data(), rows, scale_cols()), cols};
  }
  // The same rows with every code's sign cleared: |a| for the error bound.
  Mxfp4Host magnitude() const {
    Mxfp4Host m = *this;
    for (auto& b : m.packed) b = static_cast<std::uint8_t>(b & 0x77u);
    return m;
  }
  Mxfp4Host select_rows(const std::vector<index_t>& which) const {
    Mxfp4Host m{static_cast<index_t>(which.size()), cols, {}, {}};
    for (index_t r : which) {
      const auto p0 = packed.begin() + r * packed_cols();
      m.packed.insert(m.packed.end(), p0, p0 + packed_cols());
      const auto s0 = scale.begin() + r * scale_cols();
      m.scale.insert(m.scale.end(), s0, s0 + scale_cols());
    }
    return m;
  }
};

// An Mxfp4Host copied to the device.
struct Mxfp4Device {
  index_t rows;
  index_t cols;
  atom::gpu::Buffer<std::uint8_t> packed;
  atom::gpu::Buffer<e8m0> scale;
  explicit Mxfp4Device(const Mxfp4Host& h)
      : rows(h.rows), cols(h.cols), packed(h.packed), scale(h.scale) {}
  atom::ops::Mxfp4Act act() const {
    return {atom::make_view(packed.data(), rows, atom::ops::mxfp4_packed_cols(cols)),
            atom::make_view(scale.data(), rows, atom::ops::mxfp4_scale_cols(cols)), cols};
  }
};

inline bool have_gpu() {
  return atom::gpu::device_count() > 0;
}

}  // namespace gpu_gemm_test
