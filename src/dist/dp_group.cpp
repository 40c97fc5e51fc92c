#include "atom/dist/dp_group.hpp"

#include <gloo/common/error.h>
#include <gloo/common/logging.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/buffer.h>
#include <gloo/transport/pair.h>
#include <gloo/transport/tcp/device.h>

#include <signal.h>

#include <algorithm>
#include <csignal>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>

namespace atom::dist {

namespace {

using Clock = std::chrono::steady_clock;
using env::Var;

std::string ms_text(std::chrono::milliseconds t) {
  return std::to_string(t.count()) + " ms";
}

// gloo prefixes messages with its source location, which says nothing to a user.
std::string without_source_location(std::string text) {
  if (!text.empty() && text.front() == '[') {
    const auto end = text.find("] ");
    if (end != std::string::npos) text.erase(0, end + 2);
  }
  return text;
}

// The gloo rendezvous over our store; keys live under a prefix of their own.
class GlooStore final : public gloo::rendezvous::Store {
 public:
  explicit GlooStore(RendezvousClient& client) : client_(client) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    client_.set(std::string(prefix) + key, std::string_view(data.data(), data.size()));
  }
  std::vector<char> get(const std::string& key) override {
    const auto value = client_.get(std::string(prefix) + key);
    return {value.begin(), value.end()};
  }
  void wait(const std::vector<std::string>& keys) override { wait(keys, client_.timeout()); }
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    std::vector<std::string> prefixed;
    for (const auto& k : keys) prefixed.push_back(std::string(prefix) + k);
    const auto missing = client_.wait(prefixed, timeout);
    if (!missing.empty())
      throw DistError(client_.rank(), "set up the transport",
                      std::to_string(missing.size()) +
                          " peer address(es) were not published within " + ms_text(timeout));
  }

 private:
  static constexpr std::string_view prefix = "gloo/";
  RendezvousClient& client_;
};

enum class Operation : std::int64_t { sync_state = 1, gather_token_counts, exchange_step, barrier };

const char* operation_name(Operation op) {
  switch (op) {
    case Operation::sync_state:
      return "sync_state";
    case Operation::gather_token_counts:
      return "gather_token_counts";
    case Operation::exchange_step:
      return "exchange_step";
    case Operation::barrier:
      return "barrier";
  }
  return "an unknown collective";
}

std::string list_ranks(const std::vector<std::string>& keys) {
  std::string out;
  for (const auto& k : keys) {
    if (!out.empty()) out += ", ";
    out += k.substr(k.find('/') + 1);
  }
  return out;
}

}  // namespace

PaddingDecision decide_padding(std::span<const RankBatch> batches) {
  if (batches.empty()) throw std::invalid_argument("decide_padding: no batches given");
  PaddingDecision d;
  bool any_prefill = false;
  for (std::size_t r = 0; r < batches.size(); ++r) {
    if (batches[r].num_tokens < 0)
      throw std::invalid_argument("decide_padding: rank " + std::to_string(r) + " reports " +
                                  std::to_string(batches[r].num_tokens) + " tokens");
    d.padded_tokens = std::max(d.padded_tokens, batches[r].num_tokens);
    any_prefill = any_prefill || batches[r].is_prefill;
  }
  d.shape = any_prefill ? BatchShape::ragged : BatchShape::uniform_decode;
  return d;
}

struct DpGroup::Impl {
  std::int64_t rank = 0;
  std::int64_t size = 1;
  std::int64_t local_rank = 0;
  DpGroupOptions options;
  std::unique_ptr<RendezvousServer> server;
  std::unique_ptr<RendezvousClient> client;
  std::shared_ptr<gloo::transport::Device> device;
  std::shared_ptr<gloo::rendezvous::Context> context;
  bool closed = false;
  std::optional<std::string> broken;

  [[noreturn]] void fail(const std::string& operation, const std::string& cause) const {
    throw DistError(rank, operation, cause);
  }

  void join(std::string_view host, std::uint16_t port) {
    try {
      join_unguarded(host, port);
    } catch (const DistError& e) {
      // Peers still waiting in the store learn why at once rather than at their own timeout.
      if (client) client->abort(e.cause());
      throw;
    }
  }

  void join_unguarded(std::string_view host, std::uint16_t port) {
    // The transport writes to peers that may have died; that must be an error, not SIGPIPE
    // killing this rank. A handler the embedder installed is left alone.
    struct sigaction current {};
    if (::sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL)
      std::signal(SIGPIPE, SIG_IGN);
    const auto deadline = Clock::now() + options.timeout;
    const auto op = "join the group at " + endpoint_text(host, port);
    if (rank == 0) server = std::make_unique<RendezvousServer>(host, port, size);
    client = std::make_unique<RendezvousClient>(host, port, rank, size, options.timeout);

    std::vector<std::string> members;
    for (std::int64_t r = 0; r < size; ++r) members.push_back(rank_key(r));
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    const auto missing = client->wait(members, std::max(left, std::chrono::milliseconds(1)));
    if (!missing.empty())
      fail(op,
           "rank(s) " + list_ranks(missing) + " never joined within " + ms_text(options.timeout));

    try {
      gloo::transport::tcp::attr attr;
      // The interface that reaches the master is the one peers can reach us on.
      attr.hostname = client->local_address();
      device = gloo::transport::tcp::CreateDevice(attr);
      context = std::make_shared<gloo::rendezvous::Context>(static_cast<int>(rank),
                                                            static_cast<int>(size));
      context->setTimeout(options.timeout);
      GlooStore store(*client);
      context->connectFullMesh(store, device);
      gathered.assign(static_cast<std::size_t>(size) * exchange_width, 0);
      if (size < star_from_size)
        plan_bruck();
      else
        plan_star();
    } catch (const gloo::Exception& e) {
      fail("connect to the other ranks", without_source_location(e.what()));
    } catch (const gloo::EnforceNotMet& e) {
      fail("connect to the other ranks", without_source_location(e.what()));
    }
  }

  // Runs one collective; a failure closes this rank's connections, so peers waiting on it fail
  // at once instead of at their timeout, and every later call fails with the first cause.
  template <class Collective>
  void run(const char* operation, Collective&& collective) {
    if (closed) fail(operation, "the group is shut down");
    if (broken) fail(operation, "the group failed earlier: " + *broken);
    std::string cause;
    try {
      collective();
      return;
    } catch (const gloo::IoException& e) {
      cause = without_source_location(e.what());
    } catch (const gloo::Exception& e) {
      cause = without_source_location(e.what());
    } catch (const gloo::EnforceNotMet& e) {
      cause = without_source_location(e.what());
    }
    // gloo says "Timed out" (waits) or "Read timeout" / "Write timeout" (sockets).
    const bool timed_out =
        cause.find("Timed out") != std::string::npos || cause.find("timeout") != std::string::npos;
    cause = (timed_out ? "no answer from the other ranks within " + ms_text(options.timeout) +
                             " (a rank is stuck, died, or stopped calling collectives): "
                       : "a peer rank died or closed its connection: ") +
            cause;
    broken = cause;
    context->closeConnections();
    fail(operation, cause);
  }

  // Gathers every rank's `mine` (at most exchange_width - 1 values) into gathered[]: row r holds
  // rank r's values after a tag naming the operation and count, so ranks that are out of step
  // (different calls, or different counts) fail together instead of misreading each other.
  std::span<const std::int64_t> row(std::int64_t r) const {
    return std::span<const std::int64_t>(gathered).subspan(
        static_cast<std::size_t>(r) * exchange_width + 1, exchange_width - 1);
  }

  void exchange(Operation operation, std::span<const std::int64_t> mine) {
    const auto name = operation_name(operation);
    const auto tag =
        static_cast<std::int64_t>(operation) * 16 + static_cast<std::int64_t>(mine.size());
    run(name, [&] {
      outgoing.fill(0);
      outgoing[0] = tag;
      std::copy(mine.begin(), mine.end(), outgoing.begin() + 1);
      if (size < star_from_size)
        run_bruck();
      else
        run_star();
    });
    for (std::int64_t r = 0; r < size; ++r) {
      const auto theirs = gathered[static_cast<std::size_t>(r) * exchange_width];
      if (theirs == tag) continue;
      const auto their_op = static_cast<Operation>(theirs / 16);
      fail(name, "ranks are out of step: this rank called " + std::string(name) + " with " +
                     std::to_string(mine.size()) + " value(s), rank " + std::to_string(r) +
                     " called " + std::string(operation_name(their_op)) + " with " +
                     std::to_string(theirs % 16) + " value(s)");
    }
  }

  // Two all-gathers, both on buffers registered once, both reading in this thread (sync mode:
  // the default, where a transport thread reads and wakes this one, costs a second wake-up per
  // message). On loopback a message costs a few system calls and wake-ups on cores the ranks
  // share, so the cheapest plan is the one with the fewest messages and dependent hops.
  // Measured with atom-bench-dp-bench on two cores: Bruck wins below 4 ranks (at 2 it is one
  // direct swap), the star from 4 on (at 8 ranks it makes 42 system calls a step against
  // Bruck's 72, and takes half the time). Sending every row to every peer directly was slower
  // than both from 4 ranks on.
  static constexpr std::int64_t star_from_size = 4;

  void use_sync_mode(std::int64_t peer) {
    context->getPair(static_cast<int>(peer))->setSync(true, false);
  }

  // Bruck: rotated[i] ends up holding rank (rank + i) % size's row. In round k a rank forwards
  // the first 2^k rows it has to rank - 2^k and receives as many from rank + 2^k:
  // ceil(log2 size) messages per rank.
  void plan_bruck() {
    rotated.assign(gathered.size(), 0);
    constexpr auto row_bytes = exchange_width * sizeof(std::int64_t);
    const auto all_bytes = rotated.size() * sizeof(std::int64_t);
    for (std::int64_t distance = 1; distance < size; distance *= 2) {
      const auto slot = context->nextSlot();
      const auto send_peer = (rank - distance + size) % size;
      const auto recv_peer = (rank + distance) % size;
      use_sync_mode(send_peer);
      use_sync_mode(recv_peer);
      Transfer t;
      t.send = context->getPair(static_cast<int>(send_peer))
                   ->createSendBuffer(slot, rotated.data(), all_bytes);
      t.recv = context->getPair(static_cast<int>(recv_peer))
                   ->createRecvBuffer(slot, rotated.data(), all_bytes);
      t.send_bytes = static_cast<std::size_t>(std::min(distance, size - distance)) * row_bytes;
      t.remote_offset = static_cast<std::size_t>(distance) * row_bytes;
      transfers.push_back(std::move(t));
    }
  }

  void run_bruck() {
    std::copy(outgoing.begin(), outgoing.end(), rotated.begin());
    for (auto& t : transfers) {
      t.send->send(0, t.send_bytes, t.remote_offset);
      t.recv->waitRecv();
      t.send->waitSend();
    }
    for (std::int64_t i = 0; i < size; ++i) {
      const auto from = rotated.begin() + static_cast<std::ptrdiff_t>(i) * exchange_width;
      std::copy(from, from + exchange_width,
                gathered.begin() + static_cast<std::ptrdiff_t>((rank + i) % size) * exchange_width);
    }
  }

  // Star: every rank sends its row to rank 0, which sends all rows back. Two messages per rank
  // other than 0, two hops.
  void plan_star() {
    constexpr auto row_bytes = exchange_width * sizeof(std::int64_t);
    const auto all_bytes = gathered.size() * sizeof(std::int64_t);
    const auto up = context->nextSlot();
    const auto down = context->nextSlot();
    for (std::int64_t peer = 0; peer < size; ++peer) {
      if (peer == rank || (rank != 0 && peer != 0)) continue;
      use_sync_mode(peer);
      auto& pair = context->getPair(static_cast<int>(peer));
      Transfer t;
      if (rank == 0) {
        t.recv = pair->createRecvBuffer(
            up, gathered.data() + static_cast<std::size_t>(peer) * exchange_width, row_bytes);
        t.send = pair->createSendBuffer(down, gathered.data(), all_bytes);
        t.send_bytes = all_bytes;
      } else {
        t.send = pair->createSendBuffer(up, outgoing.data(), row_bytes);
        t.recv = pair->createRecvBuffer(down, gathered.data(), all_bytes);
        t.send_bytes = row_bytes;
      }
      transfers.push_back(std::move(t));
    }
  }

  void run_star() {
    std::copy(outgoing.begin(), outgoing.end(),
              gathered.begin() + static_cast<std::ptrdiff_t>(rank) * exchange_width);
    if (rank == 0) {
      for (auto& t : transfers) t.recv->waitRecv();
      for (auto& t : transfers) t.send->send(0, t.send_bytes);
      for (auto& t : transfers) t.send->waitSend();
    } else {
      auto& t = transfers.front();
      t.send->send(0, t.send_bytes);
      t.recv->waitRecv();
      t.send->waitSend();
    }
  }

  // Scratch for exchange(), registered with the transport once.
  static constexpr std::size_t exchange_width = DpGroup::max_state_values + 2;
  std::array<std::int64_t, exchange_width> outgoing{};
  std::vector<std::int64_t> gathered;
  std::vector<std::int64_t> rotated;
  // One send and one receive of an all-gather plan.
  struct Transfer {
    std::size_t send_bytes = 0;
    std::size_t remote_offset = 0;
    std::unique_ptr<gloo::transport::Buffer> send;
    std::unique_ptr<gloo::transport::Buffer> recv;
  };
  std::vector<Transfer> transfers;
};

DpGroup::DpGroup(const env::Config& config, DpGroupOptions options)
    : impl_(std::make_unique<Impl>()) {
  auto& g = *impl_;
  g.rank = config.get<Var::dp_rank>();
  g.size = config.get<Var::dp_size>();
  g.local_rank = config.get<Var::dp_rank_local>();
  g.options = options;
  const auto operation = std::string("join the DP group");
  if (options.timeout <= std::chrono::milliseconds::zero())
    g.fail(operation, "the timeout must be positive, got " + ms_text(options.timeout));
  if (g.size < 1 || g.size > std::numeric_limits<int>::max())
    g.fail(operation, "ATOM_DP_SIZE=" + std::to_string(g.size) + " is out of range");
  if (g.rank < 0 || g.rank >= g.size)
    g.fail(operation, "ATOM_DP_RANK=" + std::to_string(g.rank) +
                          " must be below ATOM_DP_SIZE=" + std::to_string(g.size));
  if (g.size == 1) return;
  const auto port = config.get<Var::dp_master_port>();
  if (port < 1 || port > 65535)
    g.fail(operation, "ATOM_DP_MASTER_PORT=" + std::to_string(port) + " is out of range");
  g.join(config.get<Var::dp_master_ip>(), static_cast<std::uint16_t>(port));
}

DpGroup::~DpGroup() = default;

std::int64_t DpGroup::rank() const noexcept {
  return impl_->rank;
}
std::int64_t DpGroup::size() const noexcept {
  return impl_->size;
}
std::int64_t DpGroup::device_index() const noexcept {
  return impl_->local_rank;
}

void DpGroup::sync_state(std::span<std::int64_t> values) {
  auto& g = *impl_;
  if (values.size() > max_state_values)
    throw std::invalid_argument("sync_state: " + std::to_string(values.size()) +
                                " values given, at most " + std::to_string(max_state_values));
  if (g.closed) g.fail("sync_state", "the group is shut down");
  if (g.size == 1) return;
  g.exchange(Operation::sync_state, values);
  for (std::int64_t r = 0; r < g.size; ++r) {
    const auto theirs = g.row(r);
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = std::max(values[i], theirs[i]);
  }
}

StepState DpGroup::sync_step(StepState local) {
  std::array<std::int64_t, 2> v{local.has_unfinished, local.shutdown};
  sync_state(v);
  return {v[0] != 0, v[1] != 0};
}

std::vector<RankBatch> DpGroup::gather_token_counts(RankBatch local) {
  auto& g = *impl_;
  if (g.closed) g.fail("gather_token_counts", "the group is shut down");
  std::vector<RankBatch> batches(static_cast<std::size_t>(g.size));
  if (g.size == 1) {
    batches[0] = local;
  } else {
    const std::array<std::int64_t, 2> mine{local.num_tokens, local.is_prefill};
    g.exchange(Operation::gather_token_counts, mine);
    for (std::int64_t r = 0; r < g.size; ++r) {
      const auto theirs = g.row(r);
      batches[static_cast<std::size_t>(r)] = {theirs[0], theirs[1] != 0};
    }
  }
  for (std::size_t r = 0; r < batches.size(); ++r)
    if (batches[r].num_tokens < 0)
      g.fail("gather_token_counts", "rank " + std::to_string(r) + " reported " +
                                        std::to_string(batches[r].num_tokens) + " tokens");
  return batches;
}

StepPlan DpGroup::exchange_step(StepState local_state, RankBatch local_batch) {
  auto& g = *impl_;
  if (g.closed) g.fail("exchange_step", "the group is shut down");
  StepPlan plan;
  plan.batches.resize(static_cast<std::size_t>(g.size));
  if (g.size == 1) {
    plan.state = local_state;
    plan.batches[0] = local_batch;
  } else {
    const std::array<std::int64_t, 4> mine{local_state.has_unfinished, local_state.shutdown,
                                           local_batch.num_tokens, local_batch.is_prefill};
    g.exchange(Operation::exchange_step, mine);
    for (std::int64_t r = 0; r < g.size; ++r) {
      const auto theirs = g.row(r);
      plan.state.has_unfinished = plan.state.has_unfinished || theirs[0] != 0;
      plan.state.shutdown = plan.state.shutdown || theirs[1] != 0;
      plan.batches[static_cast<std::size_t>(r)] = {theirs[2], theirs[3] != 0};
    }
  }
  for (std::size_t r = 0; r < plan.batches.size(); ++r)
    if (plan.batches[r].num_tokens < 0)
      g.fail("exchange_step", "rank " + std::to_string(r) + " reported " +
                                  std::to_string(plan.batches[r].num_tokens) + " tokens");
  plan.padding = decide_padding(plan.batches);
  plan.run_dummy_batch =
      plan.state.has_unfinished && plan.batches[static_cast<std::size_t>(g.rank)].num_tokens == 0;
  return plan;
}

void DpGroup::barrier() {
  auto& g = *impl_;
  if (g.closed) g.fail("barrier", "the group is shut down");
  if (g.size == 1) return;
  g.exchange(Operation::barrier, {});
}

void DpGroup::shutdown() {
  auto& g = *impl_;
  if (g.closed) return;
  if (g.size > 1) {
    // Nobody leaves while a peer may still be in a collective; the second barrier keeps rank
    // 0's store up until every rank has said goodbye to it.
    barrier();
    g.client->leave();
    barrier();
    g.context->closeConnections();
  }
  g.closed = true;
  g.transfers.clear();  // buffers before the pairs they are registered with
  g.context.reset();
  g.device.reset();
  g.client.reset();
  g.server.reset();
}

}  // namespace atom::dist
