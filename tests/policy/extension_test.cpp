// The extension registry (atom/extend): an extension's variables read with atom's, its
// instances found by resolution next to atom's own, folds and misses. The extension here is
// registered by hand, as a generated table.cpp registers one (the generator itself is tested by
// building examples/extension against an installed tree, tests/install).
#include <catch2/catch.hpp>
#include <string>

#include "atom/dispatch/dispatch.hpp"
#include "atom/extend/extension.hpp"

using namespace atom;
using policy::BackendId;
using policy::PipelineId;

namespace {

enum class Trace : std::uint8_t { off, on };
enum class Level : std::uint8_t { zero, one, two };
inline constexpr extend::Axis<Trace, 2> trace{.name = "trace",
                                              .tag = "tr",
                                              .type_name = "Trace",
                                              .enumerators = {"off", "on"},
                                              .labels = {"off", "on"},
                                              .variable = {.name = "ATOM_TEST_EXTENSION_TRACE",
                                                           .type = env::Type::boolean,
                                                           .default_text = "false",
                                                           .doc = "a test extension's flag"}};
inline constexpr extend::Axis<Level, 3> level{.name = "level",
                                              .tag = "lv",
                                              .type_name = "Level",
                                              .enumerators = {"zero", "one", "two"},
                                              .labels = {"zero", "one", "two"},
                                              .variable = {.name = "TESTEXT_LEVEL",
                                                           .type = env::Type::integer,
                                                           .default_text = "0",
                                                           .doc = "a test extension's level"}};

int calls = 0;
void traced_mlp(const pipeline::DenseMlpArgs&) {
  ++calls;
}

struct TracedMlp : extend::Extends<PipelineId::dense_mlp> {
  using reads = std::tuple<Trace>;
};
struct Levels : extend::Own {
  static constexpr std::string_view name = "levels";
  using args = int;
  using reads = std::tuple<Level>;
};
int last_level = -1;
template <int L>
void level_run(const int&) {
  last_level = L;
}

struct Extension {
  static constexpr std::string_view name = "testext";
  static constexpr std::tuple axes{trace, level};
  using pipelines = std::tuple<TracedMlp, Levels>;
};

// The default dense_mlp point of this build's table (atom's own row), with the trace on.
const policy::Point dense_default = policy::resolve(PipelineId::dense_mlp, env::Config{});
const extend::Instance<TracedMlp> traced[] = {
    {BackendId::host, {dense_default.packed, 0x1}, "testext.dense_mlp.host.tr-on", &traced_mlp}};
const extend::Instance<Levels> levels[] = {
    {BackendId::host, {0, 0x00}, "testext.levels.host.lv-zero", &level_run<0>},
    {BackendId::host, {0, 0x10}, "testext.levels.host.lv-one", &level_run<1>},
    {BackendId::host, {0, 0x20}, "testext.levels.host.lv-two", &level_run<2>}};
const bool registered = extend::add<Extension>(traced, levels);

// A second extension of the same pipeline.
enum class Other : std::uint8_t { off, on };
inline constexpr extend::Axis<Other, 2> other{
    .name = "other",
    .tag = "ot",
    .type_name = "Other",
    .enumerators = {"off", "on"},
    .labels = {"off", "on"},
    .variable = {.name = "OTHEREXT_FLAG",
                 .type = env::Type::boolean,
                 .default_text = "false",
                 .doc = "a second test extension's flag"}};
struct OtherMlp : extend::Extends<PipelineId::dense_mlp> {
  using reads = std::tuple<Other>;
};
struct OtherExtension {
  static constexpr std::string_view name = "otherext";
  static constexpr std::tuple axes{other};
  using pipelines = std::tuple<OtherMlp>;
};
const extend::Instance<OtherMlp> other_rows[] = {
    {BackendId::host, {dense_default.packed, 0x1}, "otherext.dense_mlp.host.ot-on", &traced_mlp}};
const bool other_registered = extend::add<OtherExtension>(other_rows);

env::Config with(env::Environment e) {
  return env::Config::from(e);
}

}  // namespace

TEST_CASE("extension: its variables are read, checked and never unknown") {
  REQUIRE(registered);
  const auto r = env::Config::read({{"ATOM_TEST_EXTENSION_TRACE", "yes"}, {"TESTEXT_LEVEL", "2"}});
  REQUIRE(r.config);
  CHECK(r.warnings.empty());
  CHECK(std::get<bool>(r.config->value("ATOM_TEST_EXTENSION_TRACE")));
  CHECK(std::get<std::int64_t>(r.config->value("TESTEXT_LEVEL")) == 2);
  CHECK(policy::point_from(*r.config).extension != 0);
  CHECK(policy::point_from(env::Config{}).extension == 0);

  const auto bad = env::Config::read({{"TESTEXT_LEVEL", "3"}, {"ATOM_TEST_EXTENSION_TRACE", "2"}});
  REQUIRE(bad.errors.size() == 2);
  CHECK_THAT(bad.errors[0] + bad.errors[1],
             Catch::Contains("TESTEXT_LEVEL=\"3\" is out of range; accepted: an integer 0..2") &&
                 Catch::Contains("ATOM_TEST_EXTENSION_TRACE=\"2\" is not a valid bool"));
  CHECK_THROWS_WITH(env::Config{}.value("NOT_A_VARIABLE"),
                    Catch::Contains("is not an extension's variable"));
}

TEST_CASE("extension: its instances extend atom's pipeline, atom's serve the first value") {
  if (dispatch::table<PipelineId::dense_mlp>().empty()) return;  // a profile without dense_mlp
  const auto atoms = dispatch::resolve<PipelineId::dense_mlp>(env::Config{}, BackendId::host);
  CHECK(atoms.name().starts_with("dense_mlp.host."));

  const auto on = with({{"ATOM_TEST_EXTENSION_TRACE", "1"}});
  const auto ext = dispatch::resolve<PipelineId::dense_mlp>(on, BackendId::host);
  CHECK(ext.name() == "testext.dense_mlp.host.tr-on");
  calls = 0;
  ext(pipeline::DenseMlpArgs{});
  CHECK(calls == 1);

  // The level axis is not read by the dense MLP: it folds, and atom's instance stays.
  const auto folded =
      dispatch::resolve<PipelineId::dense_mlp>(with({{"TESTEXT_LEVEL", "2"}}), BackendId::host);
  CHECK(folded.name() == atoms.name());

  // A point the extension has no instance for is a miss that names the extension's value.
  CHECK_THROWS_WITH(dispatch::resolve<PipelineId::dense_mlp>(on, BackendId::gpu),
                    Catch::Contains("on the gpu backend") && Catch::Contains("testext.trace=on") &&
                        Catch::Contains("testext.dense_mlp.host.tr-on"));
  CHECK_THROWS_WITH(
      dispatch::resolve<PipelineId::dense_mlp>(
          with({{"ATOM_TEST_EXTENSION_TRACE", "1"}, {"ATOM_USE_TRITON_GEMM", "1"}}),
          BackendId::host),
      Catch::Contains("no instance of dense_mlp") && Catch::Contains("gemm_backend=triton"));
}

TEST_CASE("extension: two extensions of one pipeline, each alone, never silently together") {
  REQUIRE(other_registered);
  if (dispatch::table<PipelineId::dense_mlp>().empty()) return;
  CHECK(dispatch::resolve<PipelineId::dense_mlp>(with({{"OTHEREXT_FLAG", "1"}}), BackendId::host)
            .name() == "otherext.dense_mlp.host.ot-on");
  CHECK(dispatch::resolve<PipelineId::dense_mlp>(with({{"ATOM_TEST_EXTENSION_TRACE", "1"}}),
                                                 BackendId::host)
            .name() == "testext.dense_mlp.host.tr-on");
  CHECK_THROWS_WITH(
      dispatch::resolve<PipelineId::dense_mlp>(
          with({{"ATOM_TEST_EXTENSION_TRACE", "1"}, {"OTHEREXT_FLAG", "1"}}), BackendId::host),
      Catch::Contains("testext.trace=on otherext.other=on") &&
          Catch::Contains("otherext.dense_mlp.host.ot-on"));
}

TEST_CASE("extension: a pipeline of its own resolves at every value of its axis") {
  for (int l = 0; l < 3; ++l) {
    const auto h =
        extend::resolve<Levels>(with({{"TESTEXT_LEVEL", std::to_string(l)}}), BackendId::host);
    h(0);
    CHECK(last_level == l);
    CHECK(h.name().ends_with(level.labels[l]));
  }
  CHECK_THROWS_AS(extend::resolve<Levels>(env::Config{}, BackendId::gpu), dispatch::DispatchError);
  CHECK(extend::describe(policy::point_from(with({{"TESTEXT_LEVEL", "1"}})).extension) ==
        "testext.level=one");
}
