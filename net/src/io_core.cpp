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

IoCore::IoCore(Inbox& inbox, IoBackendKind backend)
    : inbox_(inbox), mailbox_(std::make_shared<Mailbox>(inbox)) {
  backend_ = make_backend(*this, inbox, backend);
  ops_ = backend_->ops();
  multishot_ = ops_ && backend_->multishot_accept();
  inbox.set_wake_ring(backend_->wake_ring());
}

IoCore::~IoCore() {
  // Listeners still open: their queued connections are closed, and their multishot accepts
  // cancelled and waited for, since a connection the kernel accepted into a completion nobody
  // reads would stay open until the process exits.
  while (!accept_queues_.empty()) {
    auto it = accept_queues_.begin();
    std::unique_ptr<AcceptQueue> q = std::move(it->second);
    accept_queues_.erase(it);
    retire(std::move(q));
  }
  for (int i = 0; i < 100 && armed_accepts_ > 0; ++i)
    backend_->wait(Clock::now() + std::chrono::milliseconds(10));
  mailbox_->close();
  inbox_.set_wake_ring(-1);
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
  return h.core->park_on(h, dir, deadline, kind.why);
}

namespace {

// The core's code for a wait that ended otherwise than by its event (0: it did).
int wake_code(Wake w) noexcept {
  switch (w) {
    case Wake::timed_out:
      return io_timed_out;
    case Wake::expired:
      return io_expired;
    case Wake::cancelled:
      return io_cancelled;
    case Wake::notified:
      break;
  }
  return 0;
}

}  // namespace

int IoCore::park_on(IoHandle& h, Direction dir, TimePoint deadline, debug::WaitReason why) noexcept {
  FdState& st = *h.st;
  if (st.generation != h.generation) return io_closed;
  if (ops_) return park_poll(h, dir, deadline, why);
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
  const Wake w = park(WaitFor{reason_for(dir, why), static_cast<std::uintptr_t>(h.fd)}, deadline,
                      &unlink_waiter, &st.waiter[d]);
  --fd_waiters_;
  if (st.generation != h.generation) return io_closed;
  return wake_code(w);
}

int IoCore::park_poll(IoHandle& h, Direction dir, TimePoint deadline, debug::WaitReason why) noexcept {
  FdState& st = *h.st;
  const auto d = static_cast<std::size_t>(dir);
  if (st.ready[d]) return 0;
  const IoOp op{};  // IoOp::poll
  const ssize_t r = perform(h, dir, deadline, op, why);
  if (r < 0) return static_cast<int>(-r);
  const auto events = static_cast<std::uint32_t>(r);
  if (events & (io_read_hup | io_hup)) st.hung_up[0] = true;
  if (events & io_hup) st.hung_up[1] = true;
  st.ready[d] = true;
  return 0;
}

ssize_t IoCore::perform(IoHandle& h, Direction dir, TimePoint deadline, const IoOp& op,
                        debug::WaitReason why) noexcept {
  FdState& st = *h.st;
  if (st.generation != h.generation) return -io_closed;
  const auto d = static_cast<std::size_t>(dir);
  if (st.op[d]) return -io_busy;
  IoOpState s;
  s.op = &op;
  s.fd = h.fd;
  s.dir = dir;
  s.fiber = current_fiber();
  if (const int err = backend_->submit(s)) return -err;
  st.op[d] = &s;
  budget_ = io_budget;  // a real wait
  ++fd_waiters_;
  // Only the completion unparks the fiber (the backend sets `done` first), so a wake-up that is
  // not `notified` came from the deadline or a cancel.
  const Wake w = park(WaitFor{reason_for(dir, why), static_cast<std::uintptr_t>(h.fd)}, deadline);
  if (!s.done) {
    // The operation is still the kernel's, on the caller's memory: cancel it, and wait for its
    // completion whatever happens meanwhile. (forget() cancelled it already if it cleared op[d].)
    if (st.op[d] == &s) backend_->cancel(s);
    ShieldGuard shield;
    while (!s.done) park(WaitFor{reason_for(dir, why), static_cast<std::uintptr_t>(h.fd)}, no_deadline);
  }
  --fd_waiters_;
  if (st.op[d] == &s) st.op[d] = nullptr;
  if (st.generation != h.generation) {
    // Closed meanwhile: what the operation got goes nowhere; a connection it accepted is closed.
    if (op.kind == IoOp::accept && s.result >= 0) syscall(SYS_close, s.result);
    return -io_closed;
  }
  // Data (or a connection) that came before the cancel took is returned, not dropped.
  if (s.result >= 0 || w == Wake::notified || s.result != -ECANCELED) return s.result;
  return -wake_code(w);
}

AcceptQueue* IoCore::accept_queue(int fd, FdState& st) noexcept {
  if (st.accept_queue) {
    const auto it = accept_queues_.find(fd);
    if (it != accept_queues_.end()) return it->second.get();
  }
  try {
    auto q = std::make_unique<AcceptQueue>();
    q->op = &q->accept_op;
    q->fd = fd;
    q->dir = Direction::read;
    q->accept_op.flags = SOCK_NONBLOCK | SOCK_CLOEXEC;
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0) q->family = ss.ss_family;
    AcceptQueue* p = q.get();
    accept_queues_[fd] = std::move(q);
    st.accept_queue = true;
    return p;
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}

ssize_t IoCore::accept_queued(IoHandle& h, TimePoint deadline, const IoOp& op,
                              debug::WaitReason why) noexcept {
  FdState& st = *h.st;
  if (st.generation != h.generation) return -io_closed;
  AcceptQueue* const q = accept_queue(h.fd, st);
  if (!q) [[unlikely]]
    return perform(h, Direction::read, deadline, op, why);  // out of memory: a single-shot accept
  for (;;) {
    if (!q->accepted.empty()) {
      const int fd = q->accepted.front();
      q->accepted.pop_front();
      if (fd >= 0 && op.addr) {
        op.addr->sa_family = q->family;
        *op.addrlen = sizeof(sa_family_t);
      }
      return fd;
    }
    if (q->waiter) return -io_busy;
    if (!q->armed) {
      if (const int err = backend_->submit(*q)) return -err;
      q->armed = true;
      ++armed_accepts_;
    }
    budget_ = io_budget;  // a real wait
    q->waiter = current_fiber();
    ++fd_waiters_;
    const Wake w = park(WaitFor{reason_for(Direction::read, why), static_cast<std::uintptr_t>(h.fd)},
                        deadline, &unlink_waiter, &q->waiter);
    --fd_waiters_;
    // Forgotten meanwhile: the queue may be gone already; touch nothing of it.
    if (st.generation != h.generation) return -io_closed;
    if (w != Wake::notified) {
      // What came stays queued for the next accept on this worker, but no more comes: the
      // multishot stops now rather than when this worker next sleeps, since a busy worker might
      // not sleep for long while the listener is accepted from elsewhere.
      if (q->armed && !q->stopping) {
        backend_->cancel(*q);
        q->stopping = true;
      }
      // A deadline that passed (a zero timeout, how callers poll) may have ended the wait just as
      // the multishot took a connection that was waiting, or before it could: take what it
      // queued (collecting its completions first), else ask the kernel directly once.
      if (w == Wake::timed_out || w == Wake::expired) {
        if (q->accepted.empty()) {
          backend_->poll();
          if (st.generation != h.generation) return -io_closed;
        }
        if (!q->accepted.empty()) continue;  // taken at the top of the loop
        const long fd = syscall(SYS_accept4, h.fd, op.addr, op.addrlen, op.flags);
        if (fd >= 0) return fd;
      }
      return -wake_code(w);
    }
  }
}

void IoCore::accepted(IoOpState& s, int result, bool more) noexcept {
  auto& q = static_cast<AcceptQueue&>(s);
  if (!more) {
    q.armed = q.stopping = false;
    --armed_accepts_;
  }
  if (q.retired) {
    if (result >= 0) syscall(SYS_close, result);
    if (!more)
      for (auto it = retired_.begin(); it != retired_.end(); ++it)
        if (it->get() == &q) {
          retired_.erase(it);  // frees q
          break;
        }
    return;
  }
  // -EINVAL: the listener stopped listening (shut down, or closed everywhere): what it queued
  // will not be accepted here, and its peers learn so now.
  if (result == -EINVAL && !more) {
    for (const int fd : q.accepted)
      if (fd >= 0) syscall(SYS_close, fd);
    q.accepted.clear();
  }
  // -ECANCELED is the end of a multishot this core cancelled; any other error ended it and is
  // reported to an accept (EMFILE: the server backs off; a transient one: the next is taken).
  if (result >= 0 || (result != -ECANCELED && !more)) {
    try {
      q.accepted.push_back(result);
    } catch (const std::bad_alloc&) {
      if (result >= 0) syscall(SYS_close, result);  // the peer sees a reset; nothing leaks
    }
  }
  if (q.armed && !q.stopping && q.accepted.size() >= AcceptQueue::cap) {
    // Enough taken ahead of the accepts: the rest wait in the kernel's backlog.
    backend_->cancel(q);
    q.stopping = true;
  }
  if (Fiber* f = q.waiter) {
    q.waiter = nullptr;
    unpark(f);
  }
}

void IoCore::disarm_idle_accepts() noexcept {
  for (auto& [fd, q] : accept_queues_)
    if (q->armed && !q->stopping && !q->waiter) {
      backend_->cancel(*q);
      q->stopping = true;
    }
}

void IoCore::retire(std::unique_ptr<AcceptQueue> q) noexcept {
  for (const int fd : q->accepted)
    if (fd >= 0) syscall(SYS_close, fd);
  q->accepted.clear();
  if (Fiber* f = q->waiter) {
    q->waiter = nullptr;
    unpark(f);
  }
  if (!q->armed) return;  // freed here
  if (!q->stopping) {
    // Now, so that close() releases the listener (the multishot holds a reference to it).
    backend_->cancel(*q);
    q->stopping = true;
  }
  q->retired = true;
  try {
    retired_.push_back(std::move(q));
  } catch (const std::bad_alloc&) {
    (void)q.release();  // the kernel still holds it: leaked rather than freed under it
  }
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
  if (st.accept_queue) [[unlikely]] {
    st.accept_queue = false;
    if (const auto it = accept_queues_.find(fd); it != accept_queues_.end()) {
      std::unique_ptr<AcceptQueue> q = std::move(it->second);
      accept_queues_.erase(it);
      retire(std::move(q));
    }
  }
  if (st.registered) {
    // Before close(): an fd duplicated elsewhere would otherwise stay in the interest list.
    backend_->remove(fd);
    st.registered = false;
  }
  for (std::size_t d = 0; d < 2; ++d) {
    st.ready[d] = true;
    st.hung_up[d] = false;
    if (ops_) {
      // The operation's fiber wakes at its completion (-ECANCELED, or what it got first) and,
      // seeing the new generation, reports io_closed. Cancelled now, so close() releases the file.
      if (IoOpState* s = st.op[d]) {
        st.op[d] = nullptr;
        backend_->cancel(*s);
      }
      continue;
    }
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
