#include <catch2/catch.hpp>

#include <set>
#include <string>
#include <vector>

#include "atom/dispatch/dispatch.hpp"
#include "atom/policy/space.hpp"

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
std::set<std::string> reached_names(BackendId b) {
  std::set<std::string> names;
  for (const auto& e : all_policy_environments()) {
    const auto h = dispatch::resolve<P>(env::Config::from(e), b);
    names.insert(std::string(h.name()));
  }
  return names;
}

template <PipelineId P>
std::set<std::string> table_names(BackendId b) {
  std::set<std::string> names;
  for (const auto& e : dispatch::table<P>())
    if (key_backend(e.key) == b) names.insert(std::string(e.name));
  return names;
}

}  // namespace

TEST_CASE("every axis is fed by variables that exist and say so in the registry") {
  for_each_axis([](const auto& axis) {
    for (env::Var v : axis.vars) {
      INFO(axis.name << " <- " << env::spec(v).name);
      CHECK(env::spec(v).feeds == "axis: " + std::string(axis.name));
    }
  });
  // Conversely, every variable that says it feeds an axis is one of that axis's variables.
  for (const auto& s : env::registry) {
    if (!s.feeds.starts_with("axis: ")) continue;
    bool found = false;
    for_each_axis([&](const auto& axis) {
      for (env::Var v : axis.vars) found = found || v == s.id;
    });
    INFO(s.name);
    CHECK(found);
  }
}

TEST_CASE("the product space and the canonical points per pipeline") {
  STATIC_REQUIRE(all_points.size() == 2 * 2 * 2 * 2 * 3 * 2 * 2);
  STATIC_REQUIRE(canonical_points<PipelineId::mla_attention>.size() == 48);
  STATIC_REQUIRE(canonical_points<PipelineId::moe_block>.size() == 8);
  STATIC_REQUIRE(canonical_points<PipelineId::qwen3_attention>.size() == 8);
  STATIC_REQUIRE(canonical_points<PipelineId::ds_layer>.size() == 96);
  STATIC_REQUIRE(canonical_points<PipelineId::qwen3_layer>.size() == 16);
  for (const Point& x : canonical_points<PipelineId::qwen3_attention>) {
    CHECK(x.bmm == BmmFormat::fp8);  // folded: Qwen3 has no absorbed BMMs
    CHECK(x.qk_norm == QkNorm::separate);
    CHECK(x.input_norm_quant == InputNormQuant::separate);
  }
}

TEST_CASE("keys round-trip and are unique") {
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
}

TEST_CASE("the two QK norm variables feed one axis") {
  auto qk = [](const char* fusion, const char* quant) {
    return point_from(env::Config::from({{"ATOM_ENABLE_DS_QKNORM_FUSION", fusion},
                                         {"ATOM_ENABLE_DS_QKNORM_QUANT_FUSION", quant}}))
        .qk_norm;
  };
  CHECK(qk("0", "0") == QkNorm::separate);
  CHECK(qk("1", "0") == QkNorm::fused);
  CHECK(qk("0", "1") == QkNorm::fused_quant);
  CHECK(qk("1", "1") == QkNorm::fused_quant);
}

TEMPLATE_TEST_CASE_SIG("reachability: every setting resolves, every instantiation is reached", "",
                       ((PipelineId P), P), PipelineId::mla_attention, PipelineId::moe_block,
                       PipelineId::qwen3_attention, PipelineId::ds_layer, PipelineId::qwen3_layer) {
  const auto table = table_names<P>(BackendId::host);
  CHECK(table.size() == canonical_points<P>.size());
  CHECK(reached_names<P>(BackendId::host) == table);
  // A build with a GPU backend has the same points on it.
  const auto gpu_table = table_names<P>(BackendId::gpu);
  if (!gpu_table.empty()) {
    CHECK(gpu_table.size() == canonical_points<P>.size());
    CHECK(reached_names<P>(BackendId::gpu) == gpu_table);
  }
}

TEMPLATE_TEST_CASE_SIG("flipping one variable changes the instantiation exactly when the rules say",
                       "", ((PipelineId P), P), PipelineId::mla_attention, PipelineId::moe_block,
                       PipelineId::qwen3_attention, PipelineId::ds_layer, PipelineId::qwen3_layer) {
  const AxisSet used = axes_of(P);
  for (const auto& e : all_policy_environments()) {
    const auto base = dispatch::resolve<P>(env::Config::from(e), BackendId::host);
    for (const auto& [name, value] : e) {
      auto flipped = e;
      if (name == "ATOM_DUAL_STREAM_MOE_TOKEN_THRESHOLD")
        flipped[name] = value == "0" ? "7" : "0";
      else
        flipped[name] = value == "0" ? "1" : "0";
      const auto other = dispatch::resolve<P>(env::Config::from(flipped), BackendId::host);
      // The rule, restated from the design rather than from point_from().
      bool should_change = false;
      for_each_axis([&](const auto& axis) {
        for (env::Var v : axis.vars)
          if (env::spec(v).name == name) should_change = uses(used, axis.id);
      });
      if (name == "ATOM_ENABLE_DS_QKNORM_FUSION" &&
          e.at("ATOM_ENABLE_DS_QKNORM_QUANT_FUSION") == "1")
        should_change = false;
      INFO(pipeline_name(P) << ": flipping " << name << " from " << value << " in " << base.name());
      CHECK((base.name() != other.name()) == should_change);
    }
  }
}

TEST_CASE("the settings printed for an instantiation select it") {
  for (PipelineId p : pipelines)
    for (const Point& x : all_points) {
      const Point c = canonical(p, x);
      CHECK(resolve(p, env::Config::from(environment_for(p, c))) == c);
    }
}
