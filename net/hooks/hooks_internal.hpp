// What the hook definitions share: the call registry (which are on), the per-descriptor table and
// the waits. Internal to libskein_hooks.
//
// Every hook issues the real call as a raw system call (syscall(2)), so no "next" symbol is looked
// up and nothing runs at static initialisation: the tables are constinit and filled on first use.
#pragma once

#include "io_core.hpp"

#include <skein/time.hpp>

#include <poll.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>

namespace skein::hooks::detail {

using skein::detail::Direction;
using skein::detail::IoCore;
using skein::detail::IoHandle;
using skein::detail::IoTransfer;

// Every hooked call, in the order hooked_calls() lists them. The fortified (__*_chk) and 64-bit
// aliases count as their plain call.
enum class Call : unsigned {
  read,
  write,
  readv,
  writev,
  recv,
  recvfrom,
  recvmsg,
  send,
  sendto,
  sendmsg,
  accept,
  accept4,
  connect,
  close,
  poll,
  select,
  epoll_wait,
  sleep,
  usleep,
  nanosleep,
  clock_nanosleep,
  getaddrinfo,
  socket,
  fcntl,
  ioctl,
  setsockopt,
  dup,
  dup2,
  dup3,
  count,
};
inline constexpr unsigned call_count = static_cast<unsigned>(Call::count);
extern const char* const call_names[call_count];

// This thread's I/O core if `c` should park the calling fiber: inside a fiber, `c` not turned off
// by SKEIN_HOOKS_DISABLE and no Bypass alive on the thread. nullptr means "behave like libc".
IoCore* fiber_core(Call c) noexcept;

// While it lives, skein::debug shows `c` as the libc call the calling fiber is in, beside the
// wait it causes; `handled` false (the call behaves like libc's) leaves nothing to show.
class CallLabel {
 public:
  CallLabel(bool handled, Call c) noexcept
      : scope_(handled ? call_names[static_cast<unsigned>(c)] : nullptr) {}

 private:
  skein::detail::HookedCallScope scope_;
};

// Bits of FdEntry::flags.
enum : std::uint32_t {
  fd_known = 1,     // classified: the other bits are meaningful
  fd_socket = 2,    // a socket: the only kind the hooks make non-blocking and wait on
  fd_stream = 4,    // SOCK_STREAM: blocking sends transfer everything, MSG_WAITALL loops
  fd_user_nb = 8,   // the user asked for O_NONBLOCK (socket, fcntl, ioctl FIONBIO, accept4)
  fd_ours_nb = 16,  // the hooks set O_NONBLOCK in the kernel; the user's view hides it
  fd_keep = 32,     // keep_after_interrupt(): an interrupted wait leaves the connection as it is
};

// One descriptor's state, shared by every thread (descriptors are the process's).
struct FdEntry {
  std::atomic<std::uint32_t> flags{0};
  std::atomic<std::int64_t> rcv_timeout_ns{0};  // SO_RCVTIMEO; 0: none
  std::atomic<std::int64_t> snd_timeout_ns{0};  // SO_SNDTIMEO; 0: none
  std::atomic<void*> core{nullptr};             // the I/O core whose slot for this fd is ours
};

// `fd`'s entry, nullptr for a negative fd or one beyond the table (those fall through to libc).
FdEntry* entry(int fd) noexcept;
// The entry, classified first if it is not yet (fstat, SO_TYPE, F_GETFL, the timeouts); nullptr
// if the descriptor is not open (the raw call then reports EBADF itself).
FdEntry* classified(int fd) noexcept;
// Records a descriptor just created by socket/accept: `flags` without fd_known.
void record_new(int fd, std::uint32_t flags, std::int64_t rcv_ns = 0, std::int64_t snd_ns = 0) noexcept;
// Forgets `fd` before it is closed (or replaced by dup2): this thread's core lets go of it.
void reset(int fd) noexcept;

// A blocking socket the hooks must make wait: a socket, not user non-blocking.
inline bool waitable(const FdEntry* e) noexcept {
  if (!e) return false;
  const std::uint32_t f = e->flags.load(std::memory_order_relaxed);
  return (f & fd_socket) && !(f & fd_user_nb);
}

// Sets O_NONBLOCK in the kernel for a socket the user keeps blocking, once. False if fcntl failed.
bool make_nonblocking(int fd, FdEntry& e) noexcept;

// The handle for one call on `fd` on `core` (nullptr: the thread-side handle, which blocks in
// poll(2)): a slot left by another descriptor with this number (or by this one on another worker)
// is reset first.
IoHandle attach(int fd, FdEntry& e, IoCore* core) noexcept;

// How a hooked call goes on after the core reported `err` (minus IoCore::run's negative result,
// or IoCore::wait's): wait_ready (try again), wait_own_deadline (`deadline`, the call's own, has
// passed), ECANCELED, ETIMEDOUT (a deadline not the call's own), EBADF (closed meanwhile), or
// `err` itself (the call's errno, EINTR for a thread a signal interrupted). Another fiber already
// waiting on the fd in this direction (the core keeps one waiter per direction) costs a
// millisecond's sleep and a retry, as two blocked threads would both be woken.
inline constexpr int wait_ready = 0;
inline constexpr int wait_own_deadline = -1;
int wait_outcome(int err, TimePoint deadline) noexcept;

// The readiness rule for a transfer on a descriptor with `flags` of which `want` bytes are left:
// stream or message (see IoTransfer); a thread reports EINTR, as a blocking call does.
inline IoTransfer transfer_kind(std::uint32_t flags, std::size_t want) noexcept {
  return ((flags & fd_stream) ? IoTransfer::stream(want) : IoTransfer::message()).report_signals();
}

// Waits in a fiber until one of `fds` has an event it asks for (through a private epoll set, which
// the core watches), then returns check()'s value; check() is the real call with a zero timeout
// and is tried first. Returns 0 when `deadline` passes, -1 with errno on cancel/ETIMEDOUT/failure.
int wait_any(IoCore& core, const pollfd* fds, std::size_t n, TimePoint deadline, int (*check)(void*),
             void* arg) noexcept;

// True for the errno of a wait a fiber-only event interrupted (a cancel, a deadline not the call's
// own): the call stopped in the middle of whatever the caller was exchanging on the descriptor.
inline bool interrupting(int err) noexcept {
  return err == ECANCELED || err == ETIMEDOUT;
}

// After an interrupted hooked wait on `fd`: a connected stream or seqpacket socket (not listening,
// not opted out by keep_after_interrupt or SKEIN_HOOKS_KEEP_INTERRUPTED) is shut down both ways and
// what it had received is dropped, so the library sees a broken connection instead of reading a
// late reply as the answer to its next request. Anything else is left alone. Keeps errno. True if
// `fd` was shut down.
bool interrupted(int fd) noexcept;

// Parks the fiber until `deadline`. Returns 0, or ECANCELED / ETIMEDOUT if woken early for those.
int fiber_sleep_until(TimePoint deadline) noexcept;

// The deadline `ns` nanoseconds from now (no_deadline for 0).
TimePoint deadline_in(std::int64_t ns) noexcept;

}  // namespace skein::hooks::detail
