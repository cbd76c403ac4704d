// The fiber record and the park/unpark protocol every blocking call in skein is built on.
// Internal to skein: public only because skein::Task and the spawn templates need it.
#pragma once

#include <skein/detail/exec_context.hpp>
#include <skein/time.hpp>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>

namespace skein::detail {

class Scheduler;

// A fiber's life, value by value. Transitions happen only on the fiber's own scheduler thread.
enum class FiberState : std::uint8_t {
  ready,    // in the ready queue; runs when the scheduler reaches it (first run: starts the body)
  running,  // on the CPU; exactly one per scheduler, or none while the scheduler loop runs
  parked,   // suspended in park(); leaves it on unpark(), its deadline, or a cancel
  done,     // the body returned or threw; the record lives on until the Task handle lets go
};

// Why park() returned.
enum class Wake : std::uint8_t {
  notified,   // unpark(): the condition waited for happened
  timed_out,  // the deadline passed
  cancelled,  // the fiber was cancelled (Task::cancel or deadlock recovery)
};

// Removes a parked fiber from whatever wait list it is on; called when the fiber is woken by its
// deadline or a cancel rather than by the party it waits for.
using Unlink = void (*)(struct Fiber* fiber, void* arg) noexcept;

// A fiber waiting in some list (joiners of a task, waiters of a lock...). Lives on the waiting
// fiber's stack for the duration of its wait.
struct WaitNode {
  struct Fiber* fiber = nullptr;
  struct WaitList* list = nullptr;  // the list it is in, or nullptr once taken off
  WaitNode* prev = nullptr;
  WaitNode* next = nullptr;
};

// Intrusive FIFO of waiting fibers; O(1) to remove a waiter that leaves early.
struct WaitList {
  WaitNode* head = nullptr;
  WaitNode* tail = nullptr;

  bool empty() const noexcept { return head == nullptr; }
  void push_back(WaitNode* n) noexcept {
    n->list = this;
    n->next = nullptr;
    n->prev = tail;
    if (tail)
      tail->next = n;
    else
      head = n;
    tail = n;
  }
  void remove(WaitNode* n) noexcept {
    (n->prev ? n->prev->next : head) = n->next;
    (n->next ? n->next->prev : tail) = n->prev;
    n->list = nullptr;
  }
  WaitNode* pop_front() noexcept {
    WaitNode* n = head;
    if (n) remove(n);
    return n;
  }
};

// An Unlink for a fiber waiting through `arg`, a WaitNode.
void unlink_wait_node(struct Fiber* fiber, void* node) noexcept;

// Lives at the top of the fiber's own stack, so a spawn costs no heap allocation. Shared by the
// running fiber and its Task handle; whichever lets go last returns the stack to the pool.
struct Fiber : ExecContext {
  Fiber() noexcept { kind = ContextKind::fiber; }
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;
  virtual ~Fiber() = default;

  // Runs the body and stores its result or exception. Never throws.
  virtual void run_body() noexcept = 0;
  // Called instead of run_body() when the fiber is cancelled before it ever ran.
  virtual void skip_body() noexcept = 0;

  // What every park, wake and resume touches comes first, so with the record 64-byte aligned
  // (spawn places it so) it shares the cache line after the ExecContext: a server with thousands
  // of connections wakes fibers whose records are cold, and each extra line is a miss.
  FiberState state = FiberState::ready;
  Wake wake = Wake::notified;
  bool cancel_requested = false;
  bool shielded = false;  // in a wait a cancel must not end (see wait_done_shielded)
  Scheduler* scheduler = nullptr;
  ExecContext* resume_at = this;      // where to resume: here, or a coroutine it parked inside
  Fiber* next_ready = nullptr;        // ready-queue link
  std::size_t timer_slot = no_timer;  // index in the scheduler's timer heap, or no_timer
  Unlink unlink = nullptr;            // of the current wait (may be null)
  void* unlink_arg = nullptr;
  TimePoint deadline = no_deadline;  // of the current wait
  static constexpr std::size_t no_timer = ~std::size_t{0};

  Fiber* prev_live = nullptr;  // the scheduler's list of live fibers
  Fiber* next_live = nullptr;
  WaitList joiners;          // fibers waiting for this one to finish
  std::exception_ptr error;  // what the body threw
  std::string name;
  std::uint64_t id = 0;
  int refs = 2;                 // the running fiber + its Task handle
  bool detached = false;        // the handle let go without joining
  bool error_observed = false;  // join() rethrew `error` (or it was a cancellation)
};

// The fiber running on this thread, or nullptr on the thread's own stack.
Fiber* current_fiber() noexcept;

// Parks the running fiber until unpark(), `deadline`, or a cancel. `unlink(fiber, arg)` runs when
// the wake is a timeout or a cancel. Returns at once with Wake::cancelled if the fiber is already
// cancelled. Must be called from a fiber.
Wake park(TimePoint deadline, Unlink unlink = nullptr, void* arg = nullptr) noexcept;

// Makes a parked fiber ready with Wake::notified; does nothing if it is not parked (a wake that
// lost the race to a timeout or a cancel). Same thread as the fiber.
void unpark(Fiber* fiber) noexcept;

// Asks a fiber to stop: its current or next wait ends with the cancellation error. Idempotent.
void cancel(Fiber* fiber) noexcept;

// Throws the error a wait that ended with `w` reports: operation_canceled or timed_out.
void throw_if_interrupted(Wake w);

// Lets go of one reference; the last one destroys the record and returns its stack.
void release(Fiber* fiber) noexcept;

// The scheduler bound to this thread; throws std::system_error(operation_not_permitted) naming
// `what` when there is none (spawn outside skein::run).
Scheduler& scheduler_for(const char* what);

// Makes a constructed fiber on `stack` runnable on `scheduler`.
void start_fiber(Scheduler& scheduler, Fiber* fiber, Stack stack, std::string name) noexcept;

// Marks a Task handle's release: reports an exception nobody will see, then releases.
void release_handle(Fiber* fiber) noexcept;

// Waits for `fiber` to finish, until `deadline`. Returns false on timeout; throws the cancellation
// error if the waiter is cancelled, resource_deadlock_would_occur if a fiber waits for itself.
bool wait_done(Fiber* fiber, TimePoint deadline);

// Waits for `fiber` to finish even if the waiter is cancelled meanwhile (the cancel takes effect
// at the waiter's next wait). For cleanup that must not return before a child is gone.
void wait_done_shielded(Fiber* fiber) noexcept;

}  // namespace skein::detail
