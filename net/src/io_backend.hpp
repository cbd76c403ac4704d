// What an I/O backend is: the kernel interface one worker's I/O core (io_core.hpp) sleeps in and
// learns readiness from. Two exist: epoll (epoll_backend.cpp) and io_uring (uring_backend.cpp).
//
// A backend knows descriptors, not fibers: it watches the ones the core adds, and reports each
// readiness event to the core (IoCore::deliver) tagged with the generation the core gave it. The
// core owns everything else: the per-fd readiness flags, the waiting fibers, deadlines,
// cancellation, the retry loop. Wake-ups from other threads come through the scheduler's inbox
// eventfd (Inbox::fd()), which every backend watches: that is the worker's one interrupt.
//
// Contract, for every backend:
// - add() watches both directions with edge semantics: after add, an event is delivered at least
//   once for each readiness change (data arrived, buffer space freed, hang-up, error). Spurious
//   events are allowed; a missed edge is not.
// - remove() is called before the descriptor is closed; no event tagged with its old generation
//   is delivered after the next wait() begins. (The core drops stale generations anyway.)
// - wait() sleeps until an event, the inbox fd turning readable (it then calls Inbox::clear_fd()),
//   `deadline` (no_deadline: no limit; a past deadline: do not sleep) or a signal, and delivers what
//   it saw. It may return early; the scheduler re-checks.
// - No member throws; errors come back as an errno value (0 for success).
//
// A backend may also *perform* operations (io_uring's completion mode: ops() is true): the core
// then hands it each wait as an operation (submit), a recv, send, accept or one-shot poll whose
// completion wakes the fiber, instead of registering descriptors with add().
#pragma once

#include <skein/time.hpp>

#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace skein {
enum class IoBackendKind : std::uint8_t;  // <skein/runtime.hpp>: automatic, epoll, io_uring
}

namespace skein::detail {

class Inbox;
class IoCore;
struct Fiber;

enum class Direction : std::uint8_t { read, write };

// Bits of a delivered event.
enum IoEvents : std::uint32_t {
  io_readable = 1,  // data, a connection to accept, or end of stream may be read
  io_writable = 2,  // buffer space (or a finished connect)
  io_read_hup = 4,  // the peer shut its side: reads stay ready for good (EPOLLRDHUP)
  io_hup = 8,       // hang-up or error: both directions stay ready for good (EPOLLHUP/EPOLLERR)
};

// The IoEvents of a poll(2) mask or an epoll event mask: Linux gives EPOLLIN, EPOLLOUT, EPOLLRDHUP,
// EPOLLHUP and EPOLLERR the values of their POLL* twins, so one mapping serves both backends.
static_assert(EPOLLIN == POLLIN && EPOLLOUT == POLLOUT && EPOLLRDHUP == POLLRDHUP && EPOLLHUP == POLLHUP &&
              EPOLLERR == POLLERR);
inline std::uint32_t io_events_of(std::uint32_t mask) noexcept {
  std::uint32_t e = 0;
  if (mask & POLLIN) e |= io_readable;
  if (mask & POLLOUT) e |= io_writable;
  if (mask & POLLRDHUP) e |= io_read_hup;
  if (mask & (POLLHUP | POLLERR)) e |= io_hup;
  return e;
}

// A backend's kernel interface failed where nothing sensible can follow (the wait itself): prints
// "skein: WHAT failed: " and strerror(err), and aborts.
[[noreturn]] void backend_fatal(const char* what, int err) noexcept;

// An operation a completion backend performs on a descriptor, on the caller's memory.
struct IoOp {
  enum Kind : std::uint8_t {
    poll,     // wait for the direction's readiness; completes with IoEvents bits
    recv,     // recv(fd, buf, len, flags)
    send,     // send(fd, buf, len, flags)
    sendmsg,  // sendmsg(fd, msg, flags)
    accept,   // accept4(fd, addr, addrlen, flags)
    // accept4(fd, nullptr, nullptr, flags) for each connection until cancelled or failed: a
    // completion per connection, reported to IoCore::accepted (IoBackend::multishot_accept).
    accept_multishot,
  };
  Kind kind = poll;
  int flags = 0;
  void* buf = nullptr;
  std::size_t len = 0;
  msghdr* msg = nullptr;
  sockaddr* addr = nullptr;
  socklen_t* addrlen = nullptr;
};

// One operation in flight, on its waiting fiber's stack: the backend's completion sets `result`
// (the call's result or minus its errno; for a poll, IoEvents bits) and `done`, then unparks
// `fiber`. It must stay alive until `done`, even when the wait ended otherwise (cancel() first).
struct IoOpState {
  const IoOp* op = nullptr;
  int fd = -1;
  Direction dir = Direction::read;
  bool done = false;
  int result = 0;
  Fiber* fiber = nullptr;
};

// The backend a worker uses; RuntimeOptions::io_backend and SKEIN_IO choose it.
enum class BackendKind : std::uint8_t { epoll, io_uring };

class IoBackend {
 public:
  virtual ~IoBackend() = default;
  virtual BackendKind kind() const noexcept = 0;
  // Starts watching `fd` (both directions), tagging its events with `generation`. 0 or an errno.
  virtual int add(int fd, std::uint32_t generation) noexcept = 0;
  // Stops watching `fd`, before it is closed.
  virtual void remove(int fd) noexcept = 0;
  // Sleeps until an event, an inbox wake-up, `deadline` or a signal; delivers events to the core.
  virtual void wait(TimePoint deadline) noexcept = 0;
  // Delivers the events already there, without sleeping.
  virtual void poll() noexcept = 0;
  // Whether this backend performs operations (submit/cancel) rather than watching descriptors.
  virtual bool ops() const noexcept { return false; }
  // Queues `s.op` on `s.fd` (sent to the kernel by the next wait or poll). 0 or an errno.
  virtual int submit(IoOpState& s) noexcept {
    (void)s;
    return ENOTSUP;
  }
  // Asks the kernel now to cancel `s`'s operation; its completion still comes (with the result,
  // if it finished first, else -ECANCELED).
  virtual void cancel(IoOpState& s) noexcept { (void)s; }
  // Whether submit() takes IoOp::accept_multishot: one operation accepting connection after
  // connection, each reported by IoCore::accepted(s, result, more), `more` false on the last.
  virtual bool multishot_accept() const noexcept { return false; }
  // Driver::wake_ring and Driver::post_wake (runtime/src/driver.hpp): a ring other workers wake
  // this one through (-1: none, the inbox's eventfd only), and posting such a wake-up.
  virtual int wake_ring() const noexcept { return -1; }
  virtual bool post_wake(int ring_fd) noexcept {
    (void)ring_fd;
    return false;
  }
};

// Creates the backend `kind` for `core`, watching `inbox`'s fd. On failure returns nullptr and sets
// `err` to the errno and `why` to a static sentence naming the reason (for io_uring: disabled by
// kernel.io_uring_disabled, refused by seccomp, a missing opcode, ...).
std::unique_ptr<IoBackend> make_epoll_backend(IoCore& core, Inbox& inbox, int& err, const char*& why);
std::unique_ptr<IoBackend> make_uring_backend(IoCore& core, Inbox& inbox, int& err, const char*& why);
// Whether this process may use io_uring (the kernel is probed once per process): 0, or the errno
// with `why` set as make_uring_backend would. SKEIN_IO_URING_DISABLED=1 makes it say no (tests).
// SKEIN_IO_URING_MODE=completion where the kernel lacks its opcodes makes it say no too.
int uring_unavailable(const char*& why) noexcept;
// Whether an io_uring backend in completion mode accepts with one multishot accept per listener
// (Linux 5.19); SKEIN_IO_URING_MULTISHOT_ACCEPT=0 makes it use single-shot accepts (benchmarks,
// tests of the fall-back).
bool uring_multishot_accept() noexcept;
// Whether an io_uring backend performs operations (completion mode, the default where the kernel
// has the opcodes) or watches readiness with multishot polls (SKEIN_IO_URING_MODE=readiness).
bool uring_completion_mode() noexcept;

// The backend for a worker whose runtime asked for `requested` (RuntimeOptions::io_backend), the
// environment variable SKEIN_IO (auto, epoll, io_uring) overriding it. Automatic picks io_uring
// in completion mode where the kernel allows it, else epoll. Throws std::system_error naming the
// reason when an explicitly requested backend is unavailable, or SKEIN_IO (or SKEIN_IO_URING_MODE:
// completion, readiness) holds something else.
std::unique_ptr<IoBackend> make_backend(IoCore& core, Inbox& inbox, IoBackendKind requested);

}  // namespace skein::detail
