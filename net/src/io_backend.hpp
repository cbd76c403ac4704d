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
#pragma once

#include <skein/time.hpp>

#include <cstdint>
#include <memory>

namespace skein {
enum class IoBackendKind : std::uint8_t;  // <skein/runtime.hpp>: automatic, epoll, io_uring
}

namespace skein::detail {

class Inbox;
class IoCore;

enum class Direction : std::uint8_t { read, write };

// Bits of a delivered event.
enum IoEvents : std::uint32_t {
  io_readable = 1,  // data, a connection to accept, or end of stream may be read
  io_writable = 2,  // buffer space (or a finished connect)
  io_read_hup = 4,  // the peer shut its side: reads stay ready for good (EPOLLRDHUP)
  io_hup = 8,       // hang-up or error: both directions stay ready for good (EPOLLHUP/EPOLLERR)
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
};

// Creates the backend `kind` for `core`, watching `inbox`'s fd. On failure returns nullptr and sets
// `err` to the errno and `why` to a static sentence naming the reason (for io_uring: disabled by
// kernel.io_uring_disabled, refused by seccomp, a missing opcode, ...).
std::unique_ptr<IoBackend> make_epoll_backend(IoCore& core, Inbox& inbox, int& err, const char*& why);
std::unique_ptr<IoBackend> make_uring_backend(IoCore& core, Inbox& inbox, int& err, const char*& why);
// Whether this process may use io_uring (the kernel is probed once per process): 0, or the errno
// with `why` set as make_uring_backend would. SKEIN_IO_URING_DISABLED=1 makes it say no (tests).
int uring_unavailable(const char*& why) noexcept;

// The backend for a worker whose runtime asked for `requested` (RuntimeOptions::io_backend), the
// environment variable SKEIN_IO (auto, epoll, io_uring) overriding it. Automatic picks io_uring
// where the kernel allows it, else epoll. Throws std::system_error naming the reason when an
// explicitly requested backend is unavailable, or SKEIN_IO holds something else.
std::unique_ptr<IoBackend> make_backend(IoCore& core, Inbox& inbox, IoBackendKind requested);

}  // namespace skein::detail
