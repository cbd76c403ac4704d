// serve(): an acceptor fiber, a fiber per connection, and the serving fiber itself, which sleeps
// until it is told to stop and then runs the shutdown (stop accepting, grace period, cancel, wait).
#include "io_core.hpp"

#include <skein/channel.hpp>
#include <skein/run.hpp>
#include <skein/runtime.hpp>
#include <skein/server.hpp>
#include <skein/sync.hpp>
#include <skein/task.hpp>
#include <skein/task_group.hpp>

#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <deque>
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

namespace skein {

namespace {

// The ordinary ways a connection ends: not worth a line on stderr.
bool is_routine(const std::exception_ptr& e) noexcept {
  try {
    std::rethrow_exception(e);
  } catch (const std::system_error& s) {
    const std::error_code c = s.code();
    return c == std::errc::connection_reset || c == std::errc::broken_pipe || c == std::errc::timed_out ||
           c == std::errc::operation_canceled || c == std::errc::connection_aborted ||
           c == net_errc::end_of_stream || c == net_errc::closed;
  } catch (...) {
    return false;
  }
}

void report(const Address& peer, const std::exception_ptr& e) noexcept {
  if (is_routine(e)) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    std::fprintf(stderr, "skein::serve: connection from %s: %s\n", peer.to_string().c_str(), x.what());
  } catch (...) {
    std::fprintf(stderr, "skein::serve: connection from %s: non-standard exception\n",
                 peer.to_string().c_str());
  }
}

bool is_fd_limit(const std::error_code& c) noexcept {
  return c == std::errc::too_many_files_open || c == std::errc::too_many_files_open_in_system ||
         c == std::errc::no_buffer_space || c == std::errc::not_enough_memory;
}

void back_off(std::chrono::milliseconds& backoff) {
  sleep_for(backoff);
  backoff = std::min<std::chrono::milliseconds>(backoff * 2, std::chrono::seconds(1));
}

// Accepts the next connection, backing off from the fd-limit errors: the connection stays queued,
// and retrying at once would spin, so it waits for handlers to close theirs, longer each time,
// and says so once per episode. Resets `backoff` on success.
Stream accept_next(Listener& listener, Address& peer, std::chrono::milliseconds& backoff) {
  for (;;) {
    try {
      Stream stream = listener.accept(&peer);
      backoff = std::chrono::milliseconds(10);
      return stream;
    } catch (const std::system_error& e) {
      if (!is_fd_limit(e.code())) throw;
      if (backoff == std::chrono::milliseconds(10))
        std::fprintf(stderr, "skein::serve: accept: %s; backing off until descriptors free up\n", e.what());
      back_off(backoff);
    }
  }
}

// Waits for `stop`. An interrupted wait (a cancel, the TimeoutScope) is a stop too, whose grace
// period is cut to zero: returns its error, for serve() to throw once everything has ended.
std::exception_ptr wait_for_stop(Event& stop) noexcept {
  try {
    stop.wait();
    return nullptr;
  } catch (...) {
    stop.set();
    return std::current_exception();
  }
}

// After a shutdown: throws the error that interrupted serve(), or the cancel that arrived while
// it waited shielded.
void rethrow_interruption(const std::exception_ptr& interrupted) {
  if (interrupted) std::rethrow_exception(interrupted);
  if (this_fiber::cancelled()) detail::throw_if_interrupted(detail::Wake::cancelled);
}

}  // namespace

// Where a worker's serve() gets its connections: its own listener, or (Distribution::acceptor)
// what one acceptor hands it from another worker.
struct Server::Source {
  Listener* listener = nullptr;
  Channel<std::pair<Stream, Address>> handed{unbounded};  // never closed

  Stream next(Address& peer, std::chrono::milliseconds& backoff) {
    if (listener) return accept_next(*listener, peer, backoff);
    auto [stream, from] = handed.recv().value();
    peer = from;
    return std::move(stream);
  }
};

struct Server::State {
  explicit State(ServeOptions o) : options(std::move(o)), slots(options.max_connections) {}

  ServeOptions options;
  Handler handler;
  bool serving = false;
  // Set from any worker (stop(), the signal watcher, the acceptor ending, a serve() across
  // workers); the rest belongs to serve()'s worker.
  Event stop;
  std::atomic<bool> hurry{false};  // skip the grace period: stop() then cancels the handlers
  std::atomic<std::size_t> active{0};
  std::atomic<std::uint64_t> accepted{0};
  Semaphore slots;                // max_connections: the acceptor takes one before each accept
  TaskGroup connections;          // the handlers' fibers
  Semaphore* upstream = nullptr;  // a shard fed by one acceptor: that acceptor's room
  mutable detail::SpinLock shards_lock;
  std::vector<Server*> shards SKEIN_GUARDED_BY(shards_lock);  // serve(address): one per worker

  // One of max_connections, taken before accepting (over the cap, connections wait in the kernel's
  // backlog) and given back when the connection's closure is destroyed, whether its body ran or
  // it was cancelled before it started: the count cannot drift.
  class Slot {
   public:
    explicit Slot(State& st) : st_(&st) { st.slots.acquire(); }
    Slot(Slot&& o) noexcept : st_(std::exchange(o.st_, nullptr)), live_(o.live_) {}
    Slot& operator=(Slot&&) = delete;
    ~Slot() {
      if (!st_) return;
      if (live_) {
        --st_->active;
        if (st_->upstream) st_->upstream->release();
      }
      st_->slots.release();
    }
    // Counts the slot as a connection being handled.
    void open() noexcept {
      ++st_->accepted;
      ++st_->active;
      live_ = true;
    }

   private:
    State* st_;
    bool live_ = false;
  };

  void accept_loop(Source& source) {
    auto backoff = std::chrono::milliseconds(10);
    for (;;) {
      Slot slot(*this);
      Address peer;
      Stream stream = source.next(peer, backoff);
      slot.open();
      try {
        connections.spawn(FiberOptions{"connection", options.stack_size},
                          [this, slot = std::move(slot), peer, s = std::move(stream)]() mutable {
                            try {
                              handler(std::move(s));
                            } catch (...) {
                              on_error(peer, std::current_exception());
                            }
                          });
      } catch (const std::system_error& e) {
        // No stack for the fiber (out of memory or mappings): this connection is dropped (its
        // closure, with the stream and the slot, is gone already); back off like for EMFILE.
        std::fprintf(stderr, "skein::serve: cannot start a connection fiber: %s; dropping it\n", e.what());
        back_off(backoff);
      }
    }
  }

  // A handler's exception ends only its connection, even if on_error throws in turn.
  void on_error(const Address& peer, const std::exception_ptr& e) noexcept {
    try {
      if (options.on_error)
        options.on_error(peer, e);
      else
        report(peer, e);
    } catch (...) {
      report(peer, std::current_exception());
    }
  }
};

Server::Server(ServeOptions options) : state_(std::make_unique<State>(std::move(options))) {}

Server::~Server() = default;

std::size_t Server::active() const noexcept {
  std::size_t n = state_->active;
  detail::SpinGuard guard(state_->shards_lock);
  for (const Server* shard : state_->shards) n += shard->active();
  return n;
}

bool Server::stopping() const noexcept {
  return state_->stop.is_set();
}

std::uint64_t Server::accepted() const noexcept {
  std::uint64_t n = state_->accepted;
  detail::SpinGuard guard(state_->shards_lock);
  for (const Server* shard : state_->shards) n += shard->accepted();
  return n;
}

void Server::stop() noexcept {
  State& st = *state_;
  st.stop.set();
  if (!st.hurry) return;
  // A second signal: no grace period, here or on any worker.
  st.connections.cancel();
  detail::SpinGuard guard(st.shards_lock);
  for (Server* shard : st.shards) {
    shard->state_->hurry = true;
    shard->stop();
  }
}

namespace {

// SIGINT/SIGTERM through a signalfd read by a fiber, so no handler runs at an arbitrary point.
// Owns the mask change, the descriptor and the fiber, and undoes all three however serve() ends.
class SignalWatch {
 public:
  SignalWatch(Server& server, std::atomic<bool>& hurry) {
    sigemptyset(&watched_);
    sigemptyset(&added_);
    // Both, even one the process inherited as ignored (`server &` in a script ignores SIGINT):
    // asking for them is explicit, as with Go's signal.Notify, which un-ignores them too. Linux
    // queues a blocked signal whatever its disposition, so the signalfd sees it.
    sigaddset(&watched_, SIGINT);
    sigaddset(&watched_, SIGTERM);
    sigset_t before;
    pthread_sigmask(SIG_BLOCK, &watched_, &before);
    for (const int sig : {SIGINT, SIGTERM})
      if (sigismember(&watched_, sig) && !sigismember(&before, sig)) sigaddset(&added_, sig);
    fd_ = signalfd(-1, &watched_, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd_ < 0) {
      const int err = errno;
      unblock();
      throw std::system_error(err, std::generic_category(), "skein::Server::serve: signalfd");
    }
    try {
      fiber_ = spawn(FiberOptions{"serve-signals"}, [&server, &hurry, fd = fd_] {
        // A fresh descriptor: its number's slot may hold a registration of one closed before.
        detail::IoCore* core = detail::IoCore::current();
        core->forget(fd);
        detail::IoHandle h = core->handle(fd);
        for (int seen = 0;;) {
          signalfd_siginfo info;
          const ssize_t n =
              detail::IoCore::run(h, detail::Direction::read, no_deadline, detail::IoTransfer::message(),
                                  [&] { return ::read(fd, &info, sizeof info); });
          if (n < 0) {
            const int err = static_cast<int>(-n);
            throw std::system_error(
                detail::io_error_code(err),
                detail::io_error_message(err, detail::Direction::read, "skein: signalfd"));
          }
          // The first signal stops gracefully; a second one cuts the grace period short.
          if (++seen > 1) hurry = true;
          server.stop();
        }
      });
    } catch (...) {
      ::close(fd_);
      unblock();
      throw;
    }
  }

  ~SignalWatch() {
    if (fiber_.valid()) {
      fiber_.cancel();
      detail::TaskAccess::wait_shielded(fiber_);
    }
    if (fd_ >= 0) {
      // A signal that came after the watcher ended is consumed here rather than delivered, with
      // its default action, the moment it is unblocked.
      signalfd_siginfo info;
      while (::read(fd_, &info, sizeof info) == sizeof info) {
      }
      if (detail::IoCore* c = detail::IoCore::installed()) c->forget(fd_);
      ::close(fd_);
    }
    unblock();
  }

  SignalWatch(const SignalWatch&) = delete;
  SignalWatch& operator=(const SignalWatch&) = delete;

 private:
  // Unblocks only what this watch blocked: a mask changed meanwhile, or another watch's, stays.
  void unblock() noexcept {
    if (!sigisemptyset(&added_)) pthread_sigmask(SIG_UNBLOCK, &added_, nullptr);
  }

  sigset_t watched_;
  sigset_t added_;
  int fd_ = -1;
  Task<void> fiber_;
};

}  // namespace

void Server::check_can_serve() const {
  if (!in_fiber())
    throw std::system_error(std::make_error_code(std::errc::operation_not_permitted),
                            "skein::Server::serve: call it from a fiber (inside skein::run)");
  if (state_->serving)
    throw std::system_error(std::make_error_code(std::errc::operation_in_progress),
                            "skein::Server::serve: already serving");
}

void Server::serve(Listener& listener, Handler handler) {
  check_can_serve();
  if (!listener.is_open())
    throw std::system_error(std::make_error_code(std::errc::bad_file_descriptor), "skein::Server::serve");
  Source source;
  source.listener = &listener;
  serve_from(source, std::move(handler));
}

void Server::serve_from(Source& source, Handler handler, const Address* announce) {
  State& st = *state_;
  if (st.stop.is_set()) return;
  st.handler = std::move(handler);
  st.serving = true;
  struct Serving {
    State& st;
    ~Serving() { st.serving = false; }
  } serving{st};

  std::optional<SignalWatch> signals;
  if (st.options.stop_on_signals) signals.emplace(*this, st.hurry);
  // Only now: whoever learns the address may signal at once.
  if (announce && st.options.on_listening) st.options.on_listening(*announce);

  auto acceptor = spawn(FiberOptions{"acceptor"}, [&st, &source] {
    struct Done {
      Event& stop;
      ~Done() { stop.set(); }
    } done{st.stop};
    st.accept_loop(source);
  });

  std::exception_ptr interrupted = wait_for_stop(st.stop);

  // Shutdown. Whatever happens, serve() must not return while a handler might still use the
  // listener or `st`: the waits for the acceptor and for the last handlers are shielded. The
  // grace period is not, so cancelling serve() cuts it short.
  {
    const detail::ShieldGuard shield;
    acceptor.cancel();
    acceptor.wait();
  }
  try {
    if (interrupted || !st.connections.join_until(deadline_after(st.options.grace_period)))
      st.connections.cancel();
  } catch (...) {
    interrupted = std::current_exception();  // the join cancelled the handlers and waited for them
  }
  {
    const detail::ShieldGuard shield;
    st.connections.join();
  }
  signals.reset();

  rethrow_interruption(interrupted);
  // The acceptor ends only by cancellation or an error; rethrow the error.
  try {
    acceptor.join();
  } catch (const std::system_error& e) {
    if (e.code() != std::errc::operation_canceled) throw;
  }
}

void Server::serve(const Address& address, Handler handler) {
  check_can_serve();
  State& st = *state_;
  const std::size_t available = worker_count();
  const std::size_t n = st.options.workers == 0 ? available : std::min(st.options.workers, available);
  // One path, one socket: a Unix-domain server always hands connections out.
  const Distribution distribution =
      address.family() == AF_UNIX ? Distribution::acceptor : st.options.distribution;
  if (n <= 1) {
    Listener listener = listen(address);
    const Address bound = listener.local_address();
    Source source;
    source.listener = &listener;
    serve_from(source, std::move(handler), &bound);
    return;
  }

  ListenOptions listen_options;
  listen_options.reuse_port = distribution == Distribution::reuse_port;
  std::vector<Listener> listeners;
  listeners.push_back(listen(address, listen_options));
  if (distribution == Distribution::reuse_port) {
    const Address bound = listeners[0].local_address();  // port 0: the others take the same port
    for (std::size_t i = 1; i < n; ++i) listeners.push_back(listen(bound, listen_options));
  }
  if (st.stop.is_set()) return;

  // One Server per worker, each with the whole single-worker machinery; this fiber coordinates.
  ServeOptions shard_options = st.options;
  shard_options.stop_on_signals = false;
  shard_options.on_listening = nullptr;
  shard_options.max_connections = (st.options.max_connections + n - 1) / n;
  // Distribution::acceptor: one permit per connection live or handed out on any worker.
  Semaphore room(st.options.max_connections);
  std::vector<std::unique_ptr<Server>> shards;
  std::deque<Source> sources(n);
  for (std::size_t i = 0; i < n; ++i) {
    shards.push_back(std::make_unique<Server>(shard_options));
    if (distribution == Distribution::reuse_port)
      sources[i].listener = &listeners[i];
    else
      shards[i]->state_->upstream = &room;
  }
  st.serving = true;
  struct Serving {
    State& st;
    ~Serving() {
      st.serving = false;
      detail::SpinGuard guard(st.shards_lock);
      st.shards.clear();
    }
  } serving{st};
  {
    detail::SpinGuard guard(st.shards_lock);
    for (auto& shard : shards) st.shards.push_back(shard.get());
  }

  std::optional<SignalWatch> signals;
  if (st.options.stop_on_signals) signals.emplace(*this, st.hurry);
  // Only now: whoever learns the address may signal at once.
  if (st.options.on_listening) st.options.on_listening(listeners[0].local_address());

  // Whichever part ends first (a stop, an error) stops the rest.
  std::vector<std::exception_ptr> errors(n);
  TaskGroup workers;
  Task<void> acceptor;
  try {
    for (std::size_t i = 0; i < n; ++i)
      workers.spawn_on(i, FiberOptions{"serve-worker"}, [this, &shards, &sources, &handler, &errors, i] {
        try {
          shards[i]->serve_from(sources[i], handler);
        } catch (...) {
          errors[i] = std::current_exception();
        }
        // Closed on the worker that waited on it: only that worker's I/O core can let go of its
        // registration (on io_uring a poll holds the socket open until it does).
        if (sources[i].listener) sources[i].listener->close();
        stop();
      });
    if (distribution == Distribution::acceptor)
      acceptor = spawn(FiberOptions{"acceptor"}, [this, &listeners, &sources, &shards, &room, n,
                                                  share = shard_options.max_connections] {
        struct Done {
          Server* server;
          ~Done() { server->stop(); }
        } done{this};
        auto has_room = [&](std::size_t k) { return shards[k]->active() + sources[k].handed.size() < share; };
        auto backoff = std::chrono::milliseconds(10);
        for (std::size_t next = 0;; next = (next + 1) % n) {
          // Accepting pauses (the backlog queues) while every connection allowed is live or
          // handed out, as on one worker.
          room.acquire();
          Address peer;
          Stream stream;
          try {
            stream = accept_next(listeners[0], peer, backoff);
          } catch (...) {
            room.release();
            throw;
          }
          // Round robin over the workers with room (live plus handed connections under their
          // share); the permit means one has, as the shares add up to at least the whole.
          for (std::size_t tried = 1; tried < n && !has_room(next); ++tried) next = (next + 1) % n;
          sources[next].handed.send({std::move(stream), peer});
        }
      });
  } catch (...) {
    stop();  // out of stacks: end what started
  }

  std::exception_ptr interrupted = wait_for_stop(st.stop);

  // Shutdown: every worker runs its own (stop accepting, grace period, cancel). A second signal
  // reaches them through stop(); a cancel of this fiber through the join, which then cancels
  // them (their grace cut to zero) and waits for them. Either way none is left when this returns.
  if (acceptor.valid()) {
    const detail::ShieldGuard shield;
    acceptor.cancel();
    acceptor.wait();
  }
  for (auto& shard : shards) shard->stop();
  try {
    if (interrupted) workers.cancel();
    workers.join();
  } catch (...) {
    if (!interrupted) interrupted = std::current_exception();
  }
  signals.reset();

  rethrow_interruption(interrupted);
  for (const std::exception_ptr& e : errors)
    if (e && !detail::is_cancellation(e)) std::rethrow_exception(e);
  if (acceptor.valid()) {
    try {
      acceptor.join();
    } catch (const std::system_error& e) {
      if (e.code() != std::errc::operation_canceled) throw;
    }
  }
}

void serve(Listener& listener, Server::Handler handler, ServeOptions options) {
  Server(std::move(options)).serve(listener, std::move(handler));
}

void serve(const Address& address, Server::Handler handler, ServeOptions options) {
  Server(std::move(options)).serve(address, std::move(handler));
}

}  // namespace skein
