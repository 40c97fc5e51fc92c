// Runs groups of dist_worker processes for the DP tests: each with its own environment, output
// captured, all bounded by a wall-clock limit after which stragglers are killed.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace atom::dist::testing {

struct Worker {
  std::map<std::string, std::string> env;
  std::vector<std::string> args;
};

struct Outcome {
  int exit_code = -1;   // -1 when killed by a signal
  int signal = 0;       // the signal that ended it, if one did
  bool killed = false;  // still running at the limit
  std::string output;   // stdout and stderr
  double seconds = 0;   // from spawn to exit
};

// A socket bound to a free loopback port, closed when this goes out of scope.
class Listener {
 public:
  explicit Listener(bool listen_now) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd_ < 0) throw std::runtime_error("socket() failed");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
      throw std::runtime_error("bind() failed");
    if (listen_now && ::listen(fd_, 16) != 0) throw std::runtime_error("listen() failed");
    socklen_t len = sizeof addr;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
  }
  ~Listener() { ::close(fd_); }
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  std::uint16_t port() const { return port_; }

 private:
  int fd_ = -1;
  std::uint16_t port_ = 0;
};

// A port that was free a moment ago; the caller retries if someone takes it first.
inline std::uint16_t free_port() {
  return Listener(false).port();
}

inline std::vector<Outcome> run_workers(const std::string& program,
                                        const std::vector<Worker>& workers,
                                        std::chrono::milliseconds limit) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  struct Running {
    pid_t pid = -1;
    std::string log;
    bool done = false;
  };
  std::vector<Running> running(workers.size());
  std::vector<Outcome> out(workers.size());
  for (std::size_t i = 0; i < workers.size(); ++i) {
    char log_name[] = "/tmp/atom-dist-worker-XXXXXX";
    const int log_fd = ::mkstemp(log_name);
    if (log_fd < 0) throw std::runtime_error("mkstemp failed");
    running[i].log = log_name;
    std::vector<std::string> argv_text{program};
    argv_text.insert(argv_text.end(), workers[i].args.begin(), workers[i].args.end());
    std::vector<std::string> env_text;
    for (const auto& [k, v] : workers[i].env) env_text.push_back(k + "=" + v);
    std::vector<char*> argv, envp;
    for (auto& a : argv_text) argv.push_back(a.data());
    for (auto& e : env_text) envp.push_back(e.data());
    argv.push_back(nullptr);
    envp.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, log_fd, 1);
    posix_spawn_file_actions_adddup2(&actions, log_fd, 2);
    const int rc = ::posix_spawn(&running[i].pid, program.c_str(), &actions, nullptr, argv.data(),
                                 envp.data());
    posix_spawn_file_actions_destroy(&actions);
    ::close(log_fd);
    if (rc != 0) throw std::runtime_error("posix_spawn " + program + " failed");
  }
  std::size_t left = workers.size();
  while (left > 0) {
    for (std::size_t i = 0; i < workers.size(); ++i) {
      if (running[i].done) continue;
      int status = 0;
      if (::waitpid(running[i].pid, &status, WNOHANG) != running[i].pid) continue;
      running[i].done = true;
      --left;
      out[i].exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      if (WIFSIGNALED(status)) out[i].signal = WTERMSIG(status);
      out[i].seconds = std::chrono::duration<double>(Clock::now() - start).count();
    }
    if (left > 0 && Clock::now() - start > limit) {
      for (std::size_t i = 0; i < workers.size(); ++i) {
        if (running[i].done) continue;
        ::kill(running[i].pid, SIGKILL);
        ::waitpid(running[i].pid, nullptr, 0);
        running[i].done = true;
        out[i].killed = true;
        out[i].seconds = std::chrono::duration<double>(Clock::now() - start).count();
      }
      left = 0;
    }
    if (left > 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  for (std::size_t i = 0; i < workers.size(); ++i) {
    std::ifstream log(running[i].log);
    out[i].output.assign(std::istreambuf_iterator<char>(log), {});
    ::unlink(running[i].log.c_str());
  }
  return out;
}

}  // namespace atom::dist::testing
