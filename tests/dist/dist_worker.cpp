// One rank of a test DP group. The parent test spawns several with ATOM_DP_* set, then checks
// their exit codes and output. Every rank derives every rank's per-step inputs from the same
// seed, so each can check the collectives' results on its own.
//
//   dist_worker run       --timeout-ms T --seed S --steps N [--victim R --die-at K | --stall-at K]
//   dist_worker mismatch  --timeout-ms T      (rank r passes r + 1 state values)
//   dist_worker negative  --timeout-ms T      (the last rank reports a negative token count)
//
// Exit codes: 0 ok, 1 a wrong result, 3 DistError, 4 ConfigError, 5 any other error.
#include <unistd.h>

#include <algorithm>
#include <atom/dist/dp_group.hpp>
#include <atom/env/config.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <thread>

#if defined(__SANITIZE_ADDRESS__)
constexpr bool address_sanitizer = true;
#else
constexpr bool address_sanitizer = false;
#endif

namespace {

using atom::dist::DpGroup;
using atom::dist::RankBatch;
using atom::dist::StepState;

std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

struct StepInput {
  StepState state;
  RankBatch batch;
  std::array<std::int64_t, 3> values;
};

StepInput input_of(std::uint64_t seed, std::int64_t rank, std::int64_t step) {
  const auto h = mix(seed ^ mix(static_cast<std::uint64_t>(rank) * 0x100000001b3ull ^
                                mix(static_cast<std::uint64_t>(step))));
  StepInput in;
  in.state.has_unfinished = (h >> 8) % 3 != 0;
  in.state.shutdown = (h >> 16) % 61 == 0;
  in.batch.num_tokens = static_cast<std::int64_t>((h >> 24) % 769);
  in.batch.is_prefill = (h >> 40) % 4 == 0;
  for (std::size_t i = 0; i < in.values.size(); ++i)
    in.values[i] = static_cast<std::int64_t>(mix(h + i));  // any sign
  return in;
}

std::size_t open_fds() {
  return static_cast<std::size_t>(std::distance(
      std::filesystem::directory_iterator("/proc/self/fd"), std::filesystem::directory_iterator{}));
}

long rss_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

int fail(const std::string& what) {
  std::cerr << "wrong result: " << what << "\n";
  return 1;
}

int run_steps(DpGroup& group, const std::map<std::string, std::int64_t>& opt) {
  const auto seed = static_cast<std::uint64_t>(opt.at("seed"));
  const auto steps = opt.at("steps");
  const auto victim = opt.count("victim") ? opt.at("victim") : -1;
  const auto die_at = opt.count("die-at") ? opt.at("die-at") : -1;
  const auto stall_at = opt.count("stall-at") ? opt.at("stall-at") : -1;
  const auto warmup = std::min<std::int64_t>(100, steps / 2);
  std::size_t fds_before = 0;
  long rss_before = 0;
  for (std::int64_t step = 0; step < steps; ++step) {
    if (step == warmup) {
      fds_before = open_fds();
      rss_before = rss_kib();
    }
    if (group.rank() == victim && step == die_at) _exit(9);  // a crash: no destructors run
    if (group.rank() == victim && step == stall_at)
      std::this_thread::sleep_for(std::chrono::hours(1));

    StepState want_state;
    std::array<std::int64_t, 3> want_values;
    want_values.fill(std::numeric_limits<std::int64_t>::min());
    std::vector<RankBatch> want_batches;
    for (std::int64_t r = 0; r < group.size(); ++r) {
      const auto in = input_of(seed, r, step);
      want_state.has_unfinished = want_state.has_unfinished || in.state.has_unfinished;
      want_state.shutdown = want_state.shutdown || in.state.shutdown;
      for (std::size_t i = 0; i < 3; ++i) want_values[i] = std::max(want_values[i], in.values[i]);
      want_batches.push_back(in.batch);
    }
    const auto want_padding = atom::dist::decide_padding(want_batches);
    const auto mine = input_of(seed, group.rank(), step);

    auto values = mine.values;
    group.sync_state(values);
    if (values != want_values) return fail("sync_state at step " + std::to_string(step));
    if (group.sync_step(mine.state) != want_state)
      return fail("sync_step at step " + std::to_string(step));
    const auto batches = group.gather_token_counts(mine.batch);
    if (batches != want_batches) return fail("gather_token_counts at step " + std::to_string(step));
    const auto plan = group.exchange_step(mine.state, mine.batch);
    const bool want_dummy = want_state.has_unfinished && mine.batch.num_tokens == 0;
    if (plan.state != want_state || plan.batches != want_batches || plan.padding != want_padding ||
        plan.run_dummy_batch != want_dummy)
      return fail("exchange_step at step " + std::to_string(step));
  }
  const auto fds_after = open_fds();
  const auto rss_after = rss_kib();
  std::cout << "fds " << fds_before << " -> " << fds_after << ", rss " << rss_before << " -> "
            << rss_after << " KiB\n";
  if (fds_after != fds_before) return fail("file descriptors leaked");
  // A leak of even a few bytes per step would show over thousands of steps. Under
  // AddressSanitizer freed memory waits in its quarantine, so the resident size grows anyway;
  // LeakSanitizer checks for leaks at exit instead.
  if (!address_sanitizer && rss_after - rss_before > 2048)
    return fail("memory grew by more than 2 MiB");
  group.shutdown();
  std::cout << "ok " << steps << " steps\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: dist_worker run|mismatch|negative [--name value]...\n";
    return 5;
  }
  const std::string scenario = argv[1];
  std::map<std::string, std::int64_t> opt;
  for (int i = 2; i + 1 < argc; i += 2)
    opt[std::string(argv[i]).substr(2)] = std::stoll(argv[i + 1]);
  try {
    const auto config = atom::env::Config::from_process();
    atom::dist::DpGroupOptions options;
    options.timeout = std::chrono::milliseconds(opt.at("timeout-ms"));
    DpGroup group(config, options);
    if (scenario == "run") return run_steps(group, opt);
    if (scenario == "mismatch") {
      std::vector<std::int64_t> values(static_cast<std::size_t>(group.rank() + 1), 7);
      group.sync_state(values);
      return fail("sync_state accepted different lengths");
    }
    if (scenario == "negative") {
      const bool last = group.rank() == group.size() - 1;
      group.gather_token_counts({last ? -5 : 3, false});
      return fail("gather_token_counts accepted a negative count");
    }
    std::cerr << "unknown scenario " << scenario << "\n";
    return 5;
  } catch (const atom::dist::DistError& e) {
    std::cerr << "DistError: " << e.what() << "\n";
    return 3;
  } catch (const atom::env::ConfigError& e) {
    std::cerr << "ConfigError: " << e.what() << "\n";
    return 4;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 5;
  }
}
