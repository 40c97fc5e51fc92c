#include "atom/dist/rendezvous.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <thread>
#include <utility>

// After <utility>: this Boost release's asio uses std::exchange without including it.
#include <boost/asio.hpp>

namespace atom::dist {

namespace asio = boost::asio;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

DistError::DistError(std::int64_t rank, std::string operation, std::string cause)
    : std::runtime_error("DP rank " + std::to_string(rank) + ": " + operation +
                         " failed: " + cause),
      rank_(rank),
      operation_(std::move(operation)),
      cause_(std::move(cause)) {}

std::string endpoint_text(std::string_view host, std::uint16_t port) {
  const bool v6 = host.find(':') != std::string_view::npos;
  return (v6 ? "[" + std::string(host) + "]" : std::string(host)) + ":" + std::to_string(port);
}

std::string rank_key(std::int64_t rank) {
  return "rank/" + std::to_string(rank);
}

namespace {

// Requests and replies are frames: a 4-byte length, then fields. The first request of a
// connection is a hello carrying this tag, so a client that reached some other service, or a
// server that is not a store, is told apart from a slow one.
constexpr std::string_view protocol_tag = "atom-dp-rendezvous/1";
constexpr std::uint32_t max_frame_bytes = 1u << 24;

enum class Op : std::uint8_t { hello = 1, set = 2, get = 3, wait = 4, leave = 5, abort = 6 };
enum class Status : std::uint8_t { ok = 0, failed = 1, timed_out = 2 };

struct ProtocolError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class FrameWriter {
 public:
  FrameWriter() : bytes_(4, '\0') {}
  FrameWriter& u8(std::uint8_t v) {
    bytes_.push_back(static_cast<char>(v));
    return *this;
  }
  FrameWriter& i64(std::int64_t v) {
    char raw[8];
    std::memcpy(raw, &v, 8);
    bytes_.append(raw, 8);
    return *this;
  }
  FrameWriter& str(std::string_view s) {
    i64(static_cast<std::int64_t>(s.size()));
    bytes_.append(s);
    return *this;
  }
  // The frame with its length filled in.
  std::string finish() {
    const auto n = static_cast<std::uint32_t>(bytes_.size() - 4);
    std::memcpy(bytes_.data(), &n, 4);
    return std::move(bytes_);
  }

 private:
  std::string bytes_;
};

class FrameReader {
 public:
  explicit FrameReader(std::string_view body) : body_(body) {}
  std::uint8_t u8() { return static_cast<std::uint8_t>(take(1)[0]); }
  std::int64_t i64() {
    std::int64_t v;
    std::memcpy(&v, take(8).data(), 8);
    return v;
  }
  std::string str() {
    const auto n = i64();
    if (n < 0 || static_cast<std::uint64_t>(n) > body_.size() - pos_)
      throw ProtocolError("string length out of range");
    return std::string(take(static_cast<std::size_t>(n)));
  }

 private:
  std::string_view take(std::size_t n) {
    if (body_.size() - pos_ < n) throw ProtocolError("truncated frame");
    auto s = body_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  std::string_view body_;
  std::size_t pos_ = 0;
};

std::uint32_t frame_length(const char (&header)[4]) {
  std::uint32_t n;
  std::memcpy(&n, header, 4);
  return n;
}

std::string join_keys(const std::vector<std::string>& keys) {
  std::string out;
  for (const auto& k : keys) {
    if (!out.empty()) out += '\n';
    out += k;
  }
  return out;
}

std::vector<std::string> split_keys(const std::string& text) {
  std::vector<std::string> keys;
  std::size_t start = 0;
  while (start < text.size()) {
    auto end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    keys.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return keys;
}

tcp::endpoint resolve_one(asio::io_context& io, std::string_view host, std::uint16_t port,
                          boost::system::error_code& ec) {
  tcp::resolver resolver(io);
  const auto results =
      resolver.resolve(std::string(host), std::to_string(port), tcp::resolver::numeric_service, ec);
  if (ec) return {};
  if (results.empty()) {
    ec = asio::error::host_not_found;
    return {};
  }
  return *results.begin();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Server. Everything below runs on the server's one io thread, so its state needs no locks.

struct RendezvousServer::Impl {
  struct Session;
  // A get or wait that is parked until its keys are set, the store fails, or its timer fires.
  struct Parked {
    std::shared_ptr<Session> session;
    std::vector<std::string> keys;
    bool reply_with_value;
    asio::steady_timer timer;
  };

  struct Session : std::enable_shared_from_this<Session> {
    Session(Impl& server, tcp::socket s) : impl(server), socket(std::move(s)) {}

    void read_next() {
      auto self = shared_from_this();
      asio::async_read(socket, asio::buffer(header),
                       [self](boost::system::error_code ec, std::size_t) {
                         if (ec) return self->impl.disconnected(*self);
                         const auto n = frame_length(self->header);
                         if (n == 0 || n > max_frame_bytes) return self->impl.disconnected(*self);
                         self->body.resize(n);
                         asio::async_read(self->socket, asio::buffer(self->body),
                                          [self](boost::system::error_code ec2, std::size_t) {
                                            if (ec2) return self->impl.disconnected(*self);
                                            self->impl.handle(self);
                                          });
                       });
    }

    void reply(Status status, std::string_view payload) {
      out = FrameWriter().u8(static_cast<std::uint8_t>(status)).str(payload).finish();
      auto self = shared_from_this();
      ++impl.writes_in_flight;
      asio::async_write(socket, asio::buffer(out),
                        [self](boost::system::error_code ec, std::size_t) {
                          --self->impl.writes_in_flight;
                          if (ec) return self->impl.disconnected(*self);
                          // A failed store keeps answering until its peers have heard why.
                          if (self->impl.stopping && !self->impl.failure)
                            return self->impl.stop_when_drained();
                          self->read_next();
                        });
    }

    Impl& impl;
    tcp::socket socket;
    char header[4] = {};
    std::string body;
    std::string out;
    std::int64_t rank = -1;
    bool greeted = false;
    bool left = false;
    bool closed = false;
  };

  Impl(std::int64_t size) : acceptor(io), group_size(size) {}

  void accept_next() {
    acceptor.async_accept([this](boost::system::error_code ec, tcp::socket s) {
      if (ec) {
        if (ec == asio::error::operation_aborted) return;
        return accept_next();
      }
      s.set_option(tcp::no_delay(true), ec);
      auto session = std::make_shared<Session>(*this, std::move(s));
      ++open_sessions;
      session->read_next();
      accept_next();
    });
  }

  void handle(const std::shared_ptr<Session>& session) {
    try {
      FrameReader in(session->body);
      const auto op = static_cast<Op>(in.u8());
      if (!session->greeted && op != Op::hello) throw ProtocolError("no hello");
      if (op == Op::leave) {
        session->left = true;
        return session->reply(Status::ok, {});
      }
      if (failure) return session->reply(Status::failed, *failure);
      switch (op) {
        case Op::hello:
          return hello(session, in);
        case Op::set: {
          auto key = in.str();
          values[std::move(key)] = in.str();
          session->reply(Status::ok, {});
          return release_ready();
        }
        case Op::get: {
          std::vector<std::string> keys{in.str()};
          const auto timeout = std::chrono::milliseconds(in.i64());
          return park_or_reply(session, std::move(keys), true, timeout);
        }
        case Op::wait: {
          const auto timeout = std::chrono::milliseconds(in.i64());
          return park_or_reply(session, split_keys(in.str()), false, timeout);
        }
        case Op::abort: {
          const auto rank = session->rank;
          fail(nullptr, "rank " + std::to_string(rank) + " gave up: " + in.str());
          return session->reply(Status::ok, {});
        }
        case Op::leave:
          break;
      }
      throw ProtocolError("unknown request");
    } catch (const ProtocolError&) {
      // Not one of ours: drop the connection without touching the group.
      close(*session);
    }
  }

  void hello(const std::shared_ptr<Session>& session, FrameReader& in) {
    if (in.str() != protocol_tag) throw ProtocolError("wrong protocol");
    const auto rank = in.i64();
    const auto size = in.i64();
    session->greeted = true;
    if (size != group_size)
      return fail(session, "ranks disagree on ATOM_DP_SIZE: rank 0 has " +
                               std::to_string(group_size) + ", rank " + std::to_string(rank) +
                               " has " + std::to_string(size));
    if (rank < 0 || rank >= group_size)
      return fail(session, "a process claimed rank " + std::to_string(rank) +
                               ", which is outside a group of size " + std::to_string(group_size));
    if (!claimed.emplace(rank, session).second)
      return fail(session, "two processes claim rank " + std::to_string(rank) +
                               " (check ATOM_DP_RANK of every process)");
    session->rank = rank;
    values[rank_key(rank)] = "";
    session->reply(Status::ok, {});
    release_ready();
  }

  bool has_all(const std::vector<std::string>& keys) const {
    return std::all_of(keys.begin(), keys.end(), [&](const auto& k) { return values.count(k); });
  }

  void answer(Parked& p) {
    p.session->reply(Status::ok, p.reply_with_value ? values.at(p.keys.front()) : std::string());
  }

  void park_or_reply(const std::shared_ptr<Session>& session, std::vector<std::string> keys,
                     bool reply_with_value, std::chrono::milliseconds timeout) {
    if (has_all(keys)) {
      Parked now{session, std::move(keys), reply_with_value, asio::steady_timer(io)};
      return answer(now);
    }
    auto p = std::make_shared<Parked>(
        Parked{session, std::move(keys), reply_with_value, asio::steady_timer(io)});
    p->timer.expires_after(timeout);
    p->timer.async_wait([this, weak = std::weak_ptr<Parked>(p)](boost::system::error_code ec) {
      auto parked = weak.lock();
      if (ec || !parked) return;
      std::erase(waiting, parked);
      std::vector<std::string> missing;
      for (const auto& k : parked->keys)
        if (!values.count(k)) missing.push_back(k);
      parked->session->reply(Status::timed_out, join_keys(missing));
    });
    waiting.push_back(std::move(p));
  }

  void release_ready() {
    std::vector<std::shared_ptr<Parked>> still;
    for (auto& p : waiting) {
      if (has_all(p->keys)) {
        p->timer.cancel();
        answer(*p);
      } else {
        still.push_back(std::move(p));
      }
    }
    waiting = std::move(still);
  }

  // Fails the store: the offender and every parked rank get the reason now, later requests get
  // it at once.
  void fail(const std::shared_ptr<Session>& offender, std::string reason) {
    if (!failure) failure = std::move(reason);
    if (offender) offender->reply(Status::failed, *failure);
    auto parked = std::move(waiting);
    waiting.clear();
    for (auto& p : parked) {
      p->timer.cancel();
      p->session->reply(Status::failed, *failure);
    }
  }

  // Stops once every reply already queued has been written and, when the store failed, once
  // every peer has disconnected (each request gets the failure reason as its answer), so a rank 0
  // that exits right after failing does not cut the others off before they hear why. The
  // destructor's grace timer bounds the wait.
  void stop_when_drained() {
    if (writes_in_flight == 0 && (!failure || open_sessions == 0)) io.stop();
  }

  void close(Session& s) {
    if (s.closed) return;
    s.closed = true;
    --open_sessions;
    boost::system::error_code ignored;
    s.socket.close(ignored);
    if (stopping) stop_when_drained();
  }

  void disconnected(Session& s) {
    close(s);
    std::erase_if(waiting, [&](const auto& p) {
      if (p->session.get() != &s) return false;
      p->timer.cancel();
      return true;
    });
    if (s.rank >= 0 && !s.left && !failure)
      fail(nullptr, "rank " + std::to_string(s.rank) +
                        " lost its connection to the rendezvous store (the process died or "
                        "exited without shutting the group down)");
  }

  asio::io_context io;
  tcp::acceptor acceptor;
  std::int64_t group_size;
  std::map<std::string, std::string, std::less<>> values;
  std::map<std::int64_t, std::weak_ptr<Session>> claimed;
  std::vector<std::shared_ptr<Parked>> waiting;
  std::optional<std::string> failure;
  int writes_in_flight = 0;
  int open_sessions = 0;
  bool stopping = false;
  std::thread thread;
};

RendezvousServer::RendezvousServer(std::string_view host, std::uint16_t port,
                                   std::int64_t group_size)
    : impl_(std::make_unique<Impl>(group_size)) {
  const auto where = endpoint_text(host, port);
  const auto fail = [&](const std::string& what, const boost::system::error_code& ec) {
    throw DistError(0, "start the rendezvous store", what + " " + where + ": " + ec.message());
  };
  boost::system::error_code ec;
  const auto endpoint = resolve_one(impl_->io, host, port, ec);
  if (ec) fail("cannot resolve", ec);
  auto& acceptor = impl_->acceptor;
  if (acceptor.open(endpoint.protocol(), ec)) fail("cannot open a socket for", ec);
  // Lets a restarted rank 0 bind while old connections linger in TIME_WAIT; a live listener on
  // the port still makes bind fail.
  acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (acceptor.bind(endpoint, ec)) fail("cannot listen on", ec);
  if (acceptor.listen(asio::socket_base::max_listen_connections, ec)) fail("cannot listen on", ec);
  impl_->accept_next();
  impl_->thread = std::thread([impl = impl_.get()] { impl->io.run(); });
}

RendezvousServer::~RendezvousServer() {
  auto& impl = *impl_;
  asio::steady_timer give_up(impl.io);
  asio::post(impl.io, [&] {
    impl.stopping = true;
    boost::system::error_code ignored;
    impl.acceptor.close(ignored);
    give_up.expires_after(std::chrono::milliseconds(500));
    give_up.async_wait([&](boost::system::error_code) { impl.io.stop(); });
    impl.stop_when_drained();
  });
  impl.thread.join();
}

std::uint16_t RendezvousServer::port() const noexcept {
  boost::system::error_code ec;
  return impl_->acceptor.local_endpoint(ec).port();
}

// ---------------------------------------------------------------------------------------------
// Client: synchronous calls driven on a private io_context, so every one has a deadline.

struct RendezvousClient::Impl {
  Impl(std::string_view h, std::uint16_t p, std::int64_t r, std::chrono::milliseconds t)
      : host(h), port(p), rank(r), timeout(t), socket(io) {}

  std::string where() const { return endpoint_text(host, port); }

  [[noreturn]] void fail(const std::string& operation, const std::string& cause) const {
    throw DistError(rank, operation, cause);
  }

  // Runs the io_context until `done` or the deadline; on the deadline cancels and returns false.
  bool run_until(const bool& done, Clock::time_point deadline) {
    io.restart();
    while (!done && Clock::now() < deadline) io.run_one_until(deadline);
    if (done) return true;
    boost::system::error_code ignored;
    socket.close(ignored);
    io.restart();
    io.run();
    return false;
  }

  void connect(Clock::time_point deadline) {
    const auto op = "join the group at " + where();
    boost::system::error_code ec;
    const auto endpoint = resolve_one(io, host, port, ec);
    if (ec) fail(op, "cannot resolve the master address: " + ec.message());
    std::string last_error = "no connection attempt finished";
    for (;;) {
      bool done = false;
      boost::system::error_code result;
      socket = tcp::socket(io);
      socket.async_connect(endpoint, [&](boost::system::error_code e) {
        result = e;
        done = true;
      });
      if (!run_until(done, deadline)) break;
      if (!result) {
        socket.set_option(tcp::no_delay(true), ec);
        return;
      }
      last_error = result.message();
      // The master may simply not be up yet: retry until the deadline.
      const auto pause =
          std::min<Clock::duration>(std::chrono::milliseconds(50), deadline - Clock::now());
      if (pause <= Clock::duration::zero()) break;
      std::this_thread::sleep_for(pause);
    }
    fail(op, "could not reach the rendezvous store at " + where() + " within " +
                 std::to_string(timeout.count()) + " ms (last error: " + last_error + ")");
  }

  // Sends one request and returns the reply's status and payload.
  std::pair<Status, std::string> call(const std::string& operation, std::string frame,
                                      Clock::time_point deadline) {
    if (!socket.is_open()) fail(operation, "the connection to the rendezvous store is closed");
    bool done = false;
    boost::system::error_code result;
    char header[4] = {};
    std::string body;
    asio::async_write(socket, asio::buffer(frame), [&](boost::system::error_code ec, std::size_t) {
      if (ec) {
        result = ec;
        done = true;
        return;
      }
      asio::async_read(socket, asio::buffer(header),
                       [&](boost::system::error_code ec2, std::size_t) {
                         const auto n = frame_length(header);
                         if (!ec2 && (n == 0 || n > max_frame_bytes))
                           ec2 = asio::error::message_size;
                         if (ec2) {
                           result = ec2;
                           done = true;
                           return;
                         }
                         body.resize(n);
                         asio::async_read(socket, asio::buffer(body),
                                          [&](boost::system::error_code ec3, std::size_t) {
                                            result = ec3;
                                            done = true;
                                          });
                       });
    });
    if (!run_until(done, deadline))
      fail(operation, "no reply from the rendezvous store at " + where() + " within " +
                          std::to_string(timeout.count()) +
                          " ms (is rank 0 alive, and is that port its store?)");
    if (result) {
      boost::system::error_code ignored;
      socket.close(ignored);
      fail(operation, "lost the connection to the rendezvous store at " + where() + ": " +
                          result.message() + " (rank 0 died, or the port is not a store)");
    }
    try {
      FrameReader in(body);
      const auto status = static_cast<Status>(in.u8());
      auto payload = in.str();
      if (status == Status::failed) fail(operation, payload);
      if (status != Status::ok && status != Status::timed_out)
        throw ProtocolError("unknown status");
      return {status, std::move(payload)};
    } catch (const ProtocolError& e) {
      fail(operation, "malformed reply from " + where() + ": " + e.what());
    }
  }

  // Deadline for a request the server itself bounds by `server_wait`: a little longer, so the
  // server's own timeout reply (which names what is missing) normally arrives first.
  Clock::time_point deadline_after(std::chrono::milliseconds server_wait) const {
    return Clock::now() + server_wait + std::min(timeout, std::chrono::milliseconds(1000));
  }

  std::string host;
  std::uint16_t port;
  std::int64_t rank;
  std::chrono::milliseconds timeout;
  asio::io_context io;
  tcp::socket socket;
};

RendezvousClient::RendezvousClient(std::string_view host, std::uint16_t port, std::int64_t rank,
                                   std::int64_t size, std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>(host, port, rank, timeout)) {
  const auto deadline = Clock::now() + timeout;
  impl_->connect(deadline);
  impl_->call("join the group at " + impl_->where(),
              FrameWriter()
                  .u8(static_cast<std::uint8_t>(Op::hello))
                  .str(protocol_tag)
                  .i64(rank)
                  .i64(size)
                  .finish(),
              std::max(deadline, Clock::now() + std::chrono::milliseconds(100)));
}

RendezvousClient::~RendezvousClient() = default;

void RendezvousClient::set(std::string_view key, std::string_view value) {
  impl_->call("publish '" + std::string(key) + "' to the rendezvous store",
              FrameWriter().u8(static_cast<std::uint8_t>(Op::set)).str(key).str(value).finish(),
              Clock::now() + impl_->timeout);
}

std::string RendezvousClient::get(std::string_view key) {
  const auto operation = "read '" + std::string(key) + "' from the rendezvous store";
  auto [status, payload] = impl_->call(operation,
                                       FrameWriter()
                                           .u8(static_cast<std::uint8_t>(Op::get))
                                           .str(key)
                                           .i64(impl_->timeout.count())
                                           .finish(),
                                       impl_->deadline_after(impl_->timeout));
  if (status == Status::timed_out)
    impl_->fail(operation,
                "nobody set it within " + std::to_string(impl_->timeout.count()) + " ms");
  return std::move(payload);
}

std::vector<std::string> RendezvousClient::wait(std::span<const std::string> keys,
                                                std::chrono::milliseconds timeout) {
  const std::vector<std::string> wanted(keys.begin(), keys.end());
  auto [status, payload] = impl_->call("wait for the rendezvous store",
                                       FrameWriter()
                                           .u8(static_cast<std::uint8_t>(Op::wait))
                                           .i64(timeout.count())
                                           .str(join_keys(wanted))
                                           .finish(),
                                       impl_->deadline_after(timeout));
  if (status == Status::ok) return {};
  return split_keys(payload);
}

void RendezvousClient::leave() {
  if (!impl_->socket.is_open()) return;
  impl_->call("leave the rendezvous store",
              FrameWriter().u8(static_cast<std::uint8_t>(Op::leave)).finish(),
              Clock::now() + impl_->timeout);
  boost::system::error_code ignored;
  impl_->socket.shutdown(tcp::socket::shutdown_both, ignored);
  impl_->socket.close(ignored);
}

void RendezvousClient::abort(std::string_view reason) noexcept {
  try {
    if (impl_->socket.is_open())
      impl_->call("report a failure to the rendezvous store",
                  FrameWriter().u8(static_cast<std::uint8_t>(Op::abort)).str(reason).finish(),
                  Clock::now() + std::min(impl_->timeout, std::chrono::milliseconds(1000)));
  } catch (const DistError&) {
    // The store is gone or failed already: the peers learn of the failure from that instead.
  }
}

std::string RendezvousClient::local_address() const {
  boost::system::error_code ec;
  const auto ep = impl_->socket.local_endpoint(ec);
  if (ec) impl_->fail("read the local address", ec.message());
  return ep.address().to_string();
}

std::int64_t RendezvousClient::rank() const noexcept {
  return impl_->rank;
}

std::chrono::milliseconds RendezvousClient::timeout() const noexcept {
  return impl_->timeout;
}

}  // namespace atom::dist
