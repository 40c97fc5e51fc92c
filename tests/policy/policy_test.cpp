#include <catch2/catch.hpp>

#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "atom/dispatch/dispatch.hpp"
#include "atom/pipeline/pipelines.hpp"
#include "atom/policy/space.hpp"
#include "built.hpp"

using namespace atom;
using namespace atom::policy;

namespace {

// Every combination of the values of the variables that feed policy axes. Ints take values on
// both sides of their rule (the MoE threshold: 0, 1, 1024).
std::vector<env::Environment> all_policy_environments() {
  std::vector<std::pair<std::string, std::vector<std::string>>> vars;
  for (const auto& s : env::registry) {
    if (!s.feeds.starts_with("axis: ")) continue;
    if (s.type == env::Type::boolean)
      vars.push_back({std::string(s.name), {"0", "1"}});
    else
      vars.push_back({std::string(s.name), {"0", "1", "1024"}});
  }
  std::vector<env::Environment> out{{}};
  for (const auto& [name, values] : vars) {
    std::vector<env::Environment> next;
    for (const auto& e : out)
      for (const auto& v : values) {
        auto f = e;
        f[name] = v;
        next.push_back(f);
      }
    out = std::move(next);
  }
  return out;
}

template <PipelineId P>
constexpr AxisSet reads_of = pipeline::Declared<P>::reads;

// Which pipelines' instance each policy variable can change, restated by hand from the design
// (DESIGN.md): independent of the declarations, so that a pipeline that forgets to declare an
// axis fails the flip test below.
const std::map<std::string, std::set<PipelineId>>& expected_readers() {
  using enum PipelineId;
  static const std::map<std::string, std::set<PipelineId>> table{
      {"ATOM_USE_TRITON_GEMM", {mla_attention, moe_block, qwen3_attention, dense_mlp}},
      {"ATOM_USE_TRITON_MXFP4_BMM", {mla_attention}},
      {"ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION",
       {mla_attention, moe_block, qwen3_attention, dense_mlp}},
      {"ATOM_ENABLE_DS_INPUT_RMSNORM_QUANT_FUSION", {mla_attention}},
      {"ATOM_ENABLE_DS_QKNORM_FUSION", {mla_attention}},
      {"ATOM_ENABLE_DS_QKNORM_QUANT_FUSION", {mla_attention}},
      {"ATOM_DUAL_STREAM_MOE_TOKEN_THRESHOLD", {moe_block}},
      {"ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION", {qwen3_attention}},
  };
  return table;
}

}  // namespace

TEST_CASE("every axis is fed by variables that exist and say so in the registry") {
  for_each_axis([](const auto& axis, std::size_t) {
    for (env::Var v : axis.vars) {
      INFO(axis.name << " <- " << env::spec(v).name);
      CHECK(env::spec(v).feeds == "axis: " + std::string(axis.name));
    }
  });
  // Conversely, every variable that says it feeds an axis is one of that axis's variables.
  for (const auto& s : env::registry) {
    if (!s.feeds.starts_with("axis: ")) continue;
    bool found = false;
    for_each_axis([&](const auto& axis, std::size_t) {
      for (env::Var v : axis.vars) found = found || v == s.id;
    });
    INFO(s.name);
    CHECK(found);
  }
}

TEST_CASE("the product space and the canonical points per pipeline") {
  std::size_t product = 1;
  for_each_axis([&](const auto& axis, std::size_t) { product *= axis.size; });
  CHECK(all_points.size() == product);
  CHECK(std::set<Key>{} == [] {
    std::set<Key> dup;
    std::set<Key> seen;
    for (const Point& x : all_points)
      if (!seen.insert(key(PipelineId{}, BackendId::host, x)).second) dup.insert(x.packed);
    return dup;
  }());
  pipeline::for_each_pipeline([](auto id) {
    constexpr AxisSet r = reads_of<decltype(id)::value>;
    // Per weight format, the product of the read axes' sizes, less what the format folds: the
    // GEMM backend for FP8 and bf16 weights, the input-norm quant fusion and the q_a norm's quant
    // fusion for bf16.
    std::size_t expected = 0;
    const bool reads_format = r[axis_index<WeightFormat>];
    for (std::uint8_t f = 0; f < (reads_format ? 3 : 1); ++f) {
      const auto format = static_cast<WeightFormat>(f);
      std::size_t n = 1;
      for_each_axis([&](const auto& axis, std::size_t i) {
        if (!r[i] || i == axis_index<WeightFormat>) return;
        std::size_t size = axis.size;
        if (reads_format && format != WeightFormat::mxfp4 && i == axis_index<GemmBackend>) size = 1;
        if (reads_format && format == WeightFormat::bf16 && i == axis_index<InputNormQuant>)
          size = 1;
        if (reads_format && format == WeightFormat::bf16 && i == axis_index<QkNorm>) size = 2;
        n *= size;
      });
      expected += n;
    }
    const auto& points = canonical_points<r>;
    INFO(pipeline_name(id.value));
    CHECK(points.size() == expected);
    CHECK(reads(id.value) == r);
    for (const Point& x : points)
      CHECK(canonical(r, x) == x);  // unread axes are folded to their first value
  });
}

TEST_CASE("points and keys round-trip, every key is unique") {
  std::set<Key> keys;
  for (PipelineId p : pipelines)
    for (BackendId b : {BackendId::host, BackendId::gpu})
      for (const Point& x : all_points) {
        const Key k = key(p, b, x);
        CHECK(key_pipeline(k) == p);
        CHECK(key_backend(k) == b);
        CHECK(key_point(k) == x);
        keys.insert(k);
      }
  CHECK(keys.size() == pipelines.size() * 2 * all_points.size());
  for (const Point& x : all_points)
    for_each_axis([&](const auto& axis, std::size_t i) {
      for (std::uint8_t v = 0; v < axis.size; ++v) {
        const Point y = x.with(i, v);
        CHECK(y[i] == v);
        for (std::size_t j = 0; j < axis_count; ++j)
          if (j != i) CHECK(y[j] == x[j]);
      }
    });
  constexpr Point p = make_point({GemmBackend::portable, QkNorm::fused_quant});
  STATIC_REQUIRE(p.get<GemmBackend>() == GemmBackend::portable);
  STATIC_REQUIRE(p.get<QkNorm>() == QkNorm::fused_quant);
  STATIC_REQUIRE(p.get<BmmFormat>() == BmmFormat::fp8);
}

TEST_CASE("the two QK norm variables feed one axis") {
  auto qk = [](const char* fusion, const char* quant) {
    return point_from(env::Config::from({{"ATOM_ENABLE_DS_QKNORM_FUSION", fusion},
                                         {"ATOM_ENABLE_DS_QKNORM_QUANT_FUSION", quant}}))
        .get<QkNorm>();
  };
  CHECK(qk("0", "0") == QkNorm::separate);
  CHECK(qk("1", "0") == QkNorm::fused);
  CHECK(qk("0", "1") == QkNorm::fused_quant);
  CHECK(qk("1", "1") == QkNorm::fused_quant);
}

TEMPLATE_TEST_CASE_SIG("reachability: every setting resolves, every instantiation is reached", "",
                       ((PipelineId P), P), PipelineId::mla_attention, PipelineId::moe_block,
                       PipelineId::qwen3_attention, PipelineId::dense_mlp) {
  for (BackendId b : {BackendId::host, BackendId::gpu}) {
    // What this build compiled: all canonical points, or the build profile's subset of them.
    const std::set<Key> built = test::built_keys(P, b);
    std::set<Key> in_table, reached;
    for (const auto& e : dispatch::table<P>())
      if (key_backend(e.key) == b) in_table.insert(e.key);
    CHECK(in_table == built);
    for (Key k : built) CHECK(canonical(reads_of<P>, key_point(k)) == key_point(k));
    // Every environment with weights and caches of every format (the data sets those axes).
    for (const auto& e : all_policy_environments())
      for (std::uint8_t f = 0; f < weight_format.size * kv_cache_format.size; ++f) {
        const Point asked = point_from(env::Config::from(e))
                                .with(axis_index<WeightFormat>, f % weight_format.size)
                                .with(axis_index<KvCacheFormat>, f / weight_format.size);
        const Key want = key(P, b, canonical(P, asked));
        if (built.count(want)) {
          const auto h = dispatch::resolve_point<P>(asked, b);
          CHECK(key(P, b, h.point()) == want);
          reached.insert(want);
        } else {
          CHECK_THROWS_AS(dispatch::resolve_point<P>(asked, b), dispatch::DispatchError);
        }
      }
    CHECK(reached == built);
  }
}

TEST_CASE("the variable expectations cover every policy variable") {
  for (const auto& s : env::registry) {
    if (!s.feeds.starts_with("axis: ")) continue;
    INFO(s.name << " feeds an axis: say in expected_readers() which pipelines it changes");
    CHECK(expected_readers().count(std::string(s.name)) == 1);
  }
}

TEMPLATE_TEST_CASE_SIG("flipping one variable changes the instantiation exactly when the rules say",
                       "", ((PipelineId P), P), PipelineId::mla_attention, PipelineId::moe_block,
                       PipelineId::qwen3_attention, PipelineId::dense_mlp) {
  // The point is resolved as the lookup resolves it (so this holds under any build profile); the
  // instance name is the instance it selects.
  std::set<std::string> changed_by;
  for (const auto& e : all_policy_environments()) {
    const Point base = resolve(P, env::Config::from(e));
    for (const auto& [name, value] : e) {
      auto flipped = e;
      if (name == "ATOM_DUAL_STREAM_MOE_TOKEN_THRESHOLD")
        flipped[name] = value == "0" ? "7" : "0";
      else
        flipped[name] = value == "0" ? "1" : "0";
      const Point other = resolve(P, env::Config::from(flipped));
      // The declarations' answer: the variable feeds an axis the pipeline reads.
      bool should_change = false;
      for_each_axis([&](const auto& axis, std::size_t i) {
        for (env::Var v : axis.vars)
          if (env::spec(v).name == name) should_change = reads_of<P>[i];
      });
      if (name == "ATOM_ENABLE_DS_QKNORM_FUSION" &&
          e.at("ATOM_ENABLE_DS_QKNORM_QUANT_FUSION") == "1")
        should_change = false;
      INFO(pipeline_name(P) << ": flipping " << name << " from " << value << " in "
                            << instance_name(P, BackendId::host, base));
      CHECK((base != other) == should_change);
      if (base != other) changed_by.insert(name);
    }
  }
  // The hand-written answer.
  std::set<std::string> expected;
  for (const auto& [name, readers] : expected_readers())
    if (readers.count(P)) expected.insert(name);
  INFO(pipeline_name(P));
  CHECK(changed_by == expected);
}

TEST_CASE("the settings printed for an instantiation select it") {
  // With the formats of the weights and caches, which no setting selects (the data does).
  for (PipelineId p : pipelines)
    for (const Point& x : all_points) {
      const Point c = canonical(p, x);
      Point selected = point_from(env::Config::from(environment_for(p, c)));
      for_each_axis([&](const auto& axis, std::size_t i) {
        if (axis.source != AxisSource::environment) selected = selected.with(i, c[i]);
      });
      CHECK(canonical(p, selected) == c);
    }
}

TEST_CASE("an axis needs a written rule unless a boolean feeds its two values") {
  enum class Three : std::uint8_t { a, b, c };
  constexpr Axis<Three, 3> three_without_rule{.name = "three",
                                              .tag = "t",
                                              .type_name = "Three",
                                              .enumerators = {"a", "b", "c"},
                                              .labels = {"a", "b", "c"},
                                              .vars = {env::Var::use_triton_gemm}};
  STATIC_REQUIRE_FALSE(policy::detail::well_formed(three_without_rule));
  constexpr Axis<Three, 2> integer_without_rule{
      .name = "threshold",
      .tag = "t",
      .type_name = "Three",
      .enumerators = {"a", "b"},
      .labels = {"a", "b"},
      .vars = {env::Var::dual_stream_moe_token_threshold}};
  STATIC_REQUIRE_FALSE(policy::detail::well_formed(integer_without_rule));
  constexpr Axis<Three, 2> unnamed_value{.name = "two",
                                         .tag = "t",
                                         .type_name = "Three",
                                         .enumerators = {"a", ""},
                                         .labels = {"a", "b"},
                                         .vars = {env::Var::use_triton_gemm}};
  STATIC_REQUIRE_FALSE(policy::detail::well_formed(unnamed_value));
  STATIC_REQUIRE(policy::detail::well_formed(gemm_backend));
  STATIC_REQUIRE(policy::detail::well_formed(qk_norm));
}
