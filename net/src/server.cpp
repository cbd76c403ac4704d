// serve(): an acceptor fiber, a fiber per connection, and the serving fiber itself, which sleeps
// until it is told to stop and then runs the shutdown (stop accepting, grace period, cancel, wait).
#include "epoll_driver.hpp"

#include <skein/run.hpp>
#include <skein/server.hpp>
#include <skein/task.hpp>

#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <system_error>
#include <unordered_map>
#include <utility>

namespace skein {

using detail::Fiber;
using detail::Wake;

namespace {

void unlink_slot(Fiber*, void* slot) noexcept {
  *static_cast<Fiber**>(slot) = nullptr;
}

// Parks the running fiber in `slot` until wake(slot), `deadline` or a cancel.
Wake park_in(Fiber*& slot, TimePoint deadline) noexcept {
  slot = detail::current_fiber();
  const Wake w = detail::park(deadline, &unlink_slot, &slot);
  slot = nullptr;
  return w;
}

void wake(Fiber*& slot) noexcept {
  if (Fiber* f = std::exchange(slot, nullptr)) detail::unpark(f);
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

}  // namespace

struct Server::State {
  ServeOptions options;
  Handler handler;
  bool serving = false;
  bool stop_requested = false;
  bool hurry = false;  // skip the rest of the grace period
  std::size_t active = 0;
  std::uint64_t accepted = 0;
  std::unordered_map<std::uint64_t, Task<void>> connections;  // by accept number
  Fiber* server_waiter = nullptr;    // serve(), waiting for a stop or for handlers to end
  Fiber* acceptor_waiter = nullptr;  // the acceptor, waiting for a free connection slot

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
      wake(state->acceptor_waiter);
      if (state->stop_requested && state->active == 0) wake(state->server_waiter);
    }
  };

  void accept_loop(Listener& listener) {
    auto backoff = std::chrono::milliseconds(10);
    for (;;) {
      while (active >= options.max_connections)
        detail::throw_if_interrupted(park_in(acceptor_waiter, no_deadline));
      Address peer;
      Stream stream;
      try {
        stream = listener.accept({}, &peer);
      } catch (const std::system_error& e) {
        if (!is_fd_limit(e.code())) throw;
        // Out of descriptors: the connection stays queued. Retrying at once would spin; wait for
        // handlers to close theirs, longer each time, and say so once per episode.
        if (backoff == std::chrono::milliseconds(10))
          std::fprintf(stderr, "skein::serve: accept: %s; backing off until descriptors free up\n", e.what());
        sleep_for(backoff);
        backoff = std::min<std::chrono::milliseconds>(backoff * 2, std::chrono::seconds(1));
        continue;
      }
      backoff = std::chrono::milliseconds(10);
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
        sleep_for(backoff);
        backoff = std::min<std::chrono::milliseconds>(backoff * 2, std::chrono::seconds(1));
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
  return state_->active;
}

bool Server::stopping() const noexcept {
  return state_->stop_requested;
}

std::uint64_t Server::accepted() const noexcept {
  return state_->accepted;
}

void Server::stop() noexcept {
  state_->stop_requested = true;
  wake(state_->server_waiter);
}

namespace {

// SIGINT/SIGTERM through a signalfd read by a fiber, so no handler runs at an arbitrary point.
// Owns the mask change, the descriptor and the fiber, and undoes all three however serve() ends.
class SignalWatch {
 public:
  SignalWatch(Server& server, bool& hurry) {
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
        detail::EpollDriver* driver = detail::EpollDriver::current();
        for (int seen = 0;;) {
          signalfd_siginfo info;
          if (::read(fd, &info, sizeof info) != sizeof info) {
            driver->state(fd).ready[0] = false;
            driver->wait(fd, detail::Direction::read, no_deadline);
            continue;
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
      if (detail::EpollDriver* d = detail::EpollDriver::installed()) d->forget(fd_);
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

void Server::serve(Listener& listener, Handler handler) {
  State& st = *state_;
  Fiber* self = detail::current_fiber();
  if (!self)
    throw std::system_error(std::make_error_code(std::errc::operation_not_permitted),
                            "skein::Server::serve: call it from a fiber (inside skein::run)");
  if (st.serving)
    throw std::system_error(std::make_error_code(std::errc::operation_in_progress),
                            "skein::Server::serve: already serving");
  if (!listener.is_open())
    throw std::system_error(std::make_error_code(std::errc::bad_file_descriptor), "skein::Server::serve");
  if (st.stop_requested) return;
  st.handler = std::move(handler);
  st.serving = true;
  struct Serving {
    State& st;
    ~Serving() { st.serving = false; }
  } serving{st};

  std::optional<SignalWatch> signals;
  if (st.options.stop_on_signals) signals.emplace(*this, st.hurry);

  auto acceptor = spawn(FiberOptions{"acceptor"}, [&st, &listener] {
    struct Done {
      State& st;
      ~Done() {
        st.stop_requested = true;
        wake(st.server_waiter);
      }
    } done{st};
    st.accept_loop(listener);
  });

  bool cancelled = false;
  while (!st.stop_requested)
    if (park_in(st.server_waiter, no_deadline) == Wake::cancelled) {
      cancelled = true;
      st.stop_requested = true;
    }

  // Shutdown. Whatever happens, serve() must not return while a handler might still use the
  // listener or `st`: the waits for the acceptor and for the last handlers are shielded. The
  // grace period is not, so cancelling serve() cuts it short.
  const bool was_shielded = self->shielded;
  self->shielded = true;
  acceptor.cancel();
  detail::TaskAccess::wait_shielded(acceptor);
  self->shielded = was_shielded;
  const TimePoint grace_end = deadline_after(st.options.grace_period);
  while (st.active > 0 && !st.hurry && !cancelled && Clock::now() < grace_end)
    if (park_in(st.server_waiter, grace_end) == Wake::cancelled) cancelled = true;
  for (auto& [key, task] : st.connections) task.cancel();
  self->shielded = true;
  while (st.active > 0) park_in(st.server_waiter, no_deadline);
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

void serve(Listener& listener, Server::Handler handler, ServeOptions options) {
  Server(std::move(options)).serve(listener, std::move(handler));
}

}  // namespace skein
