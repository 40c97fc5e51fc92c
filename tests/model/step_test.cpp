// Decode steps (model/step.hpp): the batch's own advance, the steps against the teacher-forced
// decode of model/decode.hpp on the same inputs (bit for bit: the same ops in the same batch
// composition), and, on the GPU, a replayed graph against eager steps (bit for bit).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "atom/model/step.hpp"
#include "atom/ops/decode_batch.hpp"
#if ATOM_TEST_GPU
#include "atom/model/decode_gpu.hpp"
#include "atom/pipeline/harness_gpu.hpp"
#endif

using namespace atom;

namespace {

struct Model {
  pipeline::ModelConfig config;
  std::vector<std::unique_ptr<pipeline::LayerWeights>> weights;
  std::vector<model::DecodeLayer> layers;
};

// `n` layers of a preset, each with its own random weights of `format`; MoE layers unless the
// preset's first layers are dense (deepseek-v3-tiny's layer 0 is).
Model make_model(const char* preset, index_t n, policy::WeightFormat format) {
  Model m{pipeline::preset(preset), {}, {}};
  for (index_t l = 0; l < n; ++l) {
    m.weights.push_back(std::make_unique<pipeline::LayerWeights>(
        m.config, 7 + static_cast<std::uint64_t>(l), format));
    m.layers.push_back({l, m.weights.back().get()});
  }
  return m;
}

model::StepSetup setup_for(const Model& m, std::vector<std::int32_t> contexts, index_t steps) {
  model::StepSetup s;
  s.model = &m.config;
  s.layers = m.layers;
  s.point = policy::point_from(env::Config{});
  s.dual_stream_threshold = 1024;
  s.context_lens = std::move(contexts);
  s.steps = steps;
  s.seed = 11;
  return s;
}

}  // namespace

TEST_CASE(
    "advance_decode moves each sequence to its next slots, across blocks and to the table's end") {
  // Block size 4. Sequence 0 (one token) crosses from block 2 into block 5; sequence 1 is padding;
  // sequence 2 reaches the end of its row (no block for position 8) and stops; sequence 3 has two
  // query tokens (positions 5, 6) that move on by two, the second into block 7; token 5 belongs
  // to no sequence and stays padding.
  const std::vector<std::int32_t> starts{0, 1, 2, 3, 5};
  std::vector<std::int64_t> positions{3, 0, 7, 5, 6, 0};
  std::vector<std::int64_t> slots{2 * 4 + 3, -1, 6 * 4 + 3, 3 * 4 + 1, 3 * 4 + 2, -1};
  const std::vector<std::int32_t> table{2, 5, -1, 1, -1, -1,  // [4 sequences, 3]
                                        4, 6, -1, 0, 3,  7};
  std::vector<std::int32_t> context{4, 1, 8, 7};
  const ops::DecodeCursor c{make_view(starts.data(), 5), make_view(context.data(), 4),
                            make_view(table.data(), 4, 3), make_view(positions.data(), 6),
                            make_view(slots.data(), 6)};
  ops::advance_decode(ops::Host{}, c, 4);
  CHECK(positions == std::vector<std::int64_t>{4, 0, 7, 7, 8, 0});
  CHECK(slots == std::vector<std::int64_t>{5 * 4 + 0, -1, -1, 3 * 4 + 3, 7 * 4 + 0, -1});
  CHECK(context == std::vector<std::int32_t>{5, 1, 8, 9});
  ops::advance_decode(ops::Host{}, c, 4);
  // Sequence 3's next positions (9, 10) are both in block 7.
  CHECK(slots == std::vector<std::int64_t>{5 * 4 + 1, -1, -1, 7 * 4 + 1, 7 * 4 + 2, -1});
  CHECK(context == std::vector<std::int32_t>{6, 1, 8, 11});
  ops::advance_decode(ops::Host{}, c, 4);
  // Of sequence 3's next positions (11, 12), 12 has no block in its row: it stops as a whole.
  CHECK(slots == std::vector<std::int64_t>{5 * 4 + 2, -1, -1, -1, -1, -1});
  CHECK(positions == std::vector<std::int64_t>{6, 0, 7, 9, 10, 0});
  CHECK(context == std::vector<std::int32_t>{7, 1, 8, 11});
  const ops::DecodeCursor short_positions{c.query_start, c.context_lens, c.block_table,
                                          make_view(positions.data(), 5), c.slots};
  CHECK_THROWS_WITH(ops::advance_decode(ops::Host{}, short_positions, 4),
                    Catch::Contains("advance_decode") && Catch::Contains("'positions'"));
}

TEST_CASE("fill_uniform is deterministic, in range and differs between seeds") {
  std::vector<float> a(1000), b(1000), c(1000);
  ops::fill_uniform(ops::Host{}, make_view(a.data(), 1000), 3, -2.0f, 5.0f);
  ops::fill_uniform(ops::Host{}, make_view(b.data(), 1000), 3, -2.0f, 5.0f);
  ops::fill_uniform(ops::Host{}, make_view(c.data(), 1000), 4, -2.0f, 5.0f);
  CHECK(a == b);
  CHECK(a != c);
  for (float v : a) {
    REQUIRE(v >= -2.0f);
    REQUIRE(v < 5.0f);
  }
  std::vector<fp8_e4m3> codes(4096);
  ops::fill_uniform(ops::Host{}, make_view(codes.data(), 4096), 5, -448.0f, 448.0f);
  for (auto code : codes) REQUIRE(std::isfinite(to_float(code)));
}

TEST_CASE("decode steps from empty caches equal the teacher-forced decode, bit for bit") {
  for (const char* preset : {"deepseek-v3-tiny", "qwen3-30b-a3b-tiny"}) {
    for (auto format : {policy::WeightFormat::mxfp4, policy::WeightFormat::bf16}) {
      INFO(preset << ", " << static_cast<int>(format));
      const Model m = make_model(preset, 2, format);
      constexpr index_t steps = 19;  // crosses block boundaries of the tiny presets' caches
      const index_t sequences = 3;
      auto run = model::decode_steps(setup_for(m, std::vector<std::int32_t>(sequences, 1), steps));
      // The fed hidden state is the same every step: the teacher-forced decode's input repeats
      // it, in every sequence (fill_uniform over the batch [T, hidden], seed 11).
      const index_t h = m.config.hidden;
      std::vector<bf16> fed(static_cast<std::size_t>(sequences * h));
      ops::fill_uniform(ops::Host{}, make_view(fed.data(), sequences * h), 11, -1.0f, 1.0f);
      std::vector<std::vector<bf16>> inputs;
      for (index_t s = 0; s < sequences; ++s) {
        std::vector<bf16> seq;
        for (index_t k = 0; k < steps; ++k)
          seq.insert(seq.end(), fed.begin() + s * h, fed.begin() + (s + 1) * h);
        inputs.push_back(std::move(seq));
      }
      const auto want =
          model::decode_sequences(m.config, m.layers, inputs, run->setup().point, 1024);
      for (index_t k = 0; k < steps; ++k) {
        run->step();
        const std::vector<float> got = run->hidden();
        for (index_t s = 0; s < sequences; ++s) {
          const float* w = want.back().hidden[static_cast<std::size_t>(s)].data() + k * h;
          REQUIRE(std::memcmp(got.data() + s * h, w, static_cast<std::size_t>(h) * 4) == 0);
        }
      }
      CHECK(run->steps_run() == steps);
      CHECK(run->instances().size() == 2);
    }
  }
}

TEST_CASE("the byte floor of a step counts each weight once, the routed experts and the cache") {
  // Qwen3 tiny, MXFP4 weights, layer 1 (an MoE layer), written out from the model's dimensions.
  const Model m = make_model("qwen3-30b-a3b-tiny", 2, policy::WeightFormat::mxfp4);
  const pipeline::ModelConfig& c = m.config;
  REQUIRE(pipeline::layer_kind(c, 1) == pipeline::LayerKind::moe);
  const std::vector<std::int32_t> contexts{5, 33, 17};
  auto run = model::decode_steps(setup_for(m, contexts, 3));
  CHECK(run->last_step_bytes().total() == 0);
  run->step();
  run->step();
  const model::StepBytes b = run->last_step_bytes();
  const auto mx = [](double n, double k) { return n * std::ceil(k / 2) + n * std::ceil(k / 32); };
  const auto f = [](index_t v) { return static_cast<double>(v); };
  const double h = f(c.hidden), d = f(c.head_dim), heads = f(c.num_heads);
  const double kvh = f(c.num_kv_heads), top_k = f(c.top_k), experts = f(c.num_experts);
  const double moe_i = f(c.moe_intermediate), dense_i = f(c.intermediate);
  const double attention = mx((heads + 2 * kvh) * d, h) + mx(h, heads * d) + 2 * h + 4 * d;
  const double expert = mx(2 * moe_i, h) + mx(h, moe_i);
  const double mlp_fixed = 2 * h * experts + 2 * h;  // router and post-attention norm
  // Layer 0's MLP is dense or MoE as the preset says; both layers' routed experts are between
  // top_k (every token chose the same) and tokens x top_k.
  const double dense = mx(2 * dense_i, h) + mx(h, dense_i) + 2 * h;
  const bool first_moe = pipeline::layer_kind(c, 0) == pipeline::LayerKind::moe;
  const double fixed = 2 * attention + mlp_fixed + (first_moe ? mlp_fixed : dense);
  const double moe_layers = first_moe ? 2 : 1;
  const double tokens = static_cast<double>(contexts.size());
  CHECK(b.weights >= fixed + moe_layers * top_k * expert);
  CHECK(b.weights <= fixed + moe_layers * std::min(tokens * top_k, experts) * expert);
  CHECK(std::fmod(b.weights - fixed, expert) == Approx(0).margin(1e-6));
  // The second step attends to each context grown by one; a cache row is K and V codes and one
  // float scale each per kv head.
  const double row = kvh * (2 * d + 8);
  CHECK(b.cache_read == (5 + 33 + 17 + 3) * row * 2);
  CHECK(b.cache_write == tokens * row * 2);
  CHECK(b.activations == 2 * 2 * 4 * tokens * h * 2);
}

TEST_CASE("a profiled step is a step, and its blocks' bytes make the step's byte floor") {
  for (const char* preset : {"qwen3-30b-a3b-tiny", "deepseek-v3-tiny"}) {
    CAPTURE(preset);
    const Model m = make_model(preset, 3, policy::WeightFormat::mxfp4);
    const std::vector<std::int32_t> contexts{5, 33, 17, 1};
    auto plain = model::decode_steps(setup_for(m, contexts, 3));
    auto profiled = model::decode_steps(setup_for(m, contexts, 3));
    plain->step();
    plain->step();
    profiled->step();
    const std::vector<model::BlockCost> blocks = profiled->profile();
    CHECK(profiled->steps_run() == 2);
    CHECK(profiled->snapshot() == plain->snapshot());
    // Per layer its attention block, then its MLP block.
    REQUIRE(blocks.size() == 2 * m.layers.size());
    model::StepBytes sum;
    for (std::size_t l = 0; l < m.layers.size(); ++l) {
      const model::BlockCost& a = blocks[2 * l];
      const model::BlockCost& b = blocks[2 * l + 1];
      CHECK(a.layer == m.layers[l].index);
      CHECK(b.layer == m.layers[l].index);
      CHECK(a.pipeline == pipeline::attention_pipeline(m.config));
      CHECK(b.pipeline == pipeline::mlp_pipeline(pipeline::layer_kind(m.config, a.layer)));
      CHECK(b.bytes.cache_read == 0);
      CHECK(a.bytes.cache_read > 0);
      for (const auto* c : {&a, &b}) {
        CHECK(std::isfinite(c->ms));
        CHECK(c->ms >= 0);
        sum.weights += c->bytes.weights;
        sum.cache_read += c->bytes.cache_read;
        sum.cache_write += c->bytes.cache_write;
        sum.activations += c->bytes.activations;
      }
    }
    const model::StepBytes floor = plain->last_step_bytes();
    CHECK(sum.weights == floor.weights);
    CHECK(sum.cache_read == floor.cache_read);
    CHECK(sum.cache_write == floor.cache_write);
    CHECK(sum.activations == floor.activations);
  }
  const Model m = make_model("qwen3-30b-a3b-tiny", 1, policy::WeightFormat::mxfp4);
  const double copy = model::decode_steps(setup_for(m, {3}, 1))->copy_gbs();
  CHECK(std::isfinite(copy));
  CHECK(copy > 0);
}

TEST_CASE("padding tokens after the sequences change nothing for them and write no cache row") {
  for (const char* preset : {"qwen3-30b-a3b-tiny", "deepseek-v3-tiny"}) {
    CAPTURE(preset);
    const Model m = make_model(preset, 2, policy::WeightFormat::mxfp4);
    const std::vector<std::int32_t> contexts{5, 33, 17};
    const index_t n = 3, h = m.config.hidden;
    auto plain = model::decode_steps(setup_for(m, contexts, 3));
    model::StepSetup padded_setup = setup_for(m, contexts, 3);
    padded_setup.padding = 2;
    auto padded = model::decode_steps(padded_setup);
    CHECK(padded->tokens() == n + 2);
    for (int k = 0; k < 3; ++k) {
      plain->step();
      padded->step();
      // The sequences' hidden states, bit for bit; the caches (everything after the hidden
      // states, positions, slots and context lengths in the snapshot) byte for byte.
      const std::vector<float> a = plain->hidden(), b = padded->hidden();
      REQUIRE(b.size() == static_cast<std::size_t>((n + 2) * h));
      CHECK(std::equal(a.begin(), a.end(), b.begin()));
      const auto tail = [&](const std::vector<std::byte>& snap, index_t t) {
        const auto skip = static_cast<std::size_t>(2 * t * h * 2 + 2 * t * 8 + n * 4);
        return std::vector<std::byte>(snap.begin() + static_cast<std::ptrdiff_t>(skip), snap.end());
      };
      CHECK(tail(plain->snapshot(), n) == tail(padded->snapshot(), n + 2));
      const model::StepBytes pb = plain->last_step_bytes(), qb = padded->last_step_bytes();
      CHECK(qb.cache_read == pb.cache_read);
      CHECK(qb.cache_write == pb.cache_write);
      CHECK(qb.activations == pb.activations * static_cast<double>(n + 2) / static_cast<double>(n));
    }
  }
}

TEST_CASE("decode steps reject bad setups with a message naming what is wrong") {
  const Model m = make_model("qwen3-30b-a3b-tiny", 1, policy::WeightFormat::mxfp4);
  CHECK_THROWS_WITH(model::decode_steps(setup_for(m, {4, 0}, 2)),
                    Catch::Contains("sequence 1 has context 0"));
  CHECK_THROWS_WITH(
      model::decode_steps(setup_for(m, {static_cast<std::int32_t>(m.config.max_position)}, 2)),
      Catch::Contains("positions"));
  CHECK_THROWS_WITH(model::decode_steps(setup_for(m, {}, 2)), Catch::Contains("no sequences"));
  CHECK_THROWS_WITH(model::decode_steps(setup_for(m, {3}, 0)), Catch::Contains("steps"));
  model::StepSetup negative = setup_for(m, {3}, 2);
  negative.padding = -1;
  CHECK_THROWS_WITH(model::decode_steps(negative), Catch::Contains("negative padding"));
  auto run = model::decode_steps(setup_for(m, {3}, 2));
  CHECK_THROWS_WITH(run->capture(), Catch::Contains("GPU backend"));
}

#if ATOM_TEST_GPU
TEST_CASE("a replayed step equals an eager step bit for bit, and the GPU steps follow the host") {
  for (const char* preset : {"deepseek-v3-tiny", "qwen3-30b-a3b-tiny"}) {
    INFO(preset);
    const Model m = make_model(preset, 3, policy::WeightFormat::mxfp4);
    const policy::Point point = policy::point_from(env::Config{});
    std::vector<std::unique_ptr<pipeline::DeviceLayerWeights>> device;
    std::vector<const pipeline::DeviceLayerWeights*> views;
    for (const auto& l : m.layers) {
      device.push_back(std::make_unique<pipeline::DeviceLayerWeights>(
          m.config, *l.weights, std::vector{point.get<policy::GemmBackend>()}));
      views.push_back(device.back().get());
    }
    // Ragged prefilled contexts crossing block boundaries while the steps run.
    const auto s = setup_for(m, {1, 17, 40, 63, 5}, 9);
    auto eager = model::decode_steps_gpu(s, views);
    auto graph = model::decode_steps_gpu(s, views);
    eager->step();
    graph->step();
    graph->capture();
    CHECK(graph->steps_run() == 1);
    for (int k = 0; k < 8; ++k) {
      eager->step();
      graph->replay();
      graph->synchronize();
      REQUIRE(eager->snapshot() == graph->snapshot());
    }
    // A profiled step (device events around each block) is an eager step.
    eager->step();
    graph->profile();
    REQUIRE(eager->snapshot() == graph->snapshot());
    // One step on the host against one on the GPU: each layer adds at most the GPU pipelines'
    // stated bound (harness_gpu.cpp) to the relative L2 error, to first order.
    auto host = model::decode_steps(s);
    auto once = model::decode_steps_gpu(s, views);
    host->step();
    once->step();
    const auto want = host->hidden();
    const auto got = once->hidden();
    double diff = 0, norm = 0;
    for (std::size_t i = 0; i < want.size(); ++i) {
      REQUIRE(std::isfinite(got[i]));
      diff += (got[i] - want[i]) * (got[i] - want[i]);
      norm += want[i] * want[i];
    }
    const double bound = static_cast<double>(m.layers.size()) *
                         std::max(pipeline::gpu_error_bound(pipeline::attention_pipeline(m.config)),
                                  pipeline::gpu_error_bound(policy::PipelineId::moe_block));
    INFO("relative L2 " << std::sqrt(diff / norm) << ", bound " << bound);
    CHECK(std::sqrt(diff / norm) < bound);
  }
}
#endif
