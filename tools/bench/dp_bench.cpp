// Per-step latency of the DP group's step collectives on loopback. The program spawns itself as
// the ranks of a group for each requested size; rank 0 prints the medians.
//
//   atom-bench-dp [--procs 2,4,8] [--steps 5000] [--port P]
//
// Without --port each group takes a loopback port that is free at the time.
//
// "separate" is sync_step followed by gather_token_counts (two collectives, as an engine calls
// them); "fused" is exchange_step (one collective carrying both).
//
// Notes (medians per step, 5000 steps, default arguments):
//
//   machine                                 procs   separate   fused
//   2 cores, shared with other builds         2      25 us     14 us
//   (load average 1.7 to 3.3)                 4      90-125    45-70
//                                             8     200-240    100-145
//   16-core host pinned to 2 idle cores       2      28        12-17
//   (taskset -c 0,1)                          4      87        36-51
//                                             8     147-151    73-95
//   16-core host, all cores                   2      27        17
//                                             4      70        35
//                                             8     101        46
//
// A step costs a few system calls and wake-ups per message on loopback TCP, so the exchange uses
// the plan with the fewest messages (see dp_group.cpp) and an engine should call exchange_step
// once per step rather than two collectives. With 8 ranks on 2 cores, the ranks' wake-ups
// compete for the cores, and the numbers move with whatever else runs there.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atom/dist/dp_group.hpp>
#include <atom/env/config.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

double median_us(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
double percentile_us(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(p * static_cast<double>(v.size() - 1))];
}

template <class Step>
std::vector<double> time_steps(atom::dist::DpGroup& group, long steps, Step&& step) {
  for (long i = 0; i < steps / 10; ++i) step(i);  // warm-up
  group.barrier();
  std::vector<double> us;
  us.reserve(static_cast<std::size_t>(steps));
  for (long i = 0; i < steps; ++i) {
    const auto t0 = Clock::now();
    step(i);
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  return us;
}

int run_rank(long steps) {
  const auto config = atom::env::Config::from_process();
  atom::dist::DpGroup group(config);
  const auto tokens = [&](long i) {
    return atom::dist::RankBatch{(i * 7 + group.rank() * 13) % 769, i % 5 == 0};
  };
  const auto separate = time_steps(group, steps, [&](long i) {
    const auto state = group.sync_step({i % 3 != 0, false});
    const auto batches = group.gather_token_counts(tokens(i));
    if (!state.has_unfinished && batches.empty()) std::abort();
  });
  const auto fused = time_steps(group, steps, [&](long i) {
    const auto plan = group.exchange_step({i % 3 != 0, false}, tokens(i));
    if (plan.padding.padded_tokens < 0) std::abort();
  });
  group.shutdown();
  if (group.rank() == 0) {
    std::printf(
        "%5ld procs  separate: median %7.1f us  p90 %7.1f us   fused: median %7.1f us  "
        "p90 %7.1f us\n",
        static_cast<long>(group.size()), median_us(separate), percentile_us(separate, 0.9),
        median_us(fused), percentile_us(fused, 0.9));
  }
  return 0;
}

long free_loopback_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::perror("picking a free port");
    std::exit(1);
  }
  close(fd);
  return ntohs(addr.sin_port);
}

std::vector<long> parse_list(const std::string& text) {
  std::vector<long> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::stol(item));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<long> procs{2, 4, 8};
  long steps = 5000;
  long port = 0;
  bool worker = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--worker") {
      worker = true;
    } else if (arg == "--procs" && has_value) {
      procs = parse_list(argv[++i]);
    } else if (arg == "--steps" && has_value) {
      steps = std::stol(argv[++i]);
    } else if (arg == "--port" && has_value) {
      port = std::stol(argv[++i]);
    } else {
      std::cerr << "usage: atom-bench-dp [--procs 2,4,8] [--steps N] [--port P]\n";
      return 2;
    }
  }
  if (steps < 10) {
    std::cerr << "--steps must be at least 10\n";
    return 2;
  }
  try {
    if (worker) return run_rank(steps);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  std::printf("DP step collectives on loopback, %ld timed steps per size\n", steps);
  std::fflush(stdout);  // before fork, or every child inherits the unwritten line
  for (const auto n : procs) {
    const auto group_port = port != 0 ? port : free_loopback_port();
    std::vector<pid_t> pids;
    for (long r = 0; r < n; ++r) {
      const pid_t pid = fork();
      if (pid == 0) {
        setenv("ATOM_DP_RANK", std::to_string(r).c_str(), 1);
        setenv("ATOM_DP_RANK_LOCAL", std::to_string(r).c_str(), 1);
        setenv("ATOM_DP_SIZE", std::to_string(n).c_str(), 1);
        setenv("ATOM_DP_MASTER_IP", "127.0.0.1", 1);
        setenv("ATOM_DP_MASTER_PORT", std::to_string(group_port).c_str(), 1);
        const auto steps_text = std::to_string(steps);
        execl("/proc/self/exe", argv[0], "--worker", "--steps", steps_text.c_str(),
              static_cast<char*>(nullptr));
        _exit(127);
      }
      pids.push_back(pid);
    }
    int failures = 0;
    for (const auto pid : pids) {
      int status = 0;
      waitpid(pid, &status, 0);
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failures;
    }
    if (failures) {
      std::cerr << failures << " of " << n << " ranks failed\n";
      return 1;
    }
  }
  return 0;
}
