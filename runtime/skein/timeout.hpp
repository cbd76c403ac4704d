// Timeout scopes (gevent.Timeout, asyncio.timeout): a deadline for a block of code that bounds
// every wait inside it — sleeps, joins, locks, channels, socket I/O — without passing a deadline
// to each. Scopes nest; an inner one never extends an outer one's deadline.
//
// Errors: when the deadline passes, whatever wait is current (or the next one) throws
// std::system_error(errc::timed_out), and so does every later wait inside the scope, until the
// scope is left; `expired()` tells a scope's own expiry apart from a wait's own timed_out. Waits
// that protect memory still in use elsewhere (shielded ones: run_blocking's job, reaping a child
// in with_timeout or a TaskGroup) finish regardless.
#pragma once

#include <skein/detail/fiber.hpp>
#include <skein/time.hpp>

namespace skein {

// Applies `deadline` (or the enclosing scope's, if earlier) to every wait of the calling fiber —
// or plain thread — until destroyed. Create and destroy it on the same fiber; not movable.
class TimeoutScope {
 public:
  explicit TimeoutScope(Deadline deadline) noexcept
      : outer_(detail::scope_deadline()), at_(deadline.at() < outer_ ? deadline.at() : outer_) {
    detail::set_scope_deadline(at_);
  }
  ~TimeoutScope() { detail::set_scope_deadline(outer_); }
  TimeoutScope(const TimeoutScope&) = delete;
  TimeoutScope& operator=(const TimeoutScope&) = delete;

  // The deadline in force inside the scope: the earlier of its own and the enclosing one's.
  TimePoint deadline() const noexcept { return at_; }
  // True once that deadline has passed: a timed_out caught after this is the scope's doing.
  bool expired() const noexcept { return at_ != no_deadline && Clock::now() >= at_; }

 private:
  TimePoint outer_;
  TimePoint at_;
};

}  // namespace skein
