// The epoll I/O driver: one per scheduler thread, installed the first time a fiber on that thread
// waits for I/O (runtime/ sees it only as a detail::Driver).
//
// Contract:
// - Each fd is registered once, at its first wait, edge-triggered for both directions
//   (EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET), and deregistered by forget() before it is closed.
// - Per fd it keeps one reader and one writer waiter and a readiness flag per direction. The
//   flags are what makes edge-triggering safe: an event sets them, and only the I/O code clears
//   them, when a call reports EAGAIN or (streams) a short transfer. A fiber parks only while its
//   flag is clear, so an edge that arrives before it parks is never lost.
// - Each fd's slot carries a generation, bumped by forget(); events carry (fd, generation), so an
//   event for a closed fd whose number was reused is dropped, and a waiter on an fd closed
//   under it sees the new generation and reports net_errc::closed.
// - An eventfd wakes the driver from other threads: run_blocking's pool posts finished jobs to
//   the driver's mailbox, which outlives the driver while jobs still point at it.
//
// Per-fd wait states, per direction:
//   ready    flag set: the next call is attempted directly (initial state: unknown counts as ready)
//   idle     flag clear, no waiter: the last call would have blocked
//   waiting  flag clear, a fiber parked until the next event, its deadline or a cancel
// An event moves idle/waiting to ready (waking the waiter); EAGAIN or a short stream transfer moves
// ready to idle, unless a hang-up or error was reported for that direction: that is final, and
// the direction stays ready until the fd is forgotten (the next call reports end of stream or
// the error).
#pragma once

#include "driver.hpp"
#include "scheduler.hpp"

#include <skein/detail/fiber.hpp>
#include <skein/time.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace skein::detail {

// A blocking job's way back: posted by the pool thread, handled on the driver's thread, which
// marks it done and unparks `fiber` unless the fiber stopped waiting (then it is nullptr).
struct Completion {
  Fiber* fiber = nullptr;
  bool done = false;
};

enum class Direction : std::uint8_t { read, write };

struct FdState {
  std::uint32_t generation = 0;
  bool registered = false;
  bool ready[2] = {true, true};  // by Direction
  // The peer hung up or the socket failed (RDHUP/HUP/ERR): the direction stays ready for good,
  // because the event that said so may come with the last data, and no further edge follows.
  bool hung_up[2] = {false, false};
  Fiber* waiter[2] = {nullptr, nullptr};
};

// Where other threads deliver finished blocking jobs. Shared by the driver and every job in
// flight, so a job that finishes after its scheduler ended finds it closed rather than freed.
class Mailbox {
 public:
  explicit Mailbox(int eventfd) noexcept : eventfd_(eventfd) {}
  // From any thread: queues `c` for the driver's thread and wakes the driver. Returns false (and
  // drops `c`) if the driver is gone.
  bool post(std::shared_ptr<Completion> c) noexcept;
  // Driver thread: takes what was posted.
  void take(std::vector<std::shared_ptr<Completion>>& out) noexcept;
  void close() noexcept;

 private:
  std::mutex mutex_;
  std::vector<std::shared_ptr<Completion>> posted_;
  int eventfd_;
  bool signalled_ = false;  // an eventfd write is pending: later posts need not write again
  bool closed_ = false;
};

class EpollDriver final : public Driver {
 public:
  // Watches `inbox`'s eventfd too, so messages from other threads end the idle step.
  explicit EpollDriver(Inbox& inbox);
  ~EpollDriver() override;

  // The driver of this thread's scheduler, installed on first use; nullptr outside a fiber (also
  // on the scheduler loop's own stack).
  static EpollDriver* current() noexcept;
  // This thread's driver if one was installed, without installing one.
  static EpollDriver* installed() noexcept;

  // The state slot for `fd`; stable for the driver's lifetime.
  FdState& state(int fd);

  // Parks the running fiber until `fd` is ready for `dir`, the deadline passes, or a cancel.
  // Registers the fd on first use. Throws errc::timed_out, errc::operation_canceled,
  // net_errc::closed (forget() meanwhile), errc::device_or_resource_busy (another fiber already
  // waits on this fd in this direction), or what epoll_ctl reports.
  void wait(int fd, Direction dir, TimePoint deadline);

  // Drops `fd` before it is closed: deregisters it and wakes its waiters with net_errc::closed.
  void forget(int fd) noexcept;

  // Fibers parked in run_blocking count as I/O waiters: their wake comes through the eventfd.
  void add_remote_waiter() noexcept { ++remote_waiters_; }
  void remove_remote_waiter() noexcept { --remote_waiters_; }
  const std::shared_ptr<Mailbox>& mailbox() const noexcept { return mailbox_; }

  // Called before each I/O attempt. The budget is the thread's: after `io_budget` attempts with
  // no real wait on this thread in between, the fiber that hits zero yields, so connections that
  // always have data cannot starve the others.
  void spend_budget() {
    if (--budget_ == 0) yield_for_fairness();
  }

  void wait_until(TimePoint deadline) noexcept override;
  void poll() noexcept override;
  std::size_t waiters() const noexcept override { return fd_waiters_ + remote_waiters_; }

 private:
  void epoll_once(int timeout_ms, const struct timespec* timeout) noexcept;
  void drain_mailbox() noexcept;
  void prefetch_waiter(std::uint64_t data, std::uint32_t events) const noexcept;
  void yield_for_fairness();

  static constexpr unsigned io_budget = 128;
  static constexpr std::size_t chunk_size = 1024;
  Inbox& inbox_;
  int epfd_ = -1;
  int eventfd_ = -1;
  std::shared_ptr<Mailbox> mailbox_;
  std::vector<std::unique_ptr<FdState[]>> chunks_;  // fd -> state, in chunks: slots never move
  std::size_t fd_waiters_ = 0;
  std::size_t remote_waiters_ = 0;
  std::vector<std::shared_ptr<Completion>> completed_;  // scratch for drain_mailbox
  unsigned budget_ = io_budget;
  bool has_pwait2_ = true;
};

}  // namespace skein::detail
