// serve(): an acceptor fiber, a fiber per connection, and the serving fiber itself, which sleeps
// until it is told to stop and then runs the shutdown (stop accepting, grace period, cancel, wait).
#include "io_core.hpp"

#include <skein/run.hpp>
#include <skein/runtime.hpp>
#include <skein/server.hpp>
#include <skein/task.hpp>

#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <deque>
#include <mutex>
#include <optional>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

namespace skein {

using detail::Fiber;
using detail::Wake;

namespace {

// Where one fiber waits to be woken, possibly from another worker (Server::stop).
struct WaitSlot {
  detail::SpinLock lock;
  Fiber* waiter = nullptr;
};

void unlink_slot(Fiber*, void* arg) noexcept {
  auto* slot = static_cast<WaitSlot*>(arg);
  std::lock_guard guard(slot->lock);
  slot->waiter = nullptr;
}

// Parks the running fiber in `slot` until wake(slot), `deadline` or a cancel, unless `ready()`
// (checked under the slot's lock, so a waker that makes it true just before cannot be missed).
template <class Ready>
Wake park_in(WaitSlot& slot, TimePoint deadline, Ready ready) noexcept {
  {
    std::lock_guard guard(slot.lock);
    if (ready()) return Wake::notified;
    slot.waiter = detail::current_fiber();
  }
  return detail::park(deadline, &unlink_slot, &slot);
}

Wake park_in(WaitSlot& slot, TimePoint deadline) noexcept {
  return park_in(slot, deadline, [] { return false; });
}

// Any thread.
void notify(WaitSlot& slot) noexcept {
  std::lock_guard guard(slot.lock);
  if (Fiber* f = std::exchange(slot.waiter, nullptr)) detail::unpark(f);
}

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

}  // namespace

// Where a worker's serve() gets its connections: its own listener, or (Distribution::acceptor)
// what one acceptor hands it from another worker.
struct Server::Source {
  Listener* listener = nullptr;
  // Handed connections, under `lock`; the worker's acceptor fiber waits in `waiter` while empty.
  detail::SpinLock lock;
  std::deque<std::pair<Stream, Address>> handed;
  WaitSlot waiter;

  Stream next(Address& peer, std::chrono::milliseconds& backoff) {
    if (listener) return accept_next(*listener, peer, backoff);
    for (;;) {
      {
        std::lock_guard guard(lock);
        if (!handed.empty()) {
          auto [stream, from] = std::move(handed.front());
          handed.pop_front();
          peer = from;
          return std::move(stream);
        }
      }
      detail::throw_if_interrupted(park_in(waiter, no_deadline, [this] {
        std::lock_guard guard(lock);
        return !handed.empty();
      }));
    }
  }

  // Connections handed but not yet taken. Any worker.
  std::size_t queued() {
    std::lock_guard guard(lock);
    return handed.size();
  }

  // Any worker.
  void hand(Stream stream, const Address& peer) {
    {
      std::lock_guard guard(lock);
      handed.emplace_back(std::move(stream), peer);
    }
    notify(waiter);
  }
};

struct Server::State {
  ServeOptions options;
  Handler handler;
  bool serving = false;
  // Set from any worker (stop(), the signal watcher, a serve() across workers); the rest belongs
  // to serve()'s worker.
  std::atomic<bool> stop_requested{false};
  std::atomic<bool> hurry{false};  // skip the rest of the grace period
  std::atomic<std::size_t> active{0};
  std::atomic<std::uint64_t> accepted{0};
  std::unordered_map<std::uint64_t, Task<void>> connections;  // by accept number
  WaitSlot server_waiter;        // serve(), waiting for a stop or for handlers to end
  WaitSlot acceptor_waiter;      // the acceptor, waiting for a free connection slot
  std::vector<Server*> shards;   // serve(address) across workers: one Server per worker
  WaitSlot* upstream = nullptr;  // a shard fed by one acceptor: that acceptor's slot

  // Runs when a connection's closure is destroyed, whether its body ran or it was cancelled
  // before it started: the count cannot drift.
  struct Slot {
    State* state;
    std::uint64_t key;
    Slot(State* s, std::uint64_t k) noexcept : state(s), key(k) {}
    Slot(Slot&& o) noexcept : state(std::exchange(o.state, nullptr)), key(o.key) {}
    Slot& operator=(Slot&&) = delete;
    ~Slot() {
      if (!state) return;
      --state->active;
      state->connections.erase(key);  // drops the handle: the fiber is then detached
      notify(state->acceptor_waiter);
      if (state->upstream) notify(*state->upstream);
      if (state->stop_requested && state->active == 0) notify(state->server_waiter);
    }
  };

  // Parks serve()'s fiber until stop() (from any worker). A cancel of that fiber counts as a stop;
  // returns true if that is how it ended.
  bool wait_for_stop() {
    auto stopped = [this] { return stop_requested.load(); };
    while (!stopped())
      if (park_in(server_waiter, no_deadline, stopped) == Wake::cancelled) {
        stop_requested = true;
        return true;
      }
    return false;
  }

  void accept_loop(Source& source) {
    auto backoff = std::chrono::milliseconds(10);
    for (;;) {
      while (active >= options.max_connections)
        detail::throw_if_interrupted(park_in(acceptor_waiter, no_deadline));
      Address peer;
      Stream stream = source.next(peer, backoff);
      const std::uint64_t key = ++accepted;
      ++active;
      Slot slot(this, key);
      Task<void> task;
      try {
        task = spawn(FiberOptions{"connection", options.stack_size},
                     [this, slot = std::move(slot), peer, s = std::move(stream)]() mutable {
                       try {
                         handler(std::move(s));
                       } catch (...) {
                         if (options.on_error)
                           options.on_error(peer, std::current_exception());
                         else
                           report(peer, std::current_exception());
                       }
                     });
      } catch (const std::system_error& e) {
        // No stack for the fiber (out of memory or mappings): this connection is dropped (its
        // closure, with the stream and the slot, is gone already); back off like for EMFILE.
        std::fprintf(stderr, "skein::serve: cannot start a connection fiber: %s; dropping it\n", e.what());
        back_off(backoff);
        continue;
      }
      connections.emplace(key, std::move(task));
    }
  }
};

Server::Server(ServeOptions options) : state_(std::make_unique<State>()) {
  state_->options = std::move(options);
}

Server::~Server() = default;

std::size_t Server::active() const noexcept {
  std::size_t n = state_->active;
  for (const Server* shard : state_->shards) n += shard->active();
  return n;
}

bool Server::stopping() const noexcept {
  return state_->stop_requested;
}

std::uint64_t Server::accepted() const noexcept {
  std::uint64_t n = state_->accepted;
  for (const Server* shard : state_->shards) n += shard->accepted();
  return n;
}

void Server::stop() noexcept {
  state_->stop_requested = true;
  notify(state_->server_waiter);
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
  if (!detail::current_fiber())
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
  Fiber* self = detail::current_fiber();
  if (st.stop_requested) return;
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
      State& st;
      ~Done() {
        st.stop_requested = true;
        notify(st.server_waiter);
      }
    } done{st};
    st.accept_loop(source);
  });

  bool cancelled = st.wait_for_stop();

  // Shutdown. Whatever happens, serve() must not return while a handler might still use the
  // listener or `st`: the waits for the acceptor and for the last handlers are shielded. The
  // grace period is not, so cancelling serve() cuts it short.
  const bool was_shielded = self->shielded;
  self->shielded = true;
  acceptor.cancel();
  detail::TaskAccess::wait_shielded(acceptor);
  self->shielded = was_shielded;
  const TimePoint grace_end = deadline_after(st.options.grace_period);
  auto settled = [&st] { return st.active == 0 || st.hurry; };
  while (!settled() && !cancelled && Clock::now() < grace_end)
    if (park_in(st.server_waiter, grace_end, settled) == Wake::cancelled) cancelled = true;
  for (auto& [key, task] : st.connections) task.cancel();
  self->shielded = true;
  auto idle = [&st] { return st.active == 0; };
  while (!idle()) park_in(st.server_waiter, no_deadline, idle);
  signals.reset();
  self->shielded = was_shielded;

  if (cancelled || self->cancel_requested) detail::throw_if_interrupted(Wake::cancelled);
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
  if (st.stop_requested) return;

  // One Server per worker, each with the whole single-worker machinery; this fiber coordinates.
  ServeOptions shard_options = st.options;
  shard_options.stop_on_signals = false;
  shard_options.on_listening = nullptr;
  shard_options.max_connections = (st.options.max_connections + n - 1) / n;
  std::vector<std::unique_ptr<Server>> shards;
  std::deque<Source> sources(n);
  for (std::size_t i = 0; i < n; ++i) {
    shards.push_back(std::make_unique<Server>(shard_options));
    if (distribution == Distribution::reuse_port)
      sources[i].listener = &listeners[i];
    else
      shards[i]->state_->upstream = &st.acceptor_waiter;
  }
  st.serving = true;
  struct Serving {
    State& st;
    ~Serving() {
      st.serving = false;
      st.shards.clear();
    }
  } serving{st};
  for (auto& shard : shards) st.shards.push_back(shard.get());

  std::optional<SignalWatch> signals;
  if (st.options.stop_on_signals) signals.emplace(*this, st.hurry);
  // Only now: whoever learns the address may signal at once.
  if (st.options.on_listening) st.options.on_listening(listeners[0].local_address());

  // Whichever part ends first (a stop, an error) stops the rest.
  std::vector<Task<void>> workers;
  std::atomic<std::size_t> ended{0};  // workers past their serve_from
  Task<void> acceptor;
  try {
    for (std::size_t i = 0; i < n; ++i)
      workers.push_back(
          spawn_on(i, FiberOptions{"serve-worker"}, [this, &shards, &sources, &handler, &ended, i] {
            struct Done {
              Server* server;
              std::atomic<std::size_t>& ended;
              ~Done() {
                ++ended;
                server->stop();
              }
            } done{this, ended};
            shards[i]->serve_from(sources[i], handler);
          }));
    if (distribution == Distribution::acceptor)
      acceptor =
          spawn(FiberOptions{"acceptor"}, [this, &st, &listeners, &sources, &shards, n, &shard_options] {
            struct Done {
              Server* server;
              ~Done() { server->stop(); }
            } done{this};
            // Round robin over the workers with room: live plus handed connections under their share
            // of max_connections. When all are full, accepting pauses (the backlog queues), as on one
            // worker.
            auto has_room = [&](std::size_t k) {
              return shards[k]->active() + sources[k].queued() < shard_options.max_connections;
            };
            auto backoff = std::chrono::milliseconds(10);
            for (std::size_t next = 0;;) {
              std::size_t tried = 0;
              while (tried < n && !has_room(next)) {
                next = (next + 1) % n;
                ++tried;
              }
              if (tried == n) {
                auto any_room = [&] {
                  for (std::size_t k = 0; k < n; ++k)
                    if (has_room(k)) return true;
                  return false;
                };
                detail::throw_if_interrupted(park_in(st.acceptor_waiter, no_deadline, any_room));
                continue;
              }
              Address peer;
              Stream stream = accept_next(listeners[0], peer, backoff);
              sources[next].hand(std::move(stream), peer);
              next = (next + 1) % n;
            }
          });
  } catch (...) {
    stop();  // out of stacks: end what started
  }

  Fiber* self = detail::current_fiber();
  bool cancelled = st.wait_for_stop();

  // Shutdown: every worker runs its own (stop accepting, grace period, cancel); this fiber passes
  // on a second signal or its own cancellation, and must not return before all of them are done.
  const bool was_shielded = self->shielded;
  self->shielded = true;
  if (acceptor.valid()) {
    acceptor.cancel();
    detail::TaskAccess::wait_shielded(acceptor);
  }
  self->shielded = was_shielded;
  for (auto& shard : shards) shard->stop();
  // A worker that ends calls stop(), which wakes this fiber; so does a second signal (hurry).
  bool hurried = false;
  auto all_done = [&] { return ended == workers.size(); };
  while (!all_done()) {
    if ((st.hurry || cancelled) && !hurried) {
      hurried = true;
      for (auto& w : workers) w.cancel();
    }
    self->shielded = cancelled;  // once cancelled, wait out the workers regardless
    auto changed = [&] { return all_done() || (st.hurry && !hurried); };
    if (park_in(st.server_waiter, no_deadline, changed) == Wake::cancelled) cancelled = true;
  }
  // Every worker is past its serve_from; wait for each fiber's end (its last step is the stop()
  // in its Done, on this Server).
  self->shielded = true;
  for (auto& w : workers) detail::TaskAccess::wait_shielded(w);
  signals.reset();
  self->shielded = was_shielded;

  if (cancelled || self->cancel_requested) detail::throw_if_interrupted(Wake::cancelled);
  std::exception_ptr first;
  for (auto& w : workers) {
    try {
      w.join();
    } catch (const std::system_error& e) {
      if (e.code() != std::errc::operation_canceled && !first) first = std::current_exception();
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (acceptor.valid()) {
    try {
      acceptor.join();
    } catch (const std::system_error& e) {
      if (e.code() != std::errc::operation_canceled && !first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

void serve(Listener& listener, Server::Handler handler, ServeOptions options) {
  Server(std::move(options)).serve(listener, std::move(handler));
}

void serve(const Address& address, Server::Handler handler, ServeOptions options) {
  Server(std::move(options)).serve(address, std::move(handler));
}

}  // namespace skein
