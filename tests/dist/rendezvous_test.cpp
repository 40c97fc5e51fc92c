#include <atom/dist/rendezvous.hpp>
#include <catch2/catch.hpp>
#include <future>
#include <thread>

#include "spawn.hpp"

namespace {

using atom::dist::DistError;
using atom::dist::RendezvousClient;
using atom::dist::RendezvousServer;
using namespace std::chrono_literals;

constexpr auto timeout = 2000ms;

}  // namespace

TEST_CASE("rendezvous: set, get and wait across clients") {
  RendezvousServer server("127.0.0.1", 0, 3);
  RendezvousClient a("127.0.0.1", server.port(), 0, 3, timeout);
  RendezvousClient b("127.0.0.1", server.port(), 1, 3, timeout);
  CHECK(a.local_address() == "127.0.0.1");

  // A get parks until another client sets the key.
  auto value = std::async(std::launch::async, [&] { return b.get("addr/0"); });
  std::this_thread::sleep_for(20ms);
  const std::string blob("\0\xff binary \n value", 17);
  a.set("addr/0", blob);
  CHECK(value.get() == blob);

  const std::vector<std::string> members{atom::dist::rank_key(0), atom::dist::rank_key(1),
                                         atom::dist::rank_key(2)};
  CHECK(a.wait(members, 50ms) == std::vector<std::string>{"rank/2"});
  auto joined = std::async(std::launch::async, [&] { return a.wait(members, timeout); });
  RendezvousClient c("127.0.0.1", server.port(), 2, 3, timeout);
  CHECK(joined.get().empty());
  a.leave();
  b.leave();
  c.leave();
}

TEST_CASE("rendezvous: a get nobody answers times out with the key named") {
  RendezvousServer server("127.0.0.1", 0, 2);
  RendezvousClient a("127.0.0.1", server.port(), 0, 2, 100ms);
  CHECK_THROWS_WITH(a.get("never"), Catch::Contains("'never'") && Catch::Contains("100 ms"));
}

TEST_CASE("rendezvous: a second claim of a rank fails every waiting client") {
  RendezvousServer server("127.0.0.1", 0, 3);
  RendezvousClient first("127.0.0.1", server.port(), 1, 3, timeout);
  const std::vector<std::string> keys{"rank/2"};
  auto waiting = std::async(std::launch::async, [&] { return first.wait(keys, timeout); });
  std::this_thread::sleep_for(20ms);
  CHECK_THROWS_WITH(RendezvousClient("127.0.0.1", server.port(), 1, 3, timeout),
                    Catch::Contains("two processes claim rank 1"));
  CHECK_THROWS_WITH(waiting.get(), Catch::Contains("two processes claim rank 1"));
  // Later requests fail at once with the same reason.
  CHECK_THROWS_WITH(first.set("k", "v"), Catch::Contains("two processes claim rank 1"));
}

TEST_CASE("rendezvous: a client that drops without leaving fails the store") {
  RendezvousServer server("127.0.0.1", 0, 3);
  RendezvousClient a("127.0.0.1", server.port(), 0, 3, timeout);
  { RendezvousClient b("127.0.0.1", server.port(), 1, 3, timeout); }
  const std::vector<std::string> keys{"rank/2"};
  CHECK_THROWS_WITH(a.wait(keys, timeout), Catch::Contains("rank 1 lost its connection"));
}

TEST_CASE("rendezvous: a port in use is named in the error") {
  atom::dist::testing::Listener occupant(true);
  const auto where = "127.0.0.1:" + std::to_string(occupant.port());
  CHECK_THROWS_WITH(RendezvousServer("127.0.0.1", occupant.port(), 2),
                    Catch::Contains(where) && Catch::Contains("in use"));
}

TEST_CASE("rendezvous: a client that reaches no store gives up at its timeout") {
  const auto port = atom::dist::testing::free_port();
  const auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(RendezvousClient("127.0.0.1", port, 1, 2, 300ms), DistError);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(elapsed >= 300ms);
  CHECK(elapsed < 2000ms);
}
