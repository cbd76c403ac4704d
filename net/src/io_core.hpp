// One worker's I/O core: the per-descriptor readiness state, the waiting fibers and the one retry
// loop every user of readiness goes through (sockets, the hooks, the server's signal watcher).
// It is the scheduler's detail::Driver, installed the first time a fiber on that worker does I/O,
// and sleeps in the kernel through a backend (io_backend.hpp: epoll or io_uring), which reports
// readiness events to deliver() -- or, for a backend that performs operations (io_uring's
// completion mode, IoBackend::ops), completes each wait as an operation: see transfer().
//
// Contract:
// - Readiness backends: each fd is registered with the backend once, at its first wait, for both
//   directions with edge semantics, and deregistered by forget() before it is closed. Completion
//   backends: nothing is registered; each wait is one operation (a transfer, or a one-shot poll
//   for run() and wait()) recorded in FdState::op until its completion, which forget() cancels.
// - Per fd it keeps one reader and one writer waiter and a readiness flag per direction. The
//   flags are what makes edge-triggering safe: an event sets them, and only run() clears them,
//   when a call reports EAGAIN or (streams) a short transfer. A fiber parks only while its flag is
//   clear, so an edge that arrives before it parks is never lost.
// - Each fd's slot carries a generation, bumped by forget(); events carry (fd, generation), so an
//   event for a closed fd whose number was reused is dropped, and a waiter on an fd closed under
//   it sees the new generation and reports io_closed.
// - Nothing here throws: errors are codes (an errno value, io_closed, io_expired); sockets turn
//   them into std::system_error at the public edge (io_error_code), the hooks into errno.
// - Other threads reach the worker through the scheduler's inbox only (one eventfd per worker):
//   the blocking pool queues finished jobs in the core's Mailbox and calls Inbox::wake_driver(),
//   and the scheduler calls take_remote() on this thread.
//
// Per-fd wait states, per direction:
//   ready    flag set: the next call is attempted directly (initial state: unknown counts as ready)
//   idle     flag clear, no waiter: the last call would have blocked
//   waiting  flag clear, a fiber parked until the next event, its deadline or a cancel
// An event moves idle/waiting to ready (waking the waiter); EAGAIN or a short stream transfer moves
// ready to idle, unless a hang-up or error was reported for that direction: that is final, and
// the direction stays ready until the fd is forgotten (the next call reports end of stream or
// the error).
#pragma once

#include "driver.hpp"
#include "io_backend.hpp"
#include "scheduler.hpp"

#include <skein/detail/fiber.hpp>
#include <skein/time.hpp>

#include <sys/types.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <system_error>
#include <unordered_map>
#include <vector>

namespace skein::detail {

// How a wait ended, when not with readiness: the core's own codes, beyond errno's range (Linux
// keeps errno below 4096), so they never mix with what the call itself reported.
enum : int {
  io_timed_out = 4097,  // the call's deadline passed
  io_expired,           // an enclosing TimeoutScope's deadline passed
  io_cancelled,         // the fiber was cancelled
  io_closed,            // the descriptor was closed (forgotten) during the call
  io_busy,              // another fiber already waits on this fd in this direction
};

// The std::error_code of an error run() or wait() reported: io_closed is net_errc::closed, the
// other core codes their errc (timed_out, operation_canceled, device_or_resource_busy), anything
// else the errno value.
std::error_code io_error_code(int err) noexcept;
// The message sockets give a core code (the wait's "deadline passed", ...), or `call` (the name
// of the call) for an errno.
const char* io_error_message(int err, Direction dir, const char* call) noexcept;

// A blocking job's way back: posted by the pool thread, handled on the core's thread, which marks
// it done and unparks `fiber` unless the fiber stopped waiting (then it is nullptr).
struct Completion {
  Fiber* fiber = nullptr;
  bool done = false;
};

// Where other threads deliver finished blocking jobs. Shared by the core and every job in
// flight, so a job that finishes after its worker ended finds it closed rather than freed.
class Mailbox {
 public:
  explicit Mailbox(Inbox& inbox) noexcept : inbox_(&inbox) {}
  // From any thread: queues `c` for the core's thread and wakes it through its inbox. Returns
  // false (and drops `c`) if the core is gone.
  bool post(std::shared_ptr<Completion> c) noexcept;
  // Core thread: takes what was posted.
  void take(std::vector<std::shared_ptr<Completion>>& out) noexcept;
  // Core thread, before the inbox is destroyed: later posts are dropped.
  void close() noexcept;

 private:
  std::mutex mutex_;
  std::vector<std::shared_ptr<Completion>> posted_;
  Inbox* inbox_;  // nullptr once closed
};

struct FdState {
  std::uint32_t generation = 0;
  bool registered = false;
  bool accept_queue = false;     // a listener with an AcceptQueue (multishot accept) in the core
  bool ready[2] = {true, true};  // by Direction
  // The peer hung up or the socket failed (RDHUP/HUP/ERR): the direction stays ready for good,
  // because the event that said so may come with the last data, and no further edge follows.
  bool hung_up[2] = {false, false};
  union {
    Fiber* waiter[2] = {nullptr, nullptr};  // a readiness backend: the fiber parked per direction
    IoOpState* op[2];                       // a completion backend (IoBackend::ops): the operation in flight
  };
};

// One call's hold on a descriptor: the fd, the core whose slot it uses and the slot's generation
// when the call began. Without a core (outside a fiber) the thread blocks in poll(2) instead.
struct IoHandle {
  int fd = -1;
  class IoCore* core = nullptr;
  FdState* st = nullptr;
  std::uint32_t generation = 0;
};

// What a call that succeeded says about readiness.
struct IoTransfer {
  // A stream transfer of `want` bytes: a shorter one drained the socket (unless hung up).
  static constexpr IoTransfer stream(std::size_t want) noexcept { return {want, true}; }
  // Datagrams, accepts, anything else: only EAGAIN says the descriptor is drained.
  static constexpr IoTransfer message() noexcept { return {0, true}; }
  // The same, but a thread blocked in poll(2) reports EINTR on a signal instead of waiting on
  // (the hooks: a blocking call a signal handler interrupts fails with EINTR).
  constexpr IoTransfer report_signals() const noexcept { return {want, false, why}; }
  // The same, with the wait reason a fiber parked in it shows (skein::debug): accept, connect.
  // Without one it shows fd read or fd write.
  constexpr IoTransfer reason(debug::WaitReason r) const noexcept { return {want, restart, r}; }
  std::size_t want;
  bool restart;
  debug::WaitReason why = debug::WaitReason::none;
};

// A listener's connections accepted ahead of its accept() calls, on a backend with multishot
// accept (IoBackend::multishot_accept). One multishot accept is armed when a fiber waits and the
// queue is empty, and stays armed after: connections that arrive meanwhile are queued here. At
// `cap` queued it is cancelled (connections then wait in the kernel's backlog, its back-pressure),
// as it is when the worker goes to sleep with no fiber waiting in accept; it is armed again when
// an accept finds the queue empty. The kernel holds a pointer to it (as the
// operation's IoOpState) until the multishot's last completion, so a queue whose listener is
// forgotten is retired, not freed, until then.
struct AcceptQueue : IoOpState {
  static constexpr std::size_t cap = 64;
  IoOp accept_op{IoOp::accept_multishot, 0};
  std::deque<int> accepted;        // descriptors, or minus the errno that ended the multishot
  Fiber* waiter = nullptr;         // the fiber parked in accept
  sa_family_t family = AF_UNSPEC;  // the listener's (the peer's address is not kept)
  bool armed = false;              // the kernel holds the multishot: its last completion has not come
  bool stopping = false;           // a cancel for it is on its way
  bool retired = false;            // the listener was forgotten: freed at the last completion
};

class IoCore;
// This thread's core, once installed (IoCore::current).
inline constinit thread_local IoCore* tl_io_core = nullptr;

class IoCore final : public Driver {
 public:
  // Starts the backend make_backend picks for `backend` (RuntimeOptions::io_backend), which
  // watches `inbox`'s eventfd. Throws std::system_error if it cannot.
  IoCore(Inbox& inbox, IoBackendKind backend);
  ~IoCore() override;
  IoCore(const IoCore&) = delete;
  IoCore& operator=(const IoCore&) = delete;

  // The core of this thread's scheduler, installed on first use; nullptr outside a fiber (also on
  // the scheduler loop's own stack, where nothing can park: callers block in poll(2) instead).
  static IoCore* current() noexcept {
    Scheduler* s = Scheduler::current();
    if (!s || !s->running()) return nullptr;
    if (IoCore* c = tl_io_core) [[likely]]
      return c;
    return install(*s);
  }
  // This thread's core if one was installed, without installing one.
  static IoCore* installed() noexcept { return tl_io_core; }

  // A handle for `fd` on `core` (nullptr: the thread-side handle). `owner` is the caller's record
  // of the core whose slot for this number is its descriptor's: if it is another (or none), the
  // slot may hold an earlier descriptor's registration and is reset first, and `owner` updated.
  static IoHandle handle(IoCore* core, int fd, void*& owner) noexcept {
    if (!core) return IoHandle{fd};
    if (owner != core) [[unlikely]] {
      core->forget(fd);
      owner = core;
    }
    return core->handle(fd);
  }
  // A handle for `fd` whose slot this core has reset already (a descriptor it created or was
  // told about by forget()).
  IoHandle handle(int fd) noexcept {
    const auto i = static_cast<std::size_t>(fd);
    if (i / chunk_size < chunks_.size()) [[likely]] {
      FdState* st = &chunks_[i / chunk_size][i % chunk_size];
      return IoHandle{fd, this, st, st->generation};
    }
    return new_handle(fd);
  }

  // The one retry loop. Tries `attempt` (a system call: its result, or -1 with errno) while `dir`
  // is ready; EAGAIN or a short stream transfer (see IoTransfer) clears readiness and parks the
  // fiber until the next event, `deadline` or a cancel (outside a fiber: poll(2)). EINTR retries.
  // Spends the worker's fairness budget before each attempt. Returns the call's result (>= 0) or
  // minus an error: the call's errno, a core code (io_timed_out for `deadline`, ...), or the
  // backend's registration errno.
  template <class Call>
  static ssize_t run(IoHandle& h, Direction dir, TimePoint deadline, IoTransfer kind, Call attempt) noexcept;

  // run() for a transfer a completion backend can perform itself (`op`, on the same memory as
  // `attempt`). On a backend that performs operations (IoBackend::ops): a read while `dir` is
  // ready tries `attempt` directly as run() does; a read that would block, and every write, hands
  // the backend `op` and parks until its completion, whose result is returned (a transfer that
  // filled `kind.want`, or an accept, leaves `dir` ready). A deadline or cancel meanwhile cancels the
  // operation and waits for it (the buffers stay the caller's until the kernel is done): a result
  // that came first is returned, not lost. On other backends this is run().
  template <class Call>
  static ssize_t transfer(IoHandle& h, Direction dir, TimePoint deadline, IoTransfer kind, const IoOp& op,
                          Call attempt) noexcept;

  // The call made on `h` said it would block in `dir` (connect's EINPROGRESS): parks until `dir`
  // is ready. Returns 0 or an error as run() does (as a positive value).
  static int wait(IoHandle& h, Direction dir, TimePoint deadline,
                  IoTransfer kind = IoTransfer::message()) noexcept;

  // Drops `fd` before it is closed: deregisters it and wakes its waiters with io_closed. A
  // listener's queued connections are closed and its multishot accept cancelled.
  void forget(int fd) noexcept;

  // Backends: a completion of an AcceptQueue's multishot accept (`s`): `result` a descriptor or
  // minus an errno, `more` false on its last completion.
  void accepted(IoOpState& s, int result, bool more) noexcept;

  // Backends: an event for `fd` tagged with `generation` (IoEvents bits). Sets the flags and
  // unparks the waiters; stale generations are dropped.
  void deliver(int fd, std::uint32_t generation, std::uint32_t events) noexcept {
    const auto i = static_cast<std::size_t>(fd);
    if (i / chunk_size >= chunks_.size()) return;
    FdState& st = chunks_[i / chunk_size][i % chunk_size];
    if (st.generation != generation || !st.registered) return;  // stale
    // Hang-ups and errors wake both directions, for good: the next call reports them.
    if (events & (io_read_hup | io_hup)) st.hung_up[0] = true;
    if (events & io_hup) st.hung_up[1] = true;
    if (events & (io_readable | io_read_hup | io_hup)) {
      st.ready[0] = true;
      if (Fiber* f = st.waiter[0]) {
        st.waiter[0] = nullptr;
        unpark(f);
      }
    }
    if (events & (io_writable | io_hup)) {
      st.ready[1] = true;
      if (Fiber* f = st.waiter[1]) {
        st.waiter[1] = nullptr;
        unpark(f);
      }
    }
  }
  // Backends, a few events ahead of deliver(): waking a fiber writes its record, which is cold
  // when thousands of connections take turns.
  void prefetch(int fd, std::uint32_t events) const noexcept {
    const auto i = static_cast<std::size_t>(fd);
    if (i / chunk_size >= chunks_.size()) return;
    const FdState& st = chunks_[i / chunk_size][i % chunk_size];
    if (const Fiber* f = st.waiter[(events & (io_readable | io_read_hup | io_hup)) ? 0 : 1]) {
      __builtin_prefetch(f, 1);
      __builtin_prefetch(reinterpret_cast<const char*>(f) + 64, 1);
    }
  }

  // Fibers parked in run_blocking count as I/O waiters: their wake comes through the inbox.
  void add_remote_waiter() noexcept { ++remote_waiters_; }
  void remove_remote_waiter() noexcept { --remote_waiters_; }
  const std::shared_ptr<Mailbox>& mailbox() const noexcept { return mailbox_; }

  // The backend, for a backend-specific path a caller may take (none on the hot path yet).
  IoBackend& backend() noexcept { return *backend_; }

  void wait_until(TimePoint deadline) noexcept override {
    if (!accept_queues_.empty()) [[unlikely]]
      disarm_idle_accepts();
    backend_->wait(deadline);
  }
  void poll() noexcept override { backend_->poll(); }
  // A multishot accept in flight counts as a waiter: the worker then sleeps in the ring, which
  // reaps its completions, and where wait_until cancels it if no fiber accepts any more.
  std::size_t waiters() const noexcept override { return fd_waiters_ + remote_waiters_ + armed_accepts_; }
  void take_remote() noexcept override;
  int wake_ring() const noexcept override { return backend_->wake_ring(); }
  bool post_wake(int ring_fd) noexcept override { return backend_->post_wake(ring_fd); }

 private:
  // current() the first time: creates the core and hands it to `s` as its driver.
  static IoCore* install(Scheduler& s) noexcept;
  // handle() for a descriptor beyond the chunks allocated so far.
  IoHandle new_handle(int fd) noexcept;
  // Parks the running fiber until `h`'s fd is ready for `dir`; 0 or an error.
  int park_on(IoHandle& h, Direction dir, TimePoint deadline, debug::WaitReason why) noexcept;
  // park_on() on a completion backend: a one-shot poll operation, so nothing of the descriptor
  // stays in the kernel once the wait ends.
  int park_poll(IoHandle& h, Direction dir, TimePoint deadline, debug::WaitReason why) noexcept;
  // transfer() for an accept on a backend with multishot accept: the next queued connection, or
  // parks until one comes (arming the listener's multishot accept). A deadline or cancel leaves
  // the queue as it is, for the next accept. `op.addr`, if set, receives only the family
  // (*op.addrlen = sizeof(sa_family_t)); the caller asks getpeername for the rest.
  ssize_t accept_queued(IoHandle& h, TimePoint deadline, const IoOp& op, debug::WaitReason why) noexcept;
  // The queue of the listener `fd`, created (arming nothing yet) if absent; nullptr if out of memory.
  AcceptQueue* accept_queue(int fd, FdState& st) noexcept;
  // Before sleeping: cancels the multishot accept of each listener no fiber waits on, so one this
  // worker no longer accepts from (its deadline passed, its fiber went on to other work, or moved
  // the listener to another worker) stops taking connections here and releases the listener.
  void disarm_idle_accepts() noexcept;
  // Closes what `q` holds, wakes its waiter, and cancels its multishot: forget() and ~IoCore.
  void retire(std::unique_ptr<AcceptQueue> q) noexcept;
  // Hands `op` to the backend and parks until its completion; its result or minus an error.
  ssize_t perform(IoHandle& h, Direction dir, TimePoint deadline, const IoOp& op,
                  debug::WaitReason why) noexcept;
  // What a fiber parked on `dir` shows when the call named no reason: fd read or fd write.
  static debug::WaitReason reason_for(Direction dir, debug::WaitReason why) noexcept {
    if (why != debug::WaitReason::none) return why;
    return dir == Direction::read ? debug::WaitReason::fd_read : debug::WaitReason::fd_write;
  }
  // One direct attempt of the call while its direction is ready, for run() and transfer(): spends
  // the fairness budget, makes the call and applies the readiness rules (see run()). `done`: the
  // call is over, `result` is what run() returns; `again`: loop (a fairness yield, EINTR);
  // `blocked`: it would block, and the direction is no longer ready.
  enum class Attempt : std::uint8_t { done, again, blocked };
  template <class Call>
  [[gnu::always_inline]] static inline Attempt try_call(IoHandle& h, std::size_t d, IoTransfer kind,
                                                        Call& attempt, ssize_t& result) noexcept;
  // The thread-side wait: poll(2) until ready; 0 or an error.
  static int poll_wait(int fd, Direction dir, TimePoint deadline, bool restart) noexcept;
  // Lets the other ready fibers run; true if the fiber was cancelled meanwhile.
  bool yield_for_fairness() noexcept;

  // After this many attempts with no real wait on this worker in between, the fiber that hits
  // zero yields, so connections that always have data cannot starve the others.
  static constexpr unsigned io_budget = 128;
  static constexpr std::size_t chunk_size = 1024;
  std::vector<std::unique_ptr<FdState[]>> chunks_;  // fd -> state, in chunks: slots never move
  Inbox& inbox_;
  unsigned budget_ = io_budget;
  std::size_t fd_waiters_ = 0;
  std::size_t remote_waiters_ = 0;
  std::shared_ptr<Mailbox> mailbox_;
  std::vector<std::shared_ptr<Completion>> completed_;  // scratch for take_remote
  std::unique_ptr<IoBackend> backend_;
  bool ops_ = false;        // backend_->ops(): waits are operations, not registrations
  bool multishot_ = false;  // backend_->multishot_accept(): accepts go through AcceptQueues
  std::unordered_map<int, std::unique_ptr<AcceptQueue>> accept_queues_;  // by listener fd
  std::vector<std::unique_ptr<AcceptQueue>> retired_;  // forgotten, their multishot not yet ended
  std::size_t armed_accepts_ = 0;  // AcceptQueues (retired ones too) whose multishot is in flight
};

template <class Call>
ssize_t IoCore::run(IoHandle& h, Direction dir, TimePoint deadline, IoTransfer kind, Call attempt) noexcept {
  const auto d = static_cast<std::size_t>(dir);
  FdState* const st = h.st;
  bool attempted = false;
  for (;;) {
    if (!st || st->ready[d]) {
      attempted = true;
      ssize_t result;
      const Attempt a = try_call(h, d, kind, attempt, result);
      if (a == Attempt::done) return result;
      if (a == Attempt::again) continue;
    }
    const int w =
        st ? h.core->park_on(h, dir, deadline, kind.why) : poll_wait(h.fd, dir, deadline, kind.restart);
    if (w == 0) continue;
    // A deadline that passed before the call was ever made (a zero timeout, how callers poll):
    // the flag says not ready, but the kernel may have data an event has not reported yet (a
    // worker with no fiber waiting on I/O sleeps without asking), so ask it once.
    if (!attempted && st && (w == io_timed_out || w == io_expired) && st->generation == h.generation) {
      attempted = true;
      st->ready[d] = true;
      ssize_t result;
      if (try_call(h, d, kind, attempt, result) == Attempt::done) return result;
    }
    return -w;
  }
}

template <class Call>
IoCore::Attempt IoCore::try_call(IoHandle& h, std::size_t d, IoTransfer kind, Call& attempt,
                                 ssize_t& result) noexcept {
  FdState* const st = h.st;
  if (st && --h.core->budget_ == 0) {
    if (h.core->yield_for_fairness()) {
      result = -io_cancelled;
      return Attempt::done;
    }
    // Other fibers ran meanwhile: one of them may have closed this descriptor.
    if (st->generation != h.generation) {
      result = -io_closed;
      return Attempt::done;
    }
    return Attempt::again;
  }
  const ssize_t n = attempt();
  if (n >= 0) {
    // A short transfer drained the socket's queue (receive) or buffer (send): the next call
    // would only say EAGAIN (Tokio relies on the same fact). End of stream stays ready, and so
    // does a hung-up direction, whose event may have come with the bytes just moved.
    if (st && n > 0 && static_cast<std::size_t>(n) < kind.want) st->ready[d] = st->hung_up[d];
    result = n;
    return Attempt::done;
  }
  const int err = errno;
  if (err == EINTR) return Attempt::again;
  if (err != EAGAIN && err != EWOULDBLOCK) {
    result = -err;
    return Attempt::done;
  }
  if (st) st->ready[d] = false;
  return Attempt::blocked;
}

template <class Call>
ssize_t IoCore::transfer(IoHandle& h, Direction dir, TimePoint deadline, IoTransfer kind, const IoOp& op,
                         Call attempt) noexcept {
  FdState* const st = h.st;
  if (!st || !h.core->ops_) [[likely]]
    return run(h, dir, deadline, kind, attempt);
  IoCore& core = *h.core;
  if (op.kind == IoOp::accept && core.multishot_) return core.accept_queued(h, deadline, op, kind.why);
  const auto d = static_cast<std::size_t>(dir);
  for (;;) {
    // Sends always go to the backend: queued into the turn's one io_uring_enter, a send costs
    // less than its own system call, which is most of what a direct one costs (docs/io_uring.md).
    // A second writer while one send is in flight sends directly as on a readiness backend
    // (io_busy only if it too would have to wait).
    if (dir == Direction::write && st->op[d]) [[unlikely]]
      return run(h, dir, deadline, kind, attempt);
    if (st->ready[d] && dir == Direction::read) {
      ssize_t result;
      const Attempt a = try_call(h, d, kind, attempt, result);
      if (a == Attempt::done) return result;
      if (a == Attempt::again) continue;
    }
    const ssize_t r = core.perform(h, dir, deadline, op, kind.why);
    if (r == -EAGAIN || r == -EWOULDBLOCK) [[unlikely]] {
      // The kernel would not wait for this one: wait for readiness, then try again.
      st->ready[d] = false;
      if (const int w = core.park_poll(h, dir, deadline, kind.why)) return -w;
      continue;
    }
    // A transfer that filled the buffer (or an accept) may have left more: the next call tries
    // directly. A short one drained the socket: the next goes straight to an operation.
    if (r >= 0) st->ready[d] = kind.want == 0 || static_cast<std::size_t>(r) == kind.want;
    return r;
  }
}

}  // namespace skein::detail
