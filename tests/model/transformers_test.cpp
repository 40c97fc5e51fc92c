// atom against transformers on the committed tiny checkpoints (tests/model/hf, written by
// tools/hf-compare/make_reference.py): every decoder layer of DeepSeek-V3 and Qwen3-MoE in bf16,
// FP8 128x128 and Quark MXFP4, run in isolation on the host backend at the default point (its
// input: transformers' output of the layer before), against transformers' decoder-layer output.
//
// What is compared: the relative L2 of the layer output (residual included) over the tokens that
// are not near a routing tie (MoE layers: top-k margin and, for DeepSeek, group margin above
// 2e-3, as compare.py), at every policy point this build has (the default point first); the
// routes of those tokens are counted and printed (ATOM_TEST_PRINT_POINTS=1 prints every point).
//
// Qwen3 meets the targets of an independent check at every point: 0.03 / 0.08 / 0.15 for bf16 /
// FP8 / MXFP4 weights (worst measured 0.017 / 0.034 / 0.144). DeepSeek's bounds are regression
// bounds, 1.25x over the worst measured per weight format and absorbed-BMM format (bf16 weights:
// 0.086 with FP8 BMMs, 0.155 with MXFP4 ones; FP8: 0.063 / 0.19; MXFP4: 0.124 / 0.20): atom
// requantizes kv_b_proj into the BMM format (as ATOM does), which leaves its attention a few
// percent off (0.026 on the dense layer 0 with FP8 BMMs), and on this tiny model that moves 2-3
// tokens per MoE layer past the 2e-3 margin onto another expert, which dominates the error.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>

#include "atom/io/loader.hpp"
#include "atom/model/checkpoint.hpp"
#include "atom/model/decode.hpp"
#include "atom/policy/space.hpp"

using namespace atom;

namespace {

const std::filesystem::path data = ATOM_MODEL_HF_DATA;
constexpr float tie_delta = 2e-3f;

struct Reference {
  io::SafetensorsFile file;

  bool has(const std::string& name) const { return file.header().find(name) != nullptr; }
  std::vector<float> floats(const std::string& name) const {
    const auto& t = file.info(name);
    const auto bytes = file.bytes(t);
    std::vector<float> v(static_cast<std::size_t>(t.numel()));
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (t.dtype == io::Dtype::F32) {
        std::memcpy(&v[i], bytes.data() + 4 * i, 4);
      } else {
        bf16 x;
        std::memcpy(&x, bytes.data() + 2 * i, 2);
        v[i] = to_float(x);
      }
    }
    return v;
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
      if (moe && (margin[t] <= tie_delta || (!group.empty() && group[t] <= tie_delta))) {
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

// Every layer at every policy point whose instantiations this build has: `bound` at every point.
// The bound of a point: Qwen3's are the targets (every point); DeepSeek's depend on the absorbed
// BMMs' format, regression bounds 1.25x over the worst measured (see the header).
struct Bounds {
  double bmm_fp8;
  double bmm_mxfp4;
};

void compare(const std::string& model, const std::string& format, Bounds bounds) {
  const auto dir = data / model / format;
  const auto ckpt = model::HfCheckpoint::open(dir, io::LoadMode::read);
  const auto& m = ckpt.model();
  const Reference ref{io::SafetensorsFile::open(dir / "reference.safetensors", io::LoadMode::read)};
  std::size_t sequences = 0;
  while (ref.has("hidden." + std::to_string(sequences))) ++sequences;
  REQUIRE(sequences > 0);
  for (index_t l = 0; l < m.num_layers; ++l) {
    CAPTURE(model, format, l);
    std::vector<std::vector<bf16>> inputs;
    for (std::size_t s = 0; s < sequences; ++s) {
      const std::string in =
          l == 0 ? "hidden." + std::to_string(s)
                 : "hidden." + std::to_string(s) + ".layer." + std::to_string(l - 1);
      std::vector<bf16> v;
      for (const float x : ref.floats(in)) v.push_back(to_bf16(x));  // bf16 values: exact
      inputs.push_back(std::move(v));
    }
    const auto weights = ckpt.layer(l);
    const model::DecodeLayer layer{l, weights.get()};
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
        name = pipeline::resolve_layer(m, kind, p, formats.first, formats.second,
                                       policy::BackendId::host)
                   .name();
      } catch (const dispatch::DispatchError&) {
        continue;  // not in this build's profile
      }
      if (!seen.insert(name).second) continue;
      CAPTURE(name);
      const double bound =
          p.get<policy::BmmFormat>() == policy::BmmFormat::fp8 ? bounds.bmm_fp8 : bounds.bmm_mxfp4;
      const auto out = model::decode_sequences(m, {layer}, inputs, p, 1024);
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
    }
    std::printf("%-20s %-6s layer %ld: worst rel_l2 %.4f over %zu points (%s)\n", model.c_str(),
                format.c_str(), static_cast<long>(l), worst, seen.size(), worst_name.c_str());
  }
}

}  // namespace

TEST_CASE("transformers: DeepSeek-V3 tiny layers in isolation, bf16") {
  compare("deepseek-v3-tiny", "bf16", {0.11, 0.2});
}
TEST_CASE("transformers: DeepSeek-V3 tiny layers in isolation, FP8 block") {
  compare("deepseek-v3-tiny", "fp8", {0.08, 0.24});
}
TEST_CASE("transformers: DeepSeek-V3 tiny layers in isolation, MXFP4") {
  compare("deepseek-v3-tiny", "mxfp4", {0.16, 0.25});
}
TEST_CASE("transformers: Qwen3-MoE tiny layers in isolation, bf16") {
  compare("qwen3-30b-a3b-tiny", "bf16", {0.03, 0.03});
}
TEST_CASE("transformers: Qwen3-MoE tiny layers in isolation, FP8 block") {
  compare("qwen3-30b-a3b-tiny", "fp8", {0.08, 0.08});
}
TEST_CASE("transformers: Qwen3-MoE tiny layers in isolation, MXFP4") {
  compare("qwen3-30b-a3b-tiny", "mxfp4", {0.15, 0.15});
}
