// One clock for every wait in skein: std::chrono::steady_clock, with absolute deadlines.
#pragma once

#include <chrono>
#include <cmath>
#include <system_error>
#include <type_traits>

namespace skein {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;

// The deadline of a wait that never times out.
inline constexpr TimePoint no_deadline = TimePoint::max();

// The deadline `d` from now: the one conversion from a duration to a deadline, which every call
// taking a duration goes through (sleep_for, Deadline, the *_for waits, with_timeout, TimeoutScope,
// the sockets' timeouts). Defined for every value: a duration that reaches past the clock's range
// (+infinity, 1e300 s, hours::max()) saturates at no_deadline, a non-positive one (-infinity
// included) means now. Throws std::system_error(invalid_argument) for NaN, which has no meaning
// as a wait.
template <class Rep, class Period>
TimePoint deadline_after(std::chrono::duration<Rep, Period> d) {
  if constexpr (std::is_floating_point_v<Rep>) {
    if (std::isnan(d.count()))
      throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                              "skein: a NaN duration is no deadline");
  }
  const TimePoint now = Clock::now();
  if (d <= d.zero()) return now;
  // Compared in long double, where no count overflows; a floating count is converted from there
  // too, strictly below the limit, so the cast to the clock's integer ticks cannot overflow.
  using Wide = std::chrono::duration<long double, Clock::period>;
  const Wide wide(d);
  const Wide left(no_deadline - now);
  if (wide >= left) return no_deadline;
  if constexpr (std::is_floating_point_v<Rep>)
    return now + Clock::duration(static_cast<Clock::rep>(wide.count()));
  else
    return now + std::chrono::duration_cast<Clock::duration>(d);
}

// When a wait gives up: an absolute time point, or a duration from now (turned into a time point
// when the Deadline is made, so a retry loop keeps one deadline, by deadline_after: NaN throws
// invalid_argument). Default: never.
class Deadline {
 public:
  constexpr Deadline() noexcept = default;
  constexpr Deadline(TimePoint at) noexcept : at_(at) {}  // NOLINT: implicit on purpose
  template <class Rep, class Period>
  Deadline(std::chrono::duration<Rep, Period> d) : at_(deadline_after(d)) {}  // NOLINT

  constexpr TimePoint at() const noexcept { return at_; }
  constexpr bool never() const noexcept { return at_ == no_deadline; }

 private:
  TimePoint at_ = no_deadline;
};

}  // namespace skein
