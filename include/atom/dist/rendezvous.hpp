// The key-value rendezvous store of a data-parallel group: rank 0 serves it, every rank joins
// it as a client. It carries the group's membership checks (size agreement, one process per
// rank) and the transport addresses the collectives connect with. Any violation fails the whole
// store, so every waiting rank gets the same error instead of waiting for a peer that will never
// come.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace atom::dist {

// A failure of a data-parallel group, as seen by one rank: which rank, what it was doing, why.
class DistError : public std::runtime_error {
 public:
  DistError(std::int64_t rank, std::string operation, std::string cause);

  std::int64_t rank() const noexcept { return rank_; }
  const std::string& operation() const noexcept { return operation_; }
  const std::string& cause() const noexcept { return cause_; }

 private:
  std::int64_t rank_;
  std::string operation_;
  std::string cause_;
};

// "host:port", with brackets around IPv6 hosts.
std::string endpoint_text(std::string_view host, std::uint16_t port);

// The store's server: an in-memory map served on a background thread.
class RendezvousServer {
 public:
  // Listens at host:port for a group of `group_size` ranks; throws DistError naming the address
  // when the port cannot be bound. Port 0 picks a free port (see port()).
  RendezvousServer(std::string_view host, std::uint16_t port, std::int64_t group_size);
  ~RendezvousServer();
  RendezvousServer(const RendezvousServer&) = delete;
  RendezvousServer& operator=(const RendezvousServer&) = delete;

  std::uint16_t port() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One rank's connection to the store. Every call is bounded by the timeout given at
// construction and throws DistError on timeout, on a failed store, or on a broken connection.
class RendezvousClient {
 public:
  // Connects (retrying until the timeout while nothing listens yet) and claims `rank` in a group
  // of `size`. A second claimant of the same rank, or a size that differs from rank 0's, fails
  // the store for every rank.
  RendezvousClient(std::string_view host, std::uint16_t port, std::int64_t rank, std::int64_t size,
                   std::chrono::milliseconds timeout);
  ~RendezvousClient();
  RendezvousClient(const RendezvousClient&) = delete;
  RendezvousClient& operator=(const RendezvousClient&) = delete;

  void set(std::string_view key, std::string_view value);
  // Waits until the key is set.
  std::string get(std::string_view key);
  // Waits until every key is set or the timeout passes; returns the keys still missing then.
  std::vector<std::string> wait(std::span<const std::string> keys,
                                std::chrono::milliseconds timeout);
  // Tells the store this rank leaves on purpose, then disconnects. A rank that disconnects
  // without leaving fails the store.
  void leave();

  // Fails the store for every rank with this reason (this rank gives up). Best effort: when the
  // store is unreachable there is nobody left to tell.
  void abort(std::string_view reason) noexcept;

  // This end's address of the connection: the local interface that routes to the store.
  std::string local_address() const;
  std::int64_t rank() const noexcept;
  std::chrono::milliseconds timeout() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Store keys under which the group's membership is recorded.
std::string rank_key(std::int64_t rank);

}  // namespace atom::dist
