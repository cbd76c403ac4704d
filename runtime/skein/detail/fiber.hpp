// The fiber record and the park/unpark protocol every blocking call in skein is built on.
// Internal to skein: public only because skein::Task and the spawn templates need it.
#pragma once

#include <skein/debug.hpp>
#include <skein/detail/exec_context.hpp>
#include <skein/source_location.hpp>
#include <skein/time.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <semaphore>
#include <string>
#include <utility>

// Clang's thread-safety analysis (-Wthread-safety, on in clang builds): which lock guards which
// field, checked at compile time. Nothing under other compilers.
#if defined(__clang__)
#define SKEIN_TSA(x) __attribute__((x))
#else
#define SKEIN_TSA(x)
#endif
#define SKEIN_CAPABILITY(name) SKEIN_TSA(capability(name))
#define SKEIN_SCOPED_CAPABILITY SKEIN_TSA(scoped_lockable)
#define SKEIN_GUARDED_BY(lock) SKEIN_TSA(guarded_by(lock))
#define SKEIN_REQUIRES(...) SKEIN_TSA(requires_capability(__VA_ARGS__))
#define SKEIN_ACQUIRE(...) SKEIN_TSA(acquire_capability(__VA_ARGS__))
#define SKEIN_RELEASE(...) SKEIN_TSA(release_capability(__VA_ARGS__))
#define SKEIN_TRY_ACQUIRE(...) SKEIN_TSA(try_acquire_capability(__VA_ARGS__))
#define SKEIN_NO_THREAD_SAFETY_ANALYSIS SKEIN_TSA(no_thread_safety_analysis)

namespace skein::detail {

class Scheduler;

// A fiber's life, value by value. Transitions happen only on the fiber's own scheduler thread;
// other threads learn that a fiber is done through Fiber::finished.
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
  expired,    // the deadline of an enclosing TimeoutScope passed (before the wait's own)
};

// Removes a parked fiber from whatever wait list it is on; called when the fiber is woken by its
// deadline or a cancel rather than by the party it waits for.
using Unlink = void (*)(struct Fiber* fiber, void* arg) noexcept;

// A lock for the few words a cross-thread wait list guards: held for a handful of instructions,
// never across a switch, so spinning beats a futex.
class SKEIN_CAPABILITY("spin lock") SpinLock {
 public:
  void lock() noexcept SKEIN_ACQUIRE() {
    while (locked_.exchange(true, std::memory_order_acquire)) {
      for (unsigned spins = 0; locked_.load(std::memory_order_relaxed); ++spins) {
        // More workers than cores: the holder may be preempted, so stop burning its CPU.
        if (spins >= 64)
          yield_thread();
        else
          pause();
      }
    }
  }
  bool try_lock() noexcept SKEIN_TRY_ACQUIRE(true) {
    return !locked_.exchange(true, std::memory_order_acquire);
  }
  void unlock() noexcept SKEIN_RELEASE() { locked_.store(false, std::memory_order_release); }

 private:
  static void pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }
  static void yield_thread() noexcept;
  std::atomic<bool> locked_{false};
};

// std::lock_guard / std::unique_lock for a SpinLock, visible to the thread-safety analysis: holds
// the lock from construction until unlock() or the end of the scope.
class SKEIN_SCOPED_CAPABILITY SpinGuard {
 public:
  explicit SpinGuard(SpinLock& lock) noexcept SKEIN_ACQUIRE(lock) : lock_(&lock) { lock.lock(); }
  ~SpinGuard() SKEIN_RELEASE() {
    if (lock_) lock_->unlock();
  }
  // Releases the lock before the end of the scope.
  void unlock() noexcept SKEIN_RELEASE() {
    lock_->unlock();
    lock_ = nullptr;
  }
  SpinGuard(const SpinGuard&) = delete;
  SpinGuard& operator=(const SpinGuard&) = delete;

 private:
  SpinLock* lock_;
};

// A plain thread (no fiber) blocked in a wait. `claimed` plays the part of Fiber::claimed: exactly
// one of a waker and the thread's own timeout wins the wake-up.
struct ThreadWaiter {
  std::binary_semaphore delivered{0};
  std::atomic<bool> claimed{false};
};

// A waiter in some wait list (joiners of a task, waiters of a lock...): a fiber, or a plain thread.
// Lives on the waiter's stack for the duration of its wait.
struct WaitNode {
  struct Fiber* fiber = nullptr;     // null for a thread waiter
  ThreadWaiter* thread = nullptr;    // the thread waiter, when `fiber` is null
  struct WaitList* owner = nullptr;  // the list it was pushed on; set once
  bool linked = false;               // still in `owner` (guarded by owner->lock)
  bool wants_result = false;         // a join: the first one woken gets the task's result
  bool took_result = false;          // set (before its wake-up) for the join that got it
  WaitNode* prev = nullptr;
  WaitNode* next = nullptr;
};

// Intrusive FIFO of waiters, O(1) to remove one that leaves early, shared between threads: every
// access holds `lock`, including the unlink of a waiter that timed out or was cancelled.
struct WaitList {
  SpinLock lock;
  WaitNode* head = nullptr;
  WaitNode* tail = nullptr;

  bool empty() const noexcept { return head == nullptr; }
  void push_back(WaitNode* n) noexcept {
    n->owner = this;
    n->linked = true;
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
    n->linked = false;
  }
  WaitNode* pop_front() noexcept {
    WaitNode* n = head;
    if (n) remove(n);
    return n;
  }
};

// An Unlink for a fiber waiting through `arg`, a WaitNode: takes it off its list under the lock.
void unlink_wait_node(struct Fiber* fiber, void* node) noexcept;

// Wins the wake-up of a node's waiter (the caller holds the lock of the list it popped it from).
// Returns false if its deadline, a cancel or another waker won it first: the waiter is leaving.
// After a true, the caller may hand the waiter what it waits for, then must deliver() it.
bool claim(const WaitNode* node) noexcept;

// Who to wake once a claim is won; copied out of the node so delivery may happen after the list's
// lock is released (the node itself may vanish the moment its waiter runs).
struct Wakeup {
  struct Fiber* fiber = nullptr;
  ThreadWaiter* thread = nullptr;
  explicit operator bool() const noexcept { return fiber || thread; }
};
inline Wakeup wakeup_of(const WaitNode* node) noexcept {
  return {node->fiber, node->thread};
}
// Makes a claimed waiter run again: a fiber ready (through its scheduler's inbox when that is
// another thread's), a thread's semaphore released. Does nothing for an empty Wakeup.
void deliver(Wakeup w) noexcept;

// claim() then deliver(): notifies the waiter of a node just popped from its list.
bool notify_node(WaitNode* node) noexcept;

// A message to a scheduler from another thread, linked into its inbox. Each fiber carries its own
// two, so posting never allocates: at most one start-or-wake and one cancel is in flight per fiber.
struct RemoteNode {
  enum class Kind : std::uint8_t {
    start,    // a fiber spawned from another thread: link it and make it ready
    deliver,  // a wake-up claimed on another thread: make the parked fiber ready
    cancel,   // Task::cancel from another thread: cancel here, then drop the reference it held
    stop,     // the runtime has ended: leave the loop
    debug,    // skein::debug wants copies of this worker's records and counters (no fiber)
  };
  RemoteNode* next = nullptr;
  struct Fiber* fiber = nullptr;
  Kind kind = Kind::start;
};

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
  std::atomic<bool> cancel_requested{false};  // set from any thread, read by the fiber
  bool shielded = false;                      // in a wait a cancel must not end (set by ShieldGuard)
  // Why the fiber last parked (meaningful while state == parked); in the padding before
  // `scheduler`, so a park's reason costs no extra cache line.
  debug::WaitReason wait_reason = debug::WaitReason::none;
  // The wake-up of the current wait has been claimed: exactly one of unpark (any thread), the
  // deadline and a cancel wins it, and only the winner touches the fiber. Cleared as the fiber
  // resumes from park(), so it is open from the start of each wait until it is won.
  std::atomic<bool> claimed{false};
  Scheduler* scheduler = nullptr;
  ExecContext* resume_at = this;      // where to resume: here, or a coroutine it parked inside
  Fiber* next_ready = nullptr;        // ready-queue link
  std::size_t timer_slot = no_timer;  // index in the scheduler's timer heap, or no_timer
  Unlink unlink = nullptr;            // of the current wait (may be null)
  void* unlink_arg = nullptr;
  TimePoint scope_deadline = no_deadline;  // of the innermost TimeoutScope (read by every park)
  // The end of this hot line: the fields below are touched by timed waits, spawns and joins only.
  TimePoint deadline = no_deadline;  // of the current wait, when it has one (the timer heap's key)
  static constexpr std::size_t no_timer = ~std::size_t{0};
  // The rest of the current wait's record (docs/observability.md): one word of detail (an fd, the
  // waited-for object's address, a joined fiber's id, a static C string) and when the park began,
  // in nanoseconds of CLOCK_MONOTONIC_COARSE as the worker last read it (Scheduler::coarse_now).
  std::uintptr_t wait_detail = 0;
  std::int64_t wait_since = 0;

  Fiber* prev_live = nullptr;  // the scheduler's list of live fibers
  Fiber* next_live = nullptr;
  WaitList joiners;                   // waiting for this one to finish (under joiners.lock)
  std::atomic<bool> finished{false};  // state reached done (set under joiners.lock)
  bool result_taken SKEIN_GUARDED_BY(joiners.lock) = false;  // a join has claimed the result
  bool error_observed = false;             // join() rethrew `error` (or it was a cancellation)
  std::atomic<bool> cancel_posted{false};  // a cancel message is (or was) on its way
  std::atomic<int> refs{2};                // the running fiber + its Task handle (+ one per cancel in flight)
  std::exception_ptr error;                // what the body threw
  std::string name;
  std::uint64_t id = 0;
  std::uint64_t parent_id = 0;        // the fiber that spawned it (0: a plain thread)
  skein::SourceLocation spawn_site;   // the spawn call
  const char* hooked_call = nullptr;  // the libc call a hook runs for this fiber right now, or null
  RemoteNode post_node{nullptr, this, RemoteNode::Kind::start};
  RemoteNode cancel_node{nullptr, this, RemoteNode::Kind::cancel};
};

#if defined(__x86_64__) || defined(__aarch64__)
// Pins the promise above: with the record 64-byte aligned, every field a park, wake or resume
// touches lies on its second cache line (the first is the vtable pointer and the ExecContext).
// offsetof on a polymorphic class is conditionally supported; GCC and Clang both compute it.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Winvalid-offsetof"
#define SKEIN_HOT(field)                                                                                 \
  static_assert(                                                                                         \
      offsetof(Fiber, field) / 64 == 1 && (offsetof(Fiber, field) + sizeof(Fiber::field) - 1) / 64 == 1, \
      "skein: Fiber::" #field " must lie on the record's hot cache line (bytes 64-127)")
SKEIN_HOT(state);
SKEIN_HOT(wake);
SKEIN_HOT(cancel_requested);
SKEIN_HOT(shielded);
SKEIN_HOT(wait_reason);
SKEIN_HOT(claimed);
SKEIN_HOT(scheduler);
SKEIN_HOT(resume_at);
SKEIN_HOT(next_ready);
SKEIN_HOT(timer_slot);
SKEIN_HOT(unlink);
SKEIN_HOT(unlink_arg);
SKEIN_HOT(scope_deadline);
#undef SKEIN_HOT
#pragma GCC diagnostic pop
#endif

// Debug builds check every fiber state transition against the state machine above (as marl and
// Go's runtime do): a fiber resumed twice, or woken while running, aborts with its id at once
// instead of corrupting a queue.
#ifndef NDEBUG
[[noreturn]] inline void bad_fiber_state(const Fiber* f, FiberState expected, const char* where) noexcept {
  static constexpr const char* names[] = {"ready", "running", "parked", "done"};
  std::fprintf(stderr, "skein: fiber #%llu \"%s\" is %s in %s, expected %s\n",
               static_cast<unsigned long long>(f->id), f->name.c_str(), names[static_cast<int>(f->state)],
               where, names[static_cast<int>(expected)]);
  std::abort();
}
#define SKEIN_ASSERT_STATE(f, expected, where) \
  ((f)->state == (expected) ? void() : ::skein::detail::bad_fiber_state((f), (expected), (where)))
#else
#define SKEIN_ASSERT_STATE(f, expected, where) void()
#endif

// The fiber running on this thread, or nullptr on the thread's own stack.
Fiber* current_fiber() noexcept;

// What a park records about itself for skein::debug (docs/observability.md): why, and one word
// of detail (an fd, the address of the object waited on, a joined fiber's id, a static C string).
struct WaitFor {
  debug::WaitReason reason = debug::WaitReason::other;
  std::uintptr_t detail = 0;
};
inline WaitFor wait_for(debug::WaitReason reason, const void* object) noexcept {
  return {reason, reinterpret_cast<std::uintptr_t>(object)};
}

// Parks the running fiber until unpark(), `deadline`, or a cancel. `unlink(fiber, arg)` runs when
// the wake is a timeout or a cancel. Returns at once with Wake::cancelled if the fiber is already
// cancelled. The fiber's TimeoutScope deadline applies too, unless it is shielded: Wake::expired
// when it passes before `deadline`. With `unlink_on_wake`, `unlink` also runs after a notified
// wake, before the wake-up reopens: for a waiter queued on several lists (select), whose other
// nodes must be gone before any waker could claim it again. Must be called from a fiber.
Wake park(TimePoint deadline, Unlink unlink = nullptr, void* arg = nullptr,
          bool unlink_on_wake = false) noexcept;
// park() recording `why` (the form above records WaitReason::other).
Wake park(WaitFor why, TimePoint deadline, Unlink unlink = nullptr, void* arg = nullptr,
          bool unlink_on_wake = false) noexcept;

// Wakes a parked fiber with Wake::notified, from any thread (through its scheduler's inbox when
// that is another thread's). Returns false, doing nothing, if the wait's wake-up was already won
// by its deadline, a cancel or another unpark.
//
// The rule that makes this safe: a fiber that has made itself findable by a waker (joined a wait
// list) must go on to park(), and leave the list only through its Unlink or the waker: a wake-up
// claimed on another thread is delivered later, and must find the fiber still parked in that wait.
bool unpark(Fiber* fiber) noexcept;

// Asks a fiber to stop, from any thread: its current or next wait ends with the cancellation
// error. Idempotent.
void cancel(Fiber* fiber) noexcept;

// Throws the error a wait that ended with `w` reports: operation_canceled, or timed_out (its own
// deadline or a TimeoutScope's). Returns for Wake::notified.
void throw_if_interrupted(Wake w);

// True if `e` is the operation_canceled error a cancelled wait throws.
bool is_cancellation(const std::exception_ptr& e) noexcept;

// The deadline of the innermost TimeoutScope of the calling fiber or thread (no_deadline if none).
TimePoint scope_deadline() noexcept;

// Lets go of one reference; the last one destroys the record and returns its stack.
void release(Fiber* fiber) noexcept;

// The scheduler bound to this thread; throws std::system_error(operation_not_permitted) naming
// `what` when there is none (spawn outside skein::run).
Scheduler& scheduler_for(const char* what);

// Makes a constructed fiber on `stack` runnable on `scheduler`, the calling fiber's; `where` is
// the spawn call.
void start_fiber(Scheduler& scheduler, Fiber* fiber, Stack stack, std::string name,
                 skein::SourceLocation where = {}) noexcept;

// Marks a Task handle's release: reports an exception nobody will see, then releases.
void release_handle(Fiber* fiber) noexcept;

// Blocks a plain thread whose node is on a wait list (its lock released) until a waker claims and
// delivers it, or `deadline` / the thread's TimeoutScope passes; then `unlink(nullptr, arg)` has
// taken the node off its list by the time this returns.
Wake block_thread(ThreadWaiter& thread, TimePoint deadline, Unlink unlink, void* arg) noexcept;

// The same for either kind of waiter: parks `node.fiber`, or blocks on `node.thread`. A fiber's wait
// is never taken for a deadlock (any thread may be the one to end it).
// `unlink_on_wake` as for park(); `why` is what a parked fiber records.
Wake block(WaitFor why, WaitNode& node, TimePoint deadline, Unlink unlink, void* arg,
           bool unlink_on_wake = false) noexcept;

// Names the libc call a hook is running for the calling fiber while it lives (a static string):
// skein::debug shows it beside the wait it causes. Does nothing outside a fiber or for null.
class HookedCallScope {
 public:
  explicit HookedCallScope(const char* call) noexcept : self_(call ? current_fiber() : nullptr) {
    if (self_) previous_ = std::exchange(self_->hooked_call, call);
  }
  ~HookedCallScope() {
    if (self_) self_->hooked_call = previous_;
  }
  HookedCallScope(const HookedCallScope&) = delete;
  HookedCallScope& operator=(const HookedCallScope&) = delete;

 private:
  Fiber* self_;
  const char* previous_ = nullptr;
};

// Sets the calling fiber's (or thread's) TimeoutScope deadline; returns the previous one.
TimePoint set_scope_deadline(TimePoint deadline) noexcept;

// Waits for `fiber` to finish, until `deadline`. Returns false on timeout; throws the cancellation
// error if the waiter is cancelled, resource_deadlock_would_occur if a fiber waits for itself.
// Outside a fiber it blocks the thread.
bool wait_done(Fiber* fiber, TimePoint deadline);

// How join_done() ended.
enum class Joined : std::uint8_t {
  took,       // the fiber finished and the caller is the one join to get its result
  refused,    // the fiber finished, and another join got the result
  timed_out,  // `deadline` passed first
};

// wait_done() for a join: also decides, under the joiners' lock the wait takes anyway, which of
// several joins gets the result (the first to be woken, or to find the fiber finished).
Joined join_done(Fiber* fiber, TimePoint deadline);

// Waits for `fiber` to finish even if the waiter is cancelled meanwhile (the cancel takes effect
// at the waiter's next wait). For cleanup that must not return before a child is gone.
void wait_done_shielded(Fiber* fiber) noexcept;

// While it lives, the caller's waits end only by their own condition or deadline: a fiber is
// shielded from cancellation and from its TimeoutScope (a cancel arriving meanwhile is kept and
// ends the first wait after the guard), a plain thread from its TimeoutScope. The destructor
// restores what was in force before, so guards nest. For cleanup that must not return early
// because what it waits for still uses the caller's memory (a job, a child, a handler).
class ShieldGuard {
 public:
  ShieldGuard() noexcept : self_(current_fiber()) {
    if (self_)
      was_shielded_ = std::exchange(self_->shielded, true);
    else
      thread_scope_ = set_scope_deadline(no_deadline);  // a thread has no cancel to hold off
  }
  ~ShieldGuard() {
    if (self_)
      self_->shielded = was_shielded_;
    else
      set_scope_deadline(thread_scope_);
  }
  ShieldGuard(const ShieldGuard&) = delete;
  ShieldGuard& operator=(const ShieldGuard&) = delete;

  // Whether the caller was shielded already when the guard began (always false on a thread).
  bool was_shielded() const noexcept { return was_shielded_; }

 private:
  Fiber* self_;
  bool was_shielded_ = false;
  TimePoint thread_scope_ = no_deadline;
};

}  // namespace skein::detail
