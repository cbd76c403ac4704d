// A fiber-per-connection server (asyncio.start_server, gevent's StreamServer): accept, run the
// handler in its own fiber, cap the live connections, stop gracefully.
//
// Errors: serve() throws what accept reports other than the fd-limit errors, which it backs off
// from and survives (net_errc::closed if another fiber closes the listener). A handler's exception ends only
// its connection; it goes to ServeOptions::on_error (default: one line on stderr, silent for resets, broken
// pipes, end of stream, timeouts and cancels — the ordinary ways a connection ends).
#pragma once

#include <skein/socket.hpp>
#include <skein/stack.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>

namespace skein {

// How serve(address, ...) spreads connections over the runtime's workers.
enum class Distribution {
  reuse_port,  // one SO_REUSEPORT listener and acceptor per worker; the kernel balances connections
  acceptor,    // one listener and acceptor on the calling worker, handing connections out round
               // robin (for kernels or setups without SO_REUSEPORT balancing; the acceptor is the
               // bottleneck past a few cores)
};

struct ServeOptions {
  std::size_t max_connections = 10'000;           // accepting pauses while this many are live
  std::chrono::milliseconds grace_period{5'000};  // after stop(): how long handlers may finish
  bool stop_on_signals = false;                   // SIGINT/SIGTERM call stop(); a second one
                                                  // cancels the handlers at once. Also when the
                                                  // process inherited them as ignored (as Go's
                                                  // signal.Notify does)
  std::size_t stack_size = default_stack_size;    // of each connection's fiber
  std::function<void(const Address& peer, std::exception_ptr)> on_error;  // see above
  // serve(address, ...) only:
  std::size_t workers = 0;  // how many of the runtime's workers serve (the first ones); 0: all
  Distribution distribution = Distribution::reuse_port;
  // Once bound and (with stop_on_signals) watching the signals: the address, port 0 resolved.
  std::function<void(const Address&)> on_listening;
};

class Server {
 public:
  using Handler = std::function<void(Stream)>;

  explicit Server(ServeOptions options = {});
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Accepts connections on `listener` and runs `handler` in a new fiber for each, until stop().
  // Then it stops accepting, lets handlers run for the grace period, cancels those still running
  // and returns once every one has ended. Must be called from a fiber; once per Server. If the
  // calling fiber is cancelled (or its TimeoutScope expires), that is a stop() whose grace period
  // is cut to zero, and serve() then throws operation_canceled (timed_out).
  void serve(Listener& listener, Handler handler);

  // Listens on `address` and serves across options.workers workers (see Distribution), each
  // connection's fiber on the worker that accepted it (or was handed it). Otherwise as above;
  // stop() and the signals stop every worker. Throws what listen() throws.
  void serve(const Address& address, Handler handler);

  // Asks serve() to stop (see above). Any fiber of the runtime; idempotent; before serve()
  // starts it makes serve() return at once.
  void stop() noexcept;

  // True once stop() was called (or a stop signal arrived): a handler between requests can
  // close an idle keep-alive connection instead of waiting out the grace period.
  bool stopping() const noexcept;

  // Connections being handled now.
  std::size_t active() const noexcept;
  // Connections accepted so far.
  std::uint64_t accepted() const noexcept;

 private:
  struct State;
  struct Source;
  void check_can_serve() const;
  void serve_from(Source& source, Handler handler, const Address* announce = nullptr);
  std::unique_ptr<State> state_;
};

// Server(options).serve(listener, handler).
void serve(Listener& listener, Server::Handler handler, ServeOptions options = {});

// Server(options).serve(address, handler): on every worker of the runtime (or options.workers).
void serve(const Address& address, Server::Handler handler, ServeOptions options = {});

}  // namespace skein
