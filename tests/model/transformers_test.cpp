// atom against transformers on the committed tiny checkpoints (tests/model/hf, written by
// tools/hf-compare/make_reference.py): every decoder layer of DeepSeek-V3 and Qwen3-MoE in bf16,
// FP8 128x128 and Quark MXFP4, run in isolation (its input: transformers' output of the layer
// before), against transformers' decoder-layer output. Compiled for the host backend, and with
// ATOM_TEST_GPU for the GPU backend (the staging path, ctest label gpu).
//
// What is compared: the relative L2 of the layer output (residual included) over the tokens that
// are not near a routing tie (MoE layers: top-k margin and, for DeepSeek, group margin above
// tie_delta(), compare.py's --delta), at every policy point this build has (the default point
// first); the routes of those tokens are compared (ATOM_TEST_PRINT_POINTS=1 prints every point).
//
// The bounds are the targets of an independent check: 0.03 / 0.08 / 0.15 for bf16 / FP8 / MXFP4
// weights (see Bounds for the MXFP4 BMMs). Measured worst over all points (host): Qwen3 0.017 /
// 0.034 / 0.144; DeepSeek with FP8 BMMs 0.026 / 0.041 / 0.122, with MXFP4 BMMs 0.080 / 0.154 /
// 0.192.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>

#include "atom/io/loader.hpp"
#include "atom/model/checkpoint.hpp"
#include "atom/model/decode.hpp"
#if ATOM_TEST_GPU
#include "atom/model/decode_gpu.hpp"
#endif
#include "atom/policy/space.hpp"

using namespace atom;

namespace {

const std::filesystem::path data = ATOM_MODEL_HF_DATA;
// The routing margin below which a token is a near tie, left out and counted. Qwen3: 2e-3, where
// transformers' own bf16 and float32 runs stop disagreeing (tools/hf-compare/README.md). DeepSeek:
// its router reads sigmoid scores of the attention output, which atom's FP8 absorbed BMMs move
// by eps ~ 0.026 relative (the dense layer 0's error); a logit w.x with w ~ N(0, 1/H) then moves
// by about eps (x has unit RMS), a score by at most a quarter of that (sigmoid' <= 1/4), and a
// margin between two experts (or two groups of two) by sqrt(2) (2) times that: 0.009 (0.013)
// standard deviations, so 0.02 is the margin beyond which a flip is a real disagreement.
float tie_delta(const pipeline::ModelConfig& m) {
  return m.architecture == pipeline::Architecture::deepseek_v3 ? 0.02f : 2e-3f;
}

struct Reference {
  io::SafetensorsFile file;

  bool has(const std::string& name) const { return file.header().find(name) != nullptr; }
  std::vector<float> floats(const std::string& name) const {
    const auto& t = file.info(name);
    return io::float_values(t.dtype, file.bytes(t));
  }
  std::vector<std::int32_t> ints(const std::string& name) const {
    const auto bytes = file.bytes(name);
    std::vector<std::int32_t> v(bytes.size() / 4);
    std::memcpy(v.data(), bytes.data(), bytes.size());
    return v;
  }
};

// The relative L2 of one layer's outputs against the reference, over the tokens away from ties.
struct LayerError {
  double rel = 0;
  long kept = 0;
  long ties = 0;
  long route_mismatch = 0;
};

LayerError layer_error(const pipeline::ModelConfig& m, const Reference& ref, index_t l,
                       std::size_t sequences, const model::LayerOutput& out) {
  double diff = 0, norm = 0;
  LayerError r;
  for (std::size_t s = 0; s < sequences; ++s) {
    const std::string tag = std::to_string(s) + ".layer." + std::to_string(l);
    const auto want = ref.floats("hidden." + tag);
    const auto& got = out.hidden[s];
    REQUIRE(got.size() == want.size());
    const std::size_t tokens = want.size() / static_cast<std::size_t>(m.hidden);
    const bool moe = ref.has("route." + tag);
    const auto margin = moe ? ref.floats("route_margin." + tag) : std::vector<float>{};
    const auto group =
        ref.has("group_margin." + tag) ? ref.floats("group_margin." + tag) : std::vector<float>{};
    const auto routes = moe ? ref.ints("route." + tag) : std::vector<std::int32_t>{};
    for (std::size_t t = 0; t < tokens; ++t) {
      const float delta = tie_delta(m);
      if (moe && (margin[t] <= delta || (!group.empty() && group[t] <= delta))) {
        ++r.ties;
        continue;
      }
      ++r.kept;
      for (index_t c = 0; c < m.hidden; ++c) {
        const std::size_t i = t * static_cast<std::size_t>(m.hidden) + static_cast<std::size_t>(c);
        REQUIRE(std::isfinite(got[i]));  // NaN never passes
        diff += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
        norm += double(want[i]) * want[i];
      }
      if (moe)
        for (index_t j = 0; j < m.top_k; ++j) {
          const std::size_t i = t * static_cast<std::size_t>(m.top_k) + static_cast<std::size_t>(j);
          if (out.routes[s][i] != routes[i]) {
            ++r.route_mismatch;
            break;
          }
        }
    }
  }
  r.rel = std::sqrt(diff / norm);
  return r;
}

// The input of layer l: transformers' output of the layer before (bf16 values: exact).
std::vector<std::vector<bf16>> layer_inputs(const Reference& ref, index_t l,
                                            std::size_t sequences) {
  std::vector<std::vector<bf16>> inputs;
  for (std::size_t s = 0; s < sequences; ++s) {
    const std::string in = l == 0
                               ? "hidden." + std::to_string(s)
                               : "hidden." + std::to_string(s) + ".layer." + std::to_string(l - 1);
    std::vector<bf16> v;
    for (const float x : ref.floats(in)) v.push_back(to_bf16(x));
    inputs.push_back(std::move(v));
  }
  return inputs;
}

std::size_t sequence_count(const Reference& ref) {
  std::size_t sequences = 0;
  while (ref.has("hidden." + std::to_string(sequences))) ++sequences;
  REQUIRE(sequences > 0);
  return sequences;
}

// Every layer at every policy point whose instantiations this build has: `bound` at every point.
// The bound of a point, by the format of the absorbed BMMs (DeepSeek; Qwen3 has none): the
// target of the weight format with FP8 BMMs, and with MXFP4 BMMs the root sum of squares of that
// and the MXFP4 target (two independent quantization errors). Routes must match exactly away
// from ties where the point quantizes nothing to MXFP4; with MXFP4 the activations' noise (~10%)
// moves the router's scores past the margin, so routes are counted there, not required.
struct Bounds {
  double target;
  bool mxfp4_weights;
};

void compare(const std::string& model, const std::string& format, Bounds bounds) {
  constexpr double mxfp4_target = 0.15;
  const auto dir = data / model / format;
  const auto ckpt = model::HfCheckpoint::open(dir, io::LoadMode::read);
  const auto& m = ckpt.model();
  const Reference ref{io::SafetensorsFile::open(dir / "reference.safetensors", io::LoadMode::read)};
  const std::size_t sequences = sequence_count(ref);
  // ATOM_TEST_HF_LAYER=l runs only layer l; ATOM_TEST_HF_SHARD=i/n only the distinct points whose
  // index (the default point is 0) is i modulo n. Both split a case over processes (e.g. under
  // compute-sanitizer); unset, every layer and point runs.
  const char* only_layer = std::getenv("ATOM_TEST_HF_LAYER");
  long shard = 0, shards = 1;
  if (const char* s = std::getenv("ATOM_TEST_HF_SHARD"))
    REQUIRE(std::sscanf(s, "%ld/%ld", &shard, &shards) == 2);
  for (index_t l = 0; l < m.num_layers; ++l) {
    if (only_layer != nullptr && std::atol(only_layer) != static_cast<long>(l)) continue;
    CAPTURE(model, format, l);
    const auto inputs = layer_inputs(ref, l, sequences);
    const auto weights = ckpt.layer(l);
    const model::DecodeLayer layer{l, weights.get()};
#if ATOM_TEST_GPU
    const pipeline::DeviceLayerWeights device(
        m, *weights, {policy::GemmBackend::matrix_core, policy::GemmBackend::portable});
    const auto decode = [&](policy::Point p) {
      return model::decode_sequences_gpu(m, {layer}, {&device}, inputs, p, 1024);
    };
    constexpr auto backend = policy::BackendId::gpu;
#else
    const auto decode = [&](policy::Point p) {
      return model::decode_sequences(m, {layer}, inputs, p, 1024);
    };
    constexpr auto backend = policy::BackendId::host;
#endif
    const auto kind = pipeline::layer_kind(m, l);
    const auto formats = model::block_formats(m, layer);
    // The default point first, then every other distinct pair of block instantiations.
    std::set<std::string> seen;
    std::vector<policy::Point> points{policy::point_from(env::Config{})};
    points.insert(points.end(), policy::all_points.begin(), policy::all_points.end());
    double worst = 0;
    std::string worst_name;
    for (const policy::Point& p : points) {
      std::string name;
      try {
        name = pipeline::resolve_layer(m, kind, p, formats.first, formats.second, backend).name();
      } catch (const dispatch::DispatchError&) {
        continue;  // not in this build's profile
      }
      if (!seen.insert(name).second) continue;
      if (static_cast<long>(seen.size() - 1) % shards != shard) continue;
      CAPTURE(name);
      const bool mxfp4_bmm = m.attention == pipeline::AttentionKind::mla &&
                             p.get<policy::BmmFormat>() == policy::BmmFormat::mxfp4;
      const double bound = mxfp4_bmm ? std::hypot(bounds.target, mxfp4_target) : bounds.target;
      const bool exact_routes = !bounds.mxfp4_weights && !mxfp4_bmm;
      const auto out = decode(p);
      REQUIRE(out.size() == 1);
      const LayerError e = layer_error(m, ref, l, sequences, out[0]);
      if (seen.size() == 1)
        std::printf(
            "%-20s %-6s layer %ld at the default point: rel_l2 %.4f over %ld tokens (%ld "
            "near ties left out), %ld routes differ\n",
            model.c_str(), format.c_str(), static_cast<long>(l), e.rel, e.kept, e.ties,
            e.route_mismatch);
      if (std::getenv("ATOM_TEST_PRINT_POINTS") != nullptr)
        std::printf("  %.4f routes %ld  %s\n", e.rel, e.route_mismatch, name.c_str());
      if (e.rel > worst) {
        worst = e.rel;
        worst_name = name;
      }
      CHECK(e.rel <= bound);
      if (exact_routes) CHECK(e.route_mismatch == 0);
    }
    std::printf("%-20s %-6s layer %ld: worst rel_l2 %.4f over %zu points (%s)\n", model.c_str(),
                format.c_str(), static_cast<long>(l), worst, seen.size(), worst_name.c_str());
  }
}

#if !ATOM_TEST_GPU
// Every layer at tensor parallel sizes 2 and 4 (host ranks as threads), with the fused and the
// separate all-reduce at the default point otherwise, against transformers within the same bound
// as size 1: the split changes only the summation order of the row-parallel GEMMs (about 2^-9
// relative, pipeline::tp_error_bound), far inside the weight formats' targets. Routes are
// required to match where they are at size 1. Each layer is also decoded with every rank reading
// only its share of the checkpoint, which must give the same bits as sharding the whole layer.
void compare_tp(const std::string& model, const std::string& format, Bounds bounds) {
  const auto dir = data / model / format;
  const auto ckpt = model::HfCheckpoint::open(dir, io::LoadMode::read);
  const auto& m = ckpt.model();
  const Reference ref{io::SafetensorsFile::open(dir / "reference.safetensors", io::LoadMode::read)};
  const std::size_t sequences = sequence_count(ref);
  const policy::Point base = policy::point_from(env::Config{});
  const bool mxfp4_bmm = m.attention == pipeline::AttentionKind::mla &&
                         base.get<policy::BmmFormat>() == policy::BmmFormat::mxfp4;
  const double bound = mxfp4_bmm ? std::hypot(bounds.target, 0.15) : bounds.target;
  for (index_t l = 0; l < m.num_layers; ++l) {
    const auto inputs = layer_inputs(ref, l, sequences);
    const auto weights = ckpt.layer(l);
    const model::DecodeLayer layer{l, weights.get()};
    for (const auto ar : {policy::AllReduceNorm::fused, policy::AllReduceNorm::separate})
      for (const index_t tp : {2, 4}) {
        const policy::Point p = base.with(ar);
        CAPTURE(model, format, l, tp, ar == policy::AllReduceNorm::fused);
        std::vector<model::LayerOutput> out;
        try {
          out = model::decode_sequences_tp(m, {layer}, inputs, p, 1024, tp);
        } catch (const dispatch::DispatchError&) {
          continue;  // not in this build's profile
        }
        REQUIRE(out.size() == 1);
        // Each rank reading its share of the checkpoint reads the bytes of the layer's shard.
        const auto read = model::decode_checkpoint_tp(ckpt, {l}, inputs, p, 1024, tp);
        REQUIRE(read.size() == 1);
        CHECK(read[0].hidden == out[0].hidden);
        const LayerError e = layer_error(m, ref, l, sequences, out[0]);
        std::printf(
            "%-20s %-6s layer %ld at TP %ld (%s all-reduce): rel_l2 %.4f, %ld routes "
            "differ\n",
            model.c_str(), format.c_str(), static_cast<long>(l), static_cast<long>(tp),
            ar == policy::AllReduceNorm::fused ? "fused" : "separate", e.rel, e.route_mismatch);
        CHECK(e.rel <= bound);
        if (!bounds.mxfp4_weights && !mxfp4_bmm) CHECK(e.route_mismatch == 0);
      }
  }
}
#endif

}  // namespace

#if !ATOM_TEST_GPU
TEST_CASE("transformers: DeepSeek-V3 tiny layers at TP 2 and 4, bf16") {
  compare_tp("deepseek-v3-tiny", "bf16", {0.03, false});
}
TEST_CASE("transformers: DeepSeek-V3 tiny layers at TP 2 and 4, FP8 block") {
  compare_tp("deepseek-v3-tiny", "fp8", {0.08, false});
}
TEST_CASE("transformers: DeepSeek-V3 tiny layers at TP 2 and 4, MXFP4") {
  compare_tp("deepseek-v3-tiny", "mxfp4", {0.15, true});
}
TEST_CASE("transformers: Qwen3-MoE tiny layers at TP 2 and 4, bf16") {
  compare_tp("qwen3-30b-a3b-tiny", "bf16", {0.03, false});
}
TEST_CASE("transformers: Qwen3-MoE tiny layers at TP 2 and 4, FP8 block") {
  compare_tp("qwen3-30b-a3b-tiny", "fp8", {0.08, false});
}
TEST_CASE("transformers: Qwen3-MoE tiny layers at TP 2 and 4, MXFP4") {
  compare_tp("qwen3-30b-a3b-tiny", "mxfp4", {0.15, true});
}
#endif

TEST_CASE("transformers: DeepSeek-V3 tiny layers in isolation, bf16") {
  compare("deepseek-v3-tiny", "bf16", {0.03, false});
}
TEST_CASE("transformers: DeepSeek-V3 tiny layers in isolation, FP8 block") {
  compare("deepseek-v3-tiny", "fp8", {0.08, false});
}
TEST_CASE("transformers: DeepSeek-V3 tiny layers in isolation, MXFP4") {
  compare("deepseek-v3-tiny", "mxfp4", {0.15, true});
}
TEST_CASE("transformers: Qwen3-MoE tiny layers in isolation, bf16") {
  compare("qwen3-30b-a3b-tiny", "bf16", {0.03, false});
}
TEST_CASE("transformers: Qwen3-MoE tiny layers in isolation, FP8 block") {
  compare("qwen3-30b-a3b-tiny", "fp8", {0.08, false});
}
TEST_CASE("transformers: Qwen3-MoE tiny layers in isolation, MXFP4") {
  compare("qwen3-30b-a3b-tiny", "mxfp4", {0.15, true});
}
