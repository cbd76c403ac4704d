// What the scheduler needs from an I/O driver: a way to sleep in the kernel until the next timer
// or until I/O wakes a fiber. runtime/ knows drivers only through this interface (net/ implements
// it: IoCore, over an epoll or io_uring backend). The scheduler sleeps in the driver only while waiters() >
// 0; otherwise it sleeps on its inbox's futex, which a message from another thread ends with one FUTEX_WAKE.
#pragma once

#include <skein/time.hpp>

#include <cstddef>

namespace skein::detail {

class Driver {
 public:
  virtual ~Driver() = default;
  // Sleeps until `deadline` (no_deadline: until I/O) or until I/O readiness, unparking the fibers
  // whose I/O is ready. It must also return once the scheduler's inbox eventfd (Inbox::fd()) is
  // readable, and clear it: the scheduler has announced this sleep to its inbox (in_driver), so
  // messages from other threads wake it through that fd. May return early (a signal, a wake-up);
  // the scheduler re-checks.
  virtual void wait_until(TimePoint deadline) noexcept = 0;
  // Unparks the fibers whose I/O is ready, without sleeping.
  virtual void poll() noexcept = 0;
  // How many fibers are parked on I/O: while any are, a scheduler with no timers is not deadlocked.
  virtual std::size_t waiters() const noexcept = 0;
  // Handles what other threads queued for the driver itself and announced with
  // Inbox::wake_driver() (finished blocking jobs): called on the scheduler's thread.
  virtual void take_remote() noexcept = 0;
  // A ring other drivers may post a wake-up completion to (io_uring's MSG_RING) instead of
  // writing the inbox's eventfd, or -1. Installed in the inbox (Inbox::set_wake_ring).
  virtual int wake_ring() const noexcept { return -1; }
  // On this driver's thread: posts a wake-up to `ring_fd` (another driver's wake_ring()) through
  // this driver's own ring. False if it has none: the caller writes the eventfd instead.
  virtual bool post_wake(int ring_fd) noexcept {
    (void)ring_fd;
    return false;
  }
};

}  // namespace skein::detail
