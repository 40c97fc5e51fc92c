#include <catch2/catch.hpp>

#include <sstream>
#include <string>
#include <vector>

#include "atom/env/docs.hpp"

using namespace atom::env;

// The variables table of DESIGN.md: name, type, default. The docs generated from the registry
// must reproduce it row for row.
TEST_CASE("the generated docs table reproduces the design's variable table") {
  const std::vector<std::vector<std::string>> design{
      {"ATOM_DP_RANK", "int", "0"},
      {"ATOM_DP_RANK_LOCAL", "int", "0"},
      {"ATOM_DP_SIZE", "int", "1"},
      {"ATOM_DP_MASTER_IP", "str", "127.0.0.1"},
      {"ATOM_DP_MASTER_PORT", "int", "29500"},
      {"ATOM_DISABLE_MMAP", "bool", "false"},
      {"ATOM_DISABLE_VLLM_PLUGIN", "bool", "false"},
      {"ATOM_DISABLE_VLLM_PLUGIN_ATTENTION", "bool", "false"},
      {"ATOM_USE_TRITON_GEMM", "bool", "false"},
      {"ATOM_USE_TRITON_MXFP4_BMM", "bool", "false"},
      {"ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION", "bool", "true"},
      {"ATOM_ENABLE_DS_INPUT_RMSNORM_QUANT_FUSION", "bool", "true"},
      {"ATOM_ENABLE_DS_QKNORM_FUSION", "bool", "true"},
      {"ATOM_ENABLE_DS_QKNORM_QUANT_FUSION", "bool", "true"},
      {"ATOM_DUAL_STREAM_MOE_TOKEN_THRESHOLD", "int", "1024"},
      {"ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION", "bool", "false"},
  };
  std::istringstream table(markdown_table());
  std::string line;
  std::getline(table, line);  // header
  std::getline(table, line);  // separator
  std::size_t row = 0;
  while (std::getline(table, line)) {
    REQUIRE(row < design.size());
    std::vector<std::string> cells;
    std::istringstream cols(line);
    std::string cell;
    std::getline(cols, cell, '|');  // before the first bar
    while (std::getline(cols, cell, '|')) {
      const auto b = cell.find_first_not_of(' ');
      const auto e = cell.find_last_not_of(' ');
      cells.push_back(b == std::string::npos ? "" : cell.substr(b, e - b + 1));
    }
    REQUIRE(cells.size() >= 3);
    CHECK(cells[0] == design[row][0]);
    CHECK(cells[1] == design[row][1]);
    CHECK(cells[2] == design[row][2]);
    ++row;
  }
  CHECK(row == design.size());
}

TEST_CASE("the listing shows each variable's value and source") {
  const Environment env{{"ATOM_DP_SIZE", "4"}, {"ATOM_USE_TRITON_GEMM", ""}};
  const std::string out = describe(Config::from(env), env);
  CHECK_THAT(out, Catch::Contains("(environment: \"4\")"));
  CHECK_THAT(out, Catch::Contains("(default: set but empty)"));
  CHECK(std::count(out.begin(), out.end(), '\n') == 16);
}
