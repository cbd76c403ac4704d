// One clock for every wait in skein: std::chrono::steady_clock, with absolute deadlines.
#pragma once

#include <chrono>

namespace skein {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;

// The deadline of a wait that never times out.
inline constexpr TimePoint no_deadline = TimePoint::max();

// The deadline `d` from now, saturating at no_deadline instead of overflowing, whatever the
// representation of `d` (the comparison is made in floating point, which no count overflows).
template <class Rep, class Period>
TimePoint deadline_after(std::chrono::duration<Rep, Period> d) noexcept {
  const TimePoint now = Clock::now();
  if (d <= d.zero()) return now;
  using Wide = std::chrono::duration<long double>;
  if (Wide(d) >= Wide(no_deadline - now)) return no_deadline;
  return now + std::chrono::duration_cast<Clock::duration>(d);
}

// When a wait gives up: an absolute time point, or a duration from now (turned into a time point
// when the Deadline is made, so a retry loop keeps one deadline). Default: never.
class Deadline {
 public:
  constexpr Deadline() noexcept = default;
  constexpr Deadline(TimePoint at) noexcept : at_(at) {}  // NOLINT: implicit on purpose
  template <class Rep, class Period>
  Deadline(std::chrono::duration<Rep, Period> d) noexcept : at_(deadline_after(d)) {}  // NOLINT

  constexpr TimePoint at() const noexcept { return at_; }
  constexpr bool never() const noexcept { return at_ == no_deadline; }

 private:
  TimePoint at_ = no_deadline;
};

}  // namespace skein
