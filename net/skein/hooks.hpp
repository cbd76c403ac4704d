// The opt-in libc hooks (libskein_hooks.a, Meson's skein_hooks_dep): link them and libc's blocking
// socket, sleep, poll and resolver calls, made inside a fiber, park only that fiber. See
// docs/hooks.md for what is hooked, what falls through to libc and why.
//
// Errors: the hooked calls keep POSIX's convention exactly (-1 and errno; clock_nanosleep and
// getaddrinfo return their codes). Inside a fiber a Task::cancel ends the call with ECANCELED
// (getaddrinfo: EAI_SYSTEM with errno ECANCELED), an SO_RCVTIMEO/SO_SNDTIMEO expiry with EAGAIN
// (connect: EINPROGRESS), a deadline that is not the call's own (a timeout scope) with ETIMEDOUT;
// after those two the connection is shut down (keep_after_interrupt below).
// This header's functions do not fail.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace skein::hooks {

// The calls this program routes through the hooks right now: linked in (the symbol resolves to
// the hook, for shared libraries too) and not turned off by SKEIN_HOOKS_DISABLE. In the order of
// docs/hooks.md's table, e.g. {"read", "write", ...}.
std::vector<std::string_view> hooked_calls();

// True if `call` (a libc function name such as "recv") is in hooked_calls().
bool is_hooked(std::string_view call) noexcept;

// One line for a startup log: "skein hooks: read write ... (off: sleep)".
std::string describe();

// Interrupted connections: when a cancel or a timeout scope ends a hooked wait (ECANCELED,
// ETIMEDOUT) on a connected stream socket, the hooks shut the socket down, so the library sees a
// broken connection instead of reading the late reply as the answer to its next request.
// keep_after_interrupt(fd) opts one socket out (until it is closed; `keep` false undoes it) for a
// protocol the program resynchronises itself; SKEIN_HOOKS_KEEP_INTERRUPTED=1 opts out the whole
// process. No effect on a descriptor that is not an open socket.
void keep_after_interrupt(int fd, bool keep = true) noexcept;

// Per-call opt-out: while one is alive on this thread, hooked calls made on it behave as if the
// hooks were not linked (they block the thread; a descriptor the hooks made non-blocking is waited
// for with poll(2)). Nests. Must not be held across a skein wait (sleep_for, join, ...): another
// fiber on the thread would run bypassed too.
class Bypass {
 public:
  Bypass() noexcept;
  ~Bypass();
  Bypass(const Bypass&) = delete;
  Bypass& operator=(const Bypass&) = delete;
};

}  // namespace skein::hooks
