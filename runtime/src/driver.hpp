// What the scheduler needs from an I/O driver: a way to sleep in the kernel until the next timer
// or until I/O wakes a fiber. runtime/ knows drivers only through this interface (net/ implements
// the epoll one); without a driver the scheduler sleeps with clock_nanosleep.
#pragma once

#include <skein/time.hpp>

#include <cstddef>

namespace skein::detail {

class Driver {
 public:
  virtual ~Driver() = default;
  // Sleeps until `deadline` (no_deadline: until I/O) or until I/O readiness, unparking the fibers
  // whose I/O is ready. May return early (a signal, a wake-up); the scheduler re-checks.
  virtual void wait_until(TimePoint deadline) noexcept = 0;
  // Unparks the fibers whose I/O is ready, without sleeping.
  virtual void poll() noexcept = 0;
  // How many fibers are parked on I/O: while any are, a scheduler with no timers is not deadlocked.
  virtual std::size_t waiters() const noexcept = 0;
};

}  // namespace skein::detail
