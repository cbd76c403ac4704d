#include "io_core.hpp"

#include "runtime_core.hpp"

#include <skein/net_error.hpp>

#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <new>
#include <string>

namespace skein::detail {

namespace {

void unlink_waiter(Fiber*, void* slot) noexcept {
  *static_cast<Fiber**>(slot) = nullptr;
}

}  // namespace

std::error_code io_error_code(int err) noexcept {
  switch (err) {
    case io_timed_out:
    case io_expired:
      return std::make_error_code(std::errc::timed_out);
    case io_cancelled:
      return std::make_error_code(std::errc::operation_canceled);
    case io_closed:
      return make_error_code(net_errc::closed);
    case io_busy:
      return std::make_error_code(std::errc::device_or_resource_busy);
    default:
      return {err, std::generic_category()};
  }
}

const char* io_error_message(int err, Direction dir, const char* call) noexcept {
  switch (err) {
    case io_timed_out:
      return "skein: deadline passed";
    case io_expired:
      return "skein: timeout scope expired";
    case io_cancelled:
      return "skein: fiber cancelled";
    case io_closed:
      return "skein: socket closed";
    case io_busy:
      return dir == Direction::read ? "skein: another fiber is already reading this socket"
                                    : "skein: another fiber is already writing this socket";
    default:
      return call;
  }
}

// ---- mailbox ------------------------------------------------------------------------------

bool Mailbox::post(std::shared_ptr<Completion> c) noexcept {
  std::lock_guard lock(mutex_);
  if (!inbox_) return false;
  posted_.push_back(std::move(c));
  // Under the lock: close() cannot let the inbox go while this uses it.
  inbox_->wake_driver();
  return true;
}

void Mailbox::take(std::vector<std::shared_ptr<Completion>>& out) noexcept {
  std::lock_guard lock(mutex_);
  out.swap(posted_);
}

void Mailbox::close() noexcept {
  std::lock_guard lock(mutex_);
  inbox_ = nullptr;
  posted_.clear();
}

// ---- core ---------------------------------------------------------------------------------

IoCore::IoCore(Inbox& inbox, IoBackendKind backend) : mailbox_(std::make_shared<Mailbox>(inbox)) {
  backend_ = make_backend(*this, inbox, backend);
}

IoCore::~IoCore() {
  mailbox_->close();
  backend_.reset();
  if (tl_io_core == this) tl_io_core = nullptr;
}

IoCore* IoCore::install(Scheduler& s) noexcept {
  try {
    auto core = std::make_unique<IoCore>(s.inbox(), s.runtime().io_backend());
    tl_io_core = core.get();
    s.set_driver(std::move(core));
  } catch (const std::exception& e) {
    // Out of descriptors or memory before the first I/O: nothing sensible to fall back to.
    std::fprintf(stderr, "skein: cannot start the I/O core: %s\n", e.what());
    std::abort();
  }
  return tl_io_core;
}

IoHandle IoCore::new_handle(int fd) noexcept {
  const auto i = static_cast<std::size_t>(fd);
  try {
    while (chunks_.size() <= i / chunk_size) chunks_.push_back(std::make_unique<FdState[]>(chunk_size));
  } catch (const std::bad_alloc&) {
    // Out of memory for the slot: the call still works, blocking the thread in poll(2).
    return IoHandle{fd};
  }
  return handle(fd);
}

int IoCore::wait(IoHandle& h, Direction dir, TimePoint deadline, IoTransfer kind) noexcept {
  if (!h.st) return poll_wait(h.fd, dir, deadline, kind.restart);
  h.st->ready[static_cast<std::size_t>(dir)] = false;
  return h.core->park_on(h, dir, deadline);
}

int IoCore::park_on(IoHandle& h, Direction dir, TimePoint deadline) noexcept {
  FdState& st = *h.st;
  if (st.generation != h.generation) return io_closed;
  const auto d = static_cast<std::size_t>(dir);
  if (st.waiter[d]) return io_busy;
  if (!st.registered) {
    if (const int err = backend_->add(h.fd, st.generation)) return err;
    st.registered = true;
  }
  if (st.ready[d]) return 0;
  budget_ = io_budget;  // a real wait: the fiber gives way anyway
  st.waiter[d] = current_fiber();
  ++fd_waiters_;
  const Wake w = park(deadline, &unlink_waiter, &st.waiter[d]);
  --fd_waiters_;
  if (st.generation != h.generation) return io_closed;
  switch (w) {
    case Wake::notified:
      return 0;
    case Wake::timed_out:
      return io_timed_out;
    case Wake::expired:
      return io_expired;
    case Wake::cancelled:
      return io_cancelled;
  }
  return io_timed_out;
}

int IoCore::poll_wait(int fd, Direction dir, TimePoint deadline, bool restart) noexcept {
  pollfd p{fd, static_cast<short>(dir == Direction::read ? POLLIN : POLLOUT), 0};
  for (;;) {
    timespec ts{};
    timespec* tsp = nullptr;
    if (deadline != no_deadline) {
      const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - Clock::now()).count();
      if (left <= 0) return io_timed_out;
      ts = {static_cast<time_t>(left / 1'000'000'000), static_cast<long>(left % 1'000'000'000)};
      tsp = &ts;
    }
    // The raw call: with the hooks linked, nothing here may re-enter a hook.
    const long n = syscall(SYS_ppoll, &p, 1, tsp, nullptr, 0);
    if (n > 0) return 0;
    if (n < 0 && (errno != EINTR || !restart)) return errno;
  }
}

void IoCore::forget(int fd) noexcept {
  const auto i = static_cast<std::size_t>(fd);
  if (fd < 0 || i / chunk_size >= chunks_.size()) return;
  FdState& st = chunks_[i / chunk_size][i % chunk_size];
  ++st.generation;
  if (st.registered) {
    // Before close(): an fd duplicated elsewhere would otherwise stay in the interest list.
    backend_->remove(fd);
    st.registered = false;
  }
  for (std::size_t d = 0; d < 2; ++d) {
    st.ready[d] = true;
    st.hung_up[d] = false;
    if (Fiber* f = st.waiter[d]) {
      st.waiter[d] = nullptr;
      unpark(f);
    }
  }
}

bool IoCore::yield_for_fairness() noexcept {
  budget_ = io_budget;
  Scheduler* s = Scheduler::current();
  s->yield_running();
  const Fiber* self = s->running();
  return self->cancel_requested.load(std::memory_order_relaxed) && !self->shielded;
}

void IoCore::take_remote() noexcept {
  mailbox_->take(completed_);
  for (auto& c : completed_) {
    c->done = true;
    if (c->fiber) unpark(c->fiber);
  }
  completed_.clear();
}

}  // namespace skein::detail
