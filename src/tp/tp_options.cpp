#include <string>
#include <utility>

#include "atom/dist/tp.hpp"

namespace atom::dist {

TpError::TpError(std::int64_t rank, std::string operation, std::string cause)
    : std::runtime_error("TP rank " + std::to_string(rank) + ": " + operation +
                         " failed: " + cause),
      rank_(rank),
      operation_(std::move(operation)),
      cause_(std::move(cause)) {}

TpOptions tp_options(const env::Config& config, std::int64_t rank, std::int64_t size, int device) {
  TpOptions options;
  options.rank = rank;
  options.size = size;
  options.device = device;
  options.fusion = config.get<env::Var::enable_allreduce_rmsnorm_fusion>();
  return options;
}

void check_tp_options(const TpOptions& o) {
  const auto bad = [&](const std::string& why) { throw TpError(o.rank, "joining the group", why); };
  if (o.size < 1 || o.size > tp_max_ranks)
    bad("size " + std::to_string(o.size) + " is outside 1.." + std::to_string(tp_max_ranks));
  if (o.rank < 0 || o.rank >= o.size)
    bad("rank " + std::to_string(o.rank) + " is outside 0.." + std::to_string(o.size - 1));
  if (o.device < 0) bad("device " + std::to_string(o.device) + " is negative");
  if (o.size > 1 && o.port == 0) bad("port 0: the store needs a port every rank knows");
  if (o.timeout.count() <= 0)
    bad("timeout " + std::to_string(o.timeout.count()) + " ms is not positive");
  if (o.max_elements < 0) bad("max_elements " + std::to_string(o.max_elements) + " is negative");
}

}  // namespace atom::dist
