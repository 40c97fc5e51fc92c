// The TP group's host side, on any machine: option checks, the fusion flag from the environment,
// and the NCCL loader's errors when the library is missing.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "atom/dist/tp.hpp"
#include "atom/env/config.hpp"
#include "atom/gpu/nccl.hpp"

using atom::dist::TpError;
using atom::dist::TpOptions;

namespace {

std::string error_of(const TpOptions& o) {
  try {
    atom::dist::check_tp_options(o);
  } catch (const TpError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("TP options: every invalid field is named") {
  TpOptions o;
  CHECK(error_of(o).empty());
  o.size = 2;
  o.rank = 1;
  CHECK(error_of(o).empty());
  o.rank = 2;
  CHECK_THAT(error_of(o), Catch::Contains("rank 2 is outside 0..1"));
  o.rank = -1;
  CHECK_THAT(error_of(o), Catch::Contains("rank -1"));
  o.rank = 0;
  o.size = 0;
  CHECK_THAT(error_of(o), Catch::Contains("size 0 is outside 1..8"));
  o.size = 9;
  CHECK_THAT(error_of(o), Catch::Contains("size 9"));
  o.size = 2;
  o.port = 0;
  CHECK_THAT(error_of(o), Catch::Contains("port 0"));
  o.port = 29600;
  o.timeout = std::chrono::milliseconds(0);
  CHECK_THAT(error_of(o), Catch::Contains("timeout 0 ms"));
  o.timeout = std::chrono::milliseconds(10);
  o.max_elements = -3;
  CHECK_THAT(error_of(o), Catch::Contains("max_elements -3"));
  o.max_elements = 17;
  o.device = -1;
  CHECK_THAT(error_of(o), Catch::Contains("device -1"));
  o.device = 0;
  CHECK(error_of(o).empty());
  o.rank = 3;
  o.size = 3;
  CHECK_THAT(error_of(o), Catch::Contains("TP rank 3: joining the group failed: rank 3"));
}

TEST_CASE("TP options: the fused path's default limit shrinks with the group size") {
  using atom::dist::tp_default_fused_max_bytes;
  // Inside the measured windows (hidden 7168): fused up to T = 1024 at TP 2, T = 128 at TP 4.
  const std::size_t row = 7168 * 2;
  CHECK(tp_default_fused_max_bytes(2) >= 1024 * row);
  CHECK(tp_default_fused_max_bytes(2) < 2048 * row);
  CHECK(tp_default_fused_max_bytes(4) >= 128 * row);
  CHECK(tp_default_fused_max_bytes(4) < 256 * row);
  for (std::int64_t size = 2; size < atom::dist::tp_max_ranks; ++size)
    CHECK(tp_default_fused_max_bytes(size + 1) < tp_default_fused_max_bytes(size));
  CHECK(atom::dist::TpOptions{}.fused_max_bytes == 0);
}

TEST_CASE("TP options: fusion follows ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION") {
  using atom::env::Config;
  CHECK(atom::dist::tp_options(Config{}, 1, 2, 1).fusion);
  const auto off = Config::from({{"ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION", "off"}});
  const auto o = atom::dist::tp_options(off, 1, 2, 1);
  CHECK_FALSE(o.fusion);
  CHECK(o.rank == 1);
  CHECK(o.size == 2);
  CHECK(o.device == 1);
}

TEST_CASE("NCCL loader: a missing library is a clear error naming what was tried") {
  namespace nccl = atom::gpu::nccl;
  const std::vector<std::string> names{"libnccl-absent-17.so.2", "librccl-absent-17.so"};
  try {
    nccl::Library library(names);
    FAIL("loading an absent library succeeded");
  } catch (const nccl::NcclError& e) {
    const std::string what = e.what();
    CHECK_THAT(what, Catch::StartsWith("NCCL not found: "));
    CHECK_THAT(what, Catch::Contains("libnccl-absent-17.so.2"));
    CHECK_THAT(what, Catch::Contains("librccl-absent-17.so"));
    CHECK_THAT(what, Catch::Contains("LD_LIBRARY_PATH"));
  }
  CHECK_THROWS_WITH(nccl::Library(std::vector<std::string>{}), Catch::Contains("NCCL not found"));
}

TEST_CASE("NCCL loader: a library without the NCCL API is refused by symbol") {
  namespace nccl = atom::gpu::nccl;
  // libm is always there and has no ncclGetUniqueId.
  const std::vector<std::string> names{"libm.so.6"};
  CHECK_THROWS_WITH(nccl::Library(names), Catch::Contains("has no symbol ncclGetUniqueId"));
}

TEST_CASE("NCCL loader: default names follow the backend") {
  namespace nccl = atom::gpu::nccl;
  CHECK(nccl::default_library_names("cuda").front() == "libnccl.so.2");
  CHECK(nccl::default_library_names("hip").front() == "librccl.so.1");
}
