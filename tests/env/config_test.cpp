#include <catch2/catch.hpp>

#include <cstdlib>
#include <string>
#include <vector>

#include "atom/env/config.hpp"
#include "atom/env/parse.hpp"

using namespace atom::env;

namespace {

// Reads an environment holding one variable; returns the single error, or "" on success.
std::string error_for(std::string_view name, const std::string& value) {
  const Reading r = Config::read({{std::string(name), value}});
  if (r.errors.empty()) return "";
  REQUIRE(r.errors.size() == 1);
  return r.errors.front();
}

std::vector<const VarSpec*> vars_of(Type t) {
  std::vector<const VarSpec*> out;
  for (const auto& s : registry)
    if (s.type == t) out.push_back(&s);
  return out;
}

}  // namespace

TEST_CASE("every variable has its documented default") {
  const Config c;
  CHECK(c.get<Var::dp_rank>() == 0);
  CHECK(c.get<Var::dp_rank_local>() == 0);
  CHECK(c.get<Var::dp_size>() == 1);
  CHECK(c.get<Var::dp_master_ip>() == "127.0.0.1");
  CHECK(c.get<Var::dp_master_port>() == 29500);
  CHECK_FALSE(c.get<Var::disable_mmap>());
  CHECK_FALSE(c.get<Var::disable_vllm_plugin>());
  CHECK_FALSE(c.get<Var::disable_vllm_plugin_attention>());
  CHECK_FALSE(c.get<Var::use_triton_gemm>());
  CHECK_FALSE(c.get<Var::use_triton_mxfp4_bmm>());
  CHECK(c.get<Var::enable_allreduce_rmsnorm_fusion>());
  CHECK(c.get<Var::enable_ds_input_rmsnorm_quant_fusion>());
  CHECK(c.get<Var::enable_ds_qknorm_fusion>());
  CHECK(c.get<Var::enable_ds_qknorm_quant_fusion>());
  CHECK(c.get<Var::dual_stream_moe_token_threshold>() == 1024);
  CHECK_FALSE(c.get<Var::enable_qk_norm_rope_cache_quant_fusion>());
  for (const auto& s : registry) CHECK(c.source(s.id) == Source::default_value);
  CHECK(Config::from({}) == c);
}

TEST_CASE("the empty value means the default") {
  for (const auto& s : registry) {
    const Reading r = Config::read({{std::string(s.name), ""}});
    INFO(s.name);
    REQUIRE(r.errors.empty());
    CHECK(r.config->text(s.id) == std::string(s.default_text));
    CHECK(r.config->source(s.id) == Source::default_value);
  }
}

TEST_CASE("every bool variable accepts every spelling in any case") {
  const std::vector<std::pair<std::string, bool>> spellings{
      {"1", true},      {"0", false},   {"true", true}, {"false", false}, {"TRUE", true},
      {"False", false}, {"yes", true},  {"no", false},  {"YeS", true},    {"NO", false},
      {"on", true},     {"off", false}, {"ON", true},   {"Off", false},   {"tRuE", true}};
  for (const auto* s : vars_of(Type::boolean)) {
    for (const auto& [text, expected] : spellings) {
      INFO(s->name << "=" << text);
      const Reading r = Config::read({{std::string(s->name), text}});
      REQUIRE(r.errors.empty());
      CHECK(std::get<bool>(r.config->value(s->id)) == expected);
      CHECK(r.config->source(s->id) == Source::environment);
    }
  }
}

TEST_CASE("invalid bools name the variable, the value and the spellings") {
  const std::vector<std::string> bad{"2",
                                     "tru",
                                     " 1",
                                     "1 ",
                                     "-1",
                                     "99999",
                                     "1e3",
                                     "0x10",
                                     "yess",
                                     "enabled",
                                     "t",
                                     std::string(10000, 'x'),
                                     "\xc3\xa9t\xc3\xa9",
                                     std::string("1\0", 2)};
  for (const auto* s : vars_of(Type::boolean)) {
    for (const auto& value : bad) {
      INFO(s->name << " with a value of " << value.size() << " bytes");
      const std::string e = error_for(s->name, value);
      CHECK_THAT(e, Catch::StartsWith(std::string(s->name) + "=\""));
      CHECK_THAT(e, Catch::Contains("is not a valid bool; accepted: 1/0, true/false, yes/no, "
                                    "on/off (any case), or empty for the default (" +
                                    std::string(s->default_text) + ")"));
    }
  }
  CHECK(error_for("ATOM_USE_TRITON_GEMM", "tru") ==
        "ATOM_USE_TRITON_GEMM=\"tru\" is not a valid bool; accepted: 1/0, true/false, yes/no, "
        "on/off (any case), or empty for the default (false)");
}

TEST_CASE("non-printable and long values are escaped and shortened in messages") {
  const std::string e = error_for("ATOM_DISABLE_MMAP", "\xc3\xa9\x01");
  CHECK_THAT(e, Catch::StartsWith("ATOM_DISABLE_MMAP=\"\\xc3\\xa9\\x01\""));
  const std::string long_e = error_for("ATOM_DISABLE_MMAP", std::string(10000, 'y'));
  CHECK_THAT(long_e, Catch::Contains("...(10000 bytes)"));
  CHECK(long_e.size() < 400);
}

TEST_CASE("integers are decimal and range-checked") {
  struct Case {
    std::string_view name;
    std::string value;
    std::int64_t expected;
  };
  for (const auto& c :
       std::vector<Case>{{"ATOM_DP_SIZE", "8", 8},
                         {"ATOM_DP_SIZE", "+3", 3},
                         {"ATOM_DP_RANK_LOCAL", "7", 7},
                         {"ATOM_DP_MASTER_PORT", "1", 1},
                         {"ATOM_DP_MASTER_PORT", "65535", 65535},
                         {"ATOM_DP_MASTER_PORT", "007", 7},
                         {"ATOM_DUAL_STREAM_MOE_TOKEN_THRESHOLD", "0", 0},
                         {"ATOM_DUAL_STREAM_MOE_TOKEN_THRESHOLD", "2147483647", 2147483647}}) {
    INFO(c.name << "=" << c.value);
    const Reading r = Config::read({{std::string(c.name), c.value}});
    REQUIRE(r.errors.empty());
    for (const auto& s : registry)
      if (s.name == c.name) CHECK(std::get<std::int64_t>(r.config->value(s.id)) == c.expected);
  }
}

TEST_CASE("invalid integers say why") {
  const std::vector<std::string> not_decimal{
      "1e3", "0x10", " 1",  "1 ",           "",
      "-",   "1.0",  "one", "\xef\xbc\x91", std::string(10000, '7') + "x"};
  for (const auto* s : vars_of(Type::integer)) {
    for (const auto& v : not_decimal) {
      if (v.empty()) continue;  // empty is the default
      INFO(s->name << "=" << v.substr(0, 20));
      CHECK_THAT(error_for(s->name, v),
                 Catch::Contains("is not a decimal integer; accepted: an integer"));
    }
    for (const auto& v : {std::string("99999999999"), std::string("-1"),
                          std::string("99999999999999999999999"), std::string(10000, '9')}) {
      INFO(s->name << "=" << v.substr(0, 20));
      CHECK_THAT(error_for(s->name, v), Catch::Contains("is out of range; accepted: an integer"));
    }
  }
  CHECK(error_for("ATOM_DP_MASTER_PORT", "99999") ==
        "ATOM_DP_MASTER_PORT=\"99999\" is out of range; accepted: an integer 1..65535, or empty "
        "for the default (29500)");
  CHECK_THAT(error_for("ATOM_DP_MASTER_PORT", "0"), Catch::Contains("out of range"));
  CHECK_THAT(error_for("ATOM_DP_MASTER_PORT", "65536"), Catch::Contains("out of range"));
  CHECK_THAT(error_for("ATOM_DP_SIZE", "0"),
             Catch::Contains("out of range; accepted: an integer >= 1"));
  CHECK(error_for("ATOM_DUAL_STREAM_MOE_TOKEN_THRESHOLD", "-1") ==
        "ATOM_DUAL_STREAM_MOE_TOKEN_THRESHOLD=\"-1\" is out of range; accepted: an integer >= 0, "
        "or empty for the default (1024)");
}

TEST_CASE("DP rank must be below DP size") {
  CHECK(error_for("ATOM_DP_RANK", "1") == "ATOM_DP_RANK=1 must be less than ATOM_DP_SIZE=1");
  const Reading ok = Config::read({{"ATOM_DP_RANK", "3"}, {"ATOM_DP_SIZE", "4"}});
  REQUIRE(ok.errors.empty());
  CHECK(ok.config->get<Var::dp_rank>() == 3);
  const Reading bad = Config::read({{"ATOM_DP_RANK", "4"}, {"ATOM_DP_SIZE", "4"}});
  REQUIRE(bad.errors.size() == 1);
  CHECK(bad.errors[0] == "ATOM_DP_RANK=4 must be less than ATOM_DP_SIZE=4");
}

TEST_CASE("the master address accepts host names and IP literals only") {
  for (const std::string ok : {"10.0.0.1", "node-3.cluster", "::1", "[fe80::1]", "localhost"}) {
    const Reading r = Config::read({{"ATOM_DP_MASTER_IP", ok}});
    REQUIRE(r.errors.empty());
    CHECK(r.config->get<Var::dp_master_ip>() == ok);
  }
  for (const std::string bad : {"a b", " 10.0.0.1", "10.0.0.1\n", "h\xc3\xb6st", "x;rm"}) {
    CHECK_THAT(error_for("ATOM_DP_MASTER_IP", bad), Catch::Contains("is not a valid address"));
  }
  CHECK_THAT(error_for("ATOM_DP_MASTER_IP", std::string(254, 'a')),
             Catch::Contains("is not a valid address"));
}

TEST_CASE("every error is reported, not only the first") {
  const Reading r = Config::read({{"ATOM_USE_TRITON_GEMM", "maybe"},
                                  {"ATOM_DP_MASTER_PORT", "http"},
                                  {"ATOM_DISABLE_MMAP", "2"}});
  CHECK_FALSE(r.config.has_value());
  CHECK(r.errors.size() == 3);
  try {
    (void)Config::from({{"ATOM_USE_TRITON_GEMM", "maybe"}, {"ATOM_DP_MASTER_PORT", "http"}});
    FAIL("no exception");
  } catch (const ConfigError& e) {
    CHECK(e.errors().size() == 2);
    CHECK_THAT(std::string(e.what()), Catch::Contains("ATOM_USE_TRITON_GEMM=\"maybe\""));
    CHECK_THAT(std::string(e.what()), Catch::Contains("ATOM_DP_MASTER_PORT=\"http\""));
  }
}

TEST_CASE("unknown ATOM_ variables warn with the nearest known name") {
  const Reading r = Config::read({{"ATOM_USE_TRITON_GEM", "1"},
                                  {"ATOM_ENABLE_DS_QKNORM_FUSON", "0"},
                                  {"ATOM_SOMETHING_ELSE_ENTIRELY", "1"},
                                  {"PATH", "/bin"}});
  REQUIRE(r.errors.empty());
  REQUIRE(r.warnings.size() == 3);
  CHECK(r.warnings[0] ==
        "unknown variable ATOM_ENABLE_DS_QKNORM_FUSON is ignored; did you mean "
        "ATOM_ENABLE_DS_QKNORM_FUSION?");
  CHECK(r.warnings[1] == "unknown variable ATOM_SOMETHING_ELSE_ENTIRELY is ignored");
  CHECK(r.warnings[2] ==
        "unknown variable ATOM_USE_TRITON_GEM is ignored; did you mean ATOM_USE_TRITON_GEMM?");
  // The misspelled variable did not take effect.
  CHECK_FALSE(r.config->get<Var::use_triton_gemm>());
  CHECK(nearest_name("atom_dp_size") == "ATOM_DP_SIZE");
}

TEST_CASE("the environment is read once") {
  REQUIRE(::setenv("ATOM_USE_TRITON_GEMM", "1", 1) == 0);
  REQUIRE(::setenv("ATOM_DUAL_STREAM_MOE_TOKEN_THRESHOLD", "16", 1) == 0);
  const Config c = Config::from_process();
  CHECK(c.get<Var::use_triton_gemm>());
  CHECK(c.source(Var::use_triton_gemm) == Source::environment);
  REQUIRE(::setenv("ATOM_USE_TRITON_GEMM", "0", 1) == 0);
  REQUIRE(::setenv("ATOM_DUAL_STREAM_MOE_TOKEN_THRESHOLD", "garbage", 1) == 0);
  CHECK(c.get<Var::use_triton_gemm>());
  CHECK(c.get<Var::dual_stream_moe_token_threshold>() == 16);
  CHECK_THROWS_AS(Config::from_process(), ConfigError);
  ::unsetenv("ATOM_USE_TRITON_GEMM");
  ::unsetenv("ATOM_DUAL_STREAM_MOE_TOKEN_THRESHOLD");
  CHECK(Config::from_process() == Config{});
}

TEST_CASE("the integer parser is exact at the int64 edges") {
  STATIC_REQUIRE(parse_int("9223372036854775807").value == INT64_MAX);
  STATIC_REQUIRE(parse_int("9223372036854775807").error == IntError::none);
  STATIC_REQUIRE(parse_int("9223372036854775808").error == IntError::overflow);
  STATIC_REQUIRE(parse_int("-42").value == -42);
  STATIC_REQUIRE(parse_int("+").error == IntError::not_decimal);
  STATIC_REQUIRE(parse_int("").error == IntError::not_decimal);
}
