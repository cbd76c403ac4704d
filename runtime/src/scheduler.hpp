// The per-thread scheduler: a FIFO ready queue, a timer heap and an idle step that sleeps in the
// kernel. See docs/architecture.md for the fiber state machine.
#pragma once

#include "context.hpp"
#include "driver.hpp"
#include "switch.hpp"

#include <skein/detail/fiber.hpp>
#include <skein/time.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace skein::detail {

// Intrusive FIFO of ready fibers (through Fiber::next_ready): no allocation to make a fiber ready.
class ReadyQueue {
 public:
  bool empty() const noexcept { return head_ == nullptr; }
  std::size_t size() const noexcept { return size_; }
  void push(Fiber* f) noexcept {
    f->next_ready = nullptr;
    if (tail_)
      tail_->next_ready = f;
    else
      head_ = f;
    tail_ = f;
    ++size_;
  }
  Fiber* front() const noexcept { return head_; }
  Fiber* pop() noexcept {
    Fiber* f = head_;
    head_ = f->next_ready;
    if (!head_) tail_ = nullptr;
    --size_;
    return f;
  }

 private:
  Fiber* head_ = nullptr;
  Fiber* tail_ = nullptr;
  std::size_t size_ = 0;
};

// Binary min-heap of parked fibers by (deadline, arrival), each fiber knowing its slot so a wait
// that ends early leaves the heap in O(log n). Equal deadlines fire in the order they were set.
class TimerHeap {
 public:
  bool empty() const noexcept { return heap_.empty(); }
  std::size_t size() const noexcept { return heap_.size(); }
  Fiber* top() const noexcept { return heap_.front().fiber; }
  void push(Fiber* f);
  void erase(Fiber* f) noexcept;
  Fiber* pop() noexcept;

 private:
  struct Entry {
    TimePoint deadline;
    std::uint64_t seq;
    Fiber* fiber;
    bool operator<(const Entry& o) const noexcept {
      return deadline < o.deadline || (deadline == o.deadline && seq < o.seq);
    }
  };
  void place(std::size_t i, Entry e) noexcept {
    heap_[i] = e;
    e.fiber->timer_slot = i;
  }
  void sift_up(std::size_t i, Entry e) noexcept;
  void sift_down(std::size_t i, Entry e) noexcept;

  std::vector<Entry> heap_;
  std::uint64_t seq_ = 0;
};

class Scheduler;

// The scheduler bound to this thread, or nullptr.
inline constinit thread_local Scheduler* tl_scheduler = nullptr;

// The hot paths (resume, yield, park) are inline and flat on purpose: every function return made
// right after a stack switch mispredicts (the return-stack buffer holds the other context's
// calls), so each frame between the switch and the code that continues costs a misprediction.
class Scheduler {
 public:
  // Binds a new scheduler to this thread. Throws operation_not_permitted if one is bound already.
  Scheduler();
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // The scheduler bound to this thread, or nullptr.
  static Scheduler* current() noexcept { return tl_scheduler; }

  // The fiber on the CPU, or nullptr while the loop itself runs.
  Fiber* running() const noexcept { return running_; }

  // Runs fibers until none is left (see RunScope::loop).
  void loop();

  void start(Fiber* f, Stack stack, std::string name) noexcept;
  // Puts the running fiber at the back of the ready queue and switches to the loop.
  [[gnu::always_inline]] void yield_running() noexcept {
    Fiber* f = running_;
    f->state = FiberState::ready;
    ready_.push(f);
    ExecContext& here = running_context();
    f->resume_at = &here;
    switch_context(here, *home_);
  }

  // The park protocol (detail::park): see fiber.hpp.
  [[gnu::always_inline]] Wake park_running(TimePoint deadline, Unlink unlink, void* arg) noexcept {
    Fiber* f = running_;
    if (f->cancel_requested && !f->shielded) {
      // Cancelled already: the wait ends before it starts, and leaves whatever list the waiter
      // joined before parking, exactly as a cancel during the wait would.
      if (unlink) unlink(f, arg);
      return Wake::cancelled;
    }
    f->state = FiberState::parked;
    f->wake = Wake::notified;
    f->unlink = unlink;
    f->unlink_arg = arg;
    if (deadline != no_deadline) {
      f->deadline = deadline;
      timers_.push(f);
    }
    ExecContext& here = running_context();
    f->resume_at = &here;
    switch_context(here, *home_);
    f->unlink = nullptr;
    return f->wake;
  }
  void wake(Fiber* f, Wake why) noexcept;
  void cancel(Fiber* f) noexcept;

  // Replaces the idle-time driver (the I/O layer installs its own).
  void set_driver(std::unique_ptr<Driver> driver) noexcept { driver_ = std::move(driver); }
  Driver& driver() noexcept { return *driver_; }

 private:
  [[gnu::always_inline]] void resume(Fiber* f) noexcept {
    running_ = f;
    f->state = FiberState::running;
    switch_context(*home_, *f->resume_at);
    running_ = nullptr;
    if (f->state == FiberState::done) finish(f);
  }
  void finish(Fiber* f) noexcept;
  void fire_timers(TimePoint now) noexcept;
  void recover_deadlock() noexcept;
  [[noreturn]] static void fiber_entry(Transfer t) noexcept;

  ExecContext* home_ = nullptr;  // the context running loop(): fibers switch back to it
  Fiber* running_ = nullptr;
  ReadyQueue ready_;
  TimerHeap timers_;
  Fiber* live_ = nullptr;  // every started, unfinished fiber (through prev_live/next_live)
  std::size_t live_count_ = 0;
  std::uint64_t next_id_ = 1;
  std::unique_ptr<Driver> driver_;
};

}  // namespace skein::detail
