// One rank of a test TP group on its own GPU (device = rank). The parent test spawns one per rank
// and checks exit codes and output. Every rank draws every rank's inputs from the same seed, so
// each can compute the all-reduce's exact result on the host.
//
//   tp_worker check  --rank R --size N --port P --seed S --timeout-ms T
//   tp_worker repeat --rank R --size N --port P --seed S --timeout-ms T --calls C
//   tp_worker die    --rank R --size N --port P --seed S --timeout-ms T --victim V --die-at K
//                    --path fused|separate
//
// check: hidden 7168 and 2048, T = 1, 7, 64, 1024, 8192, every epilogue. NCCL's sum equals the
// host's float sum in rank order, rounded once, bit for bit at TP 2 (one addition in any order);
// at larger sizes NCCL adds in its own order and may round partial sums to bf16, so it is held to
// size * 2^-8 * sum_q |x_q|. The fused path sums in float in rank order and rounds once at every
// size, so it writes the host's residual bit for bit; the separate path writes the residual of
// NCCL's sum. Each path's output is checked against the host norm of its own residual within the
// GPU norm's bounds (atom/ops/gpu/norm.hpp: bf16 one ulp, FP8 / e2m1 codes one step, FP8 scales
// (cols + 64) * 2^-24 relative, e8m0 scales one code and then values within two units of the larger
// scale, at most 1% of elements off at all); outputs are poisoned differently (0xFF, 0x00) before
// each call, so every byte was written. The two paths need not agree bit for bit: the standalone
// norm picks its thread shape per size, which orders the sum of squares differently from the fused
// kernel's. Prints "digest <hidden> <T> <epilogue> <hash>" of the fused output for the parent to
// compare across ranks. repeat: C fused calls cycling over shapes and input sets, then graph
// replays mixed with eager calls of both paths, each output equal bit for bit to the first call of
// the same path on the same inputs. die: the victim kills itself (SIGKILL) before call K; the
// others must fail with TpError.
//
// Exit codes: 0 ok, 1 a wrong result, 3 TpError, 5 any other error.
#include <signal.h>

#include <algorithm>
#include <atom/dist/tp.hpp>
#include <atom/gpu/device.hpp>
#include <atom/ops/gpu/norm.hpp>
#include <atom/ops/norm.hpp>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

namespace ops = atom::ops;
namespace epi = atom::ops::epi;
namespace gpu = atom::gpu;
using atom::bf16;
using atom::index_t;
using atom::make_view;
using atom::dist::TpError;
using atom::dist::TpGroup;
using atom::dist::TpPath;

constexpr float eps = 1e-6f;

struct WrongResult : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Values in +-[lo, hi), never zero, from a stream named by `salt`.
std::vector<bf16> random_bf16(std::uint64_t salt, index_t n, float lo, float hi) {
  std::vector<bf16> v(static_cast<std::size_t>(n));
  std::uint64_t state = mix(salt);
  for (bf16& x : v) {
    const std::uint64_t r = mix(state++);
    const float u = static_cast<float>(r >> 40) * 0x1p-24f;
    const float m = lo + (hi - lo) * u;
    x = atom::to_bf16((r & 1) ? -m : m);
  }
  return v;
}

std::uint64_t salt_of(std::uint64_t seed, std::uint64_t what, index_t rows, index_t cols,
                      std::uint64_t set) {
  return mix(seed ^ mix(what ^ mix(static_cast<std::uint64_t>(rows) * 131 +
                                   static_cast<std::uint64_t>(cols) * 7 + set * 1000003)));
}

// One output format as raw blobs (device and host), and the format struct over them.
struct Blob {
  std::size_t bytes;
  std::unique_ptr<gpu::Buffer<std::uint8_t>> device;
  std::vector<std::uint8_t> host;
  explicit Blob(std::size_t n)
      : bytes(n), device(std::make_unique<gpu::Buffer<std::uint8_t>>(n)), host(n, 0xff) {}
};

template <class Epi>
struct Out;

template <>
struct Out<epi::Bf16> {
  static constexpr const char* name = "bf16";
  index_t rows, cols;
  std::vector<Blob> blobs;
  Out(index_t r, index_t c) : rows(r), cols(c) { blobs.emplace_back(std::size_t(r * c) * 2); }
  ops::Bf16Act act(bool dev) {
    return {make_view(reinterpret_cast<bf16*>(ptr(0, dev)), rows, cols)};
  }
  std::uint8_t* ptr(std::size_t i, bool dev) {
    return dev ? blobs[i].device->data() : blobs[i].host.data();
  }
};

template <>
struct Out<epi::Fp8PerToken> {
  static constexpr const char* name = "fp8-token";
  index_t rows, cols;
  std::vector<Blob> blobs;
  Out(index_t r, index_t c) : rows(r), cols(c) {
    blobs.emplace_back(std::size_t(r * c));
    blobs.emplace_back(std::size_t(r) * 4);
  }
  std::uint8_t* ptr(std::size_t i, bool dev) {
    return dev ? blobs[i].device->data() : blobs[i].host.data();
  }
  ops::Fp8TokenAct act(bool dev) {
    return {make_view(reinterpret_cast<atom::fp8_e4m3*>(ptr(0, dev)), rows, cols),
            make_view(reinterpret_cast<float*>(ptr(1, dev)), rows)};
  }
};

template <>
struct Out<epi::Fp8PerGroup128> {
  static constexpr const char* name = "fp8-group128";
  index_t rows, cols;
  std::vector<Blob> blobs;
  Out(index_t r, index_t c) : rows(r), cols(c) {
    blobs.emplace_back(std::size_t(r * c));
    blobs.emplace_back(std::size_t(r * ops::fp8_group_cols(c)) * 4);
  }
  std::uint8_t* ptr(std::size_t i, bool dev) {
    return dev ? blobs[i].device->data() : blobs[i].host.data();
  }
  ops::Fp8GroupAct act(bool dev) {
    return {make_view(reinterpret_cast<atom::fp8_e4m3*>(ptr(0, dev)), rows, cols),
            make_view(reinterpret_cast<float*>(ptr(1, dev)), rows, ops::fp8_group_cols(cols))};
  }
};

template <>
struct Out<epi::Mxfp4> {
  static constexpr const char* name = "mxfp4";
  index_t rows, cols;
  std::vector<Blob> blobs;
  Out(index_t r, index_t c) : rows(r), cols(c) {
    blobs.emplace_back(std::size_t(r * ops::mxfp4_packed_cols(c)));
    blobs.emplace_back(std::size_t(r * ops::mxfp4_scale_cols(c)));
  }
  std::uint8_t* ptr(std::size_t i, bool dev) {
    return dev ? blobs[i].device->data() : blobs[i].host.data();
  }
  ops::Mxfp4Act act(bool dev) {
    return {
        make_view(ptr(0, dev), rows, ops::mxfp4_packed_cols(cols)),
        make_view(reinterpret_cast<atom::e8m0*>(ptr(1, dev)), rows, ops::mxfp4_scale_cols(cols)),
        cols};
  }
};

template <class Epi>
std::vector<std::vector<std::uint8_t>> download(Out<Epi>& o) {
  std::vector<std::vector<std::uint8_t>> all;
  for (auto& b : o.blobs) all.push_back(b.device->download());
  return all;
}

template <class Epi>
void poison(Out<Epi>& o, int byte) {
  for (auto& b : o.blobs) b.device->fill(byte);
}

// Sign-magnitude codes as integers that step by one between neighbouring values.
int ordered(std::uint32_t bits, int magnitude_bits) {
  const auto magnitude = static_cast<int>(bits & ((1u << magnitude_bits) - 1u));
  return (bits >> magnitude_bits) & 1u ? -magnitude : magnitude;
}

// Counts elements that differ within the bound; throws on one beyond it. `code` gives the
// ordered code of element i of a blob, or nothing for a float blob.
struct Tally {
  std::size_t compared = 0;
  std::size_t off = 0;
};

void check_codes(const std::string& what, const std::vector<std::uint32_t>& got,
                 const std::vector<std::uint32_t>& want, int magnitude_bits, std::uint32_t nan_code,
                 Tally& t) {
  for (std::size_t i = 0; i < got.size(); ++i) {
    ++t.compared;
    const bool gn = nan_code != 0 && (got[i] & nan_code) == nan_code;
    const bool wn = nan_code != 0 && (want[i] & nan_code) == nan_code;
    if (gn || wn) {
      if (gn && wn) continue;
      throw WrongResult(what + "[" + std::to_string(i) + "]: got code " + std::to_string(got[i]) +
                        ", want " + std::to_string(want[i]));
    }
    const int d = std::abs(ordered(got[i], magnitude_bits) - ordered(want[i], magnitude_bits));
    if (d == 0) continue;
    if (d > 1)
      throw WrongResult(what + "[" + std::to_string(i) + "]: got code " + std::to_string(got[i]) +
                        ", want " + std::to_string(want[i]));
    ++t.off;
  }
}

void check_floats(const std::string& what, const std::vector<std::uint8_t>& got_bytes,
                  const std::vector<std::uint8_t>& want_bytes, double rel, Tally& t) {
  const std::size_t n = got_bytes.size() / 4;
  for (std::size_t i = 0; i < n; ++i) {
    float g, w;
    std::memcpy(&g, got_bytes.data() + 4 * i, 4);
    std::memcpy(&w, want_bytes.data() + 4 * i, 4);
    ++t.compared;
    if (std::isnan(g) || std::isnan(w))
      throw WrongResult(what + "[" + std::to_string(i) + "]: got " + std::to_string(g) + ", want " +
                        std::to_string(w));
    if (g == w) continue;
    if (!(std::fabs(static_cast<double>(g) - w) <= rel * std::fabs(w)))
      throw WrongResult(what + "[" + std::to_string(i) + "]: got " + std::to_string(g) + ", want " +
                        std::to_string(w));
    ++t.off;
  }
}

std::vector<std::uint32_t> widen(const std::vector<std::uint8_t>& b, std::size_t width) {
  std::vector<std::uint32_t> v(b.size() / width);
  for (std::size_t i = 0; i < v.size(); ++i) {
    std::uint32_t x = 0;
    std::memcpy(&x, b.data() + i * width, width);
    v[i] = x;
  }
  return v;
}

// Per MX block: equal scales -> codes at most one step apart; scales one code apart (the amax
// sits on a power of two, where the norm's last-bit difference can tip the scale) -> values
// within two of the larger scale's units, as the GPU norm tests bound them.
void check_mxfp4(const std::string& what, const std::vector<std::uint8_t>& gp,
                 const std::vector<std::uint8_t>& wp, const std::vector<std::uint8_t>& gs,
                 const std::vector<std::uint8_t>& ws, index_t rows, index_t cols, Tally& t) {
  const index_t packed_cols = ops::mxfp4_packed_cols(cols);
  const index_t scale_cols = ops::mxfp4_scale_cols(cols);
  for (index_t r = 0; r < rows; ++r) {
    const std::uint8_t* grow = gp.data() + r * packed_cols;
    const std::uint8_t* wrow = wp.data() + r * packed_cols;
    for (index_t b = 0; b < scale_cols; ++b) {
      const atom::e8m0 g{gs[static_cast<std::size_t>(r * scale_cols + b)]};
      const atom::e8m0 w{ws[static_cast<std::size_t>(r * scale_cols + b)]};
      const int scale_delta = std::abs(int{g.bits} - int{w.bits});
      if (scale_delta > 1 || g.bits == atom::e8m0_nan_code || w.bits == atom::e8m0_nan_code)
        throw WrongResult(what + " scale [" + std::to_string(r) + ", " + std::to_string(b) +
                          "]: got " + std::to_string(g.bits) + ", want " + std::to_string(w.bits));
      if (scale_delta != 0) ++t.off;
      for (index_t i = b * atom::mx_block; i < std::min(cols, (b + 1) * atom::mx_block); ++i) {
        ++t.compared;
        const auto gc = static_cast<std::uint32_t>((i & 1) ? grow[i / 2] >> 4 : grow[i / 2] & 15);
        const auto wc = static_cast<std::uint32_t>((i & 1) ? wrow[i / 2] >> 4 : wrow[i / 2] & 15);
        if (scale_delta == 0) {
          const int d = std::abs(ordered(gc, 3) - ordered(wc, 3));
          if (d > 1)
            throw WrongResult(what + " [" + std::to_string(r) + ", " + std::to_string(i) +
                              "]: got code " + std::to_string(gc) + ", want " + std::to_string(wc));
          if (d != 0) ++t.off;
        } else {
          const double gv = atom::mxfp4_value(grow, i, g);
          const double wv = atom::mxfp4_value(wrow, i, w);
          const double unit = std::max(atom::to_float(g), atom::to_float(w));
          if (!(std::fabs(gv - wv) <= 2.0 * unit))
            throw WrongResult(what + " [" + std::to_string(r) + ", " + std::to_string(i) +
                              "]: got " + std::to_string(gv) + ", want " + std::to_string(wv));
        }
      }
    }
  }
}

// GPU output against the host op's, within the bounds in the header comment.
template <class Epi>
void check_against_host(const std::string& what, const std::vector<std::vector<std::uint8_t>>& got,
                        Out<Epi>& host) {
  Tally t;
  if constexpr (std::is_same_v<Epi, epi::Bf16>) {
    check_codes(what, widen(got[0], 2), widen(host.blobs[0].host, 2), 15, 0, t);
    for (auto v : widen(got[0], 2))
      if ((v & 0x7fffu) > 0x7f80u) throw WrongResult(what + ": NaN in the output");
  } else if constexpr (std::is_same_v<Epi, epi::Mxfp4>) {
    check_mxfp4(what, got[0], host.blobs[0].host, got[1], host.blobs[1].host, host.rows, host.cols,
                t);
  } else {
    check_codes(what + " q", widen(got[0], 1), widen(host.blobs[0].host, 1), 7, 0x7f, t);
    check_floats(what + " scale", got[1], host.blobs[1].host,
                 static_cast<double>(host.cols + 64) * 0x1p-24, t);
  }
  if (static_cast<double>(t.off) > 0.01 * static_cast<double>(t.compared))
    throw WrongResult(what + ": " + std::to_string(t.off) + " of " + std::to_string(t.compared) +
                      " elements differ from the host by one step (bound 1%)");
}

bool same_bits(const std::vector<bf16>& a, const std::vector<bf16>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(bf16)) == 0;
}

std::uint64_t digest(const std::vector<std::vector<std::uint8_t>>& blobs) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (const auto& b : blobs)
    for (std::uint8_t x : b) h = (h ^ x) * 0x100000001b3ull;
  return h;
}

struct Options {
  std::string mode;
  std::map<std::string, std::string> kv;
  std::int64_t num(const std::string& k) const { return std::stoll(kv.at(k)); }
  std::int64_t num(const std::string& k, std::int64_t fallback) const {
    return kv.count(k) ? std::stoll(kv.at(k)) : fallback;
  }
};

atom::dist::TpOptions group_options(const Options& o, std::size_t fused_max_bytes) {
  atom::dist::TpOptions t;
  t.rank = o.num("rank");
  t.size = o.num("size");
  t.device = static_cast<int>(t.rank);
  t.port = static_cast<std::uint16_t>(o.num("port"));
  t.timeout = std::chrono::milliseconds(o.num("timeout-ms"));
  t.fused_max_bytes = fused_max_bytes;
  t.max_elements = index_t{8192} * 7168;
  return t;
}

// Every rank's x, the replicated residual and weight of one case.
struct Case {
  index_t rows, cols;
  std::vector<std::vector<bf16>> xs;
  std::vector<bf16> residual, weight, reduced;
  Case(std::uint64_t seed, index_t r, index_t c, std::int64_t size, std::uint64_t set)
      : rows(r), cols(c) {
    for (std::int64_t q = 0; q < size; ++q)
      xs.push_back(random_bf16(salt_of(seed, 100 + static_cast<std::uint64_t>(q), r, c, set), r * c,
                               0.01f, 2.0f));
    residual = random_bf16(salt_of(seed, 1, r, c, set), r * c, 0.01f, 2.0f);
    weight = random_bf16(salt_of(seed, 2, 1, c, set), c, 0.25f, 1.5f);
    // The all-reduce's result: float sum in rank order, one rounding.
    reduced.resize(static_cast<std::size_t>(r * c));
    for (std::size_t i = 0; i < reduced.size(); ++i) {
      float s = atom::to_float(xs[0][i]);
      for (std::size_t q = 1; q < xs.size(); ++q) s += atom::to_float(xs[q][i]);
      reduced[i] = atom::to_bf16(s);
    }
  }
};

struct DeviceCase {
  gpu::Buffer<bf16> x, residual, weight;
  DeviceCase(const Case& c, std::int64_t rank)
      : x(c.xs[static_cast<std::size_t>(rank)]), residual(c.residual), weight(c.weight) {}
};

// `nccl_reduced`: what the separate path's all-reduce returned for this case.
template <class Epi>
void check_epilogue(TpGroup& tp, const Case& c, DeviceCase& d,
                    const std::vector<bf16>& nccl_reduced) {
  const std::string shape =
      "[" + std::to_string(c.rows) + ", " + std::to_string(c.cols) + "] " + Out<Epi>::name;
  const TpPath paths[2] = {TpPath::fused, TpPath::separate};
  const std::vector<bf16>* reduced[2] = {&c.reduced, &nccl_reduced};
  std::vector<std::uint8_t> fused_bytes;
  for (int k = 0; k < 2; ++k) {
    const std::string what = std::string(k == 0 ? "fused " : "separate ") + shape;
    Out<Epi> host(c.rows, c.cols);
    std::vector<bf16> host_residual = c.residual;
    ops::add_rms_norm<Epi>(ops::Host{}, make_view(reduced[k]->data(), c.rows, c.cols),
                           make_view(host_residual.data(), c.rows, c.cols),
                           make_view(c.weight.data(), c.cols), eps, host.act(false));
    Out<Epi> out(c.rows, c.cols);
    poison(out, k == 0 ? 0xff : 0x00);
    d.residual.upload(c.residual);
    tp.all_reduce_add_rms_norm<Epi>(
        make_view(d.x.data(), c.rows, c.cols), make_view(d.residual.data(), c.rows, c.cols),
        make_view(d.weight.data(), c.cols), eps, out.act(true), paths[k]);
    tp.synchronize();
    const auto got_residual = d.residual.download();
    for (std::size_t i = 0; i < got_residual.size(); ++i)
      if (got_residual[i].bits != host_residual[i].bits)
        throw WrongResult(what + " residual[" + std::to_string(i) + "]: got bits " +
                          std::to_string(got_residual[i].bits) + ", want " +
                          std::to_string(host_residual[i].bits));
    const auto result = download(out);
    check_against_host(what, result, host);
    if (k == 0)
      std::printf("digest %lld %lld %s %016llx\n", static_cast<long long>(c.cols),
                  static_cast<long long>(c.rows), Out<Epi>::name,
                  static_cast<unsigned long long>(digest(result)));
  }
}

// NCCL's sum against the host's: exact at TP 2, within size * 2^-8 * sum_q |x_q| beyond.
void check_nccl_sum(const Case& c, const std::vector<bf16>& got) {
  const std::size_t size = c.xs.size();
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (got[i].bits == c.reduced[i].bits) continue;
    double magnitude = 0;
    for (const auto& x : c.xs) magnitude += std::fabs(static_cast<double>(atom::to_float(x[i])));
    const double err = std::fabs(static_cast<double>(atom::to_float(got[i])) -
                                 static_cast<double>(atom::to_float(c.reduced[i])));
    if (size == 2 || !(err <= static_cast<double>(size) * 0x1p-8 * magnitude))
      throw WrongResult("NCCL all-reduce [" + std::to_string(c.rows) + ", " +
                        std::to_string(c.cols) + "][" + std::to_string(i) + "]: got bits " +
                        std::to_string(got[i].bits) + ", want " +
                        std::to_string(c.reduced[i].bits));
  }
}

int run_check(const Options& o) {
  const auto seed = static_cast<std::uint64_t>(o.num("seed"));
  TpGroup tp(group_options(o, std::size_t{8192} * 7168 * 2));
  for (index_t cols : {index_t{7168}, index_t{2048}}) {
    for (index_t rows : {index_t{1}, index_t{7}, index_t{64}, index_t{1024}, index_t{8192}}) {
      const auto t0 = std::chrono::steady_clock::now();
      const Case c(seed, rows, cols, tp.size(), 0);
      DeviceCase d(c, tp.rank());
      gpu::Buffer<bf16> reduced(static_cast<std::size_t>(rows * cols));
      reduced.fill(0xff);
      tp.all_reduce(make_view(d.x.data(), rows, cols), make_view(reduced.data(), rows, cols));
      tp.synchronize();
      const auto nccl = reduced.download();
      check_nccl_sum(c, nccl);
      check_epilogue<epi::Bf16>(tp, c, d, nccl);
      check_epilogue<epi::Fp8PerToken>(tp, c, d, nccl);
      check_epilogue<epi::Fp8PerGroup128>(tp, c, d, nccl);
      check_epilogue<epi::Mxfp4>(tp, c, d, nccl);
      std::printf("ok [%lld, %lld] in %.2f s\n", static_cast<long long>(rows),
                  static_cast<long long>(cols),
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  tp.shutdown();
  return 0;
}

// A shape and input set of the repeat mode with each path's first outputs as its reference.
struct Prepared {
  Case c;
  DeviceCase d;
  gpu::Buffer<bf16> pristine;  // the residual before any call
  Out<epi::Bf16> out;
  std::vector<std::uint8_t> want_out[2];  // by path: fused, separate
  std::vector<bf16> want_residual[2];
  Prepared(TpGroup& tp, std::uint64_t seed, index_t rows, index_t cols, std::uint64_t set)
      : c(seed, rows, cols, tp.size(), set),
        d(c, tp.rank()),
        pristine(c.residual),
        out(rows, cols) {
    for (const TpPath path : {TpPath::fused, TpPath::separate}) {
      reset(tp);
      call(tp, path);
      tp.synchronize();
      want_out[index(path)] = out.blobs[0].device->download();
      want_residual[index(path)] = d.residual.download();
    }
  }
  static int index(TpPath path) { return path == TpPath::fused ? 0 : 1; }
  void call(TpGroup& tp, TpPath path) {
    tp.all_reduce_add_rms_norm<epi::Bf16>(
        make_view(d.x.data(), c.rows, c.cols), make_view(d.residual.data(), c.rows, c.cols),
        make_view(d.weight.data(), c.cols), eps, out.act(true), path);
  }
  void reset(TpGroup& tp) {
    ops::copy(tp.gpu(), make_view(pristine.data(), c.rows, c.cols),
              make_view(d.residual.data(), c.rows, c.cols));
  }
  // The outputs of the last call, made on `path`, against that path's first.
  void verify(const std::string& what, TpPath path) {
    if (out.blobs[0].device->download() != want_out[index(path)])
      throw WrongResult(what + ": output differs from the first call's");
    if (!same_bits(d.residual.download(), want_residual[index(path)]))
      throw WrongResult(what + ": residual differs from the first call's");
  }
};

int run_repeat(const Options& o) {
  const auto seed = static_cast<std::uint64_t>(o.num("seed"));
  const auto calls = o.num("calls");
  TpGroup tp(group_options(o, std::size_t{2} << 20));
  const std::pair<index_t, index_t> shapes[] = {
      {1, 7168}, {7, 2048}, {64, 7168}, {3, 769}, {300, 2048}};
  std::vector<std::unique_ptr<Prepared>> cases;
  for (std::uint64_t set = 0; set < 2; ++set)
    for (auto [rows, cols] : shapes)
      cases.push_back(std::make_unique<Prepared>(tp, seed, rows, cols, set));
  for (std::int64_t i = 0; i < calls; ++i) {
    auto& p = *cases[static_cast<std::size_t>(i) % cases.size()];
    p.out.blobs[0].device->fill(i % 2 ? 0xff : 0x00);
    p.reset(tp);
    p.call(tp, TpPath::fused);
    tp.synchronize();
    p.verify("fused call " + std::to_string(i), TpPath::fused);
  }
  // Graph replays (the call count lives on the device, so replays advance it too), mixed with
  // eager calls of both paths.
  std::vector<Prepared*> in_graph{cases[0].get(), cases[2].get(), cases[6].get()};
  auto graph = tp.capture([&] {
    for (Prepared* p : in_graph) {
      p->reset(tp);
      p->call(tp, TpPath::fused);
    }
  });
  for (int replay = 0; replay < 200; ++replay) {
    for (Prepared* p : in_graph) p->out.blobs[0].device->fill(replay % 2 ? 0xff : 0x00);
    graph.replay();
    tp.synchronize();
    for (Prepared* p : in_graph) p->verify("graph replay " + std::to_string(replay), TpPath::fused);
    auto& eager = *cases[static_cast<std::size_t>(replay) % cases.size()];
    eager.out.blobs[0].device->fill(0xff);
    eager.reset(tp);
    const TpPath path = replay % 3 == 0 ? TpPath::separate : TpPath::fused;
    eager.call(tp, path);
    tp.synchronize();
    eager.verify("eager call after replay " + std::to_string(replay), path);
  }
  std::printf("ok %lld fused calls, 200 graph replays\n", static_cast<long long>(calls));
  tp.shutdown();
  return 0;
}

int run_die(const Options& o) {
  const auto seed = static_cast<std::uint64_t>(o.num("seed"));
  const auto victim = o.num("victim");
  const auto die_at = o.num("die-at");
  const TpPath path = o.kv.at("path") == "fused" ? TpPath::fused : TpPath::separate;
  TpGroup tp(group_options(o, std::size_t{1} << 20));
  Prepared p(tp, seed, 64, 7168, 0);
  for (std::int64_t i = 0; i < die_at + 1000; ++i) {
    if (tp.rank() == victim && i == die_at) ::raise(SIGKILL);
    const auto t0 = std::chrono::steady_clock::now();
    try {
      p.reset(tp);
      p.call(tp, path);
      tp.synchronize();
    } catch (const TpError&) {
      std::printf(
          "failed at call %lld after %.0f ms\n", static_cast<long long>(i),
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      throw;
    }
  }
  throw WrongResult("no error although rank " + std::to_string(victim) + " died");
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (argc < 2) {
    std::cerr << "usage: tp_worker check|repeat|die --key value ...\n";
    return 5;
  }
  o.mode = argv[1];
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string key = argv[i];
    if (key.rfind("--", 0) == 0) key = key.substr(2);
    o.kv[key] = argv[i + 1];
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  try {
    if (o.mode == "check") return run_check(o);
    if (o.mode == "repeat") return run_repeat(o);
    if (o.mode == "die") return run_die(o);
    std::cerr << "unknown mode " << o.mode << "\n";
    return 5;
  } catch (const WrongResult& e) {
    std::cerr << "wrong result: " << e.what() << "\n";
    return 1;
  } catch (const TpError& e) {
    std::cerr << "TpError: " << e.what() << "\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 5;
  }
}
