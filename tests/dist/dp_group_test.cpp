#include <atom/dist/dp_group.hpp>
#include <catch2/catch.hpp>
#include <filesystem>
#include <functional>
#include <random>

#include "spawn.hpp"

namespace {

using atom::dist::BatchShape;
using atom::dist::DpGroup;
using atom::dist::RankBatch;
using atom::dist::testing::free_port;
using atom::dist::testing::Listener;
using atom::dist::testing::Outcome;
using atom::dist::testing::run_workers;
using atom::dist::testing::Worker;
using namespace std::chrono_literals;

constexpr auto fault_timeout = 1500ms;
// How long past its timeout a rank may take to report a fault: process start-up on a loaded
// two-core machine, not a second timeout.
constexpr double fault_slack_s = 2.5;

std::string timeout_arg(std::chrono::milliseconds t = fault_timeout) {
  return std::to_string(t.count());
}

Worker rank_worker(std::int64_t rank, std::int64_t size, std::uint16_t port,
                   std::vector<std::string> args) {
  return {{{"ATOM_DP_RANK", std::to_string(rank)},
           {"ATOM_DP_RANK_LOCAL", std::to_string(rank % 2)},
           {"ATOM_DP_SIZE", std::to_string(size)},
           {"ATOM_DP_MASTER_IP", "127.0.0.1"},
           {"ATOM_DP_MASTER_PORT", std::to_string(port)}},
          std::move(args)};
}

std::string describe(const std::vector<Outcome>& out) {
  std::string text;
  for (std::size_t i = 0; i < out.size(); ++i)
    text += "worker " + std::to_string(i) + ": exit " + std::to_string(out[i].exit_code) +
            (out[i].signal ? " (signal " + std::to_string(out[i].signal) + ")" : "") +
            (out[i].killed ? " (killed at the limit)" : "") + " after " +
            std::to_string(out[i].seconds) + " s\n" + out[i].output + "\n";
  return text;
}

// Runs a group on a free port; picks another port if a parallel test took this one first.
std::vector<Outcome> run_group(const std::function<std::vector<Worker>(std::uint16_t)>& make,
                               std::chrono::milliseconds limit) {
  for (int attempt = 0;; ++attempt) {
    auto out = run_workers(ATOM_DIST_WORKER, make(free_port()), limit);
    const bool collided = std::any_of(out.begin(), out.end(), [](const Outcome& o) {
      return o.output.find("Address already in use") != std::string::npos;
    });
    if (!collided || attempt == 4) return out;
  }
}

std::vector<Outcome> run_steps(std::int64_t size, std::int64_t steps,
                               std::vector<std::string> extra = {}) {
  return run_group(
      [&](std::uint16_t port) {
        std::vector<Worker> workers;
        for (std::int64_t r = 0; r < size; ++r) {
          std::vector<std::string> args{
              "run",     "--timeout-ms",       "20000", "--seed", std::to_string(Catch::rngSeed()),
              "--steps", std::to_string(steps)};
          args.insert(args.end(), extra.begin(), extra.end());
          workers.push_back(rank_worker(r, size, port, args));
        }
        return workers;
      },
      60s);
}

void check_agreement(std::int64_t size, std::int64_t steps) {
  const auto out = run_steps(size, steps);
  INFO(describe(out));
  REQUIRE(out.size() == static_cast<std::size_t>(size));
  for (const auto& o : out) {
    CHECK(o.exit_code == 0);
    CHECK(o.output.find("ok " + std::to_string(steps) + " steps") != std::string::npos);
  }
}

// Every rank in `survivors` ended with a DistError whose text contains every fragment.
void check_failed(const std::vector<Outcome>& out, const std::vector<std::size_t>& survivors,
                  const std::vector<std::string>& fragments, double within_s) {
  INFO(describe(out));
  for (const auto i : survivors) {
    CAPTURE(i);
    CHECK_FALSE(out[i].killed);
    CHECK(out[i].exit_code == 3);
    CHECK(out[i].seconds < within_s);
    for (const auto& f : fragments) {
      CAPTURE(f);
      CHECK(out[i].output.find(f) != std::string::npos);
    }
  }
}

double fault_limit_s() {
  return std::chrono::duration<double>(fault_timeout).count() + fault_slack_s;
}

std::vector<std::string> fault_args(std::vector<std::string> extra = {}) {
  std::vector<std::string> args{
      "run",     "--timeout-ms", timeout_arg(), "--seed", std::to_string(Catch::rngSeed()),
      "--steps", "100000"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

std::size_t open_fds() {
  return static_cast<std::size_t>(std::distance(
      std::filesystem::directory_iterator("/proc/self/fd"), std::filesystem::directory_iterator{}));
}

}  // namespace

TEST_CASE("decide_padding: the maximum over ranks; uniform decode only when nobody prefills") {
  std::mt19937_64 rng(Catch::rngSeed());
  for (const std::size_t ranks : {1u, 2u, 3u, 8u, 17u, 769u}) {
    CAPTURE(ranks);
    std::vector<RankBatch> batches(ranks);
    std::int64_t want = 0;
    for (auto& b : batches) {
      b.num_tokens = static_cast<std::int64_t>(rng() % 8193);
      want = std::max(want, b.num_tokens);
    }
    auto d = atom::dist::decide_padding(batches);
    CHECK(d.padded_tokens == want);
    CHECK(d.shape == BatchShape::uniform_decode);
    batches[rng() % ranks].is_prefill = true;
    d = atom::dist::decide_padding(batches);
    CHECK(d.padded_tokens == want);
    CHECK(d.shape == BatchShape::ragged);
  }
  CHECK_THROWS_WITH(atom::dist::decide_padding({}), Catch::Contains("no batches"));
  const std::vector<RankBatch> negative{{4, false}, {-3, false}};
  CHECK_THROWS_WITH(atom::dist::decide_padding(negative),
                    Catch::Contains("rank 1") && Catch::Contains("-3"));
}

TEST_CASE("DP size 1: collectives are local and no socket is opened") {
  // The configured port is taken: a size-1 group must not even try it.
  Listener occupant(true);
  const auto config =
      atom::env::Config::from({{"ATOM_DP_SIZE", "1"},
                               {"ATOM_DP_RANK_LOCAL", "3"},
                               {"ATOM_DP_MASTER_PORT", std::to_string(occupant.port())}});
  const auto fds_before = open_fds();
  {
    DpGroup group(config);
    CHECK(open_fds() == fds_before);
    CHECK(group.rank() == 0);
    CHECK(group.size() == 1);
    CHECK(group.device_index() == 3);
    std::vector<std::int64_t> values{-7, 1 << 20, 5};
    group.sync_state(values);
    CHECK(values == std::vector<std::int64_t>{-7, 1 << 20, 5});
    CHECK(group.sync_step({true, false}) == atom::dist::StepState{true, false});
    CHECK(group.gather_token_counts({17, true}) == std::vector<RankBatch>{{17, true}});
    const auto plan = group.exchange_step({false, true}, {769, false});
    CHECK(plan.state == atom::dist::StepState{false, true});
    CHECK(plan.padding == atom::dist::PaddingDecision{769, BatchShape::uniform_decode});
    CHECK_FALSE(plan.run_dummy_batch);
    CHECK(group.exchange_step({true, false}, {0, false}).run_dummy_batch);
    CHECK_FALSE(group.exchange_step({false, false}, {0, false}).run_dummy_batch);
    CHECK_THROWS_AS(group.gather_token_counts({-1, false}), atom::dist::DistError);
    std::vector<std::int64_t> too_many(DpGroup::max_state_values + 1, 1);
    CHECK_THROWS_AS(group.sync_state(too_many), std::invalid_argument);
    group.barrier();
    CHECK(open_fds() == fds_before);
    group.shutdown();
    CHECK_THROWS_WITH(group.barrier(), Catch::Contains("shut down"));
  }
  CHECK(open_fds() == fds_before);
}

TEST_CASE("DP options: a non-positive timeout is rejected") {
  atom::dist::DpGroupOptions options;
  options.timeout = 0ms;
  CHECK_THROWS_WITH(DpGroup(atom::env::Config{}, options), Catch::Contains("timeout"));
}

TEST_CASE("2 processes agree on state, token counts and padding for 10000 steps") {
  check_agreement(2, 10000);
}

TEST_CASE("3 processes agree on state, token counts and padding") {
  check_agreement(3, 1500);
}

TEST_CASE("4 processes agree on state, token counts and padding") {
  check_agreement(4, 1000);
}

TEST_CASE("fault: rank 0's port is in use") {
  Listener occupant(true);
  std::vector<Worker> workers;
  for (int r = 0; r < 2; ++r) workers.push_back(rank_worker(r, 2, occupant.port(), fault_args()));
  const auto out = run_workers(ATOM_DIST_WORKER, workers, 20s);
  const auto where = "127.0.0.1:" + std::to_string(occupant.port());
  check_failed(out, {0}, {"DP rank 0", "rendezvous store", where, "in use"}, fault_limit_s());
  // Rank 1 reaches the occupant, which is no store: it must not wait forever for a reply.
  check_failed(out, {1}, {"DP rank 1", "no reply", where}, fault_limit_s() + 1.0);
}

TEST_CASE("fault: the master is unreachable") {
  const auto out = run_group(
      [](std::uint16_t port) { return std::vector<Worker>{rank_worker(1, 2, port, fault_args())}; },
      20s);
  check_failed(out, {0}, {"DP rank 1", "could not reach", "127.0.0.1:", "refused"},
               fault_limit_s());
}

TEST_CASE("fault: a rank at or above the size") {
  const auto out = run_group(
      [](std::uint16_t port) {
        return std::vector<Worker>{rank_worker(0, 2, port, fault_args()),
                                   rank_worker(2, 2, port, fault_args())};
      },
      20s);
  INFO(describe(out));
  CHECK(out[1].exit_code == 4);
  CHECK(out[1].output.find("ATOM_DP_RANK") != std::string::npos);
  check_failed(out, {0}, {"DP rank 0", "rank(s) 1 never joined"}, fault_limit_s());
}

TEST_CASE("fault: two processes with the same rank") {
  const auto out = run_group(
      [](std::uint16_t port) {
        return std::vector<Worker>{rank_worker(0, 3, port, fault_args()),
                                   rank_worker(1, 3, port, fault_args()),
                                   rank_worker(1, 3, port, fault_args())};
      },
      20s);
  // The store fails as soon as the second claim arrives, well before the timeout.
  check_failed(out, {0, 1, 2}, {"two processes claim rank 1"}, fault_limit_s());
}

TEST_CASE("fault: ranks disagree on the size") {
  const auto out = run_group(
      [](std::uint16_t port) {
        return std::vector<Worker>{rank_worker(0, 2, port, fault_args()),
                                   rank_worker(1, 3, port, fault_args())};
      },
      20s);
  check_failed(out, {0, 1}, {"disagree on ATOM_DP_SIZE", "rank 0 has 2, rank 1 has 3"},
               fault_limit_s());
}

TEST_CASE("fault: a rank never arrives") {
  const auto out = run_group(
      [](std::uint16_t port) {
        return std::vector<Worker>{rank_worker(0, 3, port, fault_args()),
                                   rank_worker(1, 3, port, fault_args())};
      },
      20s);
  check_failed(out, {0, 1}, {"rank(s) 2 never joined within 1500 ms"}, fault_limit_s());
}

// Sizes 3 and 4 take the two all-gather plans (Bruck and star); rank 0 also serves the store.
TEST_CASE("fault: a rank dies mid-run") {
  const auto size = GENERATE(3, 4);
  const auto victim = GENERATE(0, 1);
  CAPTURE(size, victim);
  const auto out = run_group(
      [&](std::uint16_t port) {
        std::vector<Worker> workers;
        for (int r = 0; r < size; ++r)
          workers.push_back(rank_worker(
              r, size, port, fault_args({"--victim", std::to_string(victim), "--die-at", "300"})));
        return workers;
      },
      20s);
  INFO(describe(out));
  CHECK(out[static_cast<std::size_t>(victim)].exit_code == 9);
  std::vector<std::size_t> survivors;
  for (std::size_t r = 0; r < out.size(); ++r)
    if (r != static_cast<std::size_t>(victim)) survivors.push_back(r);
  check_failed(out, survivors, {"failed: "}, fault_limit_s());
}

TEST_CASE("fault: a rank stops calling collectives") {
  const auto size = GENERATE(3, 4);
  CAPTURE(size);
  const auto out = run_group(
      [&](std::uint16_t port) {
        std::vector<Worker> workers;
        for (int r = 0; r < size; ++r)
          workers.push_back(
              rank_worker(r, size, port, fault_args({"--victim", "1", "--stall-at", "200"})));
        return workers;
      },
      std::chrono::milliseconds(static_cast<long>(fault_limit_s() * 1000 + 1000)));
  INFO(describe(out));
  CHECK(out[1].killed);
  std::vector<std::size_t> survivors{0};
  for (std::size_t r = 2; r < out.size(); ++r) survivors.push_back(r);
  check_failed(out, survivors, {"failed: "}, fault_limit_s());
  // Whoever waits on the stalled rank names the timeout; the rest may see it close the group.
  CHECK(out[0].output.find("no answer from the other ranks within 1500 ms") != std::string::npos);
}

TEST_CASE("fault: ranks pass different numbers of state values") {
  const auto out = run_group(
      [](std::uint16_t port) {
        std::vector<Worker> workers;
        for (int r = 0; r < 3; ++r)
          workers.push_back(rank_worker(r, 3, port, {"mismatch", "--timeout-ms", timeout_arg()}));
        return workers;
      },
      20s);
  check_failed(out, {0, 1, 2}, {"sync_state", "ranks are out of step", "with 1 value(s)"},
               fault_limit_s());
}

TEST_CASE("fault: a rank reports a negative token count") {
  const auto out = run_group(
      [](std::uint16_t port) {
        std::vector<Worker> workers;
        for (int r = 0; r < 3; ++r)
          workers.push_back(rank_worker(r, 3, port, {"negative", "--timeout-ms", timeout_arg()}));
        return workers;
      },
      20s);
  check_failed(out, {0, 1, 2}, {"gather_token_counts", "rank 2 reported -5 tokens"},
               fault_limit_s());
}
