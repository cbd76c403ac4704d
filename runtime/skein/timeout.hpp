// Timeout scopes (gevent.Timeout, asyncio.timeout): a deadline for a block of code that bounds
// every wait inside it — sleeps, joins, locks, channels, socket I/O — without passing a deadline
// to each. Scopes nest; an inner one never extends an outer one's deadline.
//
// Errors: when the deadline passes, whatever wait is current (or the next one) throws
// std::system_error(errc::timed_out), and so does every later wait inside the scope, until the
// scope is left; `expired()` tells a scope's own expiry apart from a wait's own timed_out. Waits
// that protect memory still in use elsewhere (shielded ones: run_blocking's job, reaping a child
// in with_timeout or a TaskGroup) finish regardless.
//
// A scope belongs to the context it was opened in: one opened in a Generator or Coroutine body
// bounds that body's waits only, across its suspensions, and never the consumer's between resumes;
// the consumer's own scope bounds the body's waits while the body runs.
#pragma once

#include <skein/detail/fiber.hpp>
#include <skein/time.hpp>

namespace skein {

namespace detail {
struct ScopeEntry {
  TimePoint outer;     // the context's own scope deadline before this one (restored on leaving)
  TimePoint in_force;  // the deadline now bounding the context's waits
};
// Opens a scope ending at `deadline` in the running context (a fiber, a thread, or a coroutine
// body); leave_scope(entry.outer) closes it, in the same context.
ScopeEntry enter_scope(TimePoint deadline) noexcept;
void leave_scope(TimePoint outer) noexcept;
}  // namespace detail

// Applies `deadline` (or the enclosing scope's, if earlier) to every wait of the calling fiber —
// or plain thread — until destroyed. Create and destroy it on the same fiber; not movable.
class TimeoutScope {
 public:
  explicit TimeoutScope(Deadline deadline) noexcept : entry_(detail::enter_scope(deadline.at())) {}
  ~TimeoutScope() { detail::leave_scope(entry_.outer); }
  TimeoutScope(const TimeoutScope&) = delete;
  TimeoutScope& operator=(const TimeoutScope&) = delete;

  // The deadline in force inside the scope: the earlier of its own and the enclosing one's.
  TimePoint deadline() const noexcept { return entry_.in_force; }
  // True once that deadline has passed: a timed_out caught after this is the scope's doing.
  bool expired() const noexcept { return entry_.in_force != no_deadline && Clock::now() >= entry_.in_force; }

 private:
  detail::ScopeEntry entry_;
};

}  // namespace skein
