// Non-owning views of contiguous row-major tensors, and the shape checks every op runs at its
// boundary. A view does not know where its memory lives; the backend an op runs on does.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

#include "atom/numeric/host_device.hpp"

namespace atom {

using index_t = std::int64_t;

template <class T, int Rank>
struct View {
  static_assert(Rank >= 1 && Rank <= 4);
  using value_type = T;
  static constexpr int rank = Rank;

  T* data = nullptr;
  std::array<index_t, Rank> shape{};
  std::array<index_t, Rank> strides{};  // in elements; make_view() fills row-major strides

  ATOM_HD constexpr index_t size(int d) const { return shape[d]; }
  ATOM_HD constexpr index_t stride(int d) const { return strides[d]; }
  ATOM_HD constexpr index_t numel() const {
    index_t n = 1;
    for (int d = 0; d < Rank; ++d) n *= shape[d];
    return n;
  }
  ATOM_HD constexpr bool contiguous() const {
    index_t s = 1;
    for (int d = Rank - 1; d >= 0; --d) {
      if (shape[d] != 1 && strides[d] != s) return false;
      s *= shape[d];
    }
    return true;
  }
  template <class... I>
  ATOM_HD constexpr T& operator()(I... idx) const {
    static_assert(sizeof...(I) == Rank, "index count must equal the rank");
    const index_t ix[] = {static_cast<index_t>(idx)...};
    index_t off = 0;
    for (int d = 0; d < Rank; ++d) off += ix[d] * strides[d];
    return data[off];
  }
  // The sub-view at index i of the first dimension.
  ATOM_HD constexpr auto operator[](index_t i) const requires(Rank > 1) {
    View<T, Rank - 1> v;
    v.data = data + i * strides[0];
    for (int d = 1; d < Rank; ++d) {
      v.shape[d - 1] = shape[d];
      v.strides[d - 1] = strides[d];
    }
    return v;
  }
  // Elements [begin, begin + count) of dimension d, same memory.
  constexpr View slice(int d, index_t begin, index_t count) const {
    View v = *this;
    v.data = data + begin * strides[d];
    v.shape[d] = count;
    return v;
  }
  // The same memory seen as read-only. A template, so that View<const T> declares no conversion to
  // itself (which nvcc warns about).
  template <class U, class = std::enable_if_t<std::is_same_v<U, const T> && !std::is_const_v<T>>>
  constexpr operator View<U, Rank>() const {
    return {data, shape, strides};
  }
};

// A row-major view of `data` with the given shape.
template <class T, class... Extent>
constexpr View<T, static_cast<int>(sizeof...(Extent))> make_view(T* data, Extent... extent) {
  View<T, static_cast<int>(sizeof...(Extent))> v;
  v.data = data;
  v.shape = {static_cast<index_t>(extent)...};
  index_t s = 1;
  for (int d = v.rank - 1; d >= 0; --d) {
    v.strides[d] = s;
    s *= v.shape[d];
  }
  return v;
}

template <class T>
using View1 = View<T, 1>;
template <class T>
using View2 = View<T, 2>;
template <class T>
using View3 = View<T, 3>;
template <class T>
using View4 = View<T, 4>;

// Thrown by every op when an argument's shape does not fit; the message names the op, the
// argument, the shape it got and the shape it expected.
class ShapeError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

template <class T, int R>
std::string shape_text(const View<T, R>& v) {
  std::string s = "[";
  for (int d = 0; d < R; ++d) s += (d ? ", " : "") + std::to_string(v.shape[d]);
  return s + "]";
}

// Checks `v` has exactly `expected` as its shape (-1 in `expected` accepts any extent) and a
// non-null data pointer when it holds elements.
template <class T, int R>
void expect_shape(std::string_view op, std::string_view arg, const View<T, R>& v,
                  const std::array<index_t, R>& expected) {
  bool ok = true;
  for (int d = 0; d < R; ++d) ok = ok && (expected[d] < 0 || v.shape[d] == expected[d]);
  if (ok && v.numel() > 0 && v.data == nullptr)
    throw ShapeError(std::string(op) + ": argument '" + std::string(arg) + "' is null");
  if (ok) return;
  std::string want = "[";
  for (int d = 0; d < R; ++d)
    want += (d ? ", " : "") + (expected[d] < 0 ? std::string("*") : std::to_string(expected[d]));
  want += "]";
  throw ShapeError(std::string(op) + ": argument '" + std::string(arg) + "' has shape " +
                   shape_text(v) + ", expected " + want);
}

// Fails with a message naming the op when a condition on its arguments does not hold.
inline void expect(bool condition, std::string_view op, const std::string& what) {
  if (!condition) throw ShapeError(std::string(op) + ": " + what);
}

}  // namespace atom
